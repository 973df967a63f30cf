package scrub_test

import (
	"context"
	"testing"

	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/scrub"
	"github.com/backy/backy/versions/backup"
)

// TestRotationCoversAll: 20 deep-scrubs at 5 percent read every block of
// the store exactly once (the nightly maintenance's "all of it in 20
// nights"), the 21st starts the rotation again with the first one's
// blocks, and 10 plain scrubs at 10 percent check every block once.
func TestRotationCoversAll(t *testing.T) {
	e := newEnv(t)
	e.backup(randomImage(300, 31))
	e.backup(randomImage(200, 32))
	const distinct = 500
	first := map[block.ID]int{}
	for run := range 20 {
		before := maps(e.st)
		res, err := e.scrub(scrub.Options{Deep: true, Percent: 5})
		if err != nil {
			t.Fatal(err)
		}
		if run == 0 {
			for id := range maps(e.st) {
				first[id] = 1
			}
		}
		if n := res.BlocksChecked; n > distinct/20*3 {
			t.Errorf("run %d checked %d blocks, want about %d", run, n, distinct/20)
		}
		for id, n := range maps(e.st) {
			if n > before[id]+1 {
				t.Errorf("run %d read block %s twice", run, id.Short())
			}
		}
	}
	per := maps(e.st)
	if len(per) != distinct {
		t.Errorf("20 runs at 5%% read %d of %d blocks", len(per), distinct)
	}
	for id, n := range per {
		if n != 1 {
			t.Errorf("block %s read %d times in 20 runs at 5%%", id.Short(), n)
		}
	}
	// The 21st run is the first one again.
	e.st = e.store(0)
	if _, err := e.scrub(scrub.Options{Deep: true, Percent: 5}); err != nil {
		t.Fatal(err)
	}
	if got := maps(e.st); !equalKeys(got, first) {
		t.Errorf("run 21 read %d blocks, not the %d of run 1", len(got), len(first))
	}
	// Plain scrubs have their own rotation.
	e.st = e.store(0)
	var checked int64
	for range 10 {
		res, err := e.scrub(scrub.Options{Percent: 10})
		if err != nil {
			t.Fatal(err)
		}
		checked += res.BlocksChecked
	}
	if checked != distinct || e.st.checks.Load() != distinct {
		t.Errorf("10 scrubs at 10%%: %d blocks checked with %d stat calls, want each of %d once", checked, e.st.checks.Load(), distinct)
	}
}

// TestRotationPerSelection: sampled runs of another selection (a volume)
// do not move the rotation of --all on, and a cancelled run does not move
// its own: the next run checks the window it did not finish.
func TestRotationPerSelection(t *testing.T) {
	e := newEnv(t)
	e.backup(randomImage(200, 33))
	if _, err := backup.Run(t.Context(), e.st.Store, e.db, src(randomImage(100, 34)), backup.Options{Volume: "other"}); err != nil {
		t.Fatal(err)
	}
	const distinct = 300
	for run := range 4 {
		if _, err := e.scrub(scrub.Options{Deep: true, Percent: 25}); err != nil {
			t.Fatal(err)
		}
		// Between the runs: a volume's own rotation, and a cancelled run.
		saved := e.st
		e.st = e.store(0)
		if _, err := e.scrub(scrub.Options{Deep: true, Percent: 25, Volume: "other"}); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if _, err := scrub.Run(ctx, e.st, e.db, scrub.Options{Deep: true, Percent: 25, All: true}); err == nil {
			t.Fatalf("run %d: a cancelled scrub succeeded", run)
		}
		e.st = saved
	}
	per := maps(e.st)
	if len(per) != distinct {
		t.Errorf("4 runs of --all at 25%% read %d of %d blocks", len(per), distinct)
	}
	for id, n := range per {
		if n != 1 {
			t.Errorf("block %s read %d times", id.Short(), n)
		}
	}
}
