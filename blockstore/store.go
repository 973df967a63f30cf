package blockstore

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/zeebo/blake3"

	"github.com/backy/backy/blockstore/backend"
	"github.com/backy/backy/blockstore/object"
	"github.com/backy/backy/internal/block"
)

// Errors of Get and Check.
var (
	// ErrCorrupt: the object exists but is damaged, tampered with, or does
	// not hold the block it should.
	ErrCorrupt = errors.New("stored block is corrupt")
	// ErrMissing: the object a record points to does not exist.
	ErrMissing = errors.New("stored block is missing")
)

// BlockPrefix is the prefix of every block object's name in the backend.
const BlockPrefix = "blocks/"

// ObjectName returns the backend name of a block object:
// "blocks/<first two hex digits>/<32 hex digits>". The two-digit shard keeps
// directories small on file systems and spreads keys on object stores.
func ObjectName(n block.Name) string {
	h := n.String()
	return BlockPrefix + h[:2] + "/" + h
}

// ParseObjectName is the inverse of ObjectName.
func ParseObjectName(s string) (block.Name, bool) {
	rest, ok := strings.CutPrefix(s, BlockPrefix)
	if !ok || len(rest) != 3+2*block.NameSize || rest[2] != '/' || rest[:2] != rest[3:5] {
		return block.Name{}, false
	}
	n, err := block.ParseName(rest[3:])
	// ParseName also accepts upper-case hex, which ObjectName never writes.
	return n, err == nil && ObjectName(n) == s
}

// Options configures a Store.
type Options struct {
	// Compression applied to new blocks when it saves space.
	Compression block.Compression
	// CompressionLevel is the zstd level (1 fastest .. 4 best); 0 = 1.
	CompressionLevel int
	// Key seals new blocks; nil writes them unencrypted (version 0).
	Key *object.Key
	// Keys opens existing blocks of every encryption version; may be nil
	// when the store holds no encrypted objects.
	Keys object.Keys
	// Rand supplies object names and nonces; crypto/rand when nil.
	Rand io.Reader
}

// Store reads and writes blocks through a backend. It is safe for
// concurrent use.
type Store struct {
	be   backend.Backend
	opts Options
	enc  *zstd.Encoder
	dec  *zstd.Decoder
	bufs sync.Pool // *[]byte object buffers
}

// New returns a Store writing through be.
func New(be backend.Backend, o Options) (*Store, error) {
	if o.Rand == nil {
		o.Rand = rand.Reader
	}
	s := &Store{be: be, opts: o}
	if o.Compression == block.CompressionZstd {
		// backy's levels 1..4 are the encoder's speed levels, fastest first.
		lvl := zstd.EncoderLevel(min(max(o.CompressionLevel, 1), 4))
		enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(lvl), zstd.WithEncoderConcurrency(0))
		if err != nil {
			return nil, fmt.Errorf("zstd encoder: %w", err)
		}
		s.enc = enc
	} else if o.Compression != block.CompressionNone {
		return nil, fmt.Errorf("unsupported compression %s", o.Compression)
	}
	dec, err := object.NewZstdDecoder()
	if err != nil {
		return nil, fmt.Errorf("zstd decoder: %w", err)
	}
	s.dec = dec
	return s, nil
}

// Backend returns the backend the store writes through.
func (s *Store) Backend() backend.Backend { return s.be }

// EncVersion is the encryption version new blocks are written at.
func (s *Store) EncVersion() uint16 {
	if s.opts.Key == nil {
		return 0
	}
	return s.opts.Key.EncVersion
}

// CanOpen reports whether the store can open objects of encryption
// version v: nil, or an error wrapping object.ErrNoKey that names the
// version.
func (s *Store) CanOpen(v uint16) error {
	if v == 0 {
		return nil
	}
	if s.opts.Keys == nil {
		return fmt.Errorf("%w: blocks of encryption version %d need its key, and no key is configured", object.ErrNoKey, v)
	}
	_, err := s.opts.Keys.Key(v)
	return err
}

func (s *Store) getBuf() *[]byte {
	if b, ok := s.bufs.Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, 0, 64<<10)
	return &b
}

