package s3

import (
	"testing"
	"time"

	"github.com/backy/backy/internal/clock"
)

// TestOptionsClock (issue 14 item 4): Options.Clock is the one clock of
// the backend: the stack of wrappers around the bucket (retry budget,
// bandwidth limits) gets it; nil is the system clock there.
func TestOptionsClock(t *testing.T) {
	at := time.Date(2031, 1, 2, 3, 4, 5, 0, time.UTC)
	fake := clock.NewFake(at)
	o := Options{Bucket: "b", Endpoint: "http://127.0.0.1:1", PathStyle: true, AccessKeyID: "k", SecretAccessKey: "s",
		BandwidthRead: 1 << 20, BandwidthWrite: 1 << 20, Clock: fake}
	bk, err := newBucket(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	if got := bk.stackOptions().Clock; got != clock.Clock(fake) {
		t.Errorf("the stack's clock is %v, want Options.Clock", got)
	}
	o.Clock = nil
	if bk, err = newBucket(t.Context(), o); err != nil {
		t.Fatal(err)
	}
	if got := bk.stackOptions().Clock; got != nil {
		t.Errorf("without Options.Clock the stack's clock is %v, want nil (the system clock)", got)
	}
}
