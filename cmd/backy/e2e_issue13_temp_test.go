package main

// Issue 13 item 18 (and the restore parts of item 16): a killed restore or
// export leaves a temporary file that the next restore or export to the
// same target removes, saying so, and never one a live process writes;
// cleanup removes the temporary files of killed commands in the store's
// own directory. A restore that is interrupted or runs out of space says
// to run the restore again; one into a missing directory names it.

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// e2eTemps lists the temporary files of kind beside target: the names
// ".<target>.<kind>-*" (kind "backy" for every restore's, also those of
// older backy versions).
func e2eTemps(t *testing.T, target, kind string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(filepath.Dir(target), "."+filepath.Base(target)+"."+kind+"-*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// e2eWaitTemp waits until a temporary file of kind beside target holds at
// least min bytes of data, and returns it; p must still be running.
func e2eWaitTemp(t *testing.T, p *e2eProc, target, kind string, min int64) string {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		for _, f := range e2eTemps(t, target, kind) {
			if e2eAllocated(t, f) >= min {
				return f
			}
		}
		if p.exited() {
			t.Fatalf("the command ended before its temporary file held %d bytes:\n%v", min, p.wait(t))
		}
		if time.Now().After(deadline) {
			t.Fatalf("no temporary file of %s with %d bytes within 60 s", target, min)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRestoreTempFiles: the temporary files of killed restores and
// exports go with the next restore or export to the same target; live
// ones stay.
func TestRestoreTempFiles(t *testing.T) {
	b := e2eNewBox(t)
	big := e2eBig(t)
	v := b.backup(big, "big")

	t.Run("restore killed with SIGKILL", func(t *testing.T) {
		target := b.path("killed.img")
		p := b.start("restore", v.UID, target)
		release := e2eThrottle(p.cmd.Process, 5*time.Millisecond, 20*time.Millisecond)
		tmp := e2eWaitTemp(t, p, target, "backy", 8*e2eMiB)
		release()
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		p.wait(t)
		if _, err := os.Stat(tmp); err != nil {
			t.Fatalf("the killed restore left no temporary file: %v", err)
		}
		if _, err := os.Stat(target); !os.IsNotExist(err) {
			t.Fatalf("the killed restore left its target: %v", err)
		}
		r := b.ok("restore", v.UID, target)
		if !strings.Contains(r.stderr, "removed a temporary file that an interrupted restore to the same target left") ||
			!strings.Contains(r.stderr, filepath.Base(tmp)) {
			t.Errorf("the next restore did not say it removed %s:\n%v", tmp, r)
		}
		if left := e2eTemps(t, target, "backy"); len(left) != 0 {
			t.Errorf("temporary files left: %v", left)
		}
		e2eSameFile(t, target, big)
	})

	t.Run("a live restore's temporary file stays", func(t *testing.T) {
		target := b.path("live.img")
		p := b.start("restore", v.UID, target)
		release := e2eThrottle(p.cmd.Process, 2*time.Millisecond, 30*time.Millisecond)
		defer release()
		tmp := e2eWaitTemp(t, p, target, "backy", 4*e2eMiB)
		// Another restore to the same target runs to its end meanwhile.
		r := b.ok("restore", v.UID, target)
		if strings.Contains(r.stderr, "removed") {
			t.Errorf("a restore removed a live one's temporary file:\n%v", r)
		}
		if _, err := os.Stat(tmp); err != nil {
			t.Errorf("the live restore's temporary file is gone: %v", err)
		}
		release()
		// It finds the target taken when it is done, and cleans up.
		r = p.wait(t)
		if r.code != exitCantCreate || !strings.Contains(r.stderr, "appeared during the restore") {
			t.Errorf("the first restore, whose target another made meanwhile: want exit %d:\n%v", exitCantCreate, r)
		}
		if left := e2eTemps(t, target, "backy"); len(left) != 0 {
			t.Errorf("temporary files left: %v", left)
		}
		e2eSameFile(t, target, big)
	})

	t.Run("export", func(t *testing.T) {
		out := b.path("v.bkym")
		prefix := filepath.Join(b.dir, ".v.bkym.backy-export-")
		stale, live := prefix+"0123456789ab", prefix+"ba9876543210"
		e2eWriteFile(t, stale, []byte("what a killed export wrote"))
		e2eWriteFile(t, live, []byte("what a running export writes"))
		f, err := os.Open(live)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
			t.Fatal(err)
		}
		r := b.ok("export", v.UID, "-o", out)
		if !strings.Contains(r.stderr, "removed a temporary file that an interrupted export to the same file left") ||
			!strings.Contains(r.stderr, filepath.Base(stale)) {
			t.Errorf("export did not say it removed %s:\n%v", stale, r)
		}
		if _, err := os.Stat(stale); !os.IsNotExist(err) {
			t.Errorf("the stale temporary file is still there: %v", err)
		}
		if _, err := os.Stat(live); err != nil {
			t.Errorf("the live export's temporary file is gone: %v", err)
		}
		if left := e2eTemps(t, out, "backy-export"); len(left) != 1 {
			t.Errorf("temporary files: %v, want only the live one", left)
		}
		// The export is whole: it imports (checks) into a metastore
		// that lacks the version.
		b.ok("rm", v.UID)
		b.ok("import", out)
		b.version(v.UID)
	})

	t.Run("cleanup removes temporary metastores of killed creations", func(t *testing.T) {
		junk := filepath.Join(b.home, "backy.db.creating-00aa00aa00aa")
		e2eWriteFile(t, junk, e2eRandom(3000, 3))
		res := e2eDecode[struct {
			Stale []string `json:"stale_files_removed"`
		}](t, b.ok("cleanup", "--json"))
		if len(res.Stale) != 1 || res.Stale[0] != junk {
			t.Errorf("cleanup removed %v, want [%s]", res.Stale, junk)
		}
		if _, err := os.Stat(junk); !os.IsNotExist(err) {
			t.Errorf("%s is still there: %v", junk, err)
		}
	})
}

// TestRestoreFailureAdvice: a restore into a missing directory fails with
// exit 66 naming the directory; an interrupted restore (SIGINT) and one
// that runs out of space say to run the restore again, not to resume a
// backup, and leave nothing behind.
func TestRestoreFailureAdvice(t *testing.T) {
	b := e2eNewBox(t)
	big := e2eBig(t)
	v := b.backup(big, "big")

	missing := b.path("no/such/dir")
	r := b.fail(exitNotFound, "restore", v.UID, filepath.Join(missing, "x.img"))
	if !strings.Contains(r.stderr, missing) || strings.Contains(r.stderr, ".backy-") {
		t.Errorf("want the missing directory %s named, not a temporary file:\n%v", missing, r)
	}

	advice := func(t *testing.T, r e2eRes, code int, target string) {
		t.Helper()
		e2eWantFail(t, r, code)
		if !strings.Contains(r.stderr, "run the restore again") || strings.Contains(r.stderr, "--resume") {
			t.Errorf("want advice to run the restore again, not to resume a backup:\n%v", r)
		}
		if _, err := os.Stat(target); !os.IsNotExist(err) {
			t.Errorf("the failed restore left %s (%v)", target, err)
		}
		if left := e2eTemps(t, target, "backy"); len(left) != 0 {
			t.Errorf("temporary files left: %v", left)
		}
	}

	t.Run("interrupted", func(t *testing.T) {
		target := b.path("interrupted.img")
		p := b.start("restore", v.UID, target)
		release := e2eThrottle(p.cmd.Process, 5*time.Millisecond, 20*time.Millisecond)
		e2eWaitTemp(t, p, target, "backy", 4*e2eMiB)
		_ = p.cmd.Process.Signal(syscall.SIGINT)
		release()
		advice(t, p.wait(t), exitInterrupted, target)
	})

	t.Run("no space", func(t *testing.T) {
		mnt := b.path("mnt")
		if err := os.Mkdir(mnt, 0o700); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", mnt).CombinedOutput(); err != nil {
			t.Fatalf("mounting a 20 MiB tmpfs (this test needs root): %v: %s", err, out)
		}
		t.Cleanup(func() {
			if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
				t.Errorf("umount %s: %v: %s", mnt, err, out)
			}
		})
		target := filepath.Join(mnt, "full.img")
		advice(t, b.run("restore", v.UID, target), exitNoSpace, target)
	})
}
