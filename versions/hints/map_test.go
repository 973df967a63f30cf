package hints

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

func TestClass(t *testing.T) {
	const bs = 4 * mib
	for _, tc := range []struct {
		name    string
		extents []Extent
		size    int64
		want    []Class // one per block
	}{
		{"no hints", nil, 3 * bs, []Class{Untouched, Untouched, Untouched}},
		{"backy2 data loss: 1 MiB discard inside a 4 MiB block", []Extent{{bs + mib, mib, false}}, 3 * bs,
			[]Class{Untouched, Read, Untouched}},
		{"discard at the start of a block only", []Extent{{bs, mib, false}}, 3 * bs, []Class{Untouched, Read, Untouched}},
		{"discard missing the last byte", []Extent{{bs, bs - 1, false}}, 3 * bs, []Class{Untouched, Read, Untouched}},
		{"discard missing the first byte", []Extent{{bs + 1, bs - 1, false}}, 3 * bs, []Class{Untouched, Read, Untouched}},
		{"discard covering the block exactly", []Extent{{bs, bs, false}}, 3 * bs, []Class{Untouched, Sparse, Untouched}},
		{"two discards that together cover the block", []Extent{{bs + mib, bs - mib, false}, {bs, mib, false}}, 3 * bs,
			[]Class{Untouched, Sparse, Untouched}},
		{"two overlapping discards that together cover the block", []Extent{{bs, 3 * mib, false}, {bs + 2*mib, 2 * mib, false}}, 3 * bs,
			[]Class{Untouched, Sparse, Untouched}},
		{"two discards with a one-byte hole", []Extent{{bs, mib, false}, {bs + mib + 1, bs - mib - 1, false}}, 3 * bs,
			[]Class{Untouched, Read, Untouched}},
		{"discard covering the block plus a 1-byte write inside", []Extent{{bs, bs, false}, {bs + 12345, 1, true}}, 3 * bs,
			[]Class{Untouched, Read, Untouched}},
		{"write before the discard in the list", []Extent{{bs + bs - 1, 1, true}, {0, 3 * bs, false}}, 3 * bs,
			[]Class{Sparse, Read, Sparse}},
		{"write covering the block", []Extent{{bs, bs, true}}, 3 * bs, []Class{Untouched, Read, Untouched}},
		{"1-byte write", []Extent{{2*bs + 7, 1, true}}, 3 * bs, []Class{Untouched, Untouched, Read}},
		{"short last block covered by a discard to the end", []Extent{{2*bs + mib, bs + 2*mib + 1, false}}, 3*bs + 3*mib + 1,
			[]Class{Untouched, Untouched, Read, Sparse}},
		{"short last block, discard ends one byte early", []Extent{{3 * bs, 1000, false}}, 3*bs + 1001,
			[]Class{Untouched, Untouched, Untouched, Read}},
		{"short last block, exact discard", []Extent{{3 * bs, 1001, false}}, 3*bs + 1001,
			[]Class{Untouched, Untouched, Untouched, Sparse}},
		{"discard spanning several blocks", []Extent{{bs / 2, 3 * bs, false}}, 5 * bs,
			[]Class{Read, Sparse, Sparse, Read, Untouched}},
		{"write spanning several blocks", []Extent{{bs - 1, bs + 2, true}}, 4 * bs,
			[]Class{Read, Read, Read, Untouched}},
		{"write ending exactly at a block boundary", []Extent{{0, bs, true}}, 2 * bs, []Class{Read, Untouched}},
		{"adjacent discards from different blocks", []Extent{{0, bs + 1, false}, {bs + 1, bs - 1, false}}, 2 * bs,
			[]Class{Sparse, Sparse}},
		{"zero-length hints ignored", []Extent{{bs, 0, true}, {0, 0, false}}, 2 * bs, []Class{Untouched, Untouched}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := NewMap(tc.extents, bs, tc.size)
			if m.NumBlocks() != int64(len(tc.want)) {
				t.Fatalf("NumBlocks = %d, want %d", m.NumBlocks(), len(tc.want))
			}
			for i, want := range tc.want {
				if got := m.Class(int64(i)); got != want {
					t.Errorf("Class(%d) = %v, want %v", i, got, want)
				}
				if got := m.Touched(int64(i), int64(i)+1); got != (want != Untouched) {
					t.Errorf("Touched(%d, %d) = %v, want %v", i, i+1, got, want != Untouched)
				}
			}
			// Random access, backwards.
			for i := len(tc.want) - 1; i >= 0; i-- {
				if got := m.Class(int64(i)); got != tc.want[i] {
					t.Errorf("backwards Class(%d) = %v, want %v", i, got, tc.want[i])
				}
			}
		})
	}
}

