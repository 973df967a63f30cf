package faulty

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/backy/backy/blockstore/backend"
)

// Method names a method of backend.Backend that faults can target.
type Method string

// The methods faults can target.
const (
	MethodPut    Method = "put"
	MethodGet    Method = "get"
	MethodStat   Method = "stat"
	MethodList   Method = "list"
	MethodDelete Method = "delete"
)

func (m Method) valid() bool {
	switch m {
	case MethodPut, MethodGet, MethodStat, MethodList, MethodDelete:
		return true
	}
	return false
}

// ErrDead is the error of every call to a backend that died (see
// DieAfterPuts). It is not marked backend.ErrPermanent: to the layers above
// it looks like a backend that stopped answering.
var ErrDead = errors.New("faulty: backend is dead")

// Backend wraps another backend and injects scripted faults into its
// calls.
type Backend struct {
	inner backend.Backend

	mu       sync.Mutex
	faults   []*Fault
	calls    map[Method]int
	dieAfter int // successful Puts left before death; <0: never
	dead     bool
}

var (
	_ backend.Backend   = (*Backend)(nil)
	_ backend.Unwrapper = (*Backend)(nil)
	_ backend.Hider     = (*Backend)(nil)
)

// New wraps inner. Without faults every call goes to inner unchanged.
func New(inner backend.Backend) *Backend {
	return &Backend{inner: inner, calls: map[Method]int{}, dieAfter: -1}
}

// Unwrap returns the wrapped backend.
func (b *Backend) Unwrap() backend.Backend { return b.inner }

// Hides hides the capabilities that would go around the wrapper's faults:
// batch deletes and paged listings of the wrapped backend, so that tests
// see (and can fail) every single Delete and List. Sync and temp cleanup
// pass through (backend.As finds them below).
func (b *Backend) Hides(capability any) bool {
	switch capability.(type) {
	case *backend.BatchDeleter, *backend.Pager:
		return true
	}
	return false
}

// Fault is one scripted failure of a method, configured by chaining its
// methods on the result of AddFault:
//
//	fb.AddFault(faulty.MethodPut).ErrorAfter(io.ErrUnexpectedEOF).After(3)
//
// A fault "fires" on a call it applies to. Of the faults of a method, a
// call is matched against the first one (in the order added) that has
// firings left and whose OnName predicate, if any, accepts the call's
// name; later faults wait until it is used up. While that fault skips calls
// (After), the skipped calls run normally. Configure a fault before the
// calls it should affect.
type Fault struct {
	b      *Backend
	method Method
	num    int // 1-based position among all faults, for messages

	// Guarded by b.mu.
	action
	pred  func(name string) bool
	times int // total firings; <0: unlimited
	skip  int // matching calls to let through first
	seen  int // matching calls let through so far
	fired int
}

// action is what a firing fault does to a call.
type action struct {
	errInstead error
	errAfter   error
	sleep      time.Duration
	flip       bool
	truncate   int // <0: no truncation
	firing     int // 1 for the first firing, 2 for the second…
}

