package replicate_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/blockstore/backend/faulty"
	"github.com/backy/backy/blockstore/backend/file"
	"github.com/backy/backy/blockstore/object"
	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/metastore/metastoretest"
	"github.com/backy/backy/versions/backup"
	"github.com/backy/backy/versions/replicate"
	"github.com/backy/backy/versions/restore"
	"github.com/backy/backy/versions/source"
)

// bs is the block size of the test stores: small, so that images of a few
// MiB have dozens of blocks and the suite stays fast under -race.
const bs = 64 << 10

// keyring is the object.Keys of a test store.
type keyring map[uint16]*object.Key

func (k keyring) Key(v uint16) (*object.Key, error) {
	if key := k[v]; key != nil {
		return key, nil
	}
	return nil, fmt.Errorf("%w: the key of encryption version %d is not configured", object.ErrNoKey, v)
}

// enc says how a test store seals new blocks: version 0 = unencrypted.
type enc struct {
	version uint16
	cipher  object.Cipher
}

var (
	plain   = enc{}
	aes1    = enc{1, object.CipherAES256GCM}
	chacha3 = enc{3, object.CipherXChaCha20Poly1305}
	chacha1 = enc{1, object.CipherXChaCha20Poly1305}
)

// store is one test store: a metastore (checked for consistency when the
// test ends), a file backend deferring directory syncs as the CLI
// configures it, a fault injector on it, and a blockstore on top.
type store struct {
	t     *testing.T
	dir   string
	db    *metastore.DB
	inner *file.Backend
	fb    *faulty.Backend
	st    *blockstore.Store // through fb
	key   *object.Key       // seals new blocks; nil = unencrypted
	keys  keyring
	comp  block.Compression
}

func newStore(t *testing.T, blockSize int64, e enc, comp block.Compression) *store {
	t.Helper()
	dir := t.TempDir()
	var sid [16]byte
	_, _ = rand.Read(sid[:])
	db, err := metastore.Create(filepath.Join(dir, "backy.db"), blockSize, sid, metastore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	metastoretest.CheckOnCleanup(t, db)
	inner, err := file.NewWithOptions(filepath.Join(dir, "data"), file.Options{DeferDirSync: true})
	if err != nil {
		t.Fatal(err)
	}
	s := &store{t: t, dir: dir, db: db, inner: inner, keys: keyring{}, comp: comp}
	if e.version > 0 {
		s.key = s.newKey(e.version, e.cipher)
	}
	s.reopen()
	return s
}

// newKey makes a random key of encryption version v and registers the
// version in the metastore, as the CLI does before writing at it.
func (s *store) newKey(v uint16, c object.Cipher) *object.Key {
	s.t.Helper()
	material := make([]byte, 32)
	_, _ = rand.Read(material)
	k, err := object.NewKey(v, c, material)
	if err != nil {
		s.t.Fatal(err)
	}
	reg := fmt.Appendf(nil, `{"format":1,"encryption_version":%d,"cipher":%q,"key_id":"%x"}`, v, c, k.ID)
	if _, err := s.db.RegisterEncVersion(v, reg); err != nil {
		s.t.Fatal(err)
	}
	s.keys[v] = k
	return k
}

// reopen makes a fresh fault injector and blockstore.
func (s *store) reopen() {
	s.t.Helper()
	s.fb = faulty.New(s.inner)
	st, err := blockstore.New(s.fb, blockstore.Options{Compression: s.comp, Key: s.key, Keys: s.keys})
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(st.Close)
	s.st = st
}

var imageSeq atomic.Int64

// backup backs data up as a new version of volume.
func (s *store) backup(data []byte, volume string, o backup.Options) *metastore.Version {
	s.t.Helper()
	path := filepath.Join(s.dir, fmt.Sprintf("image-%d.raw", imageSeq.Add(1)))
	if err := os.WriteFile(path, data, 0o600); err != nil {
		s.t.Fatal(err)
	}
	src, err := source.Open(path)
	if err != nil {
		s.t.Fatal(err)
	}
	defer src.Close()
	o.Volume = volume
	v, err := backup.Run(context.Background(), s.st, s.db, src, o)
	if err != nil {
		s.t.Fatalf("backup: %v", err)
	}
	return v
}

// version returns a version, which must exist.
func (s *store) version(uid string) *metastore.Version {
	s.t.Helper()
	v, err := s.db.Version(uid)
	if err != nil {
		s.t.Fatal(err)
	}
	return v
}

// memTarget is an in-memory restore target that starts as garbage.
type memTarget struct{ b []byte }

func (m *memTarget) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(m.b)) {
		return 0, fmt.Errorf("write of %d bytes at %d beyond the %d-byte target", len(p), off, len(m.b))
	}
	return copy(m.b[off:], p), nil
}

