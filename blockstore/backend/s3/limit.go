package s3

import (
	"context"
	"sync"
	"time"

	"github.com/backy/backy/internal/clock"
)

// limiter paces a byte stream to a rate: each caller reserves its bytes
// and sleeps until the stream has reached its slot. An idle period buys no
// burst. A nil limiter does not limit.
type limiter struct {
	rate float64 // bytes per second
	mu   sync.Mutex
	next time.Time // when the reserved traffic so far will have passed
	// now is Options.Clock's; clock.System by default.
	now func() time.Time
}

func newLimiter(bytesPerSecond int64) *limiter {
	if bytesPerSecond <= 0 {
		return nil
	}
	return &limiter{rate: float64(bytesPerSecond), now: clock.System.Now}
}

// wait reserves n bytes and sleeps until they may go, or ctx ends (the
// reservation is then kept: the bytes may be sent by a retry).
func (l *limiter) wait(ctx context.Context, n int) error {
	if l == nil || n <= 0 {
		return ctx.Err()
	}
	d := l.reserve(n)
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// reserve books n bytes and returns how long the caller must wait: until
// the bytes reserved before have had their time. The caller's own bytes
// are paid for by the next caller, so the rate holds over any period up
// to one object.
func (l *limiter) reserve(n int) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if l.next.Before(now) {
		l.next = now // no credit for idle time
	}
	wait := l.next.Sub(now)
	l.next = l.next.Add(time.Duration(float64(n) / l.rate * float64(time.Second)))
	return wait
}
