package hints

import (
	"fmt"
	"slices"
	"sort"
)

// Class says how a differential backup treats one block.
type Class uint8

const (
	// Untouched: no hint touches the block. Take it from the base version
	// (or, without a base, it is zero).
	Untouched Class = iota
	// Read: the block must be read from the source.
	Read
	// Sparse: exists=false hints cover the whole block and no exists=true
	// hint touches it. It is all zero and need not be read.
	Sparse
)

// String returns "untouched", "read" or "sparse".
func (c Class) String() string {
	switch c {
	case Untouched:
		return "untouched"
	case Read:
		return "read"
	case Sparse:
		return "sparse"
	}
	return fmt.Sprintf("Class(%d)", uint8(c))
}

// interval is the byte range [start, end), start < end.
type interval struct {
	start, end int64
}

// intervals is a sorted list of disjoint, non-adjacent intervals: for
// consecutive a, b: a.end < b.start.
type intervals []interval

// merge sorts and merges the intervals in place, joining overlapping and
// adjacent ones, and returns the merged list.
func merge(iv []interval) intervals {
	if len(iv) == 0 {
		return nil
	}
	slices.SortFunc(iv, func(a, b interval) int {
		switch {
		case a.start < b.start:
			return -1
		case a.start > b.start:
			return 1
		}
		return 0
	})
	out := iv[:1]
	for _, v := range iv[1:] {
		last := &out[len(out)-1]
		if v.start <= last.end {
			last.end = max(last.end, v.end)
			continue
		}
		out = append(out, v)
	}
	return slices.Clip(out)
}

// first returns the index of the first interval that ends after a.
func (l intervals) first(a int64) int {
	return sort.Search(len(l), func(k int) bool { return l[k].end > a })
}

// overlaps reports whether any interval shares a byte with [a, b), a < b.
func (l intervals) overlaps(a, b int64) bool {
	k := l.first(a)
	return k < len(l) && l[k].start < b
}

// covers reports whether the union of the intervals holds every byte of
// [a, b), a < b. Because merged intervals are neither overlapping nor
// adjacent, that union covers [a, b) only if a single interval does.
func (l intervals) covers(a, b int64) bool {
	k := l.first(a)
	return k < len(l) && l[k].start <= a && l[k].end >= b
}

// Map classifies the blocks of a source cut into fixed-size blocks (the last
// block may be short). It holds the hints as merged, sorted interval lists,
// so its memory is proportional to the number of hints, never to the number
// of blocks. A Map is immutable: its methods may be called concurrently.
type Map struct {
	blockSize int64
	size      int64
	numBlocks int64
	exists    intervals // union of the exists=true extents
	zero      intervals // union of the exists=false extents
	all       intervals // union of all extents
	hinted    int64     // bytes in exists
}

// NewMap classifies the blocks of a source of the given size in bytes cut
// into blockSize-byte blocks. Extents are clipped to [0, size); empty ones
// are ignored, so extents that did not come from [Parse] are safe too. It
// panics if blockSize <= 0 or size < 0.
func NewMap(extents []Extent, blockSize, size int64) *Map {
	if blockSize <= 0 {
		panic(fmt.Sprintf("hints: block size %d is not positive", blockSize))
	}
	if size < 0 {
		panic(fmt.Sprintf("hints: size %d is negative", size))
	}
	m := &Map{blockSize: blockSize, size: size, numBlocks: size / blockSize}
	if size%blockSize != 0 {
		m.numBlocks++
	}
	var ex, zero, all []interval
	for _, e := range extents {
		if e.Length <= 0 || e.Offset >= size {
			continue
		}
		var end int64
		if e.Offset < 0 {
			end = min(e.Offset+e.Length, size) // cannot overflow
		} else {
			end = e.Offset + min(e.Length, size-e.Offset)
		}
		start := max(e.Offset, 0)
		if start >= end {
			continue
		}
		v := interval{start, end}
		if e.Exists {
			ex = append(ex, v)
		} else {
			zero = append(zero, v)
		}
		all = append(all, v)
	}
	m.exists = merge(ex)
	m.zero = merge(zero)
	m.all = merge(all)
	for _, v := range m.exists {
		m.hinted += v.end - v.start
	}
	return m
}

// NumBlocks returns the number of blocks, ceil(size/blockSize).
func (m *Map) NumBlocks() int64 { return m.numBlocks }

// HintedBytes returns the number of distinct source bytes covered by
// exists=true extents.
func (m *Map) HintedBytes() int64 { return m.hinted }

// blockRange returns the bytes [start, end) of block i, 0 <= i < NumBlocks().
func (m *Map) blockRange(i int64) (start, end int64) {
	start = i * m.blockSize // i*blockSize <= size-1: no overflow
	return start, start + min(m.blockSize, m.size-start)
}

// Class returns the class of block i, 0 <= i < NumBlocks(); it panics
// otherwise. The block is Sparse only if the exists=false extents together
// cover every byte of it and no exists=true extent overlaps it; it is Read if
// any exists=true extent overlaps it or exists=false extents cover only part
// of it; otherwise it is Untouched. Class takes O(log n) time for n hints.
func (m *Map) Class(i int64) Class {
	if i < 0 || i >= m.numBlocks {
		panic(fmt.Sprintf("hints: block %d out of range [0, %d)", i, m.numBlocks))
	}
	start, end := m.blockRange(i)
	switch {
	case m.exists.overlaps(start, end):
		return Read
	case m.zero.covers(start, end):
		return Sparse
	case m.zero.overlaps(start, end):
		return Read
	}
	return Untouched
}

// Touched reports whether any hint, exists=true or not, overlaps any of the
// blocks [first, last). The range is clipped to [0, NumBlocks()); an empty
// range is not touched.
func (m *Map) Touched(first, last int64) bool {
	first = max(first, 0)
	last = min(last, m.numBlocks)
	if first >= last {
		return false
	}
	start, _ := m.blockRange(first)
	_, end := m.blockRange(last - 1)
	return m.all.overlaps(start, end)
}
