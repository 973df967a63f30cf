package faulty

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/backy/backy/blockstore/backend"
	"github.com/backy/backy/blockstore/backend/backendtest"
	"github.com/backy/backy/blockstore/backend/file"
)

func newTest(t testing.TB) *Backend {
	t.Helper()
	inner, err := file.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return New(inner)
}

// TestTransparent: without faults the wrapper is a conforming backend.
func TestTransparent(t *testing.T) {
	backendtest.Run(t, func(t *testing.T) backend.Backend { return newTest(t) })
}

var errBoom = errors.New("boom")

func mustPut(t *testing.T, b backend.Backend, name, data string) {
	t.Helper()
	if err := b.Put(t.Context(), name, []byte(data)); err != nil {
		t.Fatalf("Put(%q): %v", name, err)
	}
}

// innerGet reads past the wrapper.
func innerGet(t *testing.T, b *Backend, name string) (string, error) {
	t.Helper()
	p, err := b.Unwrap().Get(t.Context(), name, nil)
	return string(p), err
}

func TestErrorInstead(t *testing.T) {
	b := newTest(t)
	ctx := t.Context()
	mustPut(t, b, "x", "old")
	for _, m := range []Method{MethodPut, MethodGet, MethodStat, MethodList, MethodDelete} {
		b.AddFault(m).ErrorInstead(errBoom)
	}
	if err := b.Put(ctx, "x", []byte("new")); err != errBoom {
		t.Errorf("Put = %v", err)
	}
	if got, err := b.Get(ctx, "x", nil); err != errBoom || got != nil {
		t.Errorf("Get = %q, %v", got, err)
	}
	if _, err := b.Stat(ctx, "x"); err != errBoom {
		t.Errorf("Stat = %v", err)
	}
	called := false
	if err := b.List(ctx, "", func(backend.Info) error { called = true; return nil }); err != errBoom || called {
		t.Errorf("List = %v, fn called %v", err, called)
	}
	if err := b.Delete(ctx, "x"); err != errBoom {
		t.Errorf("Delete = %v", err)
	}
	// Nothing reached the inner backend.
	if got, err := innerGet(t, b, "x"); got != "old" || err != nil {
		t.Errorf("inner object = %q, %v; want the old one", got, err)
	}
	b.VerifyAllFaultsFired(t)
	// Each fired once: now calls go through.
	if got, err := b.Get(ctx, "x", nil); err != nil || string(got) != "old" {
		t.Errorf("second Get = %q, %v", got, err)
	}
}

func TestErrorAfter(t *testing.T) {
	b := newTest(t)
	ctx := t.Context()
	for _, m := range []Method{MethodPut, MethodGet, MethodStat, MethodList, MethodDelete} {
		b.AddFault(m).ErrorAfter(errBoom)
	}
	if err := b.Put(ctx, "x", []byte("new")); err != errBoom {
		t.Errorf("Put = %v", err)
	}
	if got, err := innerGet(t, b, "x"); got != "new" || err != nil {
		t.Errorf("inner object = %q, %v; want it stored despite the error", got, err)
	}
	if got, err := b.Get(ctx, "x", nil); err != errBoom || got != nil {
		t.Errorf("Get = %q, %v", got, err)
	}
	if _, err := b.Stat(ctx, "x"); err != errBoom {
		t.Errorf("Stat = %v", err)
	}
	var listed []string
	if err := b.List(ctx, "", func(i backend.Info) error { listed = append(listed, i.Name); return nil }); err != errBoom || len(listed) != 1 {
		t.Errorf("List = %v after listing %v", err, listed)
	}
	if err := b.Delete(ctx, "x"); err != errBoom {
		t.Errorf("Delete = %v", err)
	}
	if _, err := innerGet(t, b, "x"); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("inner Get after Delete = %v, want it deleted despite the error", err)
	}
	b.VerifyAllFaultsFired(t)

	// A failing inner call reports its own error, and the fault still
	// counts as fired.
	f := b.AddFault(MethodGet).ErrorAfter(errBoom)
	if _, err := b.Get(ctx, "missing", nil); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("Get(missing) = %v, want ErrNotFound", err)
	}
	if f.Fired() != 1 {
		t.Errorf("Fired = %d", f.Fired())
	}
}

