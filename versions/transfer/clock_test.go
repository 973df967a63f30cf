package transfer_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/backy/backy/internal/clock"
	"github.com/backy/backy/versions/transfer"
)

// TestRebuildReplacedName (issue 14 item 4): the name the old metastore is
// kept under is the time of RebuildOptions.Clock in UTC, to the second,
// whatever the clock's zone (here the repeated hour of a daylight-saving
// change); a rebuild a second later keeps the next one under its own name.
// The run is timed on the clock too.
func TestRebuildReplacedName(t *testing.T) {
	s := newStore(t, false)
	withSnapshots(t, s)
	path := filepath.Join(t.TempDir(), "meta", "backy.db")
	// 02:30 CET on 26 October 2031, the second 02:30 of that night in
	// central Europe: 01:30 UTC.
	clk := clock.NewFake(time.Date(2031, 10, 26, 2, 30, 0, 0, time.FixedZone("CET", 3600)))
	if _, err := rebuild(t, s, path, transfer.RebuildOptions{Clock: clk}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{".replaced-20311026T013000Z", ".replaced-20311026T013001Z"} {
		res, err := rebuild(t, s, path, transfer.RebuildOptions{Force: true, Clock: clk})
		if err != nil {
			t.Fatal(err)
		}
		if res.KeptAside != path+want {
			t.Errorf("kept aside as %s, want %s", res.KeptAside, path+want)
		}
		if res.DurationSeconds != 0 {
			t.Errorf("a rebuild on a clock that stands still took %vs", res.DurationSeconds)
		}
		clk.Advance(time.Second)
	}
}
