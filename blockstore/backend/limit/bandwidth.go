package limit

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/backy/backy/blockstore/backend"
	"github.com/backy/backy/internal/clock"
)

// Paced limits the bytes per second of the object bodies the backend it
// wraps sends (Put) and receives (Get). Create it with Bandwidth.
type Paced struct {
	inner       backend.Backend
	read, write *limiter // nil: unlimited
}

var (
	_ backend.Backend   = (*Paced)(nil)
	_ backend.Unwrapper = (*Paced)(nil)
)

// Bandwidth wraps inner so that Put bodies go at most write bytes per
// second and Get bodies come at most read bytes per second, over any
// period longer than one object; 0 (or less) is unlimited. A Put waits
// for its turn before it is made; a Get is paid for after its body came
// (its size is unknown before), so the next request waits. Other calls
// (Stat, List, Delete, batch deletes) carry no bodies and pass through.
func Bandwidth(inner backend.Backend, read, write int64, clk clock.Clock) *Paced {
	p := &Paced{inner: inner, read: newLimiter(read), write: newLimiter(write)}
	for _, l := range []*limiter{p.read, p.write} {
		if l != nil {
			l.now = clock.Or(clk).Now
		}
	}
	return p
}

// Unwrap returns the wrapped backend.
func (p *Paced) Unwrap() backend.Backend { return p.inner }

// Put waits until the write rate allows len(data) bytes, then stores them.
func (p *Paced) Put(ctx context.Context, name string, data []byte) error {
	if err := p.write.wait(ctx, len(data)); err != nil {
		return fmt.Errorf("put %q: %w", name, err)
	}
	return p.inner.Put(ctx, name, data)
}

// Get reads the object, then waits until the read rate has allowed its
// bytes. The data is returned as the wrapped backend returned it, also
// with an error.
func (p *Paced) Get(ctx context.Context, name string, buf []byte) ([]byte, error) {
	out, err := p.inner.Get(ctx, name, buf)
	if werr := p.read.wait(ctx, len(out)); werr != nil && err == nil {
		return out[:0], fmt.Errorf("get %q: %w", name, werr)
	}
	return out, err
}

// Stat passes through.
func (p *Paced) Stat(ctx context.Context, name string) (backend.Info, error) {
	return p.inner.Stat(ctx, name)
}

// List passes through.
func (p *Paced) List(ctx context.Context, prefix string, fn func(backend.Info) error) error {
	return p.inner.List(ctx, prefix, fn)
}

// Delete passes through.
func (p *Paced) Delete(ctx context.Context, name string) error { return p.inner.Delete(ctx, name) }

// Properties returns the wrapped backend's.
func (p *Paced) Properties() backend.Properties { return p.inner.Properties() }

// Close closes the wrapped backend.
func (p *Paced) Close() error { return p.inner.Close() }

// limiter paces a byte stream to a rate: each caller reserves its bytes
// and sleeps until the stream has reached its slot. An idle period buys no
// burst. A nil limiter does not limit.
type limiter struct {
	rate float64 // bytes per second
	mu   sync.Mutex
	next time.Time // when the reserved traffic so far will have passed
	now  func() time.Time
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
