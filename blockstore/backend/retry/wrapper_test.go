package retry_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/backy/backy/blockstore/backend"
	"github.com/backy/backy/blockstore/backend/backendtest"
	"github.com/backy/backy/blockstore/backend/faulty"
	"github.com/backy/backy/blockstore/backend/file"
	"github.com/backy/backy/blockstore/backend/retry"
)

// fast is a policy that retries at once, up to 5 attempts.
var fast = retry.Options{For: time.Hour, MaxAttempts: 5, BaseBackoff: time.Microsecond, MaxBackoff: time.Microsecond}

func newFile(t *testing.T) *file.Backend {
	t.Helper()
	fb, err := file.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return fb
}

// TestConformance: the wrapper around the file backend meets the whole
// backend contract.
func TestConformance(t *testing.T) {
	backendtest.Run(t, func(t *testing.T) backend.Backend { return retry.New(newFile(t), fast) })
}

var errFlaky = backend.Transient(errors.New("flaky"))

// TestRetriesTransient: every method is retried through transient
// failures, and only through those.
func TestRetriesTransient(t *testing.T) {
	ctx := t.Context()
	for _, m := range []faulty.Method{faulty.MethodPut, faulty.MethodGet, faulty.MethodStat, faulty.MethodList, faulty.MethodDelete} {
		t.Run(string(m), func(t *testing.T) {
			fb := faulty.New(newFile(t))
			be := retry.New(fb, fast)
			if err := fb.Put(ctx, "x", []byte("x")); err != nil {
				t.Fatal(err)
			}
			call := func() error {
				switch m {
				case faulty.MethodPut:
					return be.Put(ctx, "x", []byte("x"))
				case faulty.MethodGet:
					_, err := be.Get(ctx, "x", nil)
					return err
				case faulty.MethodStat:
					_, err := be.Stat(ctx, "x")
					return err
				case faulty.MethodList:
					return be.List(ctx, "", func(backend.Info) error { return nil })
				default:
					return be.Delete(ctx, "x")
				}
			}
			before := fb.Calls(m)
			fb.AddFault(m).ErrorInstead(errFlaky).Repeat(2)
			if err := call(); err != nil {
				t.Fatalf("%s after 3 transient failures: %v", m, err)
			}
			if n := fb.Calls(m) - before; n != 4 {
				t.Errorf("%s: %d calls, want 3 failures and a success", m, n)
			}
			if m == faulty.MethodDelete {
				if err := fb.Put(ctx, "x", []byte("x")); err != nil {
					t.Fatal(err)
				}
			}
			// Not transient: one attempt.
			before = fb.Calls(m)
			fb.AddFault(m).ErrorInstead(errors.New("plain"))
			if err := call(); err == nil {
				t.Fatalf("%s with a plain error succeeded", m)
			}
			if n := fb.Calls(m) - before; n != 1 {
				t.Errorf("%s with a plain error: %d calls, want 1", m, n)
			}
			// Transient forever: MaxAttempts, then the error, saying so.
			before = fb.Calls(m)
			fb.AddFault(m).ErrorInstead(errFlaky).Repeat(-1)
			err := call()
			if !errors.Is(err, backend.ErrTransient) || !strings.Contains(fmt.Sprint(err), "after 5 attempts") {
				t.Errorf("%s under permanent transient failures: %v", m, err)
			}
			if n := fb.Calls(m) - before; n != 5 {
				t.Errorf("%s: %d calls, want MaxAttempts = 5", m, n)
			}
			fb.VerifyAllFaultsFired(t)
		})
	}
}

// TestNoRetryAfterListed: a listing without pages that failed after it
// handed objects to the caller is not repeated (the caller would see them
// twice); one that failed before is.
func TestNoRetryAfterListed(t *testing.T) {
	ctx := t.Context()
	inner := newFile(t)
	for _, n := range []string{"a", "b"} {
		if err := inner.Put(ctx, n, []byte(n)); err != nil {
			t.Fatal(err)
		}
	}
	fb := faulty.New(inner)
	be := retry.New(fb, fast)
	fb.AddFault(faulty.MethodList).ErrorAfter(errFlaky)
	seen := 0
	err := be.List(ctx, "", func(backend.Info) error { seen++; return nil })
	if !errors.Is(err, errFlaky) || seen != 2 || fb.Calls(faulty.MethodList) != 1 {
		t.Errorf("List failing after its objects = %v, %d objects, %d calls; want the error, 2, 1", err, seen, fb.Calls(faulty.MethodList))
	}
	// The caller's own error is returned as it is, never retried.
	errMine := backend.Transient(errors.New("mine"))
	before := fb.Calls(faulty.MethodList)
	if err := be.List(ctx, "", func(backend.Info) error { return errMine }); err != errMine || fb.Calls(faulty.MethodList)-before != 1 {
		t.Errorf("List whose fn fails = %v after %d calls", err, fb.Calls(faulty.MethodList)-before)
	}
}

