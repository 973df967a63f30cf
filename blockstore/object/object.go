package object

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/backy/backy/internal/block"
)

// Magic opens every stored object.
var Magic = [4]byte{'B', 'K', 'Y', 'O'}

// FormatVersion is the header layout this code writes. Readers refuse newer
// versions with ErrNewerFormat.
const FormatVersion = 1

// Kind says what an object holds. The values are written to disk.
type Kind uint8

const (
	// KindBlock is one block of a version's data.
	KindBlock Kind = 1
	// KindMeta is a metadata object (version manifests and the like).
	KindMeta Kind = 2
)

// Cipher identifies the AEAD sealing a payload. The values are written to disk.
type Cipher uint8

const (
	CipherNone              Cipher = 0
	CipherAES256GCM         Cipher = 1
	CipherXChaCha20Poly1305 Cipher = 2
)

func (c Cipher) String() string {
	switch c {
	case CipherNone:
		return "none"
	case CipherAES256GCM:
		return "aes-256-gcm"
	case CipherXChaCha20Poly1305:
		return "xchacha20-poly1305"
	}
	return fmt.Sprintf("cipher(%d)", uint8(c))
}

// KeyIDSize is the length of the key identifier in a header.
const KeyIDSize = 8

// MaxPlainSize bounds the plaintext an object may declare (64 MiB, the
// largest block size), so a corrupt header cannot make a reader allocate
// gigabytes.
const MaxPlainSize = 64 << 20

// Header is the decoded, self-describing start of every object.
type Header struct {
	Kind        Kind
	Compression block.Compression
	Cipher      Cipher
	EncVersion  uint16
	KeyID       [KeyIDSize]byte
	Nonce       []byte // 0, 12 or 24 bytes, as the cipher needs
	PlainSize   uint32 // length of the plaintext after decompression
}

// fixedHeaderSize is the header without its nonce:
// magic 4, format 1, kind 1, compression 1, cipher 1, enc version 2,
// key id 8, plain size 4, nonce length 1, header crc 4.
const fixedHeaderSize = 4 + 1 + 1 + 1 + 1 + 2 + KeyIDSize + 4 + 1 + 4

// Errors of Open and ParseHeader, one per check, in the order they run.
var (
	ErrTooShort     = errors.New("object too short for its header")
	ErrBadMagic     = errors.New("not a backy object (bad magic)")
	ErrNewerFormat  = errors.New("object format newer than this backy supports")
	ErrHeaderCRC    = errors.New("object header checksum mismatch")
	ErrBadHeader    = errors.New("object header has invalid fields")
	ErrAuth         = errors.New("object failed authentication (wrong key or tampered data)")
	ErrDecompress   = errors.New("object payload does not decompress")
	ErrSizeMismatch = errors.New("object payload has the wrong length")
	ErrNoKey        = errors.New("no key for the object's encryption version")
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// HeaderSize returns the encoded size of h.
func (h *Header) HeaderSize() int { return fixedHeaderSize + len(h.Nonce) }

// AppendHeader appends the encoded header to dst.
func (h *Header) AppendHeader(dst []byte) []byte {
	start := len(dst)
	dst = append(dst, Magic[:]...)
	dst = append(dst, FormatVersion, byte(h.Kind), byte(h.Compression), byte(h.Cipher))
	dst = binary.BigEndian.AppendUint16(dst, h.EncVersion)
	dst = append(dst, h.KeyID[:]...)
	dst = binary.BigEndian.AppendUint32(dst, h.PlainSize)
	dst = append(dst, byte(len(h.Nonce)))
	dst = append(dst, h.Nonce...)
	return binary.BigEndian.AppendUint32(dst, crc32.Checksum(dst[start:], crcTable))
}

// nonceSize returns the nonce length a cipher uses, or -1 for an unknown one.
func nonceSize(c Cipher) int {
	switch c {
	case CipherNone:
		return 0
	case CipherAES256GCM:
		return 12
	case CipherXChaCha20Poly1305:
		return 24
	}
	return -1
}

// ParseHeader decodes and validates the header at the start of obj. It
// returns the header and its encoded length. The checks run in order:
// length, magic, format version, checksum, field values.
func ParseHeader(obj []byte) (Header, int, error) {
	var h Header
	if len(obj) < fixedHeaderSize {
		return h, 0, fmt.Errorf("%w: %d bytes", ErrTooShort, len(obj))
	}
	if [4]byte(obj[:4]) != Magic {
		return h, 0, ErrBadMagic
	}
	if v := obj[4]; v != FormatVersion {
		if v > FormatVersion {
			return h, 0, fmt.Errorf("%w: format %d, this backy reads up to %d: upgrade backy", ErrNewerFormat, v, FormatVersion)
		}
		return h, 0, fmt.Errorf("%w: format version %d", ErrBadHeader, v)
	}
	nlen := int(obj[22])
	size := fixedHeaderSize + nlen
	if len(obj) < size {
		return h, 0, fmt.Errorf("%w: header declares %d bytes, object has %d", ErrTooShort, size, len(obj))
	}
	if got, want := crc32.Checksum(obj[:size-4], crcTable), binary.BigEndian.Uint32(obj[size-4:size]); got != want {
		return h, 0, ErrHeaderCRC
	}
	h.Kind = Kind(obj[5])
	h.Compression = block.Compression(obj[6])
	h.Cipher = Cipher(obj[7])
	h.EncVersion = binary.BigEndian.Uint16(obj[8:10])
	copy(h.KeyID[:], obj[10:18])
	h.PlainSize = binary.BigEndian.Uint32(obj[18:22])
	h.Nonce = obj[23 : 23+nlen]
	switch {
	case h.Kind != KindBlock && h.Kind != KindMeta:
		return h, 0, fmt.Errorf("%w: kind %d", ErrBadHeader, h.Kind)
	case h.Compression != block.CompressionNone && h.Compression != block.CompressionZstd:
		return h, 0, fmt.Errorf("%w: compression %d", ErrBadHeader, h.Compression)
	case nonceSize(h.Cipher) < 0:
		return h, 0, fmt.Errorf("%w: cipher %d", ErrBadHeader, h.Cipher)
	case nonceSize(h.Cipher) != nlen:
		return h, 0, fmt.Errorf("%w: %s with a %d-byte nonce", ErrBadHeader, h.Cipher, nlen)
	case (h.Cipher == CipherNone) != (h.EncVersion == 0):
		return h, 0, fmt.Errorf("%w: cipher %s at encryption version %d", ErrBadHeader, h.Cipher, h.EncVersion)
	case h.PlainSize > MaxPlainSize:
		return h, 0, fmt.Errorf("%w: plaintext size %d", ErrBadHeader, h.PlainSize)
	}
	return h, size, nil
}
