package cleanup_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
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
	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/metastore/metastoretest"
	"github.com/backy/backy/versions/backup"
	"github.com/backy/backy/versions/cleanup"
	"github.com/backy/backy/versions/restore"
	"github.com/backy/backy/versions/source"
)

const bs = 64 << 10

type env struct {
	t     *testing.T
	dir   string
	db    *metastore.DB
	inner *file.Backend
	fb    *faulty.Backend
	st    *blockstore.Store // through fb
	seq   atomic.Int64
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	db := metastoretest.Create(t, dir, bs)
	inner, err := file.NewWithOptions(filepath.Join(dir, "data"), file.Options{DeferDirSync: true})
	if err != nil {
		t.Fatal(err)
	}
	fb := faulty.New(inner)
	st, err := blockstore.New(fb, blockstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return &env{t: t, dir: dir, db: db, inner: inner, fb: fb, st: st}
}

func random(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x5bd1e995))
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(r.Uint32())
	}
	return p
}

func (e *env) backup(ctx context.Context, data []byte, o backup.Options) (*metastore.Version, error) {
	path := filepath.Join(e.dir, fmt.Sprintf("img-%d", e.seq.Add(1)))
	if err := os.WriteFile(path, data, 0o600); err != nil {
		e.t.Fatal(err)
	}
	defer os.Remove(path)
	src, err := source.Open(path)
	if err != nil {
		e.t.Fatal(err)
	}
	defer src.Close()
	if o.Volume == "" && o.Resume == "" {
		o.Volume = "vol"
	}
	o.Workers = 4
	return backup.Run(ctx, e.st, e.db, src, o)
}

func (e *env) mustBackup(data []byte) *metastore.Version {
	e.t.Helper()
	v, err := e.backup(context.Background(), data, backup.Options{})
	if err != nil {
		e.t.Fatalf("backup: %v", err)
	}
	return v
}

type memTarget struct{ b []byte }

func (m *memTarget) WriteAt(p []byte, off int64) (int, error) { return copy(m.b[off:], p), nil }
func (m *memTarget) Zero(off, n int64, _ bool, _ []byte) error {
	clear(m.b[off : off+n])
	return nil
}

func (e *env) mustRestoreEqual(uid string, want []byte) {
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
	tgt := &memTarget{b: bytes.Repeat([]byte{0xee}, int(v.Size))}
	if _, err := restore.Run(context.Background(), e.st, e.db, v, tgt, restore.Options{}); err != nil {
		e.t.Fatalf("restore %s: %v", uid, err)
	}
	if !bytes.Equal(tgt.b, want) {
		e.t.Fatalf("restore %s differs from the image", uid)
	}
}

// objects lists the block objects in the backend with their sizes.
func (e *env) objects() map[string]int64 {
	e.t.Helper()
	out := map[string]int64{}
	root := filepath.Join(e.inner.Root(), "blocks")
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(e.inner.Root(), p)
		out[filepath.ToSlash(rel)] = fi.Size()
		return nil
	})
	if err != nil && !os.IsNotExist(err) {
		e.t.Fatal(err)
	}
	return out
}