// AddFault adds a fault for method m. Alone it does nothing (but counts as
// fired); chain ErrorInstead, ErrorAfter, SleepFor, FlipBit or Truncate to
// say what it does, and Repeat, After or OnName to say when.
func (b *Backend) AddFault(m Method) *Fault {
	if !m.valid() {
		panic(fmt.Sprintf("faulty: no method %q", m))
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	f := &Fault{b: b, method: m, num: len(b.faults) + 1, times: 1, action: action{truncate: -1}}
	b.faults = append(b.faults, f)
	return f
}

func (f *Fault) set(fn func()) *Fault {
	f.b.mu.Lock()
	defer f.b.mu.Unlock()
	fn()
	return f
}

// ErrorInstead makes the call fail with err without reaching the wrapped
// backend. It replaces an earlier ErrorAfter.
func (f *Fault) ErrorInstead(err error) *Fault {
	return f.set(func() { f.errInstead, f.errAfter = err, nil })
}

// ErrorAfter lets the call run on the wrapped backend and, if it succeeded
// there, reports err instead of its result: a Put that stored the object,
// a Delete that deleted it, a List that called fn for every object, all
// failing nonetheless. It replaces an earlier ErrorInstead.
func (f *Fault) ErrorAfter(err error) *Fault {
	return f.set(func() { f.errAfter, f.errInstead = err, nil })
}

// Repeat makes the fault fire n more times, n+1 in all; n < 0 makes it
// fire on every matching call from now on.
func (f *Fault) Repeat(n int) *Fault {
	return f.set(func() {
		if n < 0 {
			f.times = -1
		} else {
			f.times = n + 1
		}
	})
}

// After lets the first n calls the fault applies to run normally before it
// fires.
func (f *Fault) After(n int) *Fault {
	return f.set(func() { f.skip = n })
}

// SleepFor delays the call by d before it runs (or fails). A context
// cancelled meanwhile ends the call with an error wrapping ctx.Err().
func (f *Fault) SleepFor(d time.Duration) *Fault {
	return f.set(func() { f.sleep = d })
}

// FlipBit flips one bit in the middle of the data: of the data returned by
// a Get, or of the data a Put stores (a copy; the caller's slice is left
// alone). It panics for other methods.
func (f *Fault) FlipBit() *Fault {
	f.dataOnly("FlipBit")
	return f.set(func() { f.flip = true })
}

// Truncate keeps only the first n bytes: of the data returned by a Get, or
// of the data a Put stores. It panics for other methods.
func (f *Fault) Truncate(n int) *Fault {
	f.dataOnly("Truncate")
	if n < 0 {
		panic("faulty: Truncate to a negative length")
	}
	return f.set(func() { f.truncate = n })
}

func (f *Fault) dataOnly(what string) {
	if f.method != MethodGet && f.method != MethodPut {
		panic(fmt.Sprintf("faulty: %s on a %s fault; it applies to get and put", what, f.method))
	}
}

// OnName restricts the fault to calls whose object name (for List: the
// prefix) satisfies pred. pred runs under the wrapper's lock and must not
// call the wrapper.
func (f *Fault) OnName(pred func(name string) bool) *Fault {
	return f.set(func() { f.pred = pred })
}

// Fired returns how often the fault has fired.
func (f *Fault) Fired() int {
	f.b.mu.Lock()
	defer f.b.mu.Unlock()
	return f.fired
}

func (f *Fault) String() string {
	return fmt.Sprintf("fault #%d (%s)", f.num, f.method)
}

// VerifyAllFaultsFired reports every fault that never fired as an error of
// t: a fault the test scripted but its calls never reached.
func (b *Backend) VerifyAllFaultsFired(t testing.TB) {
	t.Helper()
	b.mu.Lock()
	var unfired []string
	for _, f := range b.faults {
		if f.fired == 0 {
			unfired = append(unfired, fmt.Sprintf("%v never fired: it let %d of the %d matching calls it skips through; %d %s calls in all",
				f, f.seen, f.skip, b.calls[f.method], f.method))
		}
	}
	b.mu.Unlock()
	for _, msg := range unfired {
		t.Errorf("faulty: %s", msg)
	}
}

// Calls returns how many calls of m the wrapper received, failed ones
// included.
func (b *Backend) Calls(m Method) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.calls[m]
}

// DieAfterPuts makes the backend die after n more successful Puts (counted
// from this call; n <= 0 kills it at once): from then on every call fails
// with ErrDead, except Properties and Close, which still reach the wrapped
// backend. A Put running when the backend dies may store its object and
// still report ErrDead, like a backend that crashed before acknowledging
// it.
func (b *Backend) DieAfterPuts(n int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.dieAfter = max(n, 0)
	if b.dieAfter == 0 {
		b.dead = true
	}
}

// Dead reports whether the backend has died.
func (b *Backend) Dead() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.dead
}

