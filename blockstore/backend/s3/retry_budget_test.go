package s3

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/backy/backy/blockstore/backend"
)

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

func policyOn(c *fakeClock, attempts int, budget time.Duration) retryPolicy {
	return retryPolicy{attempts: attempts, budget: budget, base: 100 * time.Millisecond, max: 10 * time.Second, now: c.now, sleep: c.sleep}
}

// TestRetryBudget (issue 13 item 15): transient failures are retried for
// the budget, not for a fixed number of attempts: an outage of a few
// seconds (or minutes) is ridden out, a permanent one ends when the
// budget is spent, with a last attempt at its end.
func TestRetryBudget(t *testing.T) {
	refused := fmt.Errorf("dial: %w", syscall.ECONNREFUSED)
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
			return apiErr(503, "SlowDown")
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
		var g *gaveUp
		if !errors.As(err, &g) || g.attempts != n || g.elapsed() != 5*time.Minute {
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

	t.Run("message", func(t *testing.T) {
		c := &fakeClock{t: start}
		_, err := policyOn(c, 0, time.Minute).run(t.Context(), func(int) error { return refused })
		b := &Backend{o: Options{Bucket: "bk", Endpoint: "http://e"}}
		err = b.opErr("put", "x", err)
		if !errors.Is(err, backend.ErrUnavailable) || !strings.Contains(err.Error(), "in 1m0s") || !strings.Contains(err.Error(), "retry_for") {
			t.Errorf("giving up after the budget: %v", err)
		}
	})
}
