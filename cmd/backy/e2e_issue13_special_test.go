package main

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// e2eMkfifo makes a FIFO at path.
func e2eMkfifo(t *testing.T, path string) string {
	t.Helper()
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// e2eWaitProc polls until cond holds for the running process p, failing
// the test if p exits first or cond never holds.
func e2eWaitProc(t *testing.T, p *e2eProc, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if p.exited() {
			t.Fatalf("backy ended before %s:\n%v", what, p.wait(t))
		}
		if time.Now().After(deadline) {
			t.Fatalf("backy never got to %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// e2eHasOpen reports whether process pid has path open.
func e2eHasOpen(pid int, path string) bool {
	dir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && l == path {
			return true
		}
	}
	return false
}

// e2eInFifoOpen reports whether a thread of process pid waits in open(2)
// of a FIFO for its writer (wchan wait_for_partner).
func e2eInFifoOpen(pid int) bool {
	dir := filepath.Join("/proc", strconv.Itoa(pid), "task")
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if b, err := os.ReadFile(filepath.Join(dir, e.Name(), "wchan")); err == nil && strings.TrimSpace(string(b)) == "wait_for_partner" {
			return true
		}
	}
	return false
}

// e2eInterrupt sends SIGINT to p and requires it to stop with exit 130,
// its error in one line at the end of stderr.
func e2eInterrupt(t *testing.T, p *e2eProc) e2eRes {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(60 * time.Second):
		t.Fatalf("backy %q ignores SIGINT", p.cmd.Args[1:])
	}
	r := p.wait(t)
	if r.code != 130 {
		t.Errorf("want exit 130 after SIGINT:\n%v", r)
	}
	// A wait may have been logged before; the error is the last line.
	if l := e2eLines(r.stderr); len(l) == 0 || !strings.HasPrefix(l[len(l)-1], "backy: ") || strings.Contains(r.stderr, "goroutine ") {
		t.Errorf("want the error as the last stderr line, starting with \"backy: \":\n%v", r)
	}
	return r
}

// TestIssue13SpecialFiles: a source, hints file, restore target or
// configuration file that is a FIFO, a socket, a character device or a
// directory is refused at once, in one line saying what it is, with the
// documented code; nothing waits in open(2).
func TestIssue13SpecialFiles(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	img := b.path("disk.img")
	e2eRandomFile(t, img, 6*e2eMiB, 1311)
	v := b.backup(img, "vol")
	fifo := e2eMkfifo(t, b.path("fifo"))
	sock := b.path("sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	adir := b.path("adir")
	if err := os.Mkdir(adir, 0o755); err != nil {
		t.Fatal(err)
	}
	hints := e2eHints(t, b.path("hints.json"), []e2eHint{{Offset: 0, Length: 4 * e2eMiB, Exists: true}}, false)

	for _, tc := range []struct {
		name string
		code int
		args []string
		want []string // in the message
		not  string   // not in the message
	}{
		{"source fifo", 64, []string{"backup", fifo, "vol"}, []string{fifo, "is a FIFO"}, ""},
		{"source fifo url", 64, []string{"backup", "file://" + fifo, "vol"}, []string{"is a FIFO"}, ""},
		{"source socket", 64, []string{"backup", sock, "vol"}, []string{"is a socket"}, ""},
		{"source dev-zero", 64, []string{"backup", "/dev/zero", "vol"}, []string{"/dev/zero is a character device", "no size"}, ""},
		{"source directory", 64, []string{"backup", adir, "vol"}, []string{"is a directory"}, ""},
		{"hints missing", 66, []string{"backup", img, "vol", "--hints", b.path("nope.json")}, []string{"hints file not found", "nope.json"}, ""},
		{"hints directory", 64, []string{"backup", img, "vol", "--hints", adir}, []string{"--hints " + adir + " is a directory"}, ""},
		{"hints dev-zero", 64, []string{"backup", img, "vol", "--hints", "/dev/zero"}, []string{"is a character device"}, ""},
		{"hints socket", 64, []string{"backup", img, "vol", "--hints", sock}, []string{"is a socket"}, ""},
		{"restore into directory", 64, []string{"restore", v.UID, adir}, []string{"unusable restore target " + adir, "is a directory", filepath.Join(adir, "disk.img")}, "source"},
		{"restore into directory forced", 64, []string{"restore", v.UID, adir, "--force"}, []string{"is a directory"}, "source"},
		{"restore to dev-full", 64, []string{"restore", "--force", v.UID, "/dev/full"}, []string{"/dev/full: it is a character device", "deep-scrub"}, "source"},
		{"restore to dev-null", 64, []string{"restore", v.UID, "/dev/null"}, []string{"character device"}, "source"},
		{"restore to fifo", 64, []string{"restore", "--force", v.UID, fifo}, []string{"is a FIFO"}, "source"},
		{"config fifo", 78, []string{"-c", fifo, "ls"}, []string{fifo, "is a FIFO, not a configuration file"}, ""},
		{"config directory", 78, []string{"-c", adir, "ls"}, []string{"is a directory"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := b.with(t)
			r := b.fail(tc.code, tc.args...)
			for _, w := range tc.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("the message should say %q:\n%v", w, r)
				}
			}
			if tc.not != "" && strings.Contains(r.stderr, tc.not) {
				t.Errorf("the message should not say %q:\n%v", tc.not, r)
			}
		})
	}
	if ents, _ := os.ReadDir(adir); len(ents) != 0 {
		t.Errorf("the failed restores left %v in the directory", ents)
	}
	if got := b.lsUIDs(); len(got) != 1 {
		t.Errorf("the failed commands made versions: %v", got)
	}

	// Hints from a FIFO (or a pipe, --hints <(rbd diff ...)) are read as
	// the stream they are.
	t.Run("hints fifo", func(t *testing.T) {
		b := b.with(t)
		data := e2eReadFile(t, hints)
		go func() {
			f, err := os.OpenFile(fifo, os.O_WRONLY, 0)
			if err != nil {
				return
			}
			_, _ = f.Write(data)
			f.Close()
		}()
		nv := b.backup(img, "vol", "--from", v.UID, "--hints", fifo)
		b.restore(nv.UID, img)
	})
}

