package config

import "testing"

// TestFormatSizeReadsBack: what FormatSize prints parses as the same size.
func TestFormatSizeReadsBack(t *testing.T) {
	for _, c := range []struct {
		n    int64
		want string
	}{
		{0, "0 bytes"}, {1, "1 byte"}, {1000, "1000 bytes"}, {4096, "4KiB"}, {64 << 10, "64KiB"}, {1536 << 10, "1536KiB"},
		{4 << 20, "4MiB"}, {64 << 20, "64MiB"}, {1 << 30, "1GiB"}, {3 << 40, "3TiB"}, {1 << 62, "4EiB"},
	} {
		if got := FormatSize(c.n); got != c.want {
			t.Errorf("FormatSize(%d) = %q, want %q", c.n, got, c.want)
		}
		// What it prints reads back as the same size.
		if c.n >= 1024 {
			if n, err := ParseSize(c.want); err != nil || n != c.n {
				t.Errorf("ParseSize(%q) = %d, %v; want %d", c.want, n, err, c.n)
			}
		}
	}
}

func TestParseSizeFlags(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"4194304", 4 << 20, true}, {"1MiB", 1 << 20, true}, {"1m", 1 << 20, true}, {"64 KiB", 64 << 10, true}, {"2G", 2 << 30, true},
		{"", 0, false}, {"1.5MiB", 0, false}, {"-1", 0, false}, {"4MB", 0, false}, {"99999999999GiB", 0, false},
	} {
		n, err := ParseSize(c.in)
		if (err == nil) != c.ok || (c.ok && n != c.want) {
			t.Errorf("ParseSize(%q) = %d, %v; want %d ok=%v", c.in, n, err, c.want, c.ok)
		}
	}
	if n, err := ParseBlockSize("--block-size", "1MiB"); err != nil || n != 1<<20 {
		t.Errorf("ParseBlockSize(1MiB) = %d, %v", n, err)
	}
	for _, bad := range []string{"1KiB", "128MiB", "65537", "x"} {
		if _, err := ParseBlockSize("--block-size", bad); err == nil {
			t.Errorf("ParseBlockSize(%q) accepted", bad)
		}
	}
}
