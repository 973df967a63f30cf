package scrub_test

import (
	"testing"
	"time"

	"github.com/backy/backy/internal/clock"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/scrub"
)

// TestScrubRecordsClock (issue 14 item 4): the scrub records of a version
// (LastScrub, LastDeepScrub) are stamped from Options.Clock, in UTC, and
// the run is timed on it: a scrub, then a deep-scrub a day later on the
// same Fake clock.
func TestScrubRecordsClock(t *testing.T) {
	e := newEnv(t)
	v := e.backup(randomImage(8, 1))
	cest := time.FixedZone("CEST", 2*3600)
	clk := clock.NewFake(time.Date(2031, 3, 30, 3, 30, 0, 0, cest))
	at := func(r *metastore.ScrubRecord) time.Time {
		if r == nil {
			return time.Time{}
		}
		return r.At
	}

	res, err := e.scrub(scrub.Options{Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	got, err := e.db.Version(v.UID)
	if err != nil {
		t.Fatal(err)
	}
	if want := clk.Now(); !at(got.LastScrub).Equal(want) || got.LastScrub.At.Location() != time.UTC || got.LastDeepScrub != nil {
		t.Fatalf("after a scrub: last scrub %v, last deep-scrub %v; want %v (UTC) and none", at(got.LastScrub), at(got.LastDeepScrub), want.UTC())
	}
	if res.DurationSeconds != 0 {
		t.Errorf("a scrub on a clock that stands still took %vs", res.DurationSeconds)
	}

	scrubbed := clk.Now()
	clk.Advance(24*time.Hour + time.Second)
	if _, err := e.scrub(scrub.Options{Deep: true, Clock: clk}); err != nil {
		t.Fatal(err)
	}
	if got, err = e.db.Version(v.UID); err != nil {
		t.Fatal(err)
	}
	if want := scrubbed.Add(24*time.Hour + time.Second); !at(got.LastScrub).Equal(want) || !at(got.LastDeepScrub).Equal(want) {
		t.Fatalf("after a deep-scrub: last scrub %v, last deep-scrub %v; want both %v", at(got.LastScrub), at(got.LastDeepScrub), want.UTC())
	}
}