// TestIssue13CtrlC: Ctrl-C (SIGINT) ends every wait: for the writer of a
// hints FIFO, for its data, for the writers lock a cleanup --orphans
// holds, and (in cleanup --orphans) for running backups.
func TestIssue13CtrlC(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	img := b.path("disk.img")
	e2eRandomFile(t, img, 6*e2eMiB, 1312)
	v := b.backup(img, "vol")

	t.Run("hints fifo without writer", func(t *testing.T) {
		b := b.with(t)
		fifo := e2eMkfifo(t, b.path("nowriter"))
		p := b.start("backup", img, "vol", "--from", v.UID, "--hints", fifo)
		e2eWaitProc(t, p, "waiting in open(2) of the FIFO", func() bool { return e2eInFifoOpen(p.cmd.Process.Pid) })
		e2eInterrupt(t, p)
	})
	t.Run("hints fifo without data", func(t *testing.T) {
		b := b.with(t)
		fifo := e2eMkfifo(t, b.path("nodata"))
		// A writer that never writes: backy's open succeeds, its read waits.
		w, err := os.OpenFile(fifo, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		p := b.start("backup", img, "vol", "--from", v.UID, "--hints", fifo)
		e2eWaitProc(t, p, "opening the FIFO", func() bool { return e2eHasOpen(p.cmd.Process.Pid, fifo) })
		e2eInterrupt(t, p)
	})
	lockPath := filepath.Join(b.home, "backy.db.locks", "writers.lock")
	hold := func(t *testing.T, how int) func() {
		f, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		if err := syscall.Flock(int(f.Fd()), how); err != nil {
			t.Fatal(err)
		}
		return func() { f.Close() }
	}
	t.Run("backup waiting for the writers lock", func(t *testing.T) {
		b := b.with(t)
		release := hold(t, syscall.LOCK_EX)
		defer release()
		p := b.start("backup", img, "vol")
		e2eWaitProc(t, p, "opening the writers lock", func() bool { return e2eHasOpen(p.cmd.Process.Pid, lockPath) })
		r := e2eInterrupt(t, p)
		if !strings.Contains(r.stderr, "interrupted") {
			t.Errorf("the message should say it was interrupted:\n%v", r)
		}
		release()
		if got := b.lsUIDs(); len(got) != 1 {
			t.Errorf("the interrupted backup made a version: %v", got)
		}
	})
	t.Run("cleanup waiting for a backup", func(t *testing.T) {
		b := b.with(t)
		release := hold(t, syscall.LOCK_SH)
		defer release()
		p := b.start("cleanup", "--orphans")
		e2eWaitProc(t, p, "opening the writers lock", func() bool { return e2eHasOpen(p.cmd.Process.Pid, lockPath) })
		e2eInterrupt(t, p)
	})
}
