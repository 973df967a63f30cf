package backup_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/blockstore/backend"
	"github.com/backy/backy/blockstore/backend/faulty"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/versions/backup"
)

// syncTracker wraps a backend and knows which objects a Sync has made
// durable: those whose Put returned before the Sync was called.
type syncTracker struct {
	backend.Backend
	mu       sync.Mutex
	put      map[string]bool
	durable  map[string]bool
	syncs    int
	failSync int // the syncs-th Sync (1-based) fails; 0: none
}

var _ backend.Syncer = (*syncTracker)(nil)

func newSyncTracker(inner backend.Backend) *syncTracker {
	return &syncTracker{Backend: inner, put: map[string]bool{}, durable: map[string]bool{}}
}

func (s *syncTracker) Unwrap() backend.Backend { return s.Backend }

func (s *syncTracker) Put(ctx context.Context, name string, data []byte) error {
	if err := s.Backend.Put(ctx, name, data); err != nil {
		return err
	}
	s.mu.Lock()
	s.put[name] = true
	s.mu.Unlock()
	return nil
}

func (s *syncTracker) Sync(ctx context.Context) error {
	s.mu.Lock()
	s.syncs++
	fail := s.syncs == s.failSync
	snapshot := make([]string, 0, len(s.put))
	for n := range s.put {
		snapshot = append(snapshot, n)
	}
	s.mu.Unlock()
	if fail {
		return errInjected
	}
	if err := backend.Sync(ctx, s.Backend); err != nil {
		return err
	}
	s.mu.Lock()
	for _, n := range snapshot {
		s.durable[n] = true
	}
	s.mu.Unlock()
	return nil
}

// checkRecordsDurable fails unless every block the metastore records for
// version uid was made durable by a Sync.
func checkRecordsDurable(t *testing.T, db *metastore.DB, uid string, tr *syncTracker) {
	t.Helper()
	tr.mu.Lock()
	defer tr.mu.Unlock()
	n := 0
	err := db.WalkMap(uid, func(c metastore.MapChunk) error {
		for k, rec := range c.Records {
			if c.IDs[k].IsSparse() || !c.Found[k] {
				continue
			}
			n++
			if name := blockstore.ObjectName(rec.Name); !tr.durable[name] {
				t.Errorf("block %d is recorded, but its object %s was not synced", c.First+int64(k), name)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Errorf("version %s records no blocks", uid)
	}
}

// TestFlushBeforeCommit: a killed backup leaves records only of objects
// that a backend Sync made durable, and a failing Sync fails the backup
// before it records anything.
func TestFlushBeforeCommit(t *testing.T) {
	const bs = 64 << 10
	cases := []struct {
		name     string
		failSync int
	}{
		{"killed", 0},
		{"first-sync-fails", 1},
		{"fifth-sync-fails", 5},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, bs, blockstore.Options{})
			tr := newSyncTracker(e.fb)
			tr.failSync = c.failSync
			st, err := blockstore.New(tr, blockstore.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			e.st = st
			e.fb.AddFault(faulty.MethodPut).SleepFor(2 * time.Millisecond).Repeat(-1)
			data := newGen(uint64(900 + i)).random(40 * bs)
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			o := backup.Options{CommitInterval: time.Millisecond, Workers: 3}
			if c.failSync == 0 {
				o.Progress = func(p backup.Progress) {
					if p.Done >= 20*bs {
						cancel()
					}
				}
			}
			v, err := e.backup(ctx, e.writeImage(data), o)
			want := errInjected
			if c.failSync == 0 {
				want = context.Canceled
			}
			if !errors.Is(err, want) {
				t.Fatalf("backup = %v, want %v", err, want)
			}
			inc := leftIncomplete(t, e, v)
			if inc == nil {
				t.Fatal("no incomplete version")
			}
			if c.failSync == 1 {
				if inc.BlocksDone != 0 {
					t.Errorf("%d blocks recorded although the first flush failed", inc.BlocksDone)
				}
			} else {
				checkRecordsDurable(t, e.db, inc.UID, tr)
			}
			checkIncomplete(t, e, inc, data)
			r, err := e.backup(t.Context(), e.writeImage(data), backup.Options{Resume: inc.UID})
			if err != nil {
				t.Fatal(err)
			}
			checkRecordsDurable(t, e.db, r.UID, tr)
			e.mustRestoreEqual(r.UID, data)
		})
	}
}

// TestConcurrentBackups: two backups of the same data at once store some
// blocks twice; the second copy is deleted after the commit that finds it
// redundant, so the backend ends up holding exactly the recorded objects.
func TestConcurrentBackups(t *testing.T) {
	const bs = 64 << 10
	e := newEnv(t, bs, blockstore.Options{})
	data := newGen(950).random(48 * bs)
	path := e.writeImage(data)
	// Slow puts, so the two runs overlap.
	e.fb.AddFault(faulty.MethodPut).SleepFor(time.Millisecond).Repeat(-1)
	var wg sync.WaitGroup
	vs := make([]*metastore.Version, 3)
	for k := range vs {
		wg.Go(func() {
			v, err := e.backup(t.Context(), path, backup.Options{Volume: "vol", CommitInterval: time.Millisecond, Workers: 3})
			if err != nil {
				t.Error(err)
			}
			vs[k] = v
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for _, v := range vs {
		e.mustRestoreEqual(v.UID, data)
	}
	st, err := e.db.Stats()
	if err != nil {
		t.Fatal(err)
	}
	objects := 0
	if err := e.fb.List(t.Context(), blockstore.BlockPrefix, func(backend.Info) error { objects++; return nil }); err != nil {
		t.Fatal(err)
	}
	if st.Blocks != 48 || int64(objects) != st.Blocks || st.Trash != 0 {
		t.Errorf("%d records, %d objects, %d in the trash; want 48, 48, 0 (puts: %d)", st.Blocks, objects, st.Trash, e.fb.Calls(faulty.MethodPut))
	}
	var written int64
	for _, v := range vs {
		written += v.BytesWritten
	}
	t.Logf("%d puts for 48 blocks; the versions count %d bytes written, the store holds %d", e.fb.Calls(faulty.MethodPut), written, st.StoredBytes)
}
