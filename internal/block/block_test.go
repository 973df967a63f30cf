package block

import (
	"bytes"
	"testing"
)

func TestIsZero(t *testing.T) {
	for _, n := range []int{0, 1, 7, 63, 64, 65, 4096, 4<<20 + 3} {
		p := make([]byte, n)
		if !IsZero(p) {
			t.Fatalf("IsZero(zeros %d) = false", n)
		}
		for _, pos := range []int{0, n / 2, n - 1} {
			if n == 0 {
				continue
			}
			q := bytes.Clone(p)
			q[pos] = 1
			if IsZero(q) {
				t.Fatalf("IsZero with byte %d of %d set = true", pos, n)
			}
		}
	}
}

func TestSumAndParse(t *testing.T) {
	a, b := Sum([]byte("a")), Sum([]byte("b"))
	if a == b || a.IsSparse() {
		t.Fatal("distinct inputs must give distinct, non-sparse IDs")
	}
	// BLAKE3("") is a published test vector.
	if got := Sum(nil).String(); got != "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262" {
		t.Fatalf("BLAKE3(\"\") = %s", got)
	}
	back, err := ParseID(a.String())
	if err != nil || back != a {
		t.Fatalf("ParseID round trip: %v %v", back, err)
	}
	for _, bad := range []string{"", "zz", a.String()[:63], a.String() + "0", "g" + a.String()[1:]} {
		if _, err := ParseID(bad); err == nil {
			t.Fatalf("ParseID(%q) accepted", bad)
		}
	}
}

func BenchmarkIsZero(b *testing.B) {
	p := make([]byte, 4<<20)
	b.SetBytes(int64(len(p)))
	for b.Loop() {
		IsZero(p)
	}
}

func BenchmarkSum(b *testing.B) {
	p := bytes.Repeat([]byte("backy"), 4<<20/5)
	b.SetBytes(int64(len(p)))
	for b.Loop() {
		Sum(p)
	}
}
