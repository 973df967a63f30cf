// Package manifest reads and writes backy's version metadata stream: a
// store's identity, its key registrations, and versions with their complete
// block maps and the records of the blocks they use, in one self-checking
// byte stream (docs/FORMAT.md, "Version metadata stream, format 1").
//
// The stream is what `backy export` writes and `backy import` reads, and the
// form of the per-version metadata objects in the data backend from which a
// lost metastore is rebuilt.
//
// The package is pure: it does no I/O beyond the io.Reader or io.Writer it
// is given. Both sides stream: memory is bounded by one frame (at most
// MaxFramePayload bytes) whatever the size of a version. The Reader parses
// untrusted input: it validates every frame, never panics and never
// allocates more than a frame's bounded size; the Writer applies the same
// rules and refuses to write a stream the Reader would refuse.
package manifest

import (
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/metastore/blockmap"
)

// FormatVersion is the stream format this code writes. Readers refuse newer
// formats with ErrNewerFormat.
const FormatVersion = 1

// Magic opens every stream; the format version byte follows it.
const Magic = "BKYM"

// Limits of format 1. Every one is checked by the Reader and the Writer.
const (
	// MaxFramePayload bounds the payload of any frame (1 MiB).
	MaxFramePayload = 1 << 20
	// MinBlockSize and MaxBlockSize bound the store's block size, which
	// must also be a multiple of MinBlockSize.
	MinBlockSize = 4096
	MaxBlockSize = 64 << 20
	// MaxWrittenBy bounds the length of StoreInfo.WrittenBy in bytes.
	MaxWrittenBy = 1024
	// MaxKeys bounds the number of key registrations (K frames).
	MaxKeys = 1024
	// MaxRegistration bounds the length of one key registration in bytes.
	MaxRegistration = 4096
	// MaxVersionSize is the largest version size (1 PiB).
	MaxVersionSize = 1 << 50
	// MaxVolume bounds the length of a volume name in bytes.
	MaxVolume = 255
	// MinStoredSize and MaxStoredSize bound a record's stored size: an
	// object header without nonce, up to the largest block plus room for
	// header, nonce and tag.
	MinStoredSize = 27
	MaxStoredSize = 64<<20 + 4096
	// RecordSize is the encoded length of one block record in a P frame.
	RecordSize = 28
)

// Frame kinds.
const (
	kindStore   = 'S'
	kindKey     = 'K'
	kindVersion = 'V'
	kindPage    = 'P'
	kindEnd     = 'E'
	kindTrailer = 'T'
)

// hdrRoom is the most bytes a frame header takes: the kind and a uvarint of
// at most MaxFramePayload (21 bits, 3 bytes).
const hdrRoom = 4

var (
	// ErrInvalid is wrapped by every error about the content of a stream:
	// damage, truncation, alteration or a broken rule.
	ErrInvalid = errors.New("invalid version metadata")
	// ErrNewerFormat: the stream was written by a newer backy.
	ErrNewerFormat = errors.New("version metadata format is newer than this backy supports")
)

// StoreInfo identifies the store a stream was written from.
type StoreInfo struct {
	StoreID   [16]byte
	BlockSize int64
	WrittenBy string // free text: the writing program and its version
}

// KeyReg is one key registration: the bytes the store keeps for an
// encryption version (opaque here; a JSON object).
type KeyReg struct {
	EncVersion   uint16
	Registration []byte
}

// storeJSON is the payload of the S frame.
type storeJSON struct {
	Format    int    `json:"format"`
	StoreID   string `json:"store_id"`
	BlockSize int64  `json:"block_size"`
	WrittenBy string `json:"written_by"`
}

func validBlockSize(bs int64) bool {
	return bs >= MinBlockSize && bs <= MaxBlockSize && bs%MinBlockSize == 0
}

