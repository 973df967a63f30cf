package cleanup_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/blockstore/backend"
	"github.com/backy/backy/versions/cleanup"
)

// batchBackend offers DeleteBatch (as S3 does) over another backend, in
// batches of at most 3, failing the names in fail.
type batchBackend struct {
	backend.Backend
	mu      sync.Mutex
	batches [][]string
	fail    map[string]bool
	whole   error // fails every batch
}

func (b *batchBackend) MaxDeleteBatch() int { return 3 }

// Delete (used for a single name) fails the names in fail too.
func (b *batchBackend) Delete(ctx context.Context, name string) error {
	b.mu.Lock()
	fail := b.fail[name]
	b.mu.Unlock()
	if fail {
		return errors.New("injected failure")
	}
	return b.Backend.Delete(ctx, name)
}

func (b *batchBackend) DeleteBatch(ctx context.Context, names []string) ([]error, error) {
	b.mu.Lock()
	b.batches = append(b.batches, names)
	fail, whole := b.fail, b.whole
	b.mu.Unlock()
	if len(names) > 3 {
		return nil, errors.New("batch too large")
	}
	if whole != nil {
		return nil, whole
	}
	errs := make([]error, len(names))
	for i, n := range names {
		if fail[n] {
			errs[i] = errors.New("injected per-key failure")
			continue
		}
		if err := b.Backend.Delete(ctx, n); err != nil && !errors.Is(err, backend.ErrNotFound) {
			errs[i] = err
		}
	}
	return errs, nil
}

// TestCleanupBatchDeletes: a backend with batch deletes gets every
// deletion in batches; a key that fails stays in the trash and the next
// cleanup deletes it; a batch that fails as a whole deletes nothing and
// forgets nothing.
func TestCleanupBatchDeletes(t *testing.T) {
	e := newEnv(t)
	a, b := random(11, 10*bs), random(12, 10*bs)
	va := e.mustBackup(a)
	vb := e.mustBackup(b)
	before := e.objects()
	if err := e.db.RemoveVersion(vb.UID); err != nil {
		t.Fatal(err)
	}
	bb := &batchBackend{Backend: e.inner, whole: errors.New("injected: request failed")}
	if _, err := cleanup.Run(t.Context(), bb, e.db, cleanup.Options{}); err == nil {
		t.Fatal("cleanup with failing batches succeeded")
	}
	if got := len(e.objects()); got != len(before) {
		t.Fatalf("a failed batch deleted objects: %d left of %d", got, len(before))
	}
	st, _ := e.db.Stats()
	if st.Trash != 10 {
		t.Fatalf("after failed batches the trash holds %d names, want the 10 blocks of b", st.Trash)
	}
	bb = &batchBackend{Backend: e.inner}
	res, err := cleanup.Run(t.Context(), bb, e.db, cleanup.Options{})
	if err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	if res.TrashDeleted != 10 {
		t.Errorf("cleanup deleted %d trashed objects, want 10 (%+v)", res.TrashDeleted, res)
	}
	if len(bb.batches) < 4 {
		t.Errorf("%d batches for 10 names in batches of 3", len(bb.batches))
	}
	st, _ = e.db.Stats()
	if st.Trash != 0 || len(e.objects()) != len(before)-10 {
		t.Errorf("after cleanup: trash %d, %d objects of %d", st.Trash, len(e.objects()), len(before))
	}

	// One key of a batch fails: it stays in the trash, the rest go, and
	// the next cleanup deletes it.
	c := random(13, 5*bs)
	vc := e.mustBackup(c)
	var victim string
	for _, r := range e.records(vc.UID) {
		victim = blockstore.ObjectName(r.Name)
		break
	}
	if err := e.db.RemoveVersion(vc.UID); err != nil {
		t.Fatal(err)
	}
	bb = &batchBackend{Backend: e.inner, fail: map[string]bool{victim: true}}
	res, err = cleanup.Run(t.Context(), bb, e.db, cleanup.Options{})
	if err == nil || res.BlocksDeleted != 5 {
		t.Errorf("cleanup with a failing key: %v, %+v; want an error after 5 blocks dropped", err, res)
	}
	if _, serr := e.inner.Stat(t.Context(), victim); serr != nil {
		t.Errorf("the failed key is gone: %v", serr)
	}
	st, _ = e.db.Stats()
	if st.Trash != 1 {
		t.Errorf("the trash holds %d names, want the failed one", st.Trash)
	}
	bb = &batchBackend{Backend: e.inner}
	if res, err = cleanup.Run(t.Context(), bb, e.db, cleanup.Options{}); err != nil || res.TrashDeleted != 1 {
		t.Errorf("the next cleanup: %v, %+v; want the failed key deleted", err, res)
	}
	if _, serr := e.inner.Stat(t.Context(), victim); !errors.Is(serr, backend.ErrNotFound) {
		t.Errorf("the failed key is still there after the next cleanup: %v", serr)
	}
	e.mustRestoreEqual(va.UID, a)
}
