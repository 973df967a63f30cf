package main

// End-to-end tests of 'backy copy' through the built binary (see
// e2e_helpers_test.go). Every store uses 64 KiB blocks (e2eEncBS) and is
// named by a configuration written with e2eEncConf. Identifiers start with
// "e2eCopy".

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// e2eCopyReport is 'backy copy --json'.
type e2eCopyReport struct {
	DryRun   bool `json:"dry_run"`
	Versions []struct {
		UID                string `json:"uid"`
		Volume             string `json:"volume"`
		State              string `json:"state"`
		SourceStatus       string `json:"source_status"`
		TargetStatus       string `json:"target_status"`
		Blocks             int64  `json:"blocks"`
		BlocksBefore       int64  `json:"blocks_before"`
		BlocksDone         int64  `json:"blocks_done"`
		BlocksSent         int64  `json:"blocks_sent"`
		BlocksDeduplicated int64  `json:"blocks_deduplicated"`
		BlocksSparse       int64  `json:"blocks_sparse"`
		BytesSent          int64  `json:"bytes_sent"`
		BytesWritten       int64  `json:"bytes_written"`
		Error              string `json:"error"`
	} `json:"versions"`
	Skipped []struct {
		UID    string `json:"uid"`
		Reason string `json:"reason"`
	} `json:"skipped"`
	BlocksSent   int64 `json:"blocks_sent"`
	BytesWritten int64 `json:"bytes_written"`
}

// e2eCopyStore makes the configuration of a store in dir/name (with the
// extra [DEFAULTS] lines) and, if init, the store with 64 KiB blocks.
func e2eCopyStore(b *e2eBox, name string, init bool, lines ...string) (cfg, data string) {
	b.t.Helper()
	store := b.path(name)
	cfg = e2eEncConf(b.t, b.path(name+".cfg"), store, lines...)
	if init {
		b.ok("-c", cfg, "init", "--block-size", "65536")
	}
	return cfg, filepath.Join(store, "data")
}

// e2eCopyRun runs 'backy -c cfg copy --json ARGS...', which must succeed.
func e2eCopyRun(b *e2eBox, cfg string, args ...string) e2eCopyReport {
	b.t.Helper()
	r := b.ok(append([]string{"-c", cfg, "copy", "--json"}, args...)...)
	rep := e2eDecode[e2eCopyReport](b.t, r)
	if strings.TrimSpace(r.stderr) != "" {
		b.t.Errorf("copy --json printed on stderr:\n%v", r)
	}
	return rep
}

