package backup_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/internal/clock"
	"github.com/backy/backy/versions/backup"
)

// TestBackupClock (issue 14 item 4): a backup takes its date, the time in
// its uid and its duration from Options.Clock: on a Fake clock that stands
// still the version is dated the clock's second (in UTC, whatever the
// clock's zone) and took no time at all.
func TestBackupClock(t *testing.T) {
	e := newEnv(t, 64<<10, blockstore.Options{})
	loc := time.FixedZone("UTC+5:30", 5*3600+1800)
	at := time.Date(2031, 10, 26, 2, 30, 15, 987_000_000, loc)
	v := e.mustBackup(newGen(1).random(1<<20), backup.Options{Clock: clock.NewFake(at)})
	if want := at.UTC().Truncate(time.Second); !v.Date.Equal(want) || v.Date.Location() != time.UTC {
		t.Errorf("version dated %v, want %v", v.Date, want)
	}
	if prefix := fmt.Sprintf("V%012x", at.UnixMilli()); !strings.HasPrefix(v.UID, prefix) {
		t.Errorf("uid %s does not carry the clock's time (%s...)", v.UID, prefix)
	}
	if v.DurationSeconds != 0 {
		t.Errorf("a backup on a clock that stands still took %vs", v.DurationSeconds)
	}
	stored, err := e.db.Version(v.UID)
	if err != nil {
		t.Fatal(err)
	}
	if !stored.Date.Equal(v.Date) || stored.DurationSeconds != 0 {
		t.Errorf("stored version dated %v, %vs", stored.Date, stored.DurationSeconds)
	}
}
