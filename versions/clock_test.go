package versions_test

import (
	"errors"
	"testing"
	"time"

	"github.com/backy/backy/internal/clock"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/versions"
)

// TestRemoveMinAgeClock (issue 14 item 4): without Now, rm's minimum age
// is measured on RemoveOptions.Clock: a version is too young until the
// clock has moved past its date plus MinAge, to the second.
func TestRemoveMinAgeClock(t *testing.T) {
	db := newDB(t)
	made := time.Date(2031, 3, 30, 1, 30, 0, 0, time.UTC)
	uid := addVersion(t, db, "vol", made, metastore.StatusValid, false)
	addVersion(t, db, "vol", made.Add(-time.Hour), metastore.StatusValid, false)
	clk := clock.NewFake(made.Add(7*24*time.Hour - time.Second))
	o := versions.RemoveOptions{MinAge: 7 * 24 * time.Hour, Clock: clk}
	if err := versions.Remove(db, uid, o); !errors.Is(err, versions.ErrTooYoung) {
		t.Fatalf("a second before its minimum age: Remove = %v, want ErrTooYoung", err)
	}
	clk.Advance(time.Second)
	if err := versions.Remove(db, uid, o); err != nil {
		t.Fatalf("at its minimum age: Remove = %v", err)
	}
}