func (m *memTarget) Zero(off, n int64, _ bool, _ []byte) error {
	clear(m.b[off : off+n])
	return nil
}

// mustRestore restores uid, read-locked as the CLI does, and compares it
// with want. The store reads with its own keys only.
func (s *store) mustRestore(uid string, want []byte) {
	s.t.Helper()
	lk, err := s.db.LockVersion(uid, metastore.Shared)
	if err != nil {
		s.t.Fatal(err)
	}
	defer lk.Unlock()
	v := s.version(uid)
	tgt := &memTarget{b: bytes.Repeat([]byte{0xee}, int(v.Size))}
	if _, err := restore.Run(context.Background(), s.st, s.db, v, tgt, restore.Options{Sparse: true}); err != nil {
		s.t.Fatalf("restore %s: %v", uid, err)
	}
	if !bytes.Equal(tgt.b, want) {
		s.t.Fatalf("restore %s: the restored %d bytes differ from the %d of the image", uid, len(tgt.b), len(want))
	}
}

// objects returns the header of every block object in the data directory.
func (s *store) objects() []object.Header {
	s.t.Helper()
	var out []object.Header
	root := filepath.Join(s.inner.Root(), "blocks")
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && p == root {
				return fs.SkipAll
			}
			return err
		}
		if !d.Type().IsRegular() || strings.HasPrefix(d.Name(), ".") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		h, _, err := object.ParseHeader(b)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		out = append(out, h)
		return nil
	})
	if err != nil {
		s.t.Fatal(err)
	}
	return out
}

