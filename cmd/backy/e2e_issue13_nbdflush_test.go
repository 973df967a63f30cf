package main

// End-to-end tests of issue 13 item 9: what an NBD client flushed (FLUSH,
// or a FUA write) in a copy-on-write session survives a kill -9 of 'backy
// nbd', and the next 'backy nbd' saves it as a new version.

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// e2eI13NBDOverlayDir is the overlay directory of the box's default store.
func e2eI13NBDOverlayDir(b *e2eBox) string { return filepath.Join(b.home, "backy.db.nbd") }

// e2eI13NBDOverlays lists the overlay files (not the lock) of the box.
func e2eI13NBDOverlays(t *testing.T, b *e2eBox) []string {
	t.Helper()
	ents, err := os.ReadDir(e2eI13NBDOverlayDir(b))
	if err != nil && !os.IsNotExist(err) {
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

// e2eI13NBDWrite is one write of a session.
type e2eI13NBDWrite struct {
	off, n  int64
	pattern byte
}

// e2eI13NBDSession runs qemu-io on uri with writeback caching (so that
// only explicit flushes and FUA writes are flushes) and the commands, then
// keeps the session open. It returns once qemu-io has printed want lines
// starting with "wrote" or "read", and a function that kills qemu-io.
func e2eI13NBDSession(t *testing.T, uri string, cmds []string, want int) (kill func()) {
	t.Helper()
	args := []string{"-oL", "qemu-io", "-f", "raw", "-t", "writeback"}
	for _, c := range append(cmds, "sleep 120000") {
		args = append(args, "-c", c)
	}
	cmd := exec.Command("stdbuf", append(args, uri)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var errBuf bytes.Buffer
	cmd.Stderr = &errBuf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	kill = func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }
	done := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(out)
		n := 0
		for sc.Scan() {
			if l := sc.Text(); strings.HasPrefix(l, "wrote ") || strings.HasPrefix(l, "read ") {
				if n++; n == want {
					done <- nil
					io.Copy(io.Discard, out)
					return
				}
			}
		}
		done <- fmt.Errorf("qemu-io ended after %d of %d acknowledgements", n, want)
	}()
	select {
	case err := <-done:
		if err != nil {
			kill()
			t.Fatalf("%v: %s", err, errBuf.String())
		}
	case <-time.After(2 * time.Minute):
		kill()
		t.Fatal("qemu-io did not finish its commands within 2 minutes")
	}
	return kill
}

// e2eI13NBDKill kills 'backy nbd' with SIGKILL and waits for it.
func e2eI13NBDKill(t *testing.T, p *e2eProc) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.done
}

