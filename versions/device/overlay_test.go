package device_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/backy/backy/metastore"
	"github.com/backy/backy/versions"
	"github.com/backy/backy/versions/backup"
	"github.com/backy/backy/versions/device"
)

// Durable overlays (issue 13 item 9: copy-on-write acknowledged FLUSH and
// FUA but kept the writes in an unlinked file, lost with the process).

// overlayFiles lists the overlay files in dir (not its lock).
func overlayFiles(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if e.Name() != ".lock" {
			out = append(out, e.Name())
		}
	}
	return out
}

func durableOpen(t *testing.T, e *env, uid, dir string) *device.Device {
	t.Helper()
	d, err := device.Open(context.Background(), e.db, e.st, uid, device.Options{Durable: true, OverlayDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func orphans(t *testing.T, dir string) []*device.Orphan {
	t.Helper()
	found, err := device.Orphans(dir)
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// TestDurableOverlayCrashRecovery: after a crash, the writes acknowledged
// before the last flush are in the orphaned overlay, blocks first written
// after it are not, and the orphan becomes the version the session would
// have made.
func TestDurableOverlayCrashRecovery(t *testing.T) {
	e := newEnv(t)
	img := image(11, 8)
	v := e.backup(img, backup.Options{})
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "nbd")
	d := durableOpen(t, e, v.UID, dir)
	if d.Session() == "" || !strings.HasPrefix(filepath.Base(d.OverlayPath()), v.UID+"-") {
		t.Fatalf("durable overlay %q of session %q", d.OverlayPath(), d.Session())
	}
	a := bytes.Repeat([]byte{0xa1}, 1000)
	full := bytes.Repeat([]byte{0xa5}, bs)
	for _, w := range []struct {
		off int64
		p   []byte
	}{{100, a}, {5 * bs, full}} {
		if err := d.WriteAt(ctx, w.p, w.off); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Zero(ctx, 6*bs, bs); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// After the flush: a block not yet dirty, and one that is.
	if err := d.WriteAt(ctx, bytes.Repeat([]byte{0xb2}, 300), 2*bs+7); err != nil {
		t.Fatal(err)
	}
	if err := d.WriteAt(ctx, bytes.Repeat([]byte{0xc3}, 200), 5000); err != nil {
		t.Fatal(err)
	}
	device.Crash(d)

	found := orphans(t, dir)
	if len(found) != 1 {
		t.Fatalf("%d orphans, want 1", len(found))
	}
	o := found[0]
	if o.Err != nil || o.Info.Version != v.UID || o.Info.Volume != v.Volume || o.Info.Changed != 3 || o.Path != d.OverlayPath() {
		t.Fatalf("orphan %+v (%v): want version %s, 3 changed blocks", o.Info, o.Err, v.UID)
	}
	// Held by this caller now: another scan does not take it.
	if again := orphans(t, dir); len(again) != 0 {
		t.Errorf("an orphan being recovered was offered again")
	}
	r, err := device.OpenOrphan(ctx, e.db, e.st, o, device.Options{})
	if err != nil {
		t.Fatal(err)
	}
	got := readAll(t, r, 4096)
	want := bytes.Clone(img)
	copy(want[100:], a)
	copy(want[5*bs:], full)
	clear(want[6*bs : 7*bs])
	// The write after the flush into a flushed block may or may not be
	// there; the one into a block first written after it is not.
	if c := got[5000:5200]; bytes.Equal(c, bytes.Repeat([]byte{0xc3}, 200)) {
		copy(want[5000:], c)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the recovered overlay does not hold the flushed writes (and only those)")
	}
	nv, err := backup.Run(ctx, e.st, e.db, r.Source(ctx), backup.Options{Volume: v.Volume, Base: v, Hints: r.Changes()})
	if err != nil {
		t.Fatal(err)
	}
	r.Drop()
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if f := overlayFiles(t, dir); len(f) != 0 {
		t.Errorf("files left after the recovered overlay was saved: %v", f)
	}
	rd, err := device.Open(ctx, e.db, e.st, nv.UID, device.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	if !bytes.Equal(readAll(t, rd, bs), want) {
		t.Error("the new version differs from the recovered overlay")
	}
}

// TestDurableOverlayLiveAndKept: a live session's overlay is no orphan; a
// session closed without Drop keeps its changes (unflushed ones too), and
// one closed after Drop, or without changes, leaves nothing.
func TestDurableOverlayLiveAndKept(t *testing.T) {
	e := newEnv(t)
	img := image(12, 4)
	v := e.backup(img, backup.Options{})
	ctx := context.Background()
	dir := t.TempDir()
	d := durableOpen(t, e, v.UID, dir)
	if err := d.WriteAt(ctx, []byte("flushed"), 10); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if found := orphans(t, dir); len(found) != 0 {
		t.Fatalf("a live session's overlay was offered as an orphan")
	}
	if err := d.WriteAt(ctx, []byte("closed"), 3*bs); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	found := orphans(t, dir)
	if len(found) != 1 || found[0].Info.Changed != 2 {
		t.Fatalf("after a close without Drop: %d orphans, want 1 with 2 blocks", len(found))
	}
	r, err := device.OpenOrphan(ctx, e.db, e.st, found[0], device.Options{})
	if err != nil {
		t.Fatal(err)
	}
	got := readAll(t, r, bs)
	if string(got[10:17]) != "flushed" || string(got[3*bs:3*bs+6]) != "closed" {
		t.Error("the kept overlay lacks the session's writes")
	}
	r.Close() // no Drop: kept again
	if found := orphans(t, dir); len(found) != 1 {
		t.Fatalf("%d orphans, want it kept", len(found))
	} else if err := found[0].Remove(); err != nil {
		t.Fatal(err)
	}
	if f := overlayFiles(t, dir); len(f) != 0 {
		t.Errorf("files after Remove: %v", f)
	}

	// Dropped, and unchanged: nothing stays.
	d = durableOpen(t, e, v.UID, dir)
	if err := d.WriteAt(ctx, []byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	d.Drop()
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	d = durableOpen(t, e, v.UID, dir)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if f := overlayFiles(t, dir); len(f) != 0 {
		t.Errorf("files after a dropped and an unchanged session: %v", f)
	}
}

// TestDurableOverlayNothingFlushed: a session that crashed before any
// flush leaves nothing to recover, and its files are removed.
func TestDurableOverlayNothingFlushed(t *testing.T) {
	e := newEnv(t)
	v := e.backup(image(13, 3), backup.Options{})
	dir := t.TempDir()
	d := durableOpen(t, e, v.UID, dir)
	if err := d.WriteAt(context.Background(), []byte("lost"), 0); err != nil {
		t.Fatal(err)
	}
	device.Crash(d)
	if found := orphans(t, dir); len(found) != 0 {
		t.Errorf("%d orphans of a session that never flushed", len(found))
	}
	if f := overlayFiles(t, dir); len(f) != 0 {
		t.Errorf("files left: %v", f)
	}
}

// TestDurableOverlayBaseGone: an overlay whose version was removed cannot
// be recovered; it is kept, and reported again.
func TestDurableOverlayBaseGone(t *testing.T) {
	e := newEnv(t)
	v := e.backup(image(14, 3), backup.Options{})
	ctx := context.Background()
	dir := t.TempDir()
	d := durableOpen(t, e, v.UID, dir)
	if err := d.WriteAt(ctx, []byte("orphan"), 0); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	device.Crash(d)
	if err := versions.Remove(e.db, v.UID, versions.RemoveOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	found := orphans(t, dir)
	if len(found) != 1 {
		t.Fatalf("%d orphans, want 1", len(found))
	}
	if _, err := device.OpenOrphan(ctx, e.db, e.st, found[0], device.Options{}); !errors.Is(err, metastore.ErrVersionNotFound) {
		t.Fatalf("OpenOrphan of a removed version: %v, want ErrVersionNotFound", err)
	}
	found[0].Close()
	if found := orphans(t, dir); len(found) != 1 {
		t.Errorf("the overlay of a removed version was not kept")
	}
}

// TestDurableOverlayDamagedJournal: a damaged journal is reported, and the
// files are kept.
func TestDurableOverlayDamagedJournal(t *testing.T) {
	e := newEnv(t)
	v := e.backup(image(15, 3), backup.Options{})
	ctx := context.Background()
	dir := t.TempDir()
	d := durableOpen(t, e, v.UID, dir)
	if err := d.WriteAt(ctx, []byte("data"), bs); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	device.Crash(d)
	b, err := os.ReadFile(d.OverlayPath())
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-5] ^= 0x40 // in the bitmap
	if err := os.WriteFile(d.OverlayPath(), b, 0o600); err != nil {
		t.Fatal(err)
	}
	found := orphans(t, dir)
	if len(found) != 1 || !errors.Is(found[0].Err, device.ErrOverlay) || !strings.Contains(found[0].Err.Error(), "checksum") {
		t.Fatalf("orphans %+v: want one whose journal is damaged", found)
	}
	if _, err := device.OpenOrphan(ctx, e.db, e.st, found[0], device.Options{}); !errors.Is(err, device.ErrOverlay) {
		t.Errorf("OpenOrphan of a damaged journal: %v", err)
	}
	found[0].Close()
	if f := overlayFiles(t, dir); len(f) != 2 {
		t.Errorf("files of a damaged overlay: %v, want both kept", f)
	}
}