// NewName draws a fresh random object name.
func (s *Store) NewName() (block.Name, error) {
	var n block.Name
	if _, err := io.ReadFull(s.opts.Rand, n[:]); err != nil {
		return n, fmt.Errorf("drawing object name: %w", err)
	}
	return n, nil
}

// Put seals plain (whose identity is id) into a new object and writes it.
// It returns the record once the object is durable.
func (s *Store) Put(ctx context.Context, id block.ID, plain []byte) (block.Record, error) {
	name, err := s.NewName()
	if err != nil {
		return block.Record{}, err
	}
	buf := s.getBuf()
	defer s.bufs.Put(buf)
	obj, err := s.seal(buf, plain, id, object.KindBlock)
	if err != nil {
		return block.Record{}, fmt.Errorf("sealing block %s: %w", id.Short(), err)
	}
	*buf = obj
	if err := s.be.Put(ctx, ObjectName(name), obj); err != nil {
		return block.Record{}, fmt.Errorf("storing block %s: %w", id.Short(), err)
	}
	h, _, err := object.ParseHeader(obj)
	if err != nil { // cannot happen: we just wrote it
		return block.Record{}, fmt.Errorf("sealed block %s: %w", id.Short(), err)
	}
	return block.Record{
		ID:          id,
		Name:        name,
		Size:        uint32(len(plain)),
		StoredSize:  uint32(len(obj)),
		EncVersion:  h.EncVersion,
		Compression: h.Compression,
	}, nil
}

// seal seals plain (authenticated as id) as an object of kind into *buf:
// compressed when that helps, encrypted at the write encryption version.
func (s *Store) seal(buf *[]byte, plain []byte, id block.ID, kind object.Kind) ([]byte, error) {
	scratch := s.getBuf()
	defer s.bufs.Put(scratch)
	o := object.SealOptions{Kind: kind, Key: s.opts.Key, Rand: s.opts.Rand, Scratch: scratch}
	if s.enc != nil {
		o.Compressor = s.enc
	}
	return object.Seal((*buf)[:0], plain, id, o)
}

// Get reads the block rec describes into buf[:0] and returns it, verified:
// the object must open (header, authentication, decompression) and its
// plaintext must hash to rec.ID with rec.Size bytes.
func (s *Store) Get(ctx context.Context, rec block.Record, buf []byte) ([]byte, error) {
	raw := s.getBuf()
	defer s.bufs.Put(raw)
	obj, err := s.be.Get(ctx, ObjectName(rec.Name), (*raw)[:0])
	if err != nil {
		if errors.Is(err, backend.ErrNotFound) {
			return nil, fmt.Errorf("%w: block %s (object %s): %w", ErrMissing, rec.ID.Short(), rec.Name, err)
		}
		return nil, fmt.Errorf("reading block %s: %w", rec.ID.Short(), err)
	}
	*raw = obj
	// raw is this call's own buffer: decrypt within it.
	plain, h, err := object.OpenInPlace(buf[:0], obj, rec.ID, s.opts.Keys, s.dec)
	if err == nil && h.EncVersion != rec.EncVersion || errors.Is(err, object.ErrNoKey) && h.EncVersion != rec.EncVersion {
		// The record says which version the object was sealed at; a
		// header that disagrees is damage (or tampering), not a key the
		// operator forgot to configure.
		return nil, fmt.Errorf("%w: block %s (object %s): the object's header names encryption version %d, its record %d",
			ErrCorrupt, rec.ID.Short(), rec.Name, h.EncVersion, rec.EncVersion)
	}
	if err != nil {
		if errors.Is(err, object.ErrNoKey) || errors.Is(err, object.ErrNewerFormat) {
			return nil, fmt.Errorf("block %s: %w", rec.ID.Short(), err)
		}
		return nil, fmt.Errorf("%w: block %s (object %s): %w", ErrCorrupt, rec.ID.Short(), rec.Name, err)
	}
	if h.Kind != object.KindBlock {
		return nil, fmt.Errorf("%w: block %s (object %s) holds a %d object", ErrCorrupt, rec.ID.Short(), rec.Name, h.Kind)
	}
	if uint32(len(plain)) != rec.Size {
		return nil, fmt.Errorf("%w: block %s (object %s) has %d bytes, want %d", ErrCorrupt, rec.ID.Short(), rec.Name, len(plain), rec.Size)
	}
	if block.Sum(plain) != rec.ID {
		return nil, fmt.Errorf("%w: block %s (object %s): BLAKE3 mismatch", ErrCorrupt, rec.ID.Short(), rec.Name)
	}
	return plain, nil
}

