package s3_test

import (
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/backy/backy/blockstore/backend"
	"github.com/backy/backy/blockstore/backend/s3/s3test"
)

// TestS3ListRetriesPages: a listing of more than one page (1000 keys)
// whose second page fails twice is retried page by page through the
// stack: every object is seen exactly once.
func TestS3ListRetriesPages(t *testing.T) {
	srv := s3test.Start(t)
	ft := &faultTransport{inner: http.DefaultTransport}
	o := srv.Options(srv.NewBucket(t))
	o.HTTPTransport = ft
	o.SimultaneousWrites = 32
	b := newBackend(t, o)
	ctx := t.Context()
	const n = 1003
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := b.Put(ctx, fmt.Sprintf("l/%04d", i), []byte{1}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	var failed atomic.Int64
	ft.mu.Lock()
	ft.fault = func(_ int, req *http.Request) fault {
		if req.Method == "GET" && req.URL.Query().Get("continuation-token") != "" && failed.Load() < 2 {
			failed.Add(1)
			return status503
		}
		return pass
	}
	ft.mu.Unlock()
	before := ft.seen.Load()
	seen := map[string]int{}
	if err := b.List(ctx, "l/", func(i backend.Info) error { seen[i.Name]++; return nil }); err != nil {
		t.Fatal(err)
	}
	if failed.Load() != 2 {
		t.Fatalf("%d faults on the second page, want 2 (the listing has no second page?)", failed.Load())
	}
	if len(seen) != n {
		t.Errorf("listed %d objects, want %d", len(seen), n)
	}
	for name, c := range seen {
		if c != 1 {
			t.Errorf("%s listed %d times", name, c)
		}
	}
	if got := ft.seen.Load() - before; got != 4 {
		t.Errorf("%d list requests, want 2 pages and 2 retries of the second", got)
	}
}
