package backup_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/blockstore/backend"
	"github.com/backy/backy/blockstore/backend/faulty"
	"github.com/backy/backy/blockstore/backend/file"
	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/metastore/metastoretest"
	"github.com/backy/backy/versions/backup"
	"github.com/backy/backy/versions/hints"
	"github.com/backy/backy/versions/restore"
	"github.com/backy/backy/versions/source"
)

// env is one store: a metastore, a file backend wrapped in a fault
// injector, and a blockstore on top.
type env struct {
	t    testing.TB
	dir  string
	bs   int64
	db   *metastore.DB
	root string // the file backend's root
	fb   *faulty.Backend
	st   *blockstore.Store // writes through fb
	// clean writes to the same backend without faults.
	clean *blockstore.Store
}

func newEnv(t testing.TB, bs int64, o blockstore.Options) *env {
	t.Helper()
	dir := t.TempDir()
	db, err := metastore.Create(filepath.Join(dir, "backy.db"), bs, [16]byte{0xb, 0xa, 0xc}, metastore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return openEnv(t, dir, db, o)
}

// clone returns a copy of the store of e (which must be idle), which is
// much cheaper than making the same backups again.
func (e *env) clone(t testing.TB, o blockstore.Options) *env {
	t.Helper()
	dir := t.TempDir()
	if err := os.CopyFS(dir, os.DirFS(e.dir)); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(metastore.LockDir(filepath.Join(dir, "backy.db")))
	db, err := metastore.Open(filepath.Join(dir, "backy.db"), metastore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return openEnv(t, dir, db, o)
}

func openEnv(t testing.TB, dir string, db *metastore.DB, o blockstore.Options) *env {
	t.Helper()
	metastoretest.CheckOnCleanup(t, db)
	// As the CLI configures it: directory syncs wait for the engine's
	// flush before each commit.
	inner, err := file.NewWithOptions(filepath.Join(dir, "data"), file.Options{DeferDirSync: true})
	if err != nil {
		t.Fatal(err)
	}
	return envOn(t, dir, db, inner, inner.Root(), o)
}

// envOn is a store over the backend inner (root is the file backend's
// root, "" for another backend).
func envOn(t testing.TB, dir string, db *metastore.DB, inner backend.Backend, root string, o blockstore.Options) *env {
	t.Helper()
	bs := db.BlockSize()
	fb := faulty.New(inner)
	st, err := blockstore.New(fb, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	clean, err := blockstore.New(inner, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(clean.Close)
	return &env{t: t, dir: dir, bs: bs, db: db, root: root, fb: fb, st: st, clean: clean}
}

var imageSeq atomic.Int64

// writeImage writes data to a new file and returns its path.
func (e *env) writeImage(data []byte) string {
	e.t.Helper()
	path := filepath.Join(e.dir, fmt.Sprintf("image-%d.raw", imageSeq.Add(1)))
	if err := os.WriteFile(path, data, 0o600); err != nil {
		e.t.Fatal(err)
	}
	return path
}

// backup backs up the image at path.
func (e *env) backup(ctx context.Context, path string, o backup.Options) (*metastore.Version, error) {
	e.t.Helper()
	src, err := source.Open(path)
	if err != nil {
		e.t.Fatal(err)
	}
	defer src.Close()
	if o.Volume == "" && o.Resume == "" {
		o.Volume = "vol"
	}
	return backup.Run(ctx, e.st, e.db, src, o)
}

func (e *env) mustBackup(data []byte, o backup.Options) *metastore.Version {
	e.t.Helper()
	v, err := e.backup(context.Background(), e.writeImage(data), o)
	if err != nil {
		e.t.Fatalf("backup: %v", err)
	}
	if v.Status != metastore.StatusValid {
		e.t.Fatalf("backup returned a %s version", v.Status)
	}
	return v
}

// memTarget is an in-memory restore target that starts as garbage, like
// an existing disk overwritten with --force: every byte the restore does not
// write or zero shows.
type memTarget struct{ b []byte }

func newMemTarget(size int64) *memTarget {
	return &memTarget{b: bytes.Repeat([]byte{0xee}, int(size))}
}

// WriteAt is called concurrently for disjoint ranges.
func (m *memTarget) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(m.b)) {
		return 0, fmt.Errorf("write of %d bytes at %d beyond the %d-byte target", len(p), off, len(m.b))
	}
	return copy(m.b[off:], p), nil
}

func (m *memTarget) Zero(off, n int64, _ bool, zeros []byte) error {
	if len(zeros) == 0 || off < 0 || off+n > int64(len(m.b)) {
		return fmt.Errorf("bad Zero(%d, %d) with %d zeros", off, n, len(zeros))
	}
	clear(m.b[off : off+n])
	return nil
}

// restore restores version uid, read-locked as the CLI does, into memory.
func (e *env) restore(uid string, o restore.Options) ([]byte, *restore.Result, error) {
	e.t.Helper()
	lk, err := e.db.LockVersion(uid, metastore.Shared)
	if err != nil {
		e.t.Fatal(err)
	}
	defer lk.Unlock()
	v, err := e.db.Version(uid)
	if err != nil {
		e.t.Fatal(err)
	}
	tgt := newMemTarget(v.Size)
	res, err := restore.Run(context.Background(), e.st, e.db, v, tgt, o)
	if err != nil && !(o.Force && errorsIsBadBlocks(err)) {
		return nil, res, err
	}
	return tgt.b, res, err
}

// restoreFile restores version uid to a new file with restore.ToFile, as
// the CLI does. It returns the restored bytes (nil when the target was
// aborted, which must leave no file behind).
func (e *env) restoreFile(uid string, o restore.Options) ([]byte, *restore.Result, error) {
	e.t.Helper()
	path := filepath.Join(e.dir, fmt.Sprintf("restored-%d.raw", imageSeq.Add(1)))
	res, err := restore.ToFile(context.Background(), e.st, e.db, uid, path, o)
	if err != nil && !(o.Force && errorsIsBadBlocks(err)) {
		if _, serr := os.Stat(path); !os.IsNotExist(serr) {
			e.t.Errorf("aborted restore left %s behind", path)
		}
		return nil, res, err
	}
	b, rerr := os.ReadFile(path)
	if rerr != nil {
		e.t.Fatal(rerr)
	}
	os.Remove(path)
	return b, res, err
}

// mustRestoreEqual restores uid and compares it with want.
func (e *env) mustRestoreEqual(uid string, want []byte) *restore.Result {
	e.t.Helper()
	return e.checkRestore(e.restore, uid, want, restore.Options{Sparse: true})
}

// mustRestoreFileEqual restores uid to a new file, with and without
// sparse, and compares it with want.
func (e *env) mustRestoreFileEqual(uid string, want []byte) {
	e.t.Helper()
	e.checkRestore(e.restoreFile, uid, want, restore.Options{Sparse: false})
	e.checkRestore(e.restoreFile, uid, want, restore.Options{Sparse: true})
}

func (e *env) checkRestore(run func(string, restore.Options) ([]byte, *restore.Result, error), uid string, want []byte, o restore.Options) *restore.Result {
	e.t.Helper()
	got, res, err := run(uid, o)
	if err != nil {
		e.t.Fatalf("restore %s (sparse %v): %v", uid, o.Sparse, err)
	}
	if d := firstDiff(got, want); d >= 0 {
		e.t.Fatalf("restore %s (sparse %v): %d bytes, want %d; first difference at byte %d (block %d)",
			uid, o.Sparse, len(got), len(want), d, int64(d)/e.bs)
	}
	if res.Size != int64(len(want)) || res.BytesWritten+res.BytesSparse != res.Size || len(res.BadBlocks) != 0 {
		e.t.Errorf("restore result %+v", res)
	}
	return res
}

// checkValidVersionsRestore restores every valid version and compares it
// with the image it was made from (images by uid).
func (e *env) checkValidVersionsRestore(images map[string][]byte) {
	e.t.Helper()
	vs, err := e.db.Versions(nil)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, v := range vs {
		if v.Status != metastore.StatusValid {
			continue
		}
		want, ok := images[v.UID]
		if !ok {
			e.t.Fatalf("valid version %s of no known image", v.UID)
		}
		e.mustRestoreEqual(v.UID, want)
	}
}

func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// gen makes deterministic test images.
type gen struct{ r *rand.Rand }

func newGen(seed uint64) *gen { return &gen{rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))} }

