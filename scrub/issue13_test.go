package scrub_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/backy/backy/scrub"
)

// TestSnapshotCheck (issue 13 item 1): a version whose metadata snapshot
// in the data backend is missing or damaged is a failure of its own kind
// (exit 80 in the CLI), is listed in SnapshotsBad and marked stale so the
// next sync writes it again; its blocks and status are untouched.
func TestSnapshotCheck(t *testing.T) {
	for _, deep := range []bool{false, true} {
		e := newEnv(t)
		v1 := e.backup(randomImage(4, 1))
		v2 := e.backup(randomImage(3, 2))
		for _, uid := range []string{v1.UID, v2.UID} {
			// As a sync would: the snapshots are current.
			if _, err := e.db.SetSnapshot(uid, 1<<40, 1); err != nil {
				t.Fatal(err)
			}
		}
		var asked []string
		o := scrub.Options{Deep: deep, Snapshot: func(_ context.Context, uid string) (string, string, error) {
			asked = append(asked, uid)
			if uid == v1.UID {
				return scrub.SnapshotMissing, "gone", nil
			}
			return scrub.SnapshotOK, "", nil
		}}
		res, err := e.scrub(o)
		if !errors.Is(err, scrub.ErrDamage) {
			t.Fatalf("deep %v: scrub = %v, want ErrDamage", deep, err)
		}
		if !slices.Equal(res.SnapshotsBad, []string{v1.UID}) || len(res.InvalidVersions) != 0 || res.FailuresTotal != 1 {
			t.Errorf("deep %v: result %+v", deep, res)
		}
		if len(res.Failures) != 1 || res.Failures[0].Kind != scrub.FailSnapshot || res.Failures[0].Reason != "gone" {
			t.Errorf("deep %v: failures %+v", deep, res.Failures)
		}
		for _, vr := range res.Versions {
			want := scrub.SnapshotOK
			if vr.UID == v1.UID {
				want = scrub.SnapshotMissing
			}
			if vr.Snapshot != want || !vr.OK || vr.Status != "valid" {
				t.Errorf("deep %v: version result %+v", deep, vr)
			}
		}
		if len(asked) != 2 {
			t.Errorf("deep %v: the snapshot check ran for %v", deep, asked)
		}
		pending, err := e.db.PendingSnapshots()
		if err != nil || !slices.Equal(pending, []string{v1.UID}) {
			t.Errorf("deep %v: pending after the scrub %v, %v; want %s", deep, pending, err, v1.UID)
		}
		// An error of the check stops the scrub.
		boom := errors.New("backend down")
		o.Snapshot = func(context.Context, string) (string, string, error) { return "", "", boom }
		if _, err := e.scrub(o); !errors.Is(err, boom) {
			t.Errorf("deep %v: scrub with a failing check = %v", deep, err)
		}
	}
}
