// Package blockmap encodes the pages of a version's block map.
//
// A version's block map is the ordered list of its blocks' identities. It is
// cut into pages of PageEntries entries; each page is content-addressed by a
// keyed BLAKE3 hash of its encoding, so two versions whose blocks agree over a
// page share that page, and a backup that changes one block rewrites one page
// (32 KiB at most) rather than the whole map. A sparse block is the all-zero
// identity (block.Sparse).
//
// The package is pure: Encode, Decode and Sum do no I/O. Decode parses
// bytes that may come from outside (an import, a backend object) and is
// fuzzed.
package blockmap

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/zeebo/blake3"

	"github.com/backy/backy/internal/block"
)

// PageEntries is the number of block entries in a full page. With 4 MiB
// blocks a page covers 4 GiB of a volume.
const PageEntries = 1024

// PageID identifies a page by the hash of its encoding.
type PageID [32]byte

func (p PageID) String() string { return fmt.Sprintf("%x", p[:]) }

// encodingV1 is the first byte of an encoded page.
const encodingV1 = 1

// ErrCorrupt is wrapped by every Decode error.
var ErrCorrupt = errors.New("corrupt block map page")

// Encode returns the encoding of a page: one format byte, the entry count as
// a uvarint, then 32 bytes per entry.
func Encode(entries []block.ID) []byte {
	out := make([]byte, 0, 1+binary.MaxVarintLen64+len(entries)*block.IDSize)
	out = append(out, encodingV1)
	out = binary.AppendUvarint(out, uint64(len(entries)))
	for i := range entries {
		out = append(out, entries[i][:]...)
	}
	return out
}

// Decode parses an encoded page.
func Decode(p []byte) ([]block.ID, error) {
	if len(p) < 2 {
		return nil, fmt.Errorf("%w: %d bytes", ErrCorrupt, len(p))
	}
	if p[0] != encodingV1 {
		return nil, fmt.Errorf("%w: unknown encoding %d", ErrCorrupt, p[0])
	}
	n, k := binary.Uvarint(p[1:])
	if k <= 0 || n > PageEntries || k != len(binary.AppendUvarint(nil, n)) {
		return nil, fmt.Errorf("%w: bad entry count", ErrCorrupt)
	}
	body := p[1+k:]
	if uint64(len(body)) != n*block.IDSize {
		return nil, fmt.Errorf("%w: %d entries need %d bytes, have %d", ErrCorrupt, n, n*block.IDSize, len(body))
	}
	out := make([]block.ID, n)
	for i := range out {
		copy(out[i][:], body[i*block.IDSize:])
	}
	return out, nil
}

var pageKey = func() [32]byte {
	var k [32]byte
	h := blake3.NewDeriveKey("backy 2026-11 block map page")
	copy(k[:], h.Sum(nil))
	return k
}()

// Sum returns the identity of an encoded page.
func Sum(encoded []byte) PageID {
	h, _ := blake3.NewKeyed(pageKey[:])
	_, _ = h.Write(encoded)
	var id PageID
	copy(id[:], h.Sum(nil))
	return id
}