// pager lists a fixed set of names in pages of two, failing the pages
// fail says, and counts the page requests.
type pager struct {
	backend.Backend
	names    []string
	fail     map[string]int // token -> failures left
	requests int
}

func (p *pager) List(ctx context.Context, prefix string, fn func(backend.Info) error) error {
	return backend.ListPages(ctx, prefix, p.ListPage, fn)
}

func (p *pager) ListPage(_ context.Context, _, token string) ([]backend.Info, string, error) {
	p.requests++
	if p.fail[token] > 0 {
		p.fail[token]--
		return nil, "", errFlaky
	}
	i := 0
	if token != "" {
		fmt.Sscan(token, &i)
	}
	var page []backend.Info
	for _, n := range p.names[i:min(i+2, len(p.names))] {
		page = append(page, backend.Info{Name: n})
	}
	next := ""
	if i+2 < len(p.names) {
		next = fmt.Sprint(i + 2)
	}
	return page, next, nil
}

// TestPagedListRetriesPages: a paged listing is retried page by page:
// each object is seen once although later pages fail.
func TestPagedListRetriesPages(t *testing.T) {
	p := &pager{Backend: newFile(t), names: []string{"a", "b", "c", "d", "e"}, fail: map[string]int{"2": 2, "4": 1}}
	be := retry.New(p, fast)
	var got []string
	if err := be.List(t.Context(), "", func(i backend.Info) error { got = append(got, i.Name); return nil }); err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, "") != "abcde" || p.requests != 6 {
		t.Errorf("listed %v in %d page requests; want each object once, in 3 pages and 3 retries", got, p.requests)
	}
	if _, ok := backend.As[backend.Pager](be); !ok {
		t.Error("the wrapper of a pager offers no pages")
	}
	if _, ok := backend.As[backend.Pager](retry.New(newFile(t), fast)); ok {
		t.Error("the wrapper of a backend without pages offers pages")
	}
}

// batcher deletes in batches, failing the first batches fail says.
type batcher struct {
	backend.Backend
	fail, calls int
}

func (b *batcher) MaxDeleteBatch() int { return 7 }
func (b *batcher) DeleteBatch(_ context.Context, names []string) ([]error, error) {
	b.calls++
	if b.fail > 0 {
		b.fail--
		return nil, errFlaky
	}
	return make([]error, len(names)), nil
}

// TestBatchDelete: batches are retried, and offered only when the
// wrapped backend has them.
func TestBatchDelete(t *testing.T) {
	b := &batcher{Backend: newFile(t), fail: 2}
	bd, ok := backend.As[backend.BatchDeleter](retry.New(b, fast))
	if !ok {
		t.Fatal("the wrapper of a batch deleter offers no batches")
	}
	if errs, err := bd.DeleteBatch(t.Context(), []string{"a", "b"}); err != nil || len(errs) != 2 || b.calls != 3 || bd.MaxDeleteBatch() != 7 {
		t.Errorf("DeleteBatch = %v, %v after %d calls (max %d)", errs, err, b.calls, bd.MaxDeleteBatch())
	}
	if _, ok := backend.As[backend.BatchDeleter](retry.New(newFile(t), fast)); ok {
		t.Error("the wrapper of a backend without batches offers batches")
	}
	if _, ok := backend.As[backend.BatchDeleter](retry.New(faulty.New(b), fast)); ok {
		t.Error("the wrapper found the batches the fault injector hides")
	}
}

// TestCancelDuringBackoff: a context that ends while the wrapper waits
// ends the request at once with its error.
func TestCancelDuringBackoff(t *testing.T) {
	fb := faulty.New(newFile(t))
	fb.AddFault(faulty.MethodPut).ErrorInstead(errFlaky).Repeat(-1)
	be := retry.New(fb, retry.Options{For: time.Hour, BaseBackoff: time.Hour, MaxBackoff: time.Hour})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- be.Put(ctx, "x", []byte("x")) }()
	for fb.Calls(faulty.MethodPut) == 0 {
		time.Sleep(time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) || errors.Is(err, backend.ErrTransient) {
			t.Errorf("Put cancelled during its backoff = %v, want context.Canceled only", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Put did not return after its context was cancelled")
	}
}
