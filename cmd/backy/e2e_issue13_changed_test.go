package main

import (
	"os"
	"strings"
	"testing"
	"time"
)

// TestIssue13SourceChanged: a source written while backy reads it (by
// another process, here the test while the backup is held back) makes the
// backup fail with exit 65 before the version becomes valid: a file by its
// modification time, a block device (whose times say nothing) by reading
// its first blocks again. The version is left incomplete and labelled
// source-changed; --resume refuses it; restore --force gives what was
// read; rm removes it. The same backup of the quiet source succeeds.
func TestIssue13SourceChanged(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: backs up 256 MiB sources held back")
	}
	t.Parallel()
	b := e2eNewBox(t)
	big := e2eBig(t)
	b.ok("init")

	// changed backs up src, throttled, writes p at off of target once the
	// first blocks are committed, and checks the outcome.
	changed := func(t *testing.T, src, volume, target string, off int64, want string) e2eVersion {
		b := b.with(t)
		p := b.start("backup", src, volume)
		release := e2eThrottle(p.cmd.Process, time.Millisecond, 99*time.Millisecond)
		inc := b.waitVersion(p, func(v e2eVersion) bool { return v.Volume == volume && v.Status == "incomplete" && v.BlocksDone > 0 })
		e2eWriteAt(t, target, off, e2eRandom(64*e2eKiB, uint64(off)+7))
		release()
		r := p.wait(t)
		e2eWantFail(t, r, 65)
		for _, w := range []string{"source changed during the backup", want, "snapshot", inc.UID, "left incomplete", "backy rm " + inc.UID} {
			if !strings.Contains(r.stderr, w) {
				t.Errorf("the message should say %q:\n%v", w, r)
			}
		}
		v := b.version(inc.UID)
		if v.Status != "incomplete" || v.Labels["source-changed"] == "" {
			t.Errorf("after the change ls shows %+v, want an incomplete version labelled source-changed", v)
		}
		r = b.fail(64, "backup", src, volume, "--resume", v.UID)
		if !strings.Contains(r.stderr, "source changed") {
			t.Errorf("resume should say why it refuses:\n%v", r)
		}
		b.fail(70, "restore", v.UID, b.path(volume+"-refused.img"))
		b.ok("restore", "--force", v.UID, b.path(volume+"-forced.img"))
		b.ok("rm", v.UID)
		return v
	}

	t.Run("file", func(t *testing.T) {
		b := b.with(t)
		live := b.path("live.img")
		e2eCopy(t, big, live)
		// Written ahead of the reader: only the modification time tells.
		changed(t, live, "file", live, e2eBigSize-e2eBS, "it was modified (mtime")
		v := b.backup(live, "file")
		b.restore(v.UID, live)
	})
	t.Run("block device", func(t *testing.T) {
		b := b.with(t)
		dev := e2eLoop(t, t.TempDir(), e2eBigSize)
		e2eCopy(t, big, dev)
		// Written behind the reader, over its first block.
		changed(t, dev, "device", dev, 0, "of the first 4 blocks read, read again at the end, differ from what was stored (the first at byte 0)")
		v := e2eDecode[e2eVersion](t, b.ok("backup", dev, "device", "--json"))
		if v.Status != "valid" || v.Size != e2eBigSize {
			t.Fatalf("backup of the quiet device: %+v", v)
		}
		target := b.path("device-restored.img")
		b.ok("restore", v.UID, target)
		if err := e2eCompare(target, dev, e2eBigSize); err != nil {
			t.Fatal(err)
		}
	})
	if _, err := os.Stat(b.path("file-refused.img")); err == nil {
		t.Error("a refused restore left its target")
	}
}