// Check verifies without reading data that the object exists with the
// stored size the record expects.
func (s *Store) Check(ctx context.Context, rec block.Record) error {
	info, err := s.be.Stat(ctx, ObjectName(rec.Name))
	if err != nil {
		if errors.Is(err, backend.ErrNotFound) {
			return fmt.Errorf("%w: block %s (object %s)", ErrMissing, rec.ID.Short(), rec.Name)
		}
		return fmt.Errorf("checking block %s: %w", rec.ID.Short(), err)
	}
	if info.Size != int64(rec.StoredSize) {
		return fmt.Errorf("%w: block %s (object %s) is %d bytes, want %d", ErrCorrupt, rec.ID.Short(), rec.Name, info.Size, rec.StoredSize)
	}
	return nil
}

// Delete removes the object called name.
func (s *Store) Delete(ctx context.Context, name block.Name) error {
	if err := s.be.Delete(ctx, ObjectName(name)); err != nil {
		return fmt.Errorf("deleting object %s: %w", name, err)
	}
	return nil
}

// Close releases the store's resources (not the backend's).
func (s *Store) Close() {
	if s.enc != nil {
		_ = s.enc.Close()
	}
	s.dec.Close()
}

// metaIdentity is what a metadata object is authenticated as (the AEAD's
// additional data, in place of a block's identity): its own name, so that
// an object renamed or swapped for another in the backend does not open.
func metaIdentity(name string) block.ID {
	var id block.ID
	blake3.DeriveKey("backy 2026-11 metadata object", []byte(name), id[:])
	return id
}

// PutMeta seals plain as a metadata object (kind 2: compressed when that
// helps, encrypted at the store's write encryption version) and writes it
// under name, which must lie outside blocks/.
func (s *Store) PutMeta(ctx context.Context, name string, plain []byte) error {
	if strings.HasPrefix(name, BlockPrefix) {
		return fmt.Errorf("metadata object %s: %w", name, backend.ErrBadName)
	}
	buf := s.getBuf()
	defer s.bufs.Put(buf)
	obj, err := s.seal(buf, plain, metaIdentity(name), object.KindMeta)
	if err != nil {
		return fmt.Errorf("sealing metadata object %s: %w", name, err)
	}
	*buf = obj
	if err := s.be.Put(ctx, name, obj); err != nil {
		return fmt.Errorf("storing metadata object %s: %w", name, err)
	}
	return nil
}

// GetMeta reads the metadata object called name into buf[:0] and returns
// its plaintext, authenticated when it is encrypted. A missing object
// wraps ErrMissing, a damaged one ErrCorrupt; a missing or wrong key
// wraps object.ErrNoKey as for blocks.
func (s *Store) GetMeta(ctx context.Context, name string, buf []byte) ([]byte, error) {
	raw := s.getBuf()
	defer s.bufs.Put(raw)
	obj, err := s.be.Get(ctx, name, (*raw)[:0])
	if err != nil {
		if errors.Is(err, backend.ErrNotFound) {
			return nil, fmt.Errorf("%w: metadata object %s: %w", ErrMissing, name, err)
		}
		return nil, fmt.Errorf("reading metadata object %s: %w", name, err)
	}
	*raw = obj
	plain, h, err := object.OpenInPlace(buf[:0], obj, metaIdentity(name), s.opts.Keys, s.dec)
	if err != nil {
		if errors.Is(err, object.ErrNoKey) || errors.Is(err, object.ErrNewerFormat) {
			return nil, fmt.Errorf("metadata object %s: %w", name, err)
		}
		return nil, fmt.Errorf("%w: metadata object %s: %w", ErrCorrupt, name, err)
	}
	if h.Kind != object.KindMeta {
		return nil, fmt.Errorf("%w: metadata object %s holds a kind %d object", ErrCorrupt, name, h.Kind)
	}
	return plain, nil
}