func TestNumBlocks(t *testing.T) {
	for _, tc := range []struct{ bs, size, want int64 }{
		{4096, 0, 0},
		{4096, 1, 1},
		{4096, 4096, 1},
		{4096, 4097, 2},
		{1, 7, 7},
		{math.MaxInt64, math.MaxInt64, 1},
		{1 << 62, math.MaxInt64, 2},
		{4 * mib, math.MaxInt64, math.MaxInt64/(4*mib) + 1},
	} {
		if got := NewMap(nil, tc.bs, tc.size).NumBlocks(); got != tc.want {
			t.Errorf("NumBlocks(bs %d, size %d) = %d, want %d", tc.bs, tc.size, got, tc.want)
		}
	}
}

func TestHugeSource(t *testing.T) {
	const bs = 1 << 62
	m := NewMap([]Extent{{math.MaxInt64 - 1, 1, false}, {0, 1, true}}, bs, math.MaxInt64)
	if m.NumBlocks() != 2 || m.Class(0) != Read || m.Class(1) != Read {
		t.Fatalf("NumBlocks %d, classes %v %v", m.NumBlocks(), m.Class(0), m.Class(1))
	}
	m = NewMap([]Extent{{bs, math.MaxInt64 - bs, false}}, bs, math.MaxInt64)
	if m.Class(0) != Untouched || m.Class(1) != Sparse || !m.Touched(1, math.MaxInt64) || m.Touched(0, 1) {
		t.Fatalf("classes %v %v", m.Class(0), m.Class(1))
	}
}

// TestNewMapClips checks that extents that did not come from Parse are
// clipped to the source rather than trusted.
func TestNewMapClips(t *testing.T) {
	m := NewMap([]Extent{
		{-10, 15, false},             // [0, 5)
		{8, math.MaxInt64, true},     // [8, 10), the sum overflows
		{math.MinInt64, 3, true},     // before the source
		{12, 5, true},                // after it
		{3, -2, true},                // negative length
		{math.MinInt64, -1, true},    // both negative
		{-1, math.MaxInt64, false},   // [0, 10)
		{math.MaxInt64, 1, true},     // far past the end
		{math.MinInt64 + 1, 2, true}, // ends before 0
	}, 5, 10)
	if got := m.HintedBytes(); got != 2 {
		t.Errorf("HintedBytes = %d, want 2", got)
	}
	if m.Class(0) != Sparse || m.Class(1) != Read {
		t.Errorf("classes %v %v, want sparse read", m.Class(0), m.Class(1))
	}
}

func TestHintedBytes(t *testing.T) {
	m := NewMap([]Extent{
		{0, 10, true}, {5, 10, true}, {15, 5, true}, // [0, 20)
		{30, 1, true}, {30, 1, true}, // [30, 31)
		{0, 100, false},
	}, 7, 100)
	if got := m.HintedBytes(); got != 21 {
		t.Fatalf("HintedBytes = %d, want 21", got)
	}
}

func TestTouched(t *testing.T) {
	m := NewMap([]Extent{{40, 1, false}, {100, 10, true}}, 10, 205)
	for _, tc := range []struct {
		first, last int64
		want        bool
	}{
		{0, 4, false},
		{0, 5, true},
		{4, 5, true},
		{5, 10, false},
		{5, 11, true},
		{11, 21, false},
		{11, 100, false},
		{-5, 3, false},
		{-5, 100, true},
		{4, 4, false},
		{5, 4, false},
		{20, 21, false},
	} {
		if got := m.Touched(tc.first, tc.last); got != tc.want {
			t.Errorf("Touched(%d, %d) = %v, want %v", tc.first, tc.last, got, tc.want)
		}
	}
}

func TestClassOutOfRange(t *testing.T) {
	m := NewMap(nil, 10, 25)
	for _, i := range []int64{-1, 3, math.MaxInt64} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Class(%d) did not panic", i)
				}
			}()
			m.Class(i)
		}()
	}
}

func TestClassString(t *testing.T) {
	for c, want := range map[Class]string{Untouched: "untouched", Read: "read", Sparse: "sparse", 9: "Class(9)"} {
		if got := c.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", uint8(c), got, want)
		}
	}
}

// byteModel is the obvious, slow model: one flag per byte.
type byteModel struct {
	written, zeroed []bool
	bs              int64
}

