package retry

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/backy/backy/blockstore/backend"
)

// The policy tests below moved here from package s3 (TestRetryPolicy,
// TestRetryBudget) with the retry loop; their assertions are unchanged.
// The S3 errors they used are replaced by errors marked as S3 marks them:
// a 503 or 500 transient, a 403 permanent. What S3 marks how is tested in
// package s3.

func slowDown() error      { return backend.Transient(errors.New("503 SlowDown")) }
func internalError() error { return backend.Transient(errors.New("500 InternalError")) }
func accessDenied() error  { return backend.Permanent(errors.New("403 AccessDenied")) }

func withDefaults(o Options) Options { return o.withDefaults() }

// reported is an error that says how long it was retried (a Reporter).
type reported struct {
	attempts int
	elapsed  time.Duration
	err      error
}

func (r *reported) Error() string {
	return fmt.Sprintf("%v after %d attempts in %v", r.err, r.attempts, r.elapsed)
}
func (r *reported) Unwrap() error { return r.err }

// reporting marks err transient and reports its retries.
type reporting struct{ err error }

func (r reporting) Error() string   { return r.err.Error() }
func (r reporting) Unwrap() []error { return []error{r.err, backend.ErrTransient} }
func (r reporting) Retried(attempts int, elapsed time.Duration) error {
	return &reported{attempts, elapsed, r.err}
}

// fakeClock is a clock that moves only when the retry loop sleeps.
type fakeClock struct {
	t     time.Time
	slept []time.Duration
}

func (c *fakeClock) now() time.Time { return c.t }
func (c *fakeClock) sleep(_ context.Context, d time.Duration) error {
	c.slept = append(c.slept, d)
	c.t = c.t.Add(d)
	return nil
}

func policyOn(c *fakeClock, attempts int, budget time.Duration) Options {
	return withDefaults(Options{MaxAttempts: attempts, For: budget, BaseBackoff: 100 * time.Millisecond, MaxBackoff: 10 * time.Second, Now: c.now, Sleep: c.sleep})
}

func TestRetryPolicy(t *testing.T) {
	var slept []time.Duration
	p := withDefaults(Options{MaxAttempts: 5, For: time.Hour, BaseBackoff: 100 * time.Millisecond, MaxBackoff: time.Second,
		Sleep: func(_ context.Context, d time.Duration) error { slept = append(slept, d); return nil }})
	calls := 0
	_, err := p.run(t.Context(), func(n int) error {
		if n != calls {
			t.Fatalf("attempt %d, want %d", n, calls)
		}
		calls++
		return slowDown()
	})
	if err == nil || calls != 5 || len(slept) != 4 {
		t.Fatalf("err %v, %d calls, %d sleeps; want an error after 5 calls and 4 sleeps", err, calls, len(slept))
	}
	for i, d := range slept {
		ceil := min(time.Second, 100*time.Millisecond<<i)
		if d < 0 || d > ceil {
			t.Errorf("backoff %d = %v, want within [0, %v]", i, d, ceil)
		}
	}
	// Permanent errors are not retried; success stops at once.
	calls = 0
	_, _ = p.run(t.Context(), func(int) error { calls++; return accessDenied() })
	if calls != 1 {
		t.Errorf("a permanent error was tried %d times", calls)
	}
	calls = 0
	if _, err := p.run(t.Context(), func(n int) error {
		calls++
		if n < 2 {
			return internalError()
		}
		return nil
	}); err != nil || calls != 3 {
		t.Errorf("recovering after 2 failures: %v after %d calls", err, calls)
	}
	// Cancellation during the backoff ends the loop with ctx's error.
	ctx, cancel := context.WithCancel(t.Context())
	p.Sleep = func(ctx context.Context, d time.Duration) error { cancel(); return ctx.Err() }
	_, err = p.run(ctx, func(int) error { return internalError() })
	if !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled during backoff: %v", err)
	}
	// Jitter: delays are not all equal.
	p = withDefaults(Options{MaxAttempts: 2, BaseBackoff: time.Second, MaxBackoff: time.Second})
	seen := map[time.Duration]bool{}
	for range 20 {
		seen[p.backoff(0)] = true
	}
	if len(seen) < 10 {
		t.Errorf("20 backoffs gave only %d distinct delays: no jitter", len(seen))
	}
}

// TestRetryBudget (issue 13 item 15): transient failures are retried for
// the budget, not for a fixed number of attempts: an outage of a few
// seconds (or minutes) is ridden out, a permanent one ends when the
// budget is spent, with a last attempt at its end.
func TestRetryBudget(t *testing.T) {
	refused := backend.Transient(fmt.Errorf("dial: %w", syscall.ECONNREFUSED))
	start := time.Unix(1_000_000, 0)

	t.Run("outage shorter than the budget", func(t *testing.T) {
		for _, outage := range []time.Duration{2 * time.Second, 40 * time.Second, 4 * time.Minute} {
			c := &fakeClock{t: start}
			n, err := policyOn(c, 0, 5*time.Minute).run(t.Context(), func(int) error {
				if c.t.Sub(start) < outage {
					return refused
				}
				return nil
			})
			if err != nil {
				t.Errorf("an outage of %v within a budget of 5m: %v after %d attempts", outage, err, n)
			}
		}
	})

	t.Run("permanent outage", func(t *testing.T) {
		c := &fakeClock{t: start}
		var at []time.Duration
		n, err := policyOn(c, 0, 5*time.Minute).run(t.Context(), func(int) error {
			at = append(at, c.t.Sub(start))
			return reporting{slowDown()}
		})
		if err == nil {
			t.Fatal("a permanent outage succeeded")
		}
		if last := at[len(at)-1]; last != 5*time.Minute {
			t.Errorf("the last attempt came at %v, want at the end of the budget (5m)", last)
		}
		// Backoff is at most 10 s, so 5 minutes take at least 30 attempts.
		if n != len(at) || n < 31 {
			t.Errorf("%d attempts (reported %d) in 5 minutes", len(at), n)
		}
		for i, d := range c.slept {
			if ceil := min(10*time.Second, 100*time.Millisecond<<min(i, 20)); d < 0 || d > ceil {
				t.Errorf("backoff %d = %v, want within [0, %v]", i, d, ceil)
			}
		}
		var g *reported
		if !errors.As(err, &g) || g.attempts != n || g.elapsed != 5*time.Minute {
			t.Errorf("error %v does not carry the attempts and the time", err)
		}
	})

	t.Run("attempts cap", func(t *testing.T) {
		c := &fakeClock{t: start}
		n, err := policyOn(c, 3, time.Hour).run(t.Context(), func(int) error { return refused })
		if err == nil || n != 3 {
			t.Errorf("max attempts 3: %d attempts, %v", n, err)
		}
	})

	t.Run("no budget", func(t *testing.T) {
		c := &fakeClock{t: start}
		n, err := policyOn(c, 0, 0).run(t.Context(), func(int) error { return refused })
		if err == nil || n != 1 || len(c.slept) != 0 {
			t.Errorf("no budget: %d attempts, %d sleeps, %v", n, len(c.slept), err)
		}
	})
}
