package limit_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/backy/backy/blockstore/backend"
	"github.com/backy/backy/blockstore/backend/backendtest"
	"github.com/backy/backy/blockstore/backend/faulty"
	"github.com/backy/backy/blockstore/backend/file"
	"github.com/backy/backy/blockstore/backend/limit"
)

func newFile(t testing.TB) *file.Backend {
	t.Helper()
	fb, err := file.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return fb
}

// TestConformance: both wrappers around the file backend meet the whole
// backend contract, also with one slot of each kind (the suite's
// concurrent and List-in-List checks then wait for each other).
func TestConformance(t *testing.T) {
	t.Run("concurrency", func(t *testing.T) {
		backendtest.Run(t, func(t *testing.T) backend.Backend { return limit.Concurrency(newFile(t), 1, 1) })
	})
	t.Run("bandwidth", func(t *testing.T) {
		backendtest.Run(t, func(t *testing.T) backend.Backend { return limit.Bandwidth(newFile(t), 1<<30, 1<<30, nil) })
	})
}

// counting counts the calls in flight and their peak, each lasting a
// moment.
type counting struct {
	backend.Backend
	now, peak atomic.Int64
}

func (c *counting) enter() func() {
	n := c.now.Add(1)
	for {
		p := c.peak.Load()
		if n <= p || c.peak.CompareAndSwap(p, n) {
			break
		}
	}
	time.Sleep(2 * time.Millisecond)
	return func() { c.now.Add(-1) }
}

func (c *counting) Put(ctx context.Context, name string, data []byte) error {
	defer c.enter()()
	return c.Backend.Put(ctx, name, data)
}

func (c *counting) Get(ctx context.Context, name string, buf []byte) ([]byte, error) {
	defer c.enter()()
	return c.Backend.Get(ctx, name, buf)
}

// TestConcurrencyBound: no more calls are in flight than allowed, reads
// and writes each, and some run in parallel.
func TestConcurrencyBound(t *testing.T) {
	for _, kind := range []string{"writes", "reads"} {
		t.Run(kind, func(t *testing.T) {
			c := &counting{Backend: newFile(t)}
			be := limit.Concurrency(c, 3, 3)
			ctx := t.Context()
			if err := c.Backend.Put(ctx, "x", []byte("x")); err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			for i := range 24 {
				wg.Go(func() {
					var err error
					if kind == "writes" {
						err = be.Put(ctx, fmt.Sprintf("c/%d", i), []byte("x"))
					} else {
						_, err = be.Get(ctx, "x", nil)
					}
					if err != nil {
						t.Error(err)
					}
				})
			}
			wg.Wait()
			if p := c.peak.Load(); p > 3 || p < 2 {
				t.Errorf("peak of %d %s in flight, want at most 3 (and some parallelism)", p, kind)
			}
		})
	}
	if p := limit.Concurrency(newFile(t), 3, 7).Properties(); p.Connections != 7 {
		t.Errorf("Connections = %d, want the larger limit 7", p.Connections)
	}
}

// TestListReleasesItsSlot: a listing does not hold its read slot while the
// caller's function runs, which may read the same backend.
func TestListReleasesItsSlot(t *testing.T) {
	fb := newFile(t)
	ctx := t.Context()
	for i := range 3 {
		if err := fb.Put(ctx, fmt.Sprintf("l/%d", i), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	be := limit.Concurrency(fb, 1, 1)
	tctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	n := 0
	err := be.List(tctx, "l/", func(i backend.Info) error {
		_, err := be.Get(tctx, i.Name, nil)
		n++
		return err
	})
	if err != nil || n != 3 {
		t.Errorf("List reading each object = %v after %d objects", err, n)
	}
}

// TestWaitHonoursContext: a request waiting for a slot gives up when its
// context ends.
func TestWaitHonoursContext(t *testing.T) {
	fb := faulty.New(newFile(t))
	fb.AddFault(faulty.MethodPut).SleepFor(time.Minute)
	be := limit.Concurrency(fb, 1, 1)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go func() { _ = be.Put(ctx, "slow", []byte("x")) }()
	for fb.Calls(faulty.MethodPut) == 0 {
		time.Sleep(time.Millisecond)
	}
	wctx, wcancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer wcancel()
	if err := be.Put(wctx, "waits", []byte("x")); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Put waiting for the only slot = %v, want its context's error", err)
	}
	if fb.Calls(faulty.MethodPut) != 1 {
		t.Errorf("%d Puts reached the backend, want only the one holding the slot", fb.Calls(faulty.MethodPut))
	}
}

// batcher deletes in batches and counts the batches in flight.
type batcher struct {
	backend.Backend
	now, peak atomic.Int64
}

func (b *batcher) MaxDeleteBatch() int { return 5 }
func (b *batcher) DeleteBatch(context.Context, []string) ([]error, error) {
	n := b.now.Add(1)
	defer b.now.Add(-1)
	for p := b.peak.Load(); n > p && !b.peak.CompareAndSwap(p, n); p = b.peak.Load() {
	}
	time.Sleep(2 * time.Millisecond)
	return nil, nil
}

// TestBatchDeleteCounted: batches take write slots, and are offered only
// when the wrapped backend has them.
func TestBatchDeleteCounted(t *testing.T) {
	b := &batcher{Backend: newFile(t)}
	bd, ok := backend.As[backend.BatchDeleter](limit.Concurrency(b, 4, 1))
	if !ok || bd.MaxDeleteBatch() != 5 {
		t.Fatal("the wrapper of a batch deleter offers no batches")
	}
	if _, ok := bd.(*batcher); ok {
		t.Fatal("As went around the limit")
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() { _, _ = bd.DeleteBatch(t.Context(), []string{"a"}) })
	}
	wg.Wait()
	if p := b.peak.Load(); p != 1 {
		t.Errorf("%d batches in flight with one write slot", p)
	}
	if _, ok := backend.As[backend.BatchDeleter](limit.Concurrency(newFile(t), 1, 1)); ok {
		t.Error("the wrapper of a backend without batches offers batches")
	}
	// The bandwidth limit has no say in batches: they are found below it.
	if got, ok := backend.As[backend.BatchDeleter](limit.Bandwidth(b, 1, 1, nil)); !ok || got != b {
		t.Errorf("As through the bandwidth limit = %T, %v", got, ok)
	}
}

// TestBandwidthPaces: three 1 MiB Puts (and Gets) at 4 MiB/s take at least
// half a second after the first: a lower bound only, no upper bound on a
// shared machine.
func TestBandwidthPaces(t *testing.T) {
	be := limit.Bandwidth(newFile(t), 4<<20, 4<<20, nil)
	ctx := t.Context()
	data := make([]byte, 1<<20)
	start := time.Now()
	for i := range 3 {
		if err := be.Put(ctx, fmt.Sprintf("bw/%d", i), data); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d < 450*time.Millisecond {
		t.Errorf("3 MiB at 4 MiB/s took %v, want at least 0.5 s", d)
	}
	start = time.Now()
	for i := range 3 {
		if _, err := be.Get(ctx, fmt.Sprintf("bw/%d", i), nil); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d < 450*time.Millisecond {
		t.Errorf("reading 3 MiB at 4 MiB/s took %v, want at least 0.5 s", d)
	}
}
