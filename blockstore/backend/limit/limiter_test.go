package limit

import (
	"testing"
	"time"
)

// TestLimiter moved here from package s3 with the limiter; unchanged.
func TestLimiter(t *testing.T) {
	now := time.Unix(1000, 0)
	l := newLimiter(1 << 20) // 1 MiB/s
	l.now = func() time.Time { return now }
	if d := l.reserve(1 << 20); d != 0 {
		t.Errorf("first reservation waits %v, want 0", d)
	}
	if d := l.reserve(512 << 10); d != time.Second {
		t.Errorf("second waits %v, want 1s", d)
	}
	now = now.Add(10 * time.Second) // idle: no credit
	if d := l.reserve(1 << 20); d != 0 {
		t.Errorf("after idle waits %v, want 0", d)
	}
	if d := l.reserve(1); d != time.Second {
		t.Errorf("after idle, the next waits %v, want 1s (no burst credit)", d)
	}
	if newLimiter(0) != nil {
		t.Error("a zero rate made a limiter")
	}
	var nl *limiter
	if err := nl.wait(t.Context(), 100); err != nil {
		t.Error(err)
	}
}
