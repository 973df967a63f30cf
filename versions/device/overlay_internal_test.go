package device

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// TestJournalRoundTrip: a journal decodes to what was encoded, for every
// number of blocks around the byte and word boundaries, and any one
// damaged byte is found.
func TestJournalRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 9))
	for _, n := range []int64{0, 1, 7, 8, 9, 63, 64, 65, 200, 4096} {
		info := OverlayInfo{Session: "0123456789abcdef", Version: "V0123456789abcdef0123", Volume: "vm-1",
			Size: n*4096 - min(n, 1)*100, BlockSize: 4096, Created: time.Unix(1e9, 0).UTC(), Saved: time.Unix(2e9, 0).UTC()}
		dirty := make([]uint64, (n+63)/64)
		var changed int64
		for i := int64(0); i < n; i++ {
			if r.IntN(3) == 0 {
				dirty[i/64] |= 1 << (i % 64)
				changed++
			}
		}
		b, err := encodeMap(info, dirty, n)
		if err != nil {
			t.Fatal(err)
		}
		got, gd, err := decodeMap(b)
		info.Changed = changed
		if err != nil || got != info || !slices.Equal(gd, dirty) {
			t.Fatalf("%d blocks: decoded %+v %v (%v), want %+v %v", n, got, gd, err, info, dirty)
		}
		for i := range b {
			c := slices.Clone(b)
			c[i] ^= 1 << r.IntN(8)
			if _, _, err := decodeMap(c); err == nil {
				t.Fatalf("%d blocks: byte %d damaged, not noticed", n, i)
			}
		}
		if _, _, err := decodeMap(b[:len(b)-1]); err == nil {
			t.Fatalf("%d blocks: truncated journal accepted", n)
		}
	}
}

// FuzzDecodeMap: no input makes the journal decoder panic or accept an
// inconsistent journal.
func FuzzDecodeMap(f *testing.F) {
	b, _ := encodeMap(OverlayInfo{Session: "s", Version: "V", Size: 10000, BlockSize: 4096}, []uint64{5}, 3)
	f.Add(b)
	f.Add([]byte(overlayMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		info, dirty, err := decodeMap(b)
		if err != nil {
			return
		}
		n := (info.Size + info.BlockSize - 1) / info.BlockSize
		if int64(len(dirty)) != (n+63)/64 || info.Changed > n {
			t.Fatalf("inconsistent journal accepted: %+v, %d words", info, len(dirty))
		}
	})
}
