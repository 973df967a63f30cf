package blockmap

import (
	"errors"
	"testing"

	"github.com/backy/backy/internal/block"
)

func TestRoundTrip(t *testing.T) {
	for _, n := range []int{0, 1, 7, PageEntries} {
		entries := make([]block.ID, n)
		for i := range entries {
			if i%3 != 0 {
				entries[i] = block.Sum([]byte{byte(i), byte(i >> 8)})
			}
		}
		enc := Encode(entries)
		got, err := Decode(enc)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != n {
			t.Fatalf("got %d entries, want %d", len(got), n)
		}
		for i := range got {
			if got[i] != entries[i] {
				t.Fatalf("entry %d differs", i)
			}
		}
	}
	a := Sum(Encode([]block.ID{block.Sum([]byte("a"))}))
	b := Sum(Encode([]block.ID{block.Sum([]byte("b"))}))
	if a == b {
		t.Fatal("different pages share an id")
	}
}

func TestDecodeErrors(t *testing.T) {
	good := Encode([]block.ID{block.Sum([]byte("x"))})
	for name, p := range map[string][]byte{
		"empty":     nil,
		"encoding":  append([]byte{9}, good[1:]...),
		"truncated": good[:len(good)-1],
		"extra":     append(good, 0),
		"too many":  {encodingV1, 0xff, 0xff, 0x03},
	} {
		if _, err := Decode(p); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(Encode(nil))
	f.Add(Encode([]block.ID{block.Sum([]byte("x")), {}}))
	f.Fuzz(func(t *testing.T, p []byte) {
		ids, err := Decode(p)
		if err != nil {
			return
		}
		if string(Encode(ids)) != string(p) {
			t.Fatal("decode/encode is not the identity on accepted input")
		}
	})
}
