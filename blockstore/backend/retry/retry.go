package retry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/backy/backy/blockstore/backend"
	"github.com/backy/backy/internal/clock"
)

// Options is a retry policy.
type Options struct {
	// For is how long a request that fails with transient errors is
	// retried, from its first attempt; the last attempt is made when it
	// has passed. 0 (or less) makes one attempt only.
	For time.Duration
	// MaxAttempts, if > 0, also caps the attempts of a request (whichever
	// limit comes first ends the retries); 1 disables retries.
	MaxAttempts int
	// BaseBackoff and MaxBackoff shape the delays: after attempt n (from
	// 0) the wrapper waits a random time up to min(MaxBackoff,
	// BaseBackoff*2^n) (full jitter). Defaults 100 ms and 10 s.
	BaseBackoff, MaxBackoff time.Duration
	// Logger gets a debug line for every request that failed; nil is
	// slog.Default().
	Logger *slog.Logger
	// Clock times the budget; nil is clock.System.
	Clock clock.Clock
	// Now and Sleep, when set, override: Now tells the time (instead of
	// Clock), Sleep waits d or until ctx ends (returning ctx.Err() then;
	// nil is a real-time timer). Tests replace them to run a budget of
	// minutes at once.
	Now   func() time.Time
	Sleep func(ctx context.Context, d time.Duration) error
}

// DefaultBaseBackoff and DefaultMaxBackoff are the defaults of
// Options.BaseBackoff and Options.MaxBackoff.
const (
	DefaultBaseBackoff = 100 * time.Millisecond
	DefaultMaxBackoff  = 10 * time.Second
)

func (o Options) withDefaults() Options {
	if o.BaseBackoff <= 0 {
		o.BaseBackoff = DefaultBaseBackoff
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = DefaultMaxBackoff
	}
	if o.MaxAttempts < 0 {
		o.MaxAttempts = 0
	}
	if o.For < 0 {
		o.For = 0
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = clock.Or(o.Clock).Now
	}
	if o.Sleep == nil {
		o.Sleep = sleep
	}
	return o
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Reporter is implemented by an error that says in its own words how long
// it was retried (the S3 backend's "cannot reach … after 4 attempts in
// 2.1s"). When a request is given up after retries, the error its last
// attempt returned is replaced by what Retried returns, if that error
// itself (not one it wraps) is a Reporter, also after a single attempt.
// Other errors get " (after N attempts in T)" appended when there was more
// than one attempt.
type Reporter interface {
	Retried(attempts int, elapsed time.Duration) error
}

// Do runs fn until it succeeds, fails with an error that is not
// backend.Retryable, the budget or the attempts are used up, or ctx ends.
// A backoff that would end past the budget is cut short, so the last
// attempt comes when the budget is spent. When ctx ends the error wraps
// ctx.Err() (and names the last failure in its text only).
func Do(ctx context.Context, o Options, fn func(ctx context.Context) error) error {
	_, err := o.withDefaults().run(ctx, func(int) error { return fn(ctx) })
	return err
}

// run is Do with the attempt number (from 0) passed to attempt and the
// number of attempts made returned. o has its defaults.
func (o Options) run(ctx context.Context, attempt func(n int) error) (int, error) {
	start := o.Now()
	deadline := start.Add(o.For)
	for n := 0; ; n++ {
		err := attempt(n)
		if err == nil {
			return n + 1, nil
		}
		if cerr := ctx.Err(); cerr != nil {
			if errors.Is(err, cerr) {
				return n + 1, err
			}
			return n + 1, fmt.Errorf("%w (after: %v)", cerr, err)
		}
		t := o.Now()
		if !backend.Retryable(err) || (o.MaxAttempts > 0 && n+1 >= o.MaxAttempts) || !t.Before(deadline) {
			return n + 1, gaveUp(err, n+1, t.Sub(start))
		}
		d := min(o.backoff(n), deadline.Sub(t))
		if serr := o.Sleep(ctx, d); serr != nil {
			return n + 1, fmt.Errorf("%w (after: %v)", serr, err)
		}
	}
}

// gaveUp is the error of a request given up after attempts.
func gaveUp(err error, attempts int, elapsed time.Duration) error {
	if r, ok := err.(Reporter); ok {
		return r.Retried(attempts, elapsed)
	}
	if attempts == 1 {
		return err
	}
	return fmt.Errorf("%w (after %d attempts in %v)", err, attempts, elapsed.Round(100*time.Millisecond))
}

// backoff returns a random delay in [0, min(max, base*2^n)].
func (o Options) backoff(n int) time.Duration {
	ceil := o.MaxBackoff
	if n < 30 {
		if d := o.BaseBackoff << n; d > 0 && d < ceil {
			ceil = d
		}
	}
	return time.Duration(rand.Int64N(int64(ceil) + 1))
}

// Backend retries the transient failures of the backend it wraps. Create
// it with New.
type Backend struct {
	below // what inner offers (and Hides)
	inner backend.Backend
	o     Options
}

var (
	_ backend.Backend      = (*Backend)(nil)
	_ backend.Unwrapper    = (*Backend)(nil)
	_ backend.Hider        = (*Backend)(nil)
	_ backend.BatchDeleter = (*Backend)(nil)
	_ backend.Pager        = (*Backend)(nil)
)

// below is embedded under a name of its own, unexported.
type below = backend.Below

// New wraps inner with the retry policy o.
func New(inner backend.Backend, o Options) *Backend {
	return &Backend{below: backend.FindBelow(inner), inner: inner, o: o.withDefaults()}
}

// Unwrap returns the wrapped backend.
func (b *Backend) Unwrap() backend.Backend { return b.inner }

// do runs one request under the policy and logs its failure.
func (b *Backend) do(ctx context.Context, op, name string, attempt func() error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s %q: %w", op, name, err)
	}
	n, err := b.o.run(ctx, func(int) error { return attempt() })
	if err != nil {
		b.o.Logger.Debug("backend request failed", "op", op, "object", name, "attempts", n, "err", err)
	}
	return err
}

