package stack_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/backy/backy/blockstore/backend"
	"github.com/backy/backy/blockstore/backend/backendtest"
	"github.com/backy/backy/blockstore/backend/file"
	"github.com/backy/backy/blockstore/backend/limit"
	"github.com/backy/backy/blockstore/backend/retry"
	"github.com/backy/backy/blockstore/backend/stack"
	"github.com/backy/backy/internal/clock"
)

func newFile(t *testing.T) *file.Backend {
	t.Helper()
	fb, err := file.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return fb
}

var full = stack.Options{
	Retry:              &retry.Options{For: time.Minute, MaxAttempts: 3},
	SimultaneousReads:  2,
	SimultaneousWrites: 2,
	BandwidthRead:      1 << 30,
	BandwidthWrite:     1 << 30,
}

// TestConformance: the file backend in the whole stack meets the backend
// contract.
func TestConformance(t *testing.T) {
	backendtest.Run(t, func(t *testing.T) backend.Backend { return stack.Wrap(newFile(t), full) })
}

// TestOrder: concurrency limit outside, retry inside it, bandwidth limit
// innermost; only the wrappers asked for; capabilities found through all.
func TestOrder(t *testing.T) {
	fb := newFile(t)
	be := stack.Wrap(fb, full)
	var got []string
	for b := be; b != nil; {
		switch b.(type) {
		case *limit.Concurrent:
			got = append(got, "concurrency")
		case *retry.Backend:
			got = append(got, "retry")
		case *limit.Paced:
			got = append(got, "bandwidth")
		case *file.Backend:
			got = append(got, "file")
		default:
			t.Fatalf("unknown layer %T", b)
		}
		u, ok := b.(backend.Unwrapper)
		if !ok {
			break
		}
		b = u.Unwrap()
	}
	if want := "concurrency retry bandwidth file"; strings.Join(got, " ") != want {
		t.Errorf("stack %q, want %q", strings.Join(got, " "), want)
	}
	if be := stack.Wrap(fb, stack.Options{}); be != backend.Backend(fb) {
		t.Errorf("no options gave %T, want the backend itself", be)
	}
	if be := stack.Wrap(fb, stack.Options{SimultaneousWrites: 4}); be.(*limit.Concurrent).Unwrap() != backend.Backend(fb) {
		t.Error("a concurrency limit alone is not right around the backend")
	}
	if _, ok := backend.As[backend.TempCleaner](be); !ok {
		t.Error("the file backend's temp cleanup is not found through the stack")
	}
	if _, ok := backend.As[backend.Syncer](be); !ok {
		t.Error("the file backend's Sync is not found through the stack")
	}
	if _, ok := backend.As[backend.BatchDeleter](be); ok {
		t.Error("the stack offers batch deletes the file backend does not have")
	}
}

// failing fails every Put with a transient error.
type failing struct{ backend.Backend }

func (f failing) Put(context.Context, string, []byte) error {
	return fmt.Errorf("%w: try again", backend.ErrTransient)
}

// TestClockReachesRetry: Options.Clock times the retry budget (a fake
// clock that the waits advance spends an hour's budget at once).
func TestClockReachesRetry(t *testing.T) {
	fake := clock.NewFake(time.Date(2031, 1, 2, 3, 4, 5, 0, time.UTC))
	waits := 0
	be := stack.Wrap(failing{newFile(t)}, stack.Options{Clock: fake, Retry: &retry.Options{For: time.Hour,
		Sleep: func(ctx context.Context, d time.Duration) error {
			if waits++; waits > 10000 {
				t.Fatal("the retry budget is not timed by Options.Clock")
			}
			fake.Advance(max(d, time.Second))
			return nil
		}}})
	err := be.Put(t.Context(), "x", []byte("y"))
	if !errors.Is(err, backend.ErrTransient) {
		t.Fatalf("Put = %v, want the transient error after the budget", err)
	}
}