// objectBytes sums the sizes of the block objects.
func (s *store) objectBytes() int64 {
	s.t.Helper()
	var n int64
	root := filepath.Join(s.inner.Root(), "blocks")
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() && !strings.HasPrefix(d.Name(), ".") {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}

// records returns the number of block records.
func (s *store) records() int64 {
	s.t.Helper()
	st, err := s.db.Stats()
	if err != nil {
		s.t.Fatal(err)
	}
	return st.Blocks
}

// copyOpts are the options most tests copy with: few workers, a commit
// after every block, so that interruptions leave committed prefixes.
func copyOpts(o replicate.Options) replicate.Options {
	if o.Workers == 0 {
		o.Workers = 3
	}
	if o.CommitInterval == 0 {
		o.CommitInterval = time.Nanosecond
	}
	return o
}

// runCopy copies from src to dst.
func runCopy(ctx context.Context, src, dst *store, o replicate.Options) (*replicate.Report, error) {
	return replicate.Run(ctx, replicate.Source{DB: src.db, Blocks: src.st}, replicate.Target{DB: dst.db, Blocks: dst.st}, copyOpts(o))
}

// mustCopy copies and requires success.
func mustCopy(t *testing.T, src, dst *store, o replicate.Options) *replicate.Report {
	t.Helper()
	rep, err := runCopy(context.Background(), src, dst, o)
	if err != nil {
		t.Fatalf("copy: %v", err)
	}
	return rep
}

// one returns the only version result of a report.
func one(t *testing.T, rep *replicate.Report) replicate.Result {
	t.Helper()
	if rep == nil || len(rep.Versions) != 1 {
		t.Fatalf("report %+v: want exactly one version", rep)
	}
	return rep.Versions[0]
}

// image describes a test image built block by block.
type image struct {
	data     []byte
	distinct map[block.ID]bool // distinct non-zero blocks
	sparse   int64             // all-zero blocks
	dups     int64             // non-zero blocks seen earlier in the image
}

// makeImage builds an image of nBlocks blocks (the last one short by
// short bytes): random blocks, every 7th (from 3) zero, every 5th (from 4)
// a repeat of an earlier block.
func makeImage(nBlocks int, short int, seed uint64) *image {
	rng := mrand.New(mrand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	data := make([]byte, 0, nBlocks*bs)
	for i := range nBlocks {
		switch {
		case i%7 == 3:
			data = append(data, make([]byte, bs)...)
		case i%5 == 4 && i > 0:
			j := rng.IntN(i)
			for j%7 == 3 {
				j = rng.IntN(i)
			}
			data = append(data, data[j*bs:(j+1)*bs]...)
		default:
			b := make([]byte, bs)
			for k := 0; k < bs; k += 8 {
				v := rng.Uint64()
				for m := range 8 {
					b[k+m] = byte(v >> (8 * m))
				}
			}
			data = append(data, b...)
		}
	}
	return analyse(data[:len(data)-short])
}

func analyse(data []byte) *image {
	img := &image{data: data, distinct: map[block.ID]bool{}}
	for off := 0; off < len(data); off += bs {
		p := data[off:min(off+bs, len(data))]
		if block.IsZero(p) {
			img.sparse++
			continue
		}
		id := block.Sum(p)
		if img.distinct[id] {
			img.dups++
			continue
		}
		img.distinct[id] = true
	}
	return img
}

// change returns a copy of img with the given blocks replaced by new
// random data.
func (img *image) change(seed uint64, blocks ...int) *image {
	data := bytes.Clone(img.data)
	rng := mrand.New(mrand.NewPCG(seed, 77))
	for _, i := range blocks {
		for k := i * bs; k < min((i+1)*bs, len(data)); k++ {
			data[k] = byte(rng.Uint32())
		}
	}
	return analyse(data)
}

// hookWriter wraps the target's block store and calls hooks before its
// Put and Flush.
type hookWriter struct {
	replicate.Writer
	mu      sync.Mutex
	puts    int
	flushes int
	onPut   func(n int) error // n: 1 for the first Put
	onFlush func(n int) error
	// unflushed holds the objects stored since the last Flush began;
	// durable counts those a Flush made durable.
	unflushed map[block.Name]bool
	durable   int
}

func (h *hookWriter) Put(ctx context.Context, id block.ID, plain []byte) (block.Record, error) {
	h.mu.Lock()
	h.puts++
	n := h.puts
	h.mu.Unlock()
	if h.onPut != nil {
		if err := h.onPut(n); err != nil {
			return block.Record{}, err
		}
	}
	rec, err := h.Writer.Put(ctx, id, plain)
	if err == nil {
		h.mu.Lock()
		if h.unflushed == nil {
			h.unflushed = map[block.Name]bool{}
		}
		h.unflushed[rec.Name] = true
		h.mu.Unlock()
	}
	return rec, err
}

func (h *hookWriter) Flush(ctx context.Context) error {
	h.mu.Lock()
	h.flushes++
	n := h.flushes
	h.mu.Unlock()
	h.mu.Lock()
	pending := h.unflushed
	h.unflushed = nil
	h.mu.Unlock()
	if err := h.Writer.Flush(ctx); err != nil {
		return err
	}
	h.mu.Lock()
	h.durable += len(pending)
	h.mu.Unlock()
	if h.onFlush != nil {
		return h.onFlush(n)
	}
	return nil
}

// restoreBytes restores uid from s into memory.
func (s *store) restoreBytes(uid string) []byte {
	s.t.Helper()
	lk, err := s.db.LockVersion(uid, metastore.Shared)
	if err != nil {
		s.t.Fatal(err)
	}
	defer lk.Unlock()
	v := s.version(uid)
	tgt := &memTarget{b: make([]byte, v.Size)}
	if _, err := restore.Run(context.Background(), s.st, s.db, v, tgt, restore.Options{}); err != nil {
		s.t.Fatal(err)
	}
	return tgt.b
}
