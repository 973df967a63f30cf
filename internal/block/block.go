// Package block is backy's shared vocabulary for blocks: the content
// identity of a block (the BLAKE3-256 hash of its plaintext), the all-zero
// test that makes a block sparse, and the Record that says where and how a
// block is stored.
//
// The package is a leaf: it imports nothing of backy, and every other
// package may import it.
package block

import (
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/zeebo/blake3"
)

// IDSize is the length of a block identity in bytes.
const IDSize = 32

// ID identifies a block by the BLAKE3-256 hash of its plaintext. The zero
// value (all 32 bytes zero) is reserved: it marks a sparse block in block
// maps and never names stored data (no input hashes to it in practice).
type ID [IDSize]byte

// Sparse is the reserved ID of a block of zeros, which is never stored.
var Sparse ID

// Sum returns the identity of the plaintext p.
func Sum(p []byte) ID {
	return ID(blake3.Sum256(p))
}

// IsSparse reports whether id is the reserved sparse marker.
func (id ID) IsSparse() bool { return id == Sparse }

// String returns the identity in lower-case hex.
func (id ID) String() string { return hex.EncodeToString(id[:]) }

// Short returns the first 12 hex digits, for messages.
func (id ID) Short() string { return hex.EncodeToString(id[:6]) }

// ErrBadID is returned by ParseID for malformed input.
var ErrBadID = errors.New("malformed block id")

// ParseID parses a 64-digit hex block identity.
func ParseID(s string) (ID, error) {
	var id ID
	if len(s) != 2*IDSize {
		return id, fmt.Errorf("%w: %q is not %d hex digits", ErrBadID, s, 2*IDSize)
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return id, fmt.Errorf("%w: %q: %v", ErrBadID, s, err)
	}
	return id, nil
}

// IsZero reports whether every byte of p is zero. It compares eight bytes at
// a time and runs at memory speed, so a backup can skip empty blocks before
// it spends time hashing them.
func IsZero(p []byte) bool {
	// Compare in 64-byte strides against a zero array: the compiler turns
	// the string comparison into a vectorised memcmp.
	const stride = 64
	var zero [stride]byte
	for len(p) >= stride {
		if string(p[:stride]) != string(zero[:]) {
			return false
		}
		p = p[stride:]
	}
	for _, b := range p {
		if b != 0 {
			return false
		}
	}
	return true
}