func TestOrderRepeatAfter(t *testing.T) {
	b := newTest(t)
	ctx := t.Context()
	err1, err2 := errors.New("one"), errors.New("two")
	f1 := b.AddFault(MethodPut).ErrorInstead(err1).After(1).Repeat(1)
	f2 := b.AddFault(MethodPut).ErrorInstead(err2)
	var got []string
	for i := range 6 {
		err := b.Put(ctx, fmt.Sprintf("o%d", i), []byte("x"))
		switch {
		case err == nil:
			got = append(got, "ok")
		default:
			got = append(got, err.Error())
		}
	}
	want := "ok one one two ok ok"
	if strings.Join(got, " ") != want {
		t.Errorf("results %v, want %s", got, want)
	}
	if f1.Fired() != 2 || f2.Fired() != 1 {
		t.Errorf("fired %d and %d, want 2 and 1", f1.Fired(), f2.Fired())
	}
	if n := b.Calls(MethodPut); n != 6 {
		t.Errorf("Calls(put) = %d, want 6", n)
	}
	if n := b.Calls(MethodGet); n != 0 {
		t.Errorf("Calls(get) = %d, want 0", n)
	}
	b.VerifyAllFaultsFired(t)

	forever := b.AddFault(MethodStat).ErrorInstead(errBoom).Repeat(-1)
	for range 10 {
		if _, err := b.Stat(ctx, "o0"); err != errBoom {
			t.Fatalf("Stat = %v, want the unlimited fault", err)
		}
	}
	if forever.Fired() != 10 {
		t.Errorf("Fired = %d, want 10", forever.Fired())
	}
}

func TestOnName(t *testing.T) {
	b := newTest(t)
	ctx := t.Context()
	blocks := func(name string) bool { return strings.HasPrefix(name, "blocks/") }
	f := b.AddFault(MethodPut).ErrorInstead(errBoom).OnName(blocks).Repeat(1)
	mustPut(t, b, "versions/v1", "v") // does not match, does not use up the fault
	if err := b.Put(ctx, "blocks/1", []byte("b")); err != errBoom {
		t.Errorf("Put(blocks/1) = %v", err)
	}
	mustPut(t, b, "versions/v2", "v")
	if err := b.Put(ctx, "blocks/2", []byte("b")); err != errBoom {
		t.Errorf("Put(blocks/2) = %v", err)
	}
	mustPut(t, b, "blocks/3", "b")
	if f.Fired() != 2 {
		t.Errorf("Fired = %d", f.Fired())
	}
	// For List the prefix is the name.
	b.AddFault(MethodList).ErrorInstead(errBoom).OnName(blocks)
	if err := b.List(ctx, "versions/", func(backend.Info) error { return nil }); err != nil {
		t.Errorf("List(versions/) = %v", err)
	}
	if err := b.List(ctx, "blocks/", func(backend.Info) error { return nil }); err != errBoom {
		t.Errorf("List(blocks/) = %v", err)
	}
	b.VerifyAllFaultsFired(t)
}

func TestSleepFor(t *testing.T) {
	b := newTest(t)
	mustPut(t, b, "x", "x")
	b.AddFault(MethodGet).SleepFor(30 * time.Millisecond)
	start := time.Now()
	if got, err := b.Get(t.Context(), "x", nil); err != nil || string(got) != "x" {
		t.Errorf("Get = %q, %v", got, err)
	}
	if d := time.Since(start); d < 30*time.Millisecond {
		t.Errorf("Get took %v, want at least 30ms", d)
	}
	// A cancelled context ends the sleep.
	b.AddFault(MethodPut).SleepFor(time.Hour).ErrorInstead(errBoom)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	start = time.Now()
	if err := b.Put(ctx, "y", []byte("y")); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Put = %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Put slept %v despite its context", d)
	}
	b.VerifyAllFaultsFired(t)
}