// parseStore decodes and checks an S payload.
func parseStore(p []byte) (StoreInfo, error) {
	var s StoreInfo
	var j storeJSON
	if err := json.Unmarshal(p, &j); err != nil {
		return s, fmt.Errorf("undecodable store description: %s", clip(err.Error()))
	}
	if j.Format != FormatVersion {
		return s, fmt.Errorf("store description of format %d in a format %d stream", j.Format, FormatVersion)
	}
	if !lowerHex(j.StoreID, len(s.StoreID)) {
		return s, fmt.Errorf("malformed store id %q", clip(j.StoreID))
	}
	_, _ = hex.Decode(s.StoreID[:], []byte(j.StoreID))
	if !validBlockSize(j.BlockSize) {
		return s, fmt.Errorf("block size %d is not a multiple of %d between %d and %d", j.BlockSize, MinBlockSize, MinBlockSize, MaxBlockSize)
	}
	if len(j.WrittenBy) > MaxWrittenBy {
		return s, fmt.Errorf("written_by of %d bytes, the limit is %d", len(j.WrittenBy), MaxWrittenBy)
	}
	s.BlockSize = j.BlockSize
	s.WrittenBy = j.WrittenBy
	return s, nil
}

func lowerHex(s string, n int) bool {
	if len(s) != 2*n {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// keySet is the set of encryption versions registered in a stream.
type keySet [65536 / 64]uint64

func (k *keySet) add(v uint16)      { k[v/64] |= 1 << (v % 64) }
func (k *keySet) has(v uint16) bool { return k[v/64]&(1<<(v%64)) != 0 }

// parseKey decodes and checks a K payload; prev is the encryption version
// of the previous K frame (0 for none).
func parseKey(p []byte, prev uint16) (KeyReg, error) {
	if len(p) < 2 {
		return KeyReg{}, fmt.Errorf("key registration frame of %d bytes", len(p))
	}
	k := KeyReg{EncVersion: binary.BigEndian.Uint16(p), Registration: p[2:]}
	if err := checkKey(k, prev); err != nil {
		return KeyReg{}, err
	}
	return k, nil
}

func checkKey(k KeyReg, prev uint16) error {
	if k.EncVersion < 1 {
		return errors.New("key registration of encryption version 0")
	}
	if k.EncVersion <= prev {
		return fmt.Errorf("key registration of encryption version %d after version %d (must be strictly ascending)", k.EncVersion, prev)
	}
	r := k.Registration
	if len(r) < 1 || len(r) > MaxRegistration {
		return fmt.Errorf("key registration of encryption version %d has %d bytes, want 1 to %d", k.EncVersion, len(r), MaxRegistration)
	}
	if !json.Valid(r) || firstNonSpace(r) != '{' {
		return fmt.Errorf("key registration of encryption version %d is not a JSON object", k.EncVersion)
	}
	return nil
}

func firstNonSpace(p []byte) byte {
	for _, c := range p {
		switch c {
		case ' ', '\t', '\n', '\r':
		default:
			return c
		}
	}
	return 0
}

// parseVersion decodes and checks a V payload. Unknown fields are ignored
// (a newer writer may add some).
func parseVersion(p []byte, bs int64) (*metastore.Version, error) {
	var v metastore.Version
	if err := json.Unmarshal(p, &v); err != nil {
		return nil, fmt.Errorf("undecodable version: %s", clip(err.Error()))
	}
	if v.Labels == nil {
		v.Labels = map[string]string{}
	}
	if err := checkVersion(&v, bs); err != nil {
		return nil, err
	}
	return &v, nil
}

// checkVersion applies the rules of a V frame to a decoded version.
func checkVersion(v *metastore.Version, bs int64) error {
	if !metastore.ValidUID(v.UID) {
		return fmt.Errorf("malformed version uid %q", clip(v.UID))
	}
	if v.BlockSize != bs {
		return fmt.Errorf("version %s has block size %d, the store %d", v.UID, v.BlockSize, bs)
	}
	if v.Size < 0 || v.Size > MaxVersionSize {
		return fmt.Errorf("version %s has size %d, want 0 to %d", v.UID, v.Size, int64(MaxVersionSize))
	}
	if v.Status != metastore.StatusValid && v.Status != metastore.StatusInvalid {
		return fmt.Errorf("version %s has status %q: only valid and invalid versions are written", v.UID, clip(string(v.Status)))
	}
	if v.Removing {
		return fmt.Errorf("version %s is being removed", v.UID)
	}
	if v.Volume == "" || len(v.Volume) > MaxVolume {
		return fmt.Errorf("version %s has a volume name of %d bytes, want 1 to %d", v.UID, len(v.Volume), MaxVolume)
	}
	if v.BlocksDone != v.Blocks() {
		return fmt.Errorf("version %s has blocks_done %d, its size makes %d blocks", v.UID, v.BlocksDone, v.Blocks())
	}
	return nil
}

// verState follows the version whose pages are being written or read.
type verState struct {
	uid     string
	size    int64
	bs      int64
	nblocks int64
	pages   int64 // pages so far
	entries int64 // entries so far
}

func newVerState(v *metastore.Version) verState {
	return verState{uid: v.UID, size: v.Size, bs: v.BlockSize, nblocks: v.Blocks()}
}

// nextEntries is the number of entries the next page must hold (0: none
// may follow).
func (s *verState) nextEntries() int {
	return int(min(s.nblocks-s.entries, blockmap.PageEntries))
}

// blockSize is the plaintext size of the block at index idx.
func (s *verState) blockSize(idx int64) uint32 {
	if idx == s.nblocks-1 {
		return uint32(s.size - idx*s.bs)
	}
	return uint32(s.bs)
}

// checkRecord applies the rules of a record that do not depend on its place.
func checkRecord(r *block.Record, keys *keySet) error {
	if r.StoredSize < MinStoredSize || r.StoredSize > MaxStoredSize {
		return fmt.Errorf("block %s: stored size %d, want %d to %d", r.ID.Short(), r.StoredSize, MinStoredSize, MaxStoredSize)
	}
	if r.Compression != block.CompressionNone && r.Compression != block.CompressionZstd {
		return fmt.Errorf("block %s: unknown compression %d", r.ID.Short(), uint8(r.Compression))
	}
	if r.EncVersion >= 1 && !keys.has(r.EncVersion) {
		return fmt.Errorf("block %s: encryption version %d has no key registration in the stream", r.ID.Short(), r.EncVersion)
	}
	return nil
}

// checkSize applies the size rule to the record of the block at index idx.
func checkSize(r *block.Record, s *verState, idx int64) error {
	if want := s.blockSize(idx); r.Size != want {
		return fmt.Errorf("block %s at index %d: plaintext size %d, the block there has %d bytes", r.ID.Short(), idx, r.Size, want)
	}
	return nil
}

func appendRecord(b []byte, r *block.Record) []byte {
	b = append(b, r.Name[:]...)
	b = binary.BigEndian.AppendUint32(b, r.Size)
	b = binary.BigEndian.AppendUint32(b, r.StoredSize)
	b = binary.BigEndian.AppendUint16(b, r.EncVersion)
	var flags byte
	if r.Invalid {
		flags |= 1
	}
	return append(b, byte(r.Compression), flags)
}

// parseRecord decodes RecordSize bytes as the record of id.
func parseRecord(p []byte, id block.ID) (block.Record, error) {
	r := block.Record{ID: id}
	copy(r.Name[:], p[:block.NameSize])
	r.Size = binary.BigEndian.Uint32(p[16:])
	r.StoredSize = binary.BigEndian.Uint32(p[20:])
	r.EncVersion = binary.BigEndian.Uint16(p[24:])
	r.Compression = block.Compression(p[26])
	flags := p[27]
	if flags&^1 != 0 {
		return r, fmt.Errorf("block %s: unknown flags %#02x", id.Short(), flags)
	}
	r.Invalid = flags&1 != 0
	return r, nil
}

// uvarint decodes a minimally encoded uvarint from the start of p.
func uvarint(p []byte) (uint64, int, bool) {
	v, n := binary.Uvarint(p)
	if n <= 0 || n != uvarintLen(v) {
		return 0, 0, false
	}
	return v, n, true
}

func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

func kindName(k byte) string {
	switch k {
	case kindStore, kindKey, kindVersion, kindPage, kindEnd, kindTrailer:
		return string(rune(k))
	}
	return fmt.Sprintf("%#02x", k)
}

// clip shortens text from the stream for messages.
func clip(s string) string {
	const max = 80
	if len(s) <= max {
		return s
	}
	return s[:max] + "..."
}
