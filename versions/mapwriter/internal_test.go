package mapwriter

import (
	"context"
	"errors"
	"testing"
)

// TestCommitterReportsWorkerError: the interleaving of the race that once
// reported "ended at block N": a worker failed and counts as done, so the
// results are closed, but errgroup has not cancelled the context yet. The
// committer reports the worker's error.
func TestCommitterReportsWorkerError(t *testing.T) {
	w := New(Config[int]{UID: "V1", End: 10})
	werr := errors.New("the worker's error")
	w.workerErr.CompareAndSwap(nil, &werr)
	results := make(chan outcome[int])
	close(results)
	if err := w.committer(context.Background(), make(chan struct{}, 4), results); err != werr {
		t.Fatalf("committer = %v, want the worker's error", err)
	}
	// Without a worker's error, a map that ends early is an internal error.
	w = New(Config[int]{UID: "V1", End: 10})
	results = make(chan outcome[int])
	close(results)
	if err := w.committer(context.Background(), make(chan struct{}, 4), results); err == nil {
		t.Fatal("committer = nil for a map that ended at block 0 of 10")
	}
}