func TestCorruption(t *testing.T) {
	b := newTest(t)
	ctx := t.Context()
	data := bytes.Repeat([]byte{0x55}, 100)
	mustPut(t, b, "x", string(data))

	b.AddFault(MethodGet).FlipBit()
	got, err := b.Get(ctx, "x", nil)
	if err != nil || len(got) != len(data) || diffBits(got, data) != 1 {
		t.Errorf("Get with FlipBit = %x, %v; want one bit flipped", got, err)
	}
	b.AddFault(MethodGet).Truncate(10)
	if got, err := b.Get(ctx, "x", nil); err != nil || !bytes.Equal(got, data[:10]) {
		t.Errorf("Get with Truncate(10) = %x, %v", got, err)
	}
	b.AddFault(MethodGet).Truncate(1000) // longer than the data: no change
	if got, err := b.Get(ctx, "x", nil); err != nil || !bytes.Equal(got, data) {
		t.Errorf("Get with Truncate(1000) = %x, %v", got, err)
	}
	// The stored object is intact.
	if got, err := innerGet(t, b, "x"); err != nil || got != string(data) {
		t.Errorf("inner object changed: %x, %v", got, err)
	}

	// On Put, the stored copy is corrupt, the caller's data is not.
	b.AddFault(MethodPut).FlipBit()
	if err := b.Put(ctx, "flipped", data); err != nil {
		t.Fatal(err)
	}
	b.AddFault(MethodPut).Truncate(3)
	if err := b.Put(ctx, "short", data); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(data, bytes.Repeat([]byte{0x55}, 100)) {
		t.Error("Put with a fault changed the caller's data")
	}
	if got, _ := innerGet(t, b, "flipped"); diffBits([]byte(got), data) != 1 {
		t.Errorf("stored %x, want one bit flipped", got)
	}
	if got, _ := innerGet(t, b, "short"); got != string(data[:3]) {
		t.Errorf("stored %x, want 3 bytes", got)
	}
	b.VerifyAllFaultsFired(t)

	for _, m := range []Method{MethodStat, MethodList, MethodDelete} {
		for what, f := range map[string]func(*Fault){"FlipBit": func(f *Fault) { f.FlipBit() }, "Truncate": func(f *Fault) { f.Truncate(1) }} {
			func() {
				defer func() {
					if recover() == nil {
						t.Errorf("%s on a %s fault did not panic", what, m)
					}
				}()
				f(New(b).AddFault(m))
			}()
		}
	}
}

func diffBits(a, b []byte) int {
	n := 0
	for i := range min(len(a), len(b)) {
		for x := a[i] ^ b[i]; x != 0; x &= x - 1 {
			n++
		}
	}
	return n
}

// recorder is a testing.TB that records errors instead of failing.
type recorder struct {
	testing.TB
	mu     sync.Mutex
	errors []string
}

func (r *recorder) Helper() {}
func (r *recorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}

func TestVerifyAllFaultsFired(t *testing.T) {
	b := newTest(t)
	b.AddFault(MethodPut).ErrorInstead(errBoom)
	b.AddFault(MethodGet).ErrorInstead(errBoom).After(5)
	b.Put(t.Context(), "x", []byte("x"))
	b.Get(t.Context(), "x", nil)

	rec := &recorder{TB: t}
	b.VerifyAllFaultsFired(rec)
	if len(rec.errors) != 1 || !strings.Contains(rec.errors[0], "#2 (get) never fired") {
		t.Errorf("VerifyAllFaultsFired reported %q, want fault #2 (get)", rec.errors)
	}

	rec = &recorder{TB: t}
	New(b).VerifyAllFaultsFired(rec)
	if len(rec.errors) != 0 {
		t.Errorf("VerifyAllFaultsFired without faults reported %q", rec.errors)
	}
}

