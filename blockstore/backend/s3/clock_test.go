package s3

import (
	"testing"
	"time"

	"github.com/backy/backy/internal/clock"
)

// TestOptionsClock (issue 14 item 4): Options.Clock is the one clock of
// the backend: the retry budget and both bandwidth limiters read it; nil
// is the system clock.
func TestOptionsClock(t *testing.T) {
	at := time.Date(2031, 1, 2, 3, 4, 5, 0, time.UTC)
	o := Options{Bucket: "b", Endpoint: "http://127.0.0.1:1", PathStyle: true, AccessKeyID: "k", SecretAccessKey: "s",
		BandwidthRead: 1 << 20, BandwidthWrite: 1 << 20, Clock: clock.NewFake(at)}
	b, err := newBackend(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for name, now := range map[string]func() time.Time{"retry": b.retry.now, "read limiter": b.readBW.now, "write limiter": b.writeBW.now} {
		if now == nil || !now().Equal(at) {
			t.Errorf("the %s does not read Options.Clock", name)
		}
	}

	o.Clock = nil
	before := clock.System.Now()
	if b, err = newBackend(t.Context(), o); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	now := b.retry.now
	if now == nil {
		now = clock.System.Now // what run uses for nil
	}
	for name, now := range map[string]func() time.Time{"retry": now, "read limiter": b.readBW.now, "write limiter": b.writeBW.now} {
		if got := now(); got.Before(before) || got.Year() == at.Year() {
			t.Errorf("without Options.Clock the %s reads %v, not the system clock", name, got)
		}
	}
}