// TestE2EI13NBDFlushSurvivesKill: at seeded points, right after the
// acknowledgement of a flush (NBD_CMD_FLUSH, or a FUA write), 'backy nbd'
// is killed with SIGKILL. The next 'backy nbd' saves the session as a new
// version holding every flushed write (a write after the last flush may
// or may not be there), which restores bit for bit, and leaves no overlay.
func TestE2EI13NBDFlushSurvivesKill(t *testing.T) {
	e2eNBDTool(t, "qemu-io")
	t.Parallel()
	b := e2eNewBox(t)
	img := b.path("disk.img")
	size := int64(22*e2eMiB + 12345)
	e2eRandomFile(t, img, size, 91)
	v := b.backup(img, "vm-9")
	base := e2eReadFile(t, img)
	const seed = 913
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 9))
	const trials = 6
	for trial := range trials {
		var cmds []string
		acks := 0
		want := bytes.Clone(base)
		write := func(w e2eI13NBDWrite, fua bool) {
			f := ""
			if fua {
				f = "-f "
			}
			cmds = append(cmds, fmt.Sprintf("write %s-P 0x%02x %d %d", f, w.pattern, w.off, w.n))
			acks++
		}
		randomWrite := func() e2eI13NBDWrite {
			n := 1 + r.Int64N(96*e2eKiB)
			if r.IntN(4) == 0 {
				n = 1 + r.Int64N(5*e2eMiB) // spanning blocks
			}
			off := r.Int64N(size - n + 1)
			return e2eI13NBDWrite{off, n, byte(1 + r.IntN(255))}
		}
		// Rounds of writes, each ended by a FLUSH or a FUA write; the kill
		// comes after the last one's acknowledgement.
		rounds := 1 + r.IntN(4)
		for range rounds {
			k := 1 + r.IntN(3)
			fuaLast := r.IntN(2) == 0
			for i := range k {
				w := randomWrite()
				write(w, fuaLast && i == k-1)
				copy(want[w.off:w.off+w.n], bytes.Repeat([]byte{w.pattern}, int(w.n)))
			}
			if !fuaLast {
				cmds = append(cmds, "flush")
			}
		}
		cmds = append(cmds, "read 0 512") // acknowledged after the flush
		acks++
		// Writes after the last flush: each may or may not survive.
		var unflushed []e2eI13NBDWrite
		for range r.IntN(3) {
			w := randomWrite()
			write(w, false)
			unflushed = append(unflushed, w)
		}
		t.Logf("trial %d: %d rounds, %d unflushed writes: %q", trial, rounds, len(unflushed), cmds)

		p, addr := e2eNBDServeStart(b)
		kill := e2eI13NBDSession(t, e2eNBDURI(addr, v.UID), cmds, acks)
		e2eI13NBDKill(t, p)
		kill()
		if len(e2eI13NBDOverlays(t, b)) == 0 {
			t.Fatalf("trial %d: no overlay left by the killed session", trial)
		}

		before := len(b.lsUIDs())
		p, _ = e2eNBDServeStart(b)
		res := e2eNBDServeStop(t, p)
		vs := b.ls("vm-9")
		if len(vs) != before+1 {
			t.Fatalf("trial %d: %d versions after the restart, want %d (the session's)\n%v", trial, len(vs), before+1, res)
		}
		nv := vs[len(vs)-1]
		if nv.Status != "valid" || nv.Labels["nbd-origin"] != v.UID || nv.Labels["nbd-recovered"] != "true" || nv.Labels["nbd-session"] == "" {
			t.Errorf("trial %d: recovered version %+v: want valid, labelled nbd-origin=%s, nbd-recovered=true, nbd-session", trial, nv, v.UID)
		}
		if !strings.Contains(res.stdout, nv.UID) || !strings.Contains(res.stderr, "saved the flushed writes") {
			t.Errorf("trial %d: the restarted server should print the new uid and say what it saved:\n%v", trial, res)
		}
		if f := e2eI13NBDOverlays(t, b); len(f) != 0 {
			t.Errorf("trial %d: overlay files left after the recovery: %v", trial, f)
		}
		out := filepath.Join(t.TempDir(), "restored.img")
		b.ok("restore", nv.UID, out)
		got := e2eReadFile(t, out)
		if int64(len(got)) != size {
			t.Fatalf("trial %d: restored %d bytes, want %d", trial, len(got), size)
		}
		// Bytes an unflushed write touched hold its pattern or what was
		// flushed; every other byte is exactly what was flushed.
		maybe := make([]int, size) // index+1 of an unflushed write covering the byte
		for i, w := range unflushed {
			for j := w.off; j < w.off+w.n; j++ {
				maybe[j] = i + 1
			}
		}
		for j := range got {
			if got[j] == want[j] {
				continue
			}
			if m := maybe[j]; m != 0 && got[j] == unflushed[m-1].pattern {
				continue
			}
			t.Fatalf("trial %d: byte %d of the recovered version is %#x, want %#x (flushed)", trial, j, got[j], want[j])
		}
	}
	b.ok("deep-scrub", "--all")
}