// begin counts a call, finds the fault that fires on it, sleeps and fails
// if the fault says so. It returns the fault's action, or nil.
func (b *Backend) begin(ctx context.Context, m Method, name string) (*action, error) {
	b.mu.Lock()
	b.calls[m]++
	if b.dead {
		b.mu.Unlock()
		return nil, fmt.Errorf("faulty: %s %q: %w", m, name, ErrDead)
	}
	a := b.pick(m, name)
	b.mu.Unlock()
	if a == nil {
		return nil, nil
	}
	if a.sleep > 0 {
		timer := time.NewTimer(a.sleep)
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			return nil, fmt.Errorf("faulty: %s %q: %w", m, name, ctx.Err())
		}
	}
	if a.errInstead != nil {
		return nil, a.errInstead
	}
	return a, nil
}

// pick returns the action of the fault that fires on a call, or nil. b.mu
// is held.
func (b *Backend) pick(m Method, name string) *action {
	for _, f := range b.faults {
		if f.method != m || (f.times >= 0 && f.fired >= f.times) || (f.pred != nil && !f.pred(name)) {
			continue
		}
		if f.seen < f.skip {
			f.seen++
			return nil
		}
		f.fired++
		a := f.action
		a.firing = f.fired
		return &a
	}
	return nil
}

// mangle applies FlipBit and Truncate to p in place.
func (a *action) mangle(p []byte) []byte {
	if a.truncate >= 0 && a.truncate < len(p) {
		p = p[:a.truncate]
	}
	if a.flip && len(p) > 0 {
		p[len(p)/2] ^= 1 << ((a.firing - 1) % 8)
	}
	return p
}

func (a *action) mangles() bool { return a.flip || a.truncate >= 0 }

// Put stores data on the wrapped backend, unless a fault intervenes.
func (b *Backend) Put(ctx context.Context, name string, data []byte) error {
	a, err := b.begin(ctx, MethodPut, name)
	if err != nil {
		return err
	}
	if a != nil && a.mangles() {
		data = a.mangle(slices.Clone(data))
	}
	if err := b.inner.Put(ctx, name, data); err != nil {
		return err
	}
	if a != nil && a.errAfter != nil {
		return a.errAfter
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dead {
		return fmt.Errorf("faulty: put %q: %w", name, ErrDead)
	}
	if b.dieAfter > 0 {
		b.dieAfter--
		if b.dieAfter == 0 {
			b.dead = true
		}
	}
	return nil
}

// Get reads from the wrapped backend, unless a fault intervenes.
func (b *Backend) Get(ctx context.Context, name string, buf []byte) ([]byte, error) {
	a, err := b.begin(ctx, MethodGet, name)
	if err != nil {
		return nil, err
	}
	buf, err = b.inner.Get(ctx, name, buf)
	if err != nil || a == nil {
		return buf, err
	}
	if a.errAfter != nil {
		return nil, a.errAfter
	}
	return a.mangle(buf), nil
}

// Stat asks the wrapped backend, unless a fault intervenes.
func (b *Backend) Stat(ctx context.Context, name string) (backend.Info, error) {
	a, err := b.begin(ctx, MethodStat, name)
	if err != nil {
		return backend.Info{}, err
	}
	info, err := b.inner.Stat(ctx, name)
	if err == nil && a != nil && a.errAfter != nil {
		return backend.Info{}, a.errAfter
	}
	return info, err
}

// List lists the wrapped backend, unless a fault intervenes. Faults match
// the prefix as the name.
func (b *Backend) List(ctx context.Context, prefix string, fn func(backend.Info) error) error {
	a, err := b.begin(ctx, MethodList, prefix)
	if err != nil {
		return err
	}
	err = b.inner.List(ctx, prefix, fn)
	if err == nil && a != nil && a.errAfter != nil {
		return a.errAfter
	}
	return err
}

// Delete deletes on the wrapped backend, unless a fault intervenes.
func (b *Backend) Delete(ctx context.Context, name string) error {
	a, err := b.begin(ctx, MethodDelete, name)
	if err != nil {
		return err
	}
	err = b.inner.Delete(ctx, name)
	if err == nil && a != nil && a.errAfter != nil {
		return a.errAfter
	}
	return err
}

// Properties returns the wrapped backend's properties.
func (b *Backend) Properties() backend.Properties { return b.inner.Properties() }

// Close closes the wrapped backend, also after the backend died.
func (b *Backend) Close() error { return b.inner.Close() }
