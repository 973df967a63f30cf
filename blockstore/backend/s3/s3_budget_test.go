package s3_test

import (
	"errors"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/backy/backy/blockstore/backend"
	"github.com/backy/backy/blockstore/backend/s3/s3test"
)

// TestS3OutageWithinRetryBudget (issue 13 item 15): a request made while
// the server is down succeeds once it is back within RetryFor, and a
// server that stays down ends in ErrUnavailable once RetryFor is spent.
func TestS3OutageWithinRetryBudget(t *testing.T) {
	srv := s3test.Start(t)
	o := srv.Options(srv.NewBucket(t))
	o.MaxAttempts = 0 // the budget alone decides
	o.RetryFor = 2 * time.Minute
	b := newBackend(t, o)
	ctx := t.Context()
	if err := b.Put(ctx, "a", []byte("a")); err != nil {
		t.Fatal(err)
	}

	srv.Kill()
	done := make(chan error, 1)
	go func() { done <- b.Put(ctx, "b", []byte("b")) }()
	// Many more attempts than the old fixed 5 fail meanwhile.
	time.Sleep(1500 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("Put while the server is down returned %v before the server was back", err)
	default:
	}
	srv.Restart(t)
	if err := <-done; err != nil {
		t.Fatalf("Put across an outage shorter than the retry budget: %v", err)
	}
	if got, err := b.Get(ctx, "b", nil); err != nil || string(got) != "b" {
		t.Fatalf("Get after the outage = %q, %v", got, err)
	}

	// A permanent outage: unavailable once the budget is spent.
	o.RetryFor = time.Second
	short := newBackend(t, o)
	srv.Kill()
	err := short.Put(ctx, "c", []byte("c"))
	if !errors.Is(err, backend.ErrUnavailable) || errors.Is(err, backend.ErrPermanent) {
		t.Errorf("Put to a server that stays down: %v, want ErrUnavailable", err)
	}
}

// TestS3FaultsWithinRetryBudget: more transient faults in a row than the
// old fixed number of attempts (5) are retried while the budget lasts.
func TestS3FaultsWithinRetryBudget(t *testing.T) {
	srv := s3test.Start(t)
	var armed atomic.Bool
	ft := &faultTransport{inner: http.DefaultTransport.(*http.Transport).Clone()}
	var faults atomic.Int64
	ft.fault = func(_ int, _ *http.Request) fault {
		if armed.Load() && faults.Add(1) <= 12 {
			return reset
		}
		return pass
	}
	o := srv.Options(srv.NewBucket(t))
	o.HTTPTransport = ft
	o.MaxAttempts = 0
	o.RetryFor = time.Minute
	o.BaseBackoff, o.MaxBackoff = time.Millisecond, 20*time.Millisecond
	b := newBackend(t, o)
	armed.Store(true)
	if err := b.Put(t.Context(), "x", []byte("x")); err != nil {
		t.Fatalf("Put after 12 connection resets within the budget: %v", err)
	}
	if got := faults.Load(); got != 13 {
		t.Errorf("%d requests, want 12 faults and a success", got)
	}
}
