package clock_test

import (
	"sync"
	"testing"
	"time"

	"github.com/backy/backy/internal/clock"
)

func TestFake(t *testing.T) {
	t0 := time.Date(2026, 3, 29, 0, 30, 0, 0, time.UTC)
	f := clock.NewFake(t0)
	if got := f.Now(); !got.Equal(t0) {
		t.Fatalf("Now = %v, want %v", got, t0)
	}
	if got := f.Now(); !got.Equal(t0) {
		t.Fatalf("a Fake moved by itself: %v", got)
	}
	if got := f.Advance(90 * time.Minute); !got.Equal(t0.Add(90 * time.Minute)) {
		t.Fatalf("Advance = %v", got)
	}
	if got := f.Since(t0); got != 90*time.Minute {
		t.Fatalf("Since = %v, want 1h30m", got)
	}
	f.Set(t0.Add(-time.Hour))
	if got := f.Since(t0); got != -time.Hour {
		t.Fatalf("Since after Set back = %v, want -1h", got)
	}
	var zero clock.Fake
	if !zero.Now().IsZero() {
		t.Fatalf("zero Fake reads %v", zero.Now())
	}
}

// TestFakeConcurrent: Advance and Now from many goroutines (run with
// -race); no advance is lost.
func TestFakeConcurrent(t *testing.T) {
	f := clock.NewFake(time.Unix(0, 0))
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 1000 {
				f.Advance(time.Second)
				_ = f.Now()
				_ = f.Since(time.Unix(0, 0))
			}
		})
	}
	wg.Wait()
	if got := f.Since(time.Unix(0, 0)); got != 8000*time.Second {
		t.Fatalf("after 8000 advances of 1s: %v", got)
	}
}

func TestOr(t *testing.T) {
	if _, ok := clock.Or(nil).(clock.SystemClock); !ok {
		t.Fatalf("Or(nil) = %T, want the System clock", clock.Or(nil))
	}
	f := clock.NewFake(time.Unix(5, 0))
	if clock.Or(f) != clock.Clock(f) {
		t.Fatal("Or(f) is not f")
	}
}

func TestSystem(t *testing.T) {
	before := clock.System.Now()
	if d := clock.System.Since(before); d < 0 {
		t.Fatalf("System.Since went back: %v", d)
	}
	if dl := clock.Deadline(time.Hour); !dl.After(before) {
		t.Fatalf("Deadline(1h) = %v, not after %v", dl, before)
	}
}