// TestCopy: backup, copy to a second store, restore from it bit for bit
// with the version's identity kept; a second copy finds it already there;
// a dry run says what a copy would send and changes nothing; only the
// blocks the target lacks are sent; a missing target store and a target
// of another block size are refused in one line.
func TestCopy(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	cfgA, _ := e2eCopyStore(b, "a", true)
	cfgB, dataB := e2eCopyStore(b, "b", false)
	img := b.path("disk.img")
	e2eRandomFile(t, img, 40*e2eEncBS-1234, 501)
	a := e2eEncWithConfig(b, cfgA)
	v1 := a.backup(img, "vm-1", "--snapshot", "nightly", "--label", "host=pve1", "--expire", "2031-01-02")
	a.ok("protect", v1.UID)

	// The target store does not exist yet: nothing is created.
	r := b.fail(66, "-c", cfgA, "copy", v1.UID, "--to", cfgB)
	if !strings.Contains(r.stderr, "backy -c "+cfgB+" init") {
		t.Errorf("the message should say to run 'backy -c %s init':\n%v", cfgB, r)
	}
	if _, err := os.Stat(b.path("b")); err == nil {
		t.Errorf("a refused copy created %s", b.path("b"))
	}
	b.ok("-c", cfgB, "init", "--block-size", "65536")
	tgt := e2eEncWithConfig(b, cfgB)

	// Human output: a table and a summary.
	r = b.ok("-c", cfgA, "copy", v1.UID, "--to", cfgB)
	if !strings.Contains(r.stdout, "BLOCKS SENT") || !strings.Contains(r.stdout, v1.UID) || !strings.Contains(r.stdout, "copied") {
		t.Errorf("copy should print a table naming the version as copied:\n%v", r)
	}
	tgt.restore(v1.UID, img)
	got := tgt.version(v1.UID)
	src := a.version(v1.UID)
	if got.Volume != "vm-1" || got.Snapshot != "nightly" || got.Labels["host"] != "pve1" || got.Date != src.Date || got.Size != src.Size ||
		!got.Protected || got.Status != "valid" {
		t.Errorf("the copy is %+v, want the source's %+v", got, src)
	}
	if ls := e2eDecode[[]map[string]any](t, tgt.ok("ls", "--json")); len(ls) != 1 || ls[0]["expire"] != "2031-01-02T00:00:00Z" {
		t.Errorf("the copy should keep the expiry date: %v", ls)
	}
	distinct := e2eEncDistinct(t, img)
	if got.BytesWritten <= 0 || got.BytesRead+got.BytesDeduplicated+got.BytesSparse != got.Size {
		t.Errorf("the copy's statistics: read %d, written %d, deduplicated %d, sparse %d of %d bytes", got.BytesRead, got.BytesWritten, got.BytesDeduplicated, got.BytesSparse, got.Size)
	}

	// Again: already there.
	rep := e2eCopyRun(b, cfgA, v1.UID, "--to", cfgB)
	if len(rep.Versions) != 1 || rep.Versions[0].State != "already there" || rep.BlocksSent != 0 {
		t.Errorf("second copy: %+v, want already there", rep)
	}

	// A second version sharing all but three blocks: a dry run says so and
	// changes nothing; the copy sends those three.
	img2 := e2eEncChangeBlocks(t, img, b.path("disk2.img"), []int{3, 17, 30}, "", 502)
	v2 := a.backup(img2, "vm-1")
	before := e2eEncSnap(t, dataB)
	dbBefore := e2eSHA(t, b.path("b/backy.db"))
	dry := e2eCopyRun(b, cfgA, "--volume", "vm-1", "--to", cfgB, "--dry-run")
	if !dry.DryRun || len(dry.Versions) != 2 || dry.Versions[0].State != "already there" || dry.Versions[1].State != "missing" ||
		dry.Versions[1].BlocksSent != 3 || dry.Versions[1].BlocksDeduplicated != distinct-3 {
		t.Errorf("dry run: %+v; want %s already there, %s missing with 3 blocks to send and %d to reference", dry, v1.UID, v2.UID, distinct-3)
	}
	e2eEncSameSnap(t, "copy --dry-run", dataB, before)
	if e2eSHA(t, b.path("b/backy.db")) != dbBefore {
		t.Error("copy --dry-run changed the target's metastore")
	}
	rep = e2eCopyRun(b, cfgA, "--all", "--to", cfgB)
	if len(rep.Versions) != 2 || rep.Versions[1].UID != v2.UID || rep.Versions[1].State != "copied" || rep.Versions[1].BlocksSent != 3 {
		t.Errorf("copy --all: %+v, want %s copied with 3 blocks sent", rep, v2.UID)
	}
	if n := len(e2eEncObjects(t, dataB)); int64(n) != distinct+3 {
		t.Errorf("the target holds %d objects, want %d", n, distinct+3)
	}
	tgt.restore(v2.UID, img2)

	// A target of another block size.
	cfgC, _ := e2eCopyStore(b, "c", false)
	b.ok("-c", cfgC, "init", "--block-size", "131072")
	r = b.fail(65, "-c", cfgA, "copy", v1.UID, "--to", cfgC)
	if !strings.Contains(r.stderr, "block") {
		t.Errorf("the refusal should name the block sizes:\n%v", r)
	}
	if uids := e2eEncWithConfig(b, cfgC).lsUIDs(); len(uids) != 0 {
		t.Errorf("a refused copy left %v in the target", uids)
	}
	// The source itself.
	b.fail(64, "-c", cfgA, "copy", v1.UID, "--to", cfgA)
}

