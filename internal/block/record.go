package block

import (
	"encoding/hex"
	"fmt"
)

// NameSize is the length in bytes of a stored object's name token.
const NameSize = 16

// Name is the random token under which one stored object lives in the
// backend. Names are chosen at random by the writer (never derived from the
// content), so a backend learns nothing about the data from them, two
// writers never race on one name, and rewriting a block (migrate-encryption)
// creates a new object before the old one is removed.
type Name [NameSize]byte

// String returns the name in lower-case hex.
func (n Name) String() string { return hex.EncodeToString(n[:]) }

// IsZero reports whether n is the zero name (no object).
func (n Name) IsZero() bool { return n == Name{} }

// ParseName parses a 32-digit hex object name.
func ParseName(s string) (Name, error) {
	var n Name
	if len(s) != 2*NameSize {
		return n, fmt.Errorf("malformed object name %q", s)
	}
	if _, err := hex.Decode(n[:], []byte(s)); err != nil {
		return n, fmt.Errorf("malformed object name %q: %v", s, err)
	}
	return n, nil
}

// Compression identifies the compression applied to a stored block.
type Compression uint8

// Compression algorithms. The values are written to disk: never renumber.
const (
	CompressionNone Compression = 0
	CompressionZstd Compression = 1
)

func (c Compression) String() string {
	switch c {
	case CompressionNone:
		return "none"
	case CompressionZstd:
		return "zstd"
	}
	return fmt.Sprintf("compression(%d)", uint8(c))
}

// Record describes one stored block: where it is and how it was written.
// It is what the metastore keeps per distinct block, and what a store needs
// to read the block back.
type Record struct {
	ID          ID          // identity of the plaintext
	Name        Name        // the object holding it
	Size        uint32      // plaintext length in bytes
	StoredSize  uint32      // object length in bytes (header included)
	EncVersion  uint16      // encryption version the object was sealed with (0 = none)
	Compression Compression // compression applied before sealing
	Invalid     bool        // found damaged by a scrub or a restore
}