func newByteModel(extents []Extent, bs, size int64) *byteModel {
	b := &byteModel{written: make([]bool, size), zeroed: make([]bool, size), bs: bs}
	for _, e := range extents {
		for x := e.Offset; x < e.Offset+e.Length; x++ {
			if e.Exists {
				b.written[x] = true
			} else {
				b.zeroed[x] = true
			}
		}
	}
	return b
}

func (b *byteModel) block(i int64) (start, end int64) {
	size := int64(len(b.written))
	return i * b.bs, min((i+1)*b.bs, size)
}

func (b *byteModel) class(i int64) Class {
	start, end := b.block(i)
	anyWritten, anyZeroed, allZeroed := false, false, true
	for x := start; x < end; x++ {
		anyWritten = anyWritten || b.written[x]
		anyZeroed = anyZeroed || b.zeroed[x]
		allZeroed = allZeroed && b.zeroed[x]
	}
	switch {
	case anyWritten:
		return Read
	case anyZeroed && allZeroed:
		return Sparse
	case anyZeroed:
		return Read
	}
	return Untouched
}

func (b *byteModel) touched(first, last int64) bool {
	size := int64(len(b.written))
	for x := max(first*b.bs, 0); x < min(last*b.bs, size); x++ {
		if b.written[x] || b.zeroed[x] {
			return true
		}
	}
	return false
}

func (b *byteModel) hinted() int64 {
	var n int64
	for _, w := range b.written {
		if w {
			n++
		}
	}
	return n
}

func randomExtents(r *rand.Rand, size int64) []Extent {
	n := r.IntN(8)
	ext := make([]Extent, n)
	for k := range ext {
		off := r.Int64N(size + 1)
		var length int64
		switch r.IntN(4) {
		case 0:
			length = 0
		case 1:
			length = size - off // to the end
		default:
			length = r.Int64N(size - off + 1)
		}
		ext[k] = Extent{Offset: off, Length: length, Exists: r.IntN(3) == 0}
	}
	return ext
}

func TestClassAgainstByteModel(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for iter := range 20000 {
		size := r.Int64N(100)
		bs := 1 + r.Int64N(20)
		ext := randomExtents(r, size)
		m := NewMap(ext, bs, size)
		b := newByteModel(ext, bs, size)
		desc := fmt.Sprintf("iteration %d: size %d, block size %d, extents %v", iter, size, bs, ext)
		if want := (size + bs - 1) / bs; m.NumBlocks() != want {
			t.Fatalf("%s: NumBlocks = %d, want %d", desc, m.NumBlocks(), want)
		}
		if got, want := m.HintedBytes(), b.hinted(); got != want {
			t.Fatalf("%s: HintedBytes = %d, want %d", desc, got, want)
		}
		nb := m.NumBlocks()
		for i := range nb {
			if got, want := m.Class(i), b.class(i); got != want {
				t.Fatalf("%s: Class(%d) = %v, want %v", desc, i, got, want)
			}
		}
		for range 10 {
			first := r.Int64N(nb+3) - 1
			last := r.Int64N(nb+3) - 1
			if got, want := m.Touched(first, last), b.touched(first, last); got != want {
				t.Fatalf("%s: Touched(%d, %d) = %v, want %v", desc, first, last, got, want)
			}
		}
		// Random-access order: the same answers.
		for range 5 {
			if nb == 0 {
				break
			}
			i := r.Int64N(nb)
			if got, want := m.Class(i), b.class(i); got != want {
				t.Fatalf("%s: random Class(%d) = %v, want %v", desc, i, got, want)
			}
		}
	}
}

// TestParseRoundTrip writes random extents as JSON, parses them back and
// checks the classes.
func TestParseRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for range 2000 {
		size := 1 + r.Int64N(200)
		ext := randomExtents(r, size)
		doc := "[\n"
		var want []Extent
		for k, e := range ext {
			if k > 0 {
				doc += ",\n"
			}
			exists := any(e.Exists)
			if r.IntN(2) == 0 {
				exists = fmt.Sprintf("%q", fmt.Sprint(e.Exists))
			}
			doc += fmt.Sprintf(`  {"offset": %d, "length": %d, "exists": %v}`, e.Offset, e.Length, exists)
			if e.Length > 0 {
				want = append(want, e)
			}
		}
		doc += "\n]\n"
		got, err := Parse(strings.NewReader(doc), size)
		if err != nil {
			t.Fatalf("Parse(%q): %v", doc, err)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("Parse(%q) = %v, want %v", doc, got, want)
		}
	}
}