// TestE2EI13NBDRecoveryEdges: a session saved normally leaves no overlay;
// an overlay whose version was saved already is not saved twice; one of a
// removed version is kept and reported; a read-only server only reports
// what awaits recovery.
func TestE2EI13NBDRecoveryEdges(t *testing.T) {
	e2eNBDTool(t, "qemu-io")
	t.Parallel()
	b := e2eNewBox(t)
	img := b.path("disk.img")
	e2eRandomFile(t, img, 9*e2eMiB, 92)
	v := b.backup(img, "vm-9e")

	// A session that ends normally: its overlay goes with its commit.
	p, addr := e2eNBDServeStart(b)
	e2eNBDQemuIO(t, e2eNBDURI(addr, v.UID), "write -P 0x11 0 4k", "flush")
	e2eNBDServeStop(t, p)
	if f := e2eI13NBDOverlays(t, b); len(f) != 0 || len(b.lsUIDs()) != 2 {
		t.Fatalf("after a normal session: overlays %v, versions %v", f, b.lsUIDs())
	}

	// Killed after a flush; the overlay is saved, then put back as if the
	// server had been killed after the commit but before removing it.
	killed := func() {
		t.Helper()
		p, addr := e2eNBDServeStart(b)
		kill := e2eI13NBDSession(t, e2eNBDURI(addr, v.UID), []string{"write -f -P 0x22 8192 4k"}, 1)
		e2eI13NBDKill(t, p)
		kill()
	}
	killed()
	saved := t.TempDir()
	for _, f := range e2eI13NBDOverlays(t, b) {
		e2eCopy(t, filepath.Join(e2eI13NBDOverlayDir(b), f), filepath.Join(saved, f))
	}
	p, _ = e2eNBDServeStart(b)
	e2eNBDServeStop(t, p)
	n := len(b.lsUIDs())
	for _, f := range e2eLsDir(t, saved) {
		e2eCopy(t, filepath.Join(saved, f), filepath.Join(e2eI13NBDOverlayDir(b), f))
	}
	p, _ = e2eNBDServeStart(b)
	r := e2eNBDServeStop(t, p)
	if got := len(b.lsUIDs()); got != n || strings.Contains(r.stderr, "saved the flushed writes") {
		t.Errorf("an overlay saved already was saved again: %d versions, want %d\n%v", got, n, r)
	}
	if f := e2eI13NBDOverlays(t, b); len(f) != 0 {
		t.Errorf("the overlay of a session saved already was not removed: %v", f)
	}

	// Killed after a flush, then its version removed: the overlay cannot
	// become a version; it is kept and reported, and the server exits
	// non-zero when stopped.
	killed()
	overlays := e2eI13NBDOverlays(t, b)
	// A read-only server only says so.
	p, _ = e2eNBDServeStart(b, "--read-only")
	r = e2eNBDServeStop(t, p)
	if !strings.Contains(r.stderr, "1 copy-on-write session(s)") || !strings.Contains(r.stderr, "without --read-only") {
		t.Errorf("a read-only server should report the overlay awaiting recovery:\n%v", r)
	}
	// rm (and enforce) keep a version that flushed writes wait on.
	if r := b.run("rm", "--force", v.UID); r.code != 75 || !strings.Contains(r.stderr, "not saved yet") || !strings.Contains(r.stderr, "backy nbd") {
		t.Errorf("rm of the base of unsaved flushed writes: want exit 75 naming backy nbd\n%v", r)
	}
	// Removed all the same (the overlay out of sight meanwhile, as after
	// a rebuild-metastore --accept-loss that lost the version).
	dir := e2eI13NBDOverlayDir(b)
	if err := os.Rename(dir, dir+".aside"); err != nil {
		t.Fatal(err)
	}
	b.ok("rm", "--force", v.UID)
	if err := os.Rename(dir+".aside", dir); err != nil {
		t.Fatal(err)
	}
	p, _ = e2eNBDServeStart(b)
	if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	r = p.wait(t)
	if r.code != 66 || !strings.Contains(r.stderr, "no longer exists") || !strings.Contains(r.stderr, "kept in") {
		t.Errorf("recovery of an overlay of a removed version: want exit 66 and a message saying it is kept\n%v", r)
	}
	if f := e2eI13NBDOverlays(t, b); len(f) != len(overlays) {
		t.Errorf("overlay files %v after a failed recovery, want %v kept", f, overlays)
	}
}

// e2eLsDir lists the names in dir.
func e2eLsDir(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}