// Put stores data, retrying transient failures.
func (b *Backend) Put(ctx context.Context, name string, data []byte) error {
	return b.do(ctx, "put", name, func() error { return b.inner.Put(ctx, name, data) })
}

// Get reads the object, retrying transient failures. What the last
// attempt returned is passed on, its data too when it failed (a backend
// may hand over a body it could not verify, see package s3).
func (b *Backend) Get(ctx context.Context, name string, buf []byte) ([]byte, error) {
	out := buf[:0]
	err := b.do(ctx, "get", name, func() error {
		var err error
		out, err = b.inner.Get(ctx, name, buf)
		if cap(out) > cap(buf) {
			buf = out // reuse what an attempt grew
		}
		return err
	})
	return out, err
}

// Stat asks the wrapped backend, retrying transient failures.
func (b *Backend) Stat(ctx context.Context, name string) (backend.Info, error) {
	var info backend.Info
	err := b.do(ctx, "stat", name, func() error {
		var err error
		info, err = b.inner.Stat(ctx, name)
		return err
	})
	return info, err
}

// List lists the wrapped backend. A paged listing (backend.Pager) is
// retried page by page; any other is retried only while fn has not been
// called, since a repeated listing would show fn objects twice.
func (b *Backend) List(ctx context.Context, prefix string, fn func(backend.Info) error) error {
	if b.Pages != nil {
		return backend.ListPages(ctx, prefix, b.ListPage, fn)
	}
	called := false
	var fnErr error
	err := b.do(ctx, "list", prefix, func() error {
		err := b.inner.List(ctx, prefix, func(i backend.Info) error {
			called = true
			if err := fn(i); err != nil {
				fnErr = err
				return err
			}
			return nil
		})
		if called && err != nil {
			return stop{err}
		}
		return err
	})
	if fnErr != nil {
		return fnErr
	}
	if s := (stop{}); errors.As(err, &s) {
		return s.err
	}
	return err
}

// stop carries an error that must not be retried through the policy (it
// hides the error's marks from backend.Retryable).
type stop struct{ err error }

func (s stop) Error() string { return s.err.Error() }

// ListPage lists one page of the wrapped backend, retrying transient
// failures.
func (b *Backend) ListPage(ctx context.Context, prefix, token string) ([]backend.Info, string, error) {
	if b.Pages == nil {
		return nil, "", fmt.Errorf("list %q: the backend has no paged listing", prefix)
	}
	var page []backend.Info
	var next string
	err := b.do(ctx, "list", prefix, func() error {
		var err error
		page, next, err = b.Pages.ListPage(ctx, prefix, token)
		return err
	})
	return page, next, err
}

// Delete deletes on the wrapped backend, retrying transient failures.
func (b *Backend) Delete(ctx context.Context, name string) error {
	return b.do(ctx, "delete", name, func() error { return b.inner.Delete(ctx, name) })
}

// DeleteBatch deletes a batch on the wrapped backend, retrying transient
// failures of the whole request.
func (b *Backend) DeleteBatch(ctx context.Context, names []string) ([]error, error) {
	if b.Batch == nil {
		return nil, fmt.Errorf("delete %d objects: the backend has no batch delete", len(names))
	}
	var errs []error
	err := b.do(ctx, "delete", fmt.Sprintf("%d objects", len(names)), func() error {
		var err error
		errs, err = b.Batch.DeleteBatch(ctx, names)
		return err
	})
	if err != nil {
		return nil, err
	}
	return errs, nil
}

// MaxDeleteBatch is the wrapped backend's.
func (b *Backend) MaxDeleteBatch() int {
	if b.Batch == nil {
		return 1
	}
	return b.Batch.MaxDeleteBatch()
}

// Properties returns the wrapped backend's.
func (b *Backend) Properties() backend.Properties { return b.inner.Properties() }

// Close closes the wrapped backend.
func (b *Backend) Close() error { return b.inner.Close() }
