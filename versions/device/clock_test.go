package device_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/backy/backy/internal/clock"
	"github.com/backy/backy/versions/backup"
	"github.com/backy/backy/versions/device"
)

// TestOverlayClock (issue 14 item 4): a durable overlay is stamped from
// Options.Clock: Created when the session opens, Saved at the flush that
// last changed its journal, both in UTC to the second, as an orphan shows
// them after a crash.
func TestOverlayClock(t *testing.T) {
	e := newEnv(t)
	v := e.backup(image(21, 4), backup.Options{})
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "nbd")
	opened := time.Date(2031, 3, 30, 1, 59, 59, 600_000_000, time.FixedZone("CET", 3600))
	clk := clock.NewFake(opened)
	d, err := device.Open(ctx, e.db, e.st, v.UID, device.Options{Durable: true, OverlayDir: dir, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	clk.Advance(90 * time.Minute)
	if err := d.WriteAt(ctx, []byte("changed"), 10); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	device.Crash(d)
	found := orphans(t, dir)
	if len(found) != 1 || found[0].Err != nil {
		t.Fatalf("orphans %v, want one", found)
	}
	info := found[0].Info
	wantCreated := opened.UTC().Truncate(time.Second)
	wantSaved := opened.Add(90 * time.Minute).UTC().Truncate(time.Second)
	if !info.Created.Equal(wantCreated) || !info.Saved.Equal(wantSaved) {
		t.Errorf("overlay created %v, saved %v; want %v and %v", info.Created, info.Saved, wantCreated, wantSaved)
	}
	found[0].Close()
}
