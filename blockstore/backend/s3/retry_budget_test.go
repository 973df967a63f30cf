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
	"github.com/backy/backy/blockstore/backend/retry"
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

func policyOn(c *fakeClock, attempts int, budget time.Duration) retry.Options {
	return retry.Options{MaxAttempts: attempts, For: budget, BaseBackoff: 100 * time.Millisecond, MaxBackoff: 10 * time.Second, Now: c.now, Sleep: c.sleep}
}

// TestRetryBudget (issue 13 item 15): transient failures are retried for
// the budget, not for a fixed number of attempts. The policy itself is
// tested in package retry (TestRetryBudget there); here the S3 errors
// under it: each kind retried or not as it should be, and the message of
// a server given up after the budget.
func TestRetryBudget(t *testing.T) {
	refused := fmt.Errorf("dial: %w", syscall.ECONNREFUSED)
	start := time.Unix(1_000_000, 0)
	b := &bucket{o: Options{Bucket: "bk", Endpoint: "http://e"}}

	t.Run("outage shorter than the budget", func(t *testing.T) {
		for _, outage := range []time.Duration{2 * time.Second, 40 * time.Second, 4 * time.Minute} {
			c := &fakeClock{t: start}
			err := retry.Do(t.Context(), policyOn(c, 0, 5*time.Minute), func(context.Context) error {
				if c.t.Sub(start) < outage {
					return b.opErr("put", "x", refused)
				}
				return nil
			})
			if err != nil {
				t.Errorf("an outage of %v within a budget of 5m: %v", outage, err)
			}
		}
	})

	t.Run("what is retried", func(t *testing.T) {
		for _, tc := range []struct {
			name  string
			err   error
			tries int
		}{
			{"refused", refused, 3},
			{"503", apiErr(503, "SlowDown"), 3},
			{"403", apiErr(403, "AccessDenied"), 1},
			{"400", apiErr(400, "InvalidArgument"), 1},
			{"not found", notFoundError{errors.New("x")}, 1},
			{"cancelled", context.Canceled, 1},
		} {
			c := &fakeClock{t: start}
			n := 0
			_ = retry.Do(t.Context(), policyOn(c, 3, time.Hour), func(context.Context) error {
				n++
				return b.opErr("get", "x", tc.err)
			})
			if n != tc.tries {
				t.Errorf("%s: %d attempts, want %d", tc.name, n, tc.tries)
			}
		}
	})

	t.Run("message", func(t *testing.T) {
		c := &fakeClock{t: start}
		err := retry.Do(t.Context(), policyOn(c, 0, time.Minute), func(context.Context) error { return b.opErr("put", "x", refused) })
		if !errors.Is(err, backend.ErrUnavailable) || !strings.Contains(err.Error(), "in 1m0s") || !strings.Contains(err.Error(), "retry_for") {
			t.Errorf("giving up after the budget: %v", err)
		}
		if !strings.Contains(err.Error(), "cannot reach http://e after ") {
			t.Errorf("giving up after the budget: %v; want the attempts after the endpoint", err)
		}
	})
}
