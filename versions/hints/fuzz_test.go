package hints

import (
	"bytes"
	"cmp"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// blockModel classifies block [start, end) straight from the extents, with
// no merging and no binary search: an independent check of Map.Class.
func blockModel(extents []Extent, start, end int64) Class {
	var zeros []Extent
	for _, e := range extents {
		if e.Offset >= end || e.Offset+e.Length <= start {
			continue
		}
		if e.Exists {
			return Read
		}
		zeros = append(zeros, e)
	}
	if len(zeros) == 0 {
		return Untouched
	}
	slices.SortFunc(zeros, func(a, b Extent) int { return cmp.Compare(a.Offset, b.Offset) })
	covered := start // every byte of [start, covered) is zeroed
	for _, e := range zeros {
		if e.Offset > covered {
			return Read
		}
		covered = max(covered, e.Offset+e.Length)
	}
	if covered >= end {
		return Sparse
	}
	return Read
}

func FuzzParse(f *testing.F) {
	for _, tc := range parseOK {
		f.Add([]byte(tc.in))
	}
	for _, tc := range parseBad {
		f.Add([]byte(tc.in))
	}
	for _, name := range []string{"rbd-diff-pretty.json", "rbd-diff-oneline.json"} {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`[{"offset":4096,"length":4096,"exists":"false"},{"offset":8192,"length":100,"exists":"true"},{"offset":1040384,"length":8192,"exists":false}]`))
	f.Add([]byte(`[{"offset":0,"length":1048576,"exists":false},{"offset":5000,"length":1,"exists":true}]`))

	const (
		sourceSize = 1 << 20
		blockSize  = 4096
	)
	f.Fuzz(func(t *testing.T, data []byte) {
		extents, err := Parse(bytes.NewReader(data), sourceSize)
		if err != nil {
			if extents != nil {
				t.Fatalf("extents %v returned with error %v", extents, err)
			}
			return
		}
		for k, e := range extents {
			if e.Offset < 0 || e.Length < 0 || e.Offset+e.Length > sourceSize {
				t.Fatalf("extent %d = %+v out of the source", k, e)
			}
		}
		m := NewMap(extents, blockSize, sourceSize)
		if m.NumBlocks() != sourceSize/blockSize {
			t.Fatalf("NumBlocks = %d", m.NumBlocks())
		}
		for i := range m.NumBlocks() {
			start := i * blockSize
			got := m.Class(i)
			if want := blockModel(extents, start, start+blockSize); got != want {
				t.Fatalf("Class(%d) = %v, want %v (extents %v)", i, got, want, extents)
			}
			if m.Touched(i, i+1) != (got != Untouched) {
				t.Fatalf("Touched(%d) disagrees with Class %v", i, got)
			}
		}
		if m.HintedBytes() < 0 || m.HintedBytes() > sourceSize {
			t.Fatalf("HintedBytes = %d", m.HintedBytes())
		}
	})
}
