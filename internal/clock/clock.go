package clock

import (
	"sync"
	"time"
)

// Clock tells the time. Implementations are safe for concurrent use.
type Clock interface {
	// Now is the current time.
	Now() time.Time
	// Since is the time elapsed since t (Now().Sub(t)); on the System
	// clock it uses the monotonic reading, as time.Since does.
	Since(t time.Time) time.Duration
}

// SystemClock is the operating system's clock. It has no state: every
// value of it is System.
type SystemClock struct{}

// System is the real clock: what the commands pass, and what a nil Clock
// in any Options means.
var System SystemClock

var _ Clock = System

// Now is time.Now.
func (SystemClock) Now() time.Time { return time.Now() }

// Since is time.Since.
func (SystemClock) Since(t time.Time) time.Duration { return time.Since(t) }

// Or returns c, or System when c is nil: the default of every Options.Clock.
func Or(c Clock) Clock {
	if c == nil {
		return System
	}
	return c
}

// Deadline returns the instant d from now on the real clock (d <= 0: one
// that has come, which makes blocked I/O return at once), for the deadlines the runtime
// measures against the real clock: net.Conn.SetDeadline and the like. It is
// not a Clock method on purpose: a Fake clock must not move an I/O deadline.
// Nothing else may use it as a way to read the time.
func Deadline(d time.Duration) time.Time {
	return time.Now().Add(d)
}

// Fake is a clock for tests: it stands still until Set or Advance moves it.
// Its zero value reads the zero time; it is safe for concurrent use.
type Fake struct {
	mu sync.Mutex
	t  time.Time
}

var _ Clock = (*Fake)(nil)

// NewFake returns a Fake clock reading t.
func NewFake(t time.Time) *Fake { return &Fake{t: t} }

// Now returns the time the clock was set to.
func (f *Fake) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.t
}

// Since returns Now().Sub(t).
func (f *Fake) Since(t time.Time) time.Duration { return f.Now().Sub(t) }

// Set sets the clock to t (backwards too: a clock that is corrected).
func (f *Fake) Set(t time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.t = t
}

// Advance moves the clock by d (negative: back) and returns the new time.
func (f *Fake) Advance(d time.Duration) time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.t = f.t.Add(d)
	return f.t
}