// records returns the block records of a version's map.
func (e *env) records(uid string) map[block.ID]block.Record {
	e.t.Helper()
	out := map[block.ID]block.Record{}
	err := e.db.WalkMap(uid, func(c metastore.MapChunk) error {
		for i, id := range c.IDs {
			if !id.IsSparse() && c.Found[i] {
				out[id] = c.Records[i]
			}
		}
		return nil
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

func (e *env) cleanup(o cleanup.Options) *cleanup.Result {
	e.t.Helper()
	res, err := cleanup.Run(context.Background(), e.inner, e.db, o)
	if err != nil {
		e.t.Fatalf("cleanup: %v", err)
	}
	return res
}

// TestCleanupAfterRemove: cleanup after rm frees exactly the removed
// version's exclusive blocks; every other version still restores.
func TestCleanupAfterRemove(t *testing.T) {
	e := newEnv(t)
	a := random(1, 20*bs)
	b := random(2, 20*bs)
	copy(b[:8*bs], a[:8*bs])                   // b shares 8 blocks with a
	c := append(random(3, 5*bs), b[15*bs:]...) // c shares b's last 5
	va, vb, vc := e.mustBackup(a), e.mustBackup(b), e.mustBackup(c)
	ra, rb, rc := e.records(va.UID), e.records(vb.UID), e.records(vc.UID)
	var wantBlocks, wantBytes int64
	for id, r := range rb {
		if _, ok := ra[id]; ok {
			continue
		}
		if _, ok := rc[id]; ok {
			continue
		}
		wantBlocks++
		wantBytes += int64(r.StoredSize)
	}
	if wantBlocks != 7 {
		t.Fatalf("test setup: %d exclusive blocks, want 7", wantBlocks)
	}
	if res := e.cleanup(cleanup.Options{}); res.BlocksDeleted != 0 || res.BytesFreed != 0 {
		t.Fatalf("cleanup with nothing removed: %+v", res)
	}
	before := e.objects()
	stBefore, _ := e.db.Stats()
	if err := e.db.RemoveVersion(vb.UID); err != nil {
		t.Fatal(err)
	}
	res := e.cleanup(cleanup.Options{Batch: 3})
	if res.BlocksDeleted != wantBlocks || res.BytesFreed != wantBytes {
		t.Fatalf("cleanup freed %d blocks, %d bytes; want %d, %d", res.BlocksDeleted, res.BytesFreed, wantBlocks, wantBytes)
	}
	after := e.objects()
	var gone int64
	for name, size := range before {
		if _, ok := after[name]; !ok {
			gone += size
		}
	}
	if int64(len(before)-len(after)) != wantBlocks || gone != wantBytes {
		t.Fatalf("backend lost %d objects, %d bytes; want %d, %d", len(before)-len(after), gone, wantBlocks, wantBytes)
	}
	stAfter, _ := e.db.Stats()
	if stAfter.StoredBytes != stBefore.StoredBytes-wantBytes || stAfter.Blocks != stBefore.Blocks-wantBlocks || stAfter.Unreferenced != 0 || stAfter.Trash != 0 {
		t.Fatalf("stats %+v, before %+v", stAfter, stBefore)
	}
	e.mustRestoreEqual(va.UID, a)
	e.mustRestoreEqual(vc.UID, c)
	if res := e.cleanup(cleanup.Options{}); res.BlocksDeleted != 0 {
		t.Fatalf("second cleanup deleted %d blocks", res.BlocksDeleted)
	}
	// Nothing is an orphan either.
	if res := e.cleanup(cleanup.Options{Orphans: true}); res.Orphans.Objects != 0 || res.Orphans.Listed != int64(len(after)) {
		t.Fatalf("orphan sweep of a clean store: %+v", res.Orphans)
	}
}

// TestCleanupTrash: objects left in the trash (a cleanup killed between its
// transaction and the deletes) are deleted by the next cleanup.
func TestCleanupTrash(t *testing.T) {
	e := newEnv(t)
	v := e.mustBackup(random(4, 6*bs))
	if err := e.db.RemoveVersion(v.UID); err != nil {
		t.Fatal(err)
	}
	c, err := e.db.CollectGarbage(block.Sparse, 100)
	if err != nil || len(c.Records) != 6 {
		t.Fatalf("collect: %d, %v", len(c.Records), err)
	}
	// "Killed" here: records gone, objects and trash entries remain.
	if n := len(e.objects()); n != 6 {
		t.Fatalf("%d objects", n)
	}
	res := e.cleanup(cleanup.Options{})
	if res.TrashDeleted != 6 || res.BlocksDeleted != 0 || len(e.objects()) != 0 {
		t.Fatalf("cleanup: %+v, %d objects left", res, len(e.objects()))
	}
	if st, _ := e.db.Stats(); st.Trash != 0 || st.Blocks != 0 || st.StoredBytes != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestCleanupConcurrentBackups: backups deduplicating against blocks that
// cleanups are removing at the same time still produce restorable
// versions, and the store stays consistent (Check at the end).
func TestCleanupConcurrentBackups(t *testing.T) {
	e := newEnv(t)
	rounds := 12
	if testing.Short() {
		rounds = 4
	}
	ctx := t.Context()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var cleanups atomic.Int64
	var freed atomic.Int64
	for range 2 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				res, err := cleanup.Run(ctx, e.inner, e.db, cleanup.Options{Batch: 2})
				if err != nil {
					t.Errorf("cleanup: %v", err)
					return
				}
				cleanups.Add(1)
				freed.Add(res.BlocksDeleted)
			}
		})
	}
	keep := map[string][]byte{}
	var logged bytes.Buffer
	var logMu sync.Mutex
	for r := range rounds {
		// An old version holding base's blocks goes; new backups reuse
		// most of them while the cleanups delete them.
		base := random(uint64(10+r), 16*bs)
		old := e.mustBackup(base)
		if r%2 == 0 {
			// Removed before the backups: they may find its blocks
			// already gone, or going.
			if err := e.db.RemoveVersion(old.UID); err != nil {
				t.Fatal(err)
			}
		}
		var mu sync.Mutex
		var bwg sync.WaitGroup
		var arrived atomic.Int64
		removed := make(chan struct{})
		for k := range 3 {
			img := bytes.Clone(base)
			copy(img[k*bs:], random(uint64(100*r+k), bs))
			o := backup.Options{CommitInterval: time.Millisecond, Logger: newLogger(&logged, &logMu)}
			if r%2 == 1 {
				// One commit at the end; once all three are halfway,
				// the version they deduplicated against goes, and the
				// cleanups delete its blocks before they commit.
				o.CommitInterval = time.Hour
				var once sync.Once
				o.Progress = func(p backup.Progress) {
					if p.Done < p.Total/2 {
						return
					}
					once.Do(func() {
						if arrived.Add(1) < 3 {
							<-removed
							return
						}
						defer close(removed)
						if err := e.db.RemoveVersion(old.UID); err != nil {
							t.Error(err)
						}
						for {
							st, err := e.db.Stats()
							if err != nil || st.Unreferenced == 0 {
								return
							}
							time.Sleep(time.Millisecond)
						}
					})
				}
			}
			bwg.Go(func() {
				v, err := e.backup(ctx, img, o)
				if err != nil {
					t.Errorf("backup: %v", err)
					return
				}
				mu.Lock()
				keep[v.UID] = img
				mu.Unlock()
			})
		}
		bwg.Wait()
		// Some kept versions go too, so that later rounds collect
		// their blocks as well.
		if r%3 == 2 {
			for uid := range keep {
				if err := e.db.RemoveVersion(uid); err != nil {
					t.Fatal(err)
				}
				delete(keep, uid)
				break
			}
		}
	}
	close(stop)
	wg.Wait()
	logMu.Lock()
	retries := strings.Count(logged.String(), "storing them again")
	logMu.Unlock()
	t.Logf("%d cleanups freed %d blocks; %d backup commits found deduplicated blocks removed", cleanups.Load(), freed.Load(), retries)
	if retries == 0 {
		t.Error("no backup commit met a block removed under it: the test lost its point")
	}
	for uid, img := range keep {
		e.mustRestoreEqual(uid, img)
	}
	e.cleanup(cleanup.Options{})
	// Every object left is recorded: nothing leaked, nothing missing.
	if res := e.cleanup(cleanup.Options{Orphans: true}); res.Orphans.Objects != 0 {
		t.Fatalf("%d orphans after concurrent backups and cleanups", res.Orphans.Objects)
	}
	st, _ := e.db.Stats()
	if n := int64(len(e.objects())); n != st.Blocks {
		t.Fatalf("%d objects in the backend, %d block records", n, st.Blocks)
	}
	for uid, img := range keep {
		e.mustRestoreEqual(uid, img)
	}
}