func (g *gen) random(n int64) []byte {
	p := make([]byte, n)
	for i := int64(0); i+8 <= n; i += 8 {
		v := g.r.Uint64()
		for k := range int64(8) {
			p[i+k] = byte(v >> (8 * k))
		}
	}
	for i := n &^ 7; i < n; i++ {
		p[i] = byte(g.r.Uint32())
	}
	return p
}

// blockStats is what a first backup of data into an empty store should
// report, computed independently of the engine.
type blockStats struct {
	distinct   int   // distinct non-zero blocks
	plain      int64 // their bytes
	sparse     int64 // bytes of all-zero blocks
	dedup      int64 // bytes of non-zero blocks seen before in the image
	pages      int
	numBlocks  int64
	distinctID map[block.ID]bool
}

func statsOf(data []byte, bs int64) blockStats {
	s := blockStats{distinctID: map[block.ID]bool{}}
	size := int64(len(data))
	for off := int64(0); off < size; off += bs {
		p := data[off:min(off+bs, size)]
		s.numBlocks++
		if block.IsZero(p) {
			s.sparse += int64(len(p))
			continue
		}
		id := block.Sum(p)
		if s.distinctID[id] {
			s.dedup += int64(len(p))
			continue
		}
		s.distinctID[id] = true
		s.distinct++
		s.plain += int64(len(p))
	}
	s.pages = int((s.numBlocks + 1023) / 1024)
	return s
}

func errorsIsBadBlocks(err error) bool { return errors.Is(err, restore.ErrBadBlocks) }

// isSparse reports whether the file at path has holes.
func isSparse(t testing.TB, path string) bool {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks*512 < st.Size
}

func mustUID(t testing.TB) string {
	t.Helper()
	uid, err := metastore.NewUID(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return uid
}

// noHints is an empty hints list: nothing changed since the base.
var noHints = []hints.Extent{}
