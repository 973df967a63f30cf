package backend_test

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/backy/backy/blockstore/backend"
	"github.com/backy/backy/blockstore/backend/faulty"
	"github.com/backy/backy/blockstore/backend/file"
)

// wrapper passes every call to the backend it wraps and offers no
// capability of its own.
type wrapper struct{ backend.Backend }

func (w wrapper) Unwrap() backend.Backend { return w.Backend }

// batcher is a backend with batch deletes (the file backend has none).
type batcher struct {
	backend.Backend
	batches int
}

func (b *batcher) MaxDeleteBatch() int { return 10 }
func (b *batcher) DeleteBatch(ctx context.Context, names []string) ([]error, error) {
	b.batches++
	errs := make([]error, len(names))
	for i, n := range names {
		if err := b.Delete(ctx, n); err != nil && !errors.Is(err, backend.ErrNotFound) {
			errs[i] = err
		}
	}
	return errs, nil
}

// hider hides what its hide says.
type hider struct {
	wrapper
	hide func(any) bool
}

func (h hider) Hides(c any) bool { return h.hide(c) }

func newFile(t *testing.T) *file.Backend {
	t.Helper()
	fb, err := file.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return fb
}

// TestAs: a capability is found on the backend itself or down the Unwrap
// chain, not past a wrapper that hides it, and not where nobody has it.
func TestAs(t *testing.T) {
	fb := newFile(t)
	bd := &batcher{Backend: fb}
	hideBatch := func(c any) bool { _, ok := c.(*backend.BatchDeleter); return ok }
	offers := &batcher{Backend: hider{wrapper{fb}, hideBatch}}

	for _, tc := range []struct {
		name    string
		be      backend.Backend
		batch   backend.BatchDeleter // want; nil: not found
		cleaner bool
		syncer  bool
	}{
		{name: "itself", be: bd, batch: bd},
		{name: "file itself", be: fb, cleaner: true, syncer: true},
		{name: "through wrappers", be: wrapper{wrapper{bd}}, batch: bd},
		{name: "file through wrappers", be: wrapper{wrapper{fb}}, cleaner: true, syncer: true},
		{name: "hidden", be: wrapper{hider{wrapper{bd}, hideBatch}}},
		{name: "hidden below the hider only", be: hider{wrapper{fb}, hideBatch}, cleaner: true, syncer: true},
		{name: "a wrapper that offers it above a hider", be: offers, batch: offers},
		{name: "fault injector hides batches", be: faulty.New(bd)},
		{name: "fault injector passes cleanup and sync", be: faulty.New(fb), cleaner: true, syncer: true},
		{name: "no unwrap", be: struct{ backend.Backend }{fb}},
		{name: "nil", be: nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := backend.As[backend.BatchDeleter](tc.be)
			if ok != (tc.batch != nil) || (ok && got != tc.batch) {
				t.Errorf("As[BatchDeleter] = %T, %v; want %T", got, ok, tc.batch)
			}
			if _, ok := backend.As[backend.TempCleaner](tc.be); ok != tc.cleaner {
				t.Errorf("As[TempCleaner] found %v, want %v", ok, tc.cleaner)
			}
			if _, ok := backend.As[backend.Syncer](tc.be); ok != tc.syncer {
				t.Errorf("As[Syncer] found %v, want %v", ok, tc.syncer)
			}
		})
	}
}

// TestFaultyHidesBatchDelete: a batch deleter below the fault injector is
// not used; the caller falls back to Delete, which the injector sees and
// can fail.
func TestFaultyHidesBatchDelete(t *testing.T) {
	bd := &batcher{Backend: newFile(t)}
	fb := faulty.New(bd)
	ctx := t.Context()
	if err := fb.Put(ctx, "x", []byte("x")); err != nil {
		t.Fatal(err)
	}
	fb.AddFault(faulty.MethodDelete).ErrorInstead(errors.New("injected"))
	// What cleanup does.
	if d, ok := backend.As[backend.BatchDeleter](fb); ok {
		_, _ = d.DeleteBatch(ctx, []string{"x"})
	} else if err := fb.Delete(ctx, "x"); err == nil {
		t.Error("the injected Delete fault did not fire")
	}
	if bd.batches != 0 || fb.Calls(faulty.MethodDelete) != 1 {
		t.Errorf("%d batches went around the fault injector, %d Deletes through it; want 0 and 1", bd.batches, fb.Calls(faulty.MethodDelete))
	}
	fb.VerifyAllFaultsFired(t)
}

// syncer counts Syncs.
type syncer struct {
	backend.Backend
	n int
}

func (s *syncer) Sync(context.Context) error { s.n++; return nil }

// TestSyncThroughWrappers: Sync reaches the Syncer below wrappers and the
// fault injector, and is a no-op without one.
func TestSyncThroughWrappers(t *testing.T) {
	s := &syncer{Backend: newFile(t)}
	if err := backend.Sync(t.Context(), wrapper{faulty.New(wrapper{s})}); err != nil || s.n != 1 {
		t.Errorf("Sync = %v after %d syncs, want one", err, s.n)
	}
	if err := backend.Sync(t.Context(), struct{ backend.Backend }{s}); err != nil || s.n != 1 {
		t.Errorf("Sync without Unwrap = %v, %d syncs; want none", err, s.n)
	}
}

// TestFileCleanTemp: the file backend's TempCleaner removes debris below
// the prefix only, and refuses a prefix that is not a directory.
func TestFileCleanTemp(t *testing.T) {
	fb := newFile(t)
	ctx := t.Context()
	for _, name := range []string{"blocks/00/a", "keys/k"} {
		if err := fb.Put(ctx, name, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	debris := []string{fb.Root() + "/blocks/00/.tmp-1", fb.Root() + "/keys/.tmp-2"}
	for _, p := range debris {
		if err := writeOld(p); err != nil {
			t.Fatal(err)
		}
	}
	tc, _ := backend.As[backend.TempCleaner](wrapper{fb})
	n, err := tc.CleanTemp(ctx, "blocks/", time.Hour)
	if err != nil || n != 1 {
		t.Errorf("CleanTemp(blocks/) = %d, %v; want 1", n, err)
	}
	if n, err := tc.CleanTemp(ctx, "never/", 0); err != nil || n != 0 {
		t.Errorf("CleanTemp of a prefix never written = %d, %v", n, err)
	}
	if _, err := tc.CleanTemp(ctx, "blocks", 0); !errors.Is(err, backend.ErrBadName) {
		t.Errorf("CleanTemp(blocks) = %v, want ErrBadName", err)
	}
	if n, err := tc.CleanTemp(ctx, "", time.Hour); err != nil || n != 1 {
		t.Errorf("CleanTemp(\"\") = %d, %v; want the other 1", n, err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := tc.CleanTemp(cctx, "", 0); !errors.Is(err, context.Canceled) {
		t.Errorf("CleanTemp with a cancelled context = %v", err)
	}
}

// writeOld writes a file whose modification time is a day ago.
func writeOld(path string) error {
	if err := os.WriteFile(path, []byte("debris"), 0o600); err != nil {
		return err
	}
	old := time.Now().Add(-24 * time.Hour)
	return os.Chtimes(path, old, old)
}