func TestDieAfterPuts(t *testing.T) {
	b := newTest(t)
	ctx := t.Context()
	b.AddFault(MethodPut).ErrorInstead(errBoom)
	b.DieAfterPuts(2)
	if err := b.Put(ctx, "a", []byte("a")); err != errBoom {
		t.Fatalf("Put = %v", err) // a failed Put does not count
	}
	mustPut(t, b, "a", "a")
	if b.Dead() {
		t.Fatal("dead after one Put")
	}
	mustPut(t, b, "b", "b")
	if !b.Dead() {
		t.Fatal("alive after two Puts")
	}
	check := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, ErrDead) {
			t.Errorf("%s on a dead backend = %v, want ErrDead", what, err)
		}
	}
	check("Put", b.Put(ctx, "c", []byte("c")))
	_, err := b.Get(ctx, "a", nil)
	check("Get", err)
	_, err = b.Stat(ctx, "a")
	check("Stat", err)
	check("List", b.List(ctx, "", func(backend.Info) error { return nil }))
	check("Delete", b.Delete(ctx, "a"))
	if _, err := innerGet(t, b, "c"); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("a Put to the dead backend stored its object: %v", err)
	}
	if b.Properties().Location == "" {
		t.Error("no Properties from a dead backend")
	}
	if err := b.Close(); err != nil {
		t.Errorf("Close of a dead backend: %v", err)
	}
	if n := b.Calls(MethodPut); n != 4 {
		t.Errorf("Calls(put) = %d, want 4", n)
	}

	b2 := newTest(t)
	b2.DieAfterPuts(0)
	check("Put after DieAfterPuts(0)", b2.Put(ctx, "x", []byte("x")))
}

// TestDieConcurrently: of many concurrent Puts exactly n report success.
func TestDieConcurrently(t *testing.T) {
	b := newTest(t)
	b.DieAfterPuts(10)
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok := 0
	for i := range 40 {
		wg.Go(func() {
			err := b.Put(t.Context(), fmt.Sprintf("o%d", i), []byte("x"))
			if err != nil && !errors.Is(err, ErrDead) {
				t.Errorf("Put: %v", err)
			}
			if err == nil {
				mu.Lock()
				ok++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if ok != 10 {
		t.Errorf("%d Puts succeeded, want 10", ok)
	}
}

// TestConcurrentFaults: a repeated fault fires exactly as often as
// scripted, whatever the number of goroutines.
func TestConcurrentFaults(t *testing.T) {
	b := newTest(t)
	mustPut(t, b, "x", "x")
	f := b.AddFault(MethodGet).ErrorInstead(errBoom).After(10).Repeat(49)
	var wg sync.WaitGroup
	var mu sync.Mutex
	failed := 0
	for range 16 {
		wg.Go(func() {
			for range 10 {
				_, err := b.Get(t.Context(), "x", nil)
				if err == errBoom {
					mu.Lock()
					failed++
					mu.Unlock()
				} else if err != nil {
					t.Errorf("Get: %v", err)
				}
			}
		})
	}
	wg.Wait()
	if failed != 50 || f.Fired() != 50 || b.Calls(MethodGet) != 160 {
		t.Errorf("%d failures, %d firings, %d calls; want 50, 50, 160", failed, f.Fired(), b.Calls(MethodGet))
	}
}

func TestUnwrap(t *testing.T) {
	inner, err := file.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var b backend.Backend = New(inner)
	u, ok := b.(backend.Unwrapper)
	if !ok || u.Unwrap() != inner {
		t.Error("Unwrap does not return the inner backend")
	}
	if b.Properties() != inner.Properties() {
		t.Error("Properties differ from the inner backend's")
	}
}

func TestBadMethod(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("AddFault of an unknown method did not panic")
		}
	}()
	newTest(t).AddFault("close")
}