// TestOrphansAfterKilledBackup: a backup whose backend dies leaves stored,
// uncommitted objects; the orphan sweep removes exactly those (and stale
// temporary files), touches nothing referenced, and leaves foreign files.
func TestOrphansAfterKilledBackup(t *testing.T) {
	e := newEnv(t)
	a := random(20, 12*bs)
	va := e.mustBackup(a)
	b := append(bytes.Clone(a[:4*bs]), random(21, 30*bs)...)
	// A long commit interval: nothing of b is committed when it dies.
	e.fb.DieAfterPuts(10)
	vb, err := e.backup(t.Context(), b, backup.Options{CommitInterval: time.Hour})
	if !errors.Is(err, faulty.ErrDead) {
		t.Fatalf("backup on a dying backend = %v", err)
	}
	st, _ := e.db.Stats()
	objs := e.objects()
	orphans := int64(len(objs)) - st.Blocks
	if orphans < 10 {
		t.Fatalf("%d objects, %d records: want at least 10 orphans", len(objs), st.Blocks)
	}
	var orphanBytes int64
	recorded := map[string]bool{}
	for _, r := range e.records(va.UID) {
		recorded[blockstore.ObjectName(r.Name)] = true
	}
	for name, size := range objs {
		if !recorded[name] {
			orphanBytes += size
		}
	}
	// Debris of the file backend, and a file backy never writes.
	tmp := filepath.Join(e.inner.Root(), "blocks", "00", ".tmp-12345")
	foreign := filepath.Join(e.inner.Root(), "blocks", "ab", "not-a-block")
	for _, p := range []string{tmp, foreign} {
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	res := e.cleanup(cleanup.Options{Orphans: true, NamesPerPass: 3})
	o := res.Orphans
	if o.Objects != orphans || o.Bytes != orphanBytes || o.TempFiles != 1 || o.Foreign != 1 {
		t.Fatalf("orphan sweep: %+v; want %d objects, %d bytes, 1 temp file, 1 foreign", o, orphans, orphanBytes)
	}
	if o.Passes < 2 {
		t.Fatalf("%d passes with 3 names per pass", o.Passes)
	}
	if _, err := os.Stat(tmp); !os.IsNotExist(err) {
		t.Fatal("temporary file left")
	}
	if _, err := os.Stat(foreign); err != nil {
		t.Fatal("foreign file removed")
	}
	if n := int64(len(e.objects())) - 1; n != st.Blocks {
		t.Fatalf("%d objects left, %d records", n, st.Blocks)
	}
	// A working backend again (the faulty one stays dead).
	e.fb = faulty.New(e.inner)
	st2, err := blockstore.New(e.fb, blockstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st2.Close()
	e.st = st2
	e.mustRestoreEqual(va.UID, a)
	// The killed backup can still be resumed and restored.
	v, err := e.backup(t.Context(), b, backup.Options{Resume: vb.UID})
	if err != nil {
		t.Fatalf("resume: %v", err)
	}
	e.mustRestoreEqual(v.UID, b)
	if res := e.cleanup(cleanup.Options{Orphans: true}); res.Orphans.Objects != 0 {
		t.Fatalf("%d orphans after the resumed backup", res.Orphans.Objects)
	}
}

// TestOrphanSweepWaitsForWriters: the sweep waits for running backups (or
// fails at once with NoWait), and backups wait for a running sweep.
func TestOrphanSweepWaitsForWriters(t *testing.T) {
	e := newEnv(t)
	data := random(30, 8*bs)
	// Slow puts: the backup runs for a while.
	e.fb.AddFault(faulty.MethodPut).SleepFor(30 * time.Millisecond).Repeat(-1)
	started := make(chan struct{})
	var once sync.Once
	type out struct {
		v   *metastore.Version
		err error
	}
	bdone := make(chan out, 1)
	go func() {
		v, err := e.backup(context.Background(), data, backup.Options{
			CommitInterval: time.Millisecond,
			Progress:       func(backup.Progress) { once.Do(func() { close(started) }) },
		})
		bdone <- out{v, err}
	}()
	<-started
	if _, err := cleanup.Run(t.Context(), e.inner, e.db, cleanup.Options{Orphans: true, NoWait: true}); !errors.Is(err, metastore.ErrLocked) {
		t.Fatalf("sweep with --no-wait during a backup = %v, want ErrLocked", err)
	}
	sdone := make(chan *cleanup.Result, 1)
	go func() {
		res, err := cleanup.Run(context.Background(), e.inner, e.db, cleanup.Options{Orphans: true})
		if err != nil {
			t.Error(err)
		}
		sdone <- res
	}()
	// The backup releases the writers lock just before Run returns, so
	// the sweep may report first; but it must not finish while the backup
	// still runs (the backup is slow: 30 ms a block).
	var b out
	var res *cleanup.Result
	select {
	case res = <-sdone:
		select {
		case b = <-bdone:
		case <-time.After(100 * time.Millisecond):
			t.Fatalf("sweep finished while the backup ran: %+v", res.Orphans)
		}
	case b = <-bdone:
		res = <-sdone
	}
	if b.err != nil {
		t.Fatal(b.err)
	}
	if res.Orphans.Objects != 0 {
		t.Fatalf("sweep after the backup deleted %d objects", res.Orphans.Objects)
	}
	e.mustRestoreEqual(b.v.UID, data)

	// A backup waits while a sweep holds the lock.
	lk, err := e.db.LockWritersExclusive(false)
	if err != nil {
		t.Fatal(err)
	}
	var logged bytes.Buffer
	var logMu sync.Mutex
	go func() {
		v, err := e.backup(context.Background(), data, backup.Options{Logger: newLogger(&logged, &logMu)})
		bdone <- out{v, err}
	}()
	select {
	case b := <-bdone:
		t.Fatalf("backup ran during a sweep: %v", b.err)
	case <-time.After(200 * time.Millisecond):
	}
	lk.Unlock()
	if b := <-bdone; b.err != nil {
		t.Fatal(b.err)
	}
	logMu.Lock()
	defer logMu.Unlock()
	if !strings.Contains(logged.String(), "waiting for the writers lock") {
		t.Fatalf("backup did not say it waits: %q", logged.String())
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func newLogger(w *bytes.Buffer, mu *sync.Mutex) *slog.Logger {
	return slog.New(slog.NewTextHandler(lockedWriter{mu, w}, nil))
}