// TestCopyEncrypted: a copy to an encrypted, compressing target is sealed
// with the target's key and restores with it alone; a wrong key on either
// side stops the copy (exit 77, one line naming the store) before any
// block is written.
func TestCopyEncrypted(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	keyA := e2eEncNewMat(t, b.dir, "key_file", 511)
	keyB := e2eEncNewMat(t, b.dir, "key_file", 512)
	cfgA, _ := e2eCopyStore(b, "a", true, "encryption_version = 1", keyA.line())
	cfgB, dataB := e2eCopyStore(b, "b", true, "encryption_version = 2", "encryption_cipher = "+e2eEncChaCha, keyB.line(), "compression = zstd")
	img := b.path("mixed.img")
	marker := e2eEncMarker(t, "CP")
	e2eEncMixedImage(t, img, marker, 513)
	v := e2eEncWithConfig(b, cfgA).backup(img, "vol")

	// Wrong keys: nothing written to the target.
	wrong := e2eEncNewMat(t, b.dir, "key_file", 514)
	cfgBad := e2eEncConf(t, b.path("bad-b.cfg"), b.path("b"), "encryption_version = 2", "encryption_cipher = "+e2eEncChaCha, wrong.line())
	cfgBadA := e2eEncConf(t, b.path("bad-a.cfg"), b.path("a"), "encryption_version = 1", wrong.line())
	before := e2eEncSnap(t, dataB)
	r := b.fail(77, "-c", cfgA, "copy", v.UID, "--to", cfgBad)
	if !strings.Contains(r.stderr, "target store") || !strings.Contains(r.stderr, wrong.origin()) {
		t.Errorf("a wrong target key: the message should name the target store and %q:\n%v", wrong.origin(), r)
	}
	r = b.fail(77, "-c", cfgBadA, "copy", v.UID, "--to", cfgB)
	if !strings.Contains(r.stderr, "source store") {
		t.Errorf("a wrong source key: the message should name the source store:\n%v", r)
	}
	e2eEncNoSecrets(t, r, keyA, keyB, wrong)
	e2eEncSameSnap(t, "copy with a wrong key", dataB, before)

	rep := e2eCopyRun(b, cfgA, v.UID, "--to", cfgB)
	if len(rep.Versions) != 1 || rep.Versions[0].State != "copied" || rep.Versions[0].BlocksSent != e2eEncDistinct(t, img) {
		t.Fatalf("copy: %+v, want copied with %d blocks sent", rep, e2eEncDistinct(t, img))
	}
	objs := e2eEncObjects(t, dataB)
	if len(objs) == 0 {
		t.Fatal("the target holds no objects")
	}
	compressed := 0
	for _, o := range objs {
		if o.encVersion != 2 || o.cipher != e2eEncCipherByte(e2eEncChaCha) {
			t.Fatalf("target object %s is sealed at encryption version %d with cipher %d, want 2 with %s", o.path, o.encVersion, o.cipher, e2eEncChaCha)
		}
		if o.compression == 1 {
			compressed++
		}
	}
	if compressed == 0 {
		t.Error("no target object is compressed, though the target compresses and the image has compressible blocks")
	}
	if hits := e2eEncGrep(t, dataB, []byte(marker)); len(hits) > 0 {
		t.Errorf("plaintext of the image in the target's data: %s", e2eEncFew(hits))
	}
	e2eEncNoSecretsIn(t, dataB, keyA, keyB)
	// The target restores with its own key only (no [Encryption1]).
	e2eEncWithConfig(b, cfgB).restore(v.UID, img)
}

// TestCopyKill: a copy killed with SIGKILL leaves an incomplete version in
// the target whose committed blocks are not sent again; running the copy
// again finishes it, and it restores bit for bit.
func TestCopyKill(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: copies 32 MiB throttled")
	}
	t.Parallel()
	b := e2eNewBox(t)
	cfgA, _ := e2eCopyStore(b, "a", true)
	cfgB, dataB := e2eCopyStore(b, "b", true)
	img := b.path("big.img")
	const nBlocks = 512
	e2eRandomFile(t, img, nBlocks*e2eEncBS, 521)
	v := e2eEncWithConfig(b, cfgA).backup(img, "big")
	tgt := e2eEncWithConfig(b, cfgB)

	// Throttled (1 ms in every 100 ms) until it has committed some blocks
	// (it commits every 2 s), then killed.
	p := b.start("-c", cfgA, "copy", v.UID, "--to", cfgB)
	release := e2eThrottle(p.cmd.Process, time.Millisecond, 99*time.Millisecond)
	inc := tgt.waitVersion(p, func(x e2eVersion) bool { return x.UID == v.UID && x.Status == "incomplete" && x.BlocksDone > 0 })
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	release()
	r := p.wait(t)
	if ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("the copy was not killed by SIGKILL (it had finished?):\n%v", r)
	}
	killed := tgt.version(v.UID)
	t.Logf("killed with %d of %d blocks committed", killed.BlocksDone, nBlocks)
	if killed.Status != "incomplete" || killed.BlocksDone < inc.BlocksDone || killed.BlocksDone >= nBlocks {
		t.Fatalf("after the kill the target lists %+v, want an incomplete version with some blocks done", killed)
	}
	// Not restorable yet.
	tgt.fail(70, "restore", v.UID, b.path("incomplete.img"))

	rep := e2eCopyRun(b, cfgA, v.UID, "--to", cfgB)
	res := rep.Versions[0]
	if res.State != "resumed" || res.BlocksBefore != killed.BlocksDone || res.TargetStatus != "valid" {
		t.Errorf("second copy: %+v, want resumed from %d blocks, valid", res, killed.BlocksDone)
	}
	if res.BlocksSent > nBlocks-killed.BlocksDone {
		t.Errorf("second copy sent %d blocks; the %d committed before the kill must not be sent again (at most %d)",
			res.BlocksSent, killed.BlocksDone, nBlocks-killed.BlocksDone)
	}
	tgt.restore(v.UID, img)
	// The objects the killed run stored but never recorded are debris for
	// cleanup --orphans, which leaves the copy whole.
	tgt.ok("cleanup", "--orphans")
	if n := len(e2eEncObjects(t, dataB)); n != nBlocks {
		t.Errorf("after cleanup --orphans the target holds %d objects, want %d", n, nBlocks)
	}
	tgt.restore(v.UID, img)
	if uids := tgt.lsUIDs(); !slices.Equal(uids, []string{v.UID}) {
		t.Errorf("the target lists %v, want %s", uids, v.UID)
	}
}
