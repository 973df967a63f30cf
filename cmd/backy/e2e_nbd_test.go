package main

// End-to-end tests of 'backy nbd' with real NBD clients (libnbd-bin,
// qemu-utils; see e2e_nbdtools_test.go). Identifiers start with e2eNBDServe.

import (
	"bufio"
	"bytes"
	"errors"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// e2eNBDServeFreeAddr returns a loopback address with a free port.
func e2eNBDServeFreeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// e2eNBDServeStart starts 'backy nbd' on a free port and waits until it
// accepts connections.
func e2eNBDServeStart(b *e2eBox, extra ...string) (*e2eProc, string) {
	b.t.Helper()
	addr := e2eNBDServeFreeAddr(b.t)
	p := b.start(append([]string{"--log-level", "info", "nbd", "--listen", addr}, extra...)...)
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return p, addr
		}
		if p.exited() || time.Now().After(deadline) {
			b.t.Fatalf("backy nbd did not start listening on %s:\n%v", addr, p.wait(b.t))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// e2eNBDServeStop stops the server with Ctrl-C and checks it exits 0.
func e2eNBDServeStop(t *testing.T, p *e2eProc) e2eRes {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	r := p.wait(t)
	if r.code != 0 {
		t.Errorf("backy nbd after Ctrl-C: exit %d, want 0\n%v", r.code, r)
	}
	return r
}

func TestE2ENBDServeReadOnly(t *testing.T) {
	for _, name := range []string{"nbdinfo", "nbdcopy", "nbdfuse", "qemu-io", "mount"} {
		e2eNBDTool(t, name)
	}
	t.Parallel()
	b := e2eNewBox(t)
	img := e2eExt4(t, b.dir, "served", 21)
	v := b.backup(img, "vm-1")
	rnd := b.path("random.img")
	e2eRandomFile(t, rnd, 9*e2eMiB+12345, 22)
	w := b.backup(rnd, "vm-2")
	p, addr := e2eNBDServeStart(b, "--read-only")
	uri := e2eNBDURI(addr, v.UID)

	t.Run("list", func(t *testing.T) {
		names := map[string]int64{}
		for _, x := range e2eNBDList(t, e2eNBDURI(addr, "")) {
			names[x.Name] = x.Size
			if !x.IsReadOnly {
				t.Errorf("export %s is not read-only", x.Name)
			}
		}
		for name, size := range map[string]int64{v.UID: v.Size, w.UID: w.Size, "vm-1@latest": v.Size, "vm-2@latest": w.Size} {
			if names[name] != size {
				t.Errorf("export %s: size %d, want %d (list %v)", name, names[name], size, names)
			}
		}
		r := e2eNBDExec(t, "nbdinfo", "--no-content", e2eNBDURI(addr, "V0123456789abcdef0123"))
		if r.err == nil {
			t.Errorf("nbdinfo of an unknown version: want a failure\n%v", r)
		}
	})

	t.Run("nbdcopy equals restore", func(t *testing.T) {
		for _, c := range []struct{ export, uid, want string }{{v.UID, v.UID, img}, {w.UID, w.UID, rnd}, {"vm-2@latest", w.UID, rnd}} {
			out := filepath.Join(t.TempDir(), "copy.img")
			e2eNBDCopy(t, e2eNBDURI(addr, c.export), out)
			e2eSameFile(t, out, c.want)
			restored := filepath.Join(t.TempDir(), "restored.img")
			if r := b.run("restore", c.uid, restored); r.code != 0 {
				t.Fatalf("restore: %v", r)
			}
			e2eSameFile(t, out, restored)
		}
	})

	t.Run("map shows holes", func(t *testing.T) {
		data := e2eReadFile(t, img)
		var holes int64
		for _, x := range e2eNBDMap(t, uri) {
			if !x.Hole() {
				continue
			}
			if !x.Zero() {
				t.Errorf("hole at %d is not marked zero", x.Offset)
			}
			if bytes.ContainsFunc(data[x.Offset:x.Offset+x.Length], func(r rune) bool { return r != 0 }) {
				t.Errorf("extent at %d (%d bytes) is reported as a hole but holds data", x.Offset, x.Length)
			}
			holes += x.Length
		}
		if holes == 0 || holes != v.BytesSparse {
			t.Errorf("map shows %d bytes of holes, the version has %d sparse bytes", holes, v.BytesSparse)
		}
	})

	t.Run("mount ext4 and read a file", func(t *testing.T) {
		start := time.Now()
		mnt, unmount := e2eNBDMountRO(t, uri)
		mounted := time.Since(start)
		src := filepath.Join(b.dir, "served.d")
		n := 0
		err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return err
			}
			rel, _ := filepath.Rel(src, path)
			if !bytes.Equal(e2eReadFile(t, filepath.Join(mnt, rel)), e2eReadFile(t, path)) {
				t.Errorf("%s differs in the mounted version", rel)
			}
			n++
			return nil
		})
		if err != nil || n < 4 {
			t.Fatalf("compared %d files (%v)", n, err)
		}
		// A served version cannot be removed.
		r := b.fail(75, "rm", "--force", v.UID)
		if !strings.Contains(r.stderr, v.UID) {
			t.Errorf("rm of a served version should name it:\n%v", r)
		}
		unmount()
		t.Logf("mounted version %s (nbdfuse + mount -o loop,ro) in %s; %d files identical", v.UID, mounted.Round(time.Millisecond), n)
	})

	t.Run("writes refused", func(t *testing.T) {
		r := e2eNBDExec(t, "qemu-io", e2eNBDQemuIOArgs(true, uri, "write -P 0xab 0 64k")...)
		if r.err == nil {
			t.Errorf("a write to a read-only server succeeded:\n%v", r)
		}
	})

	r := e2eNBDServeStop(t, p)
	if !strings.Contains(r.stderr, "loopback only") || !strings.Contains(r.stderr, "read-only") {
		t.Errorf("the server should say where it listens and how:\n%v", r)
	}
	if got := b.lsUIDs(); len(got) != 2 {
		t.Errorf("a read-only session made versions: %v", got)
	}
	// Not served any more: rm works.
	b.ok("rm", "--force", w.UID)
}

func TestE2ENBDServeCopyOnWrite(t *testing.T) {
	e2eNBDTool(t, "qemu-io")
	e2eNBDTool(t, "nbdcopy")
	t.Parallel()
	b := e2eNewBox(t)
	img := b.path("disk.img")
	e2eRandomFile(t, img, 13*e2eMiB+777, 31)
	v := b.backup(img, "vm-3", "--label", "role=db")

	// Writes in one session become a new version when it ends.
	p, addr := e2eNBDServeStart(b)
	uri := e2eNBDURI(addr, v.UID)
	e2eNBDQemuIO(t, uri, "write -P 0xab 1000 64k", "read -P 0xab 1000 64k", "write -z 8M 4M")
	want := e2eReadFile(t, img)
	copy(want[1000:], bytes.Repeat([]byte{0xab}, 64*e2eKiB))
	clear(want[8*e2eMiB : 12*e2eMiB])
	var nv e2eVersion
	deadline := time.Now().Add(30 * time.Second)
	for {
		vs := b.ls("vm-3")
		if len(vs) == 2 && vs[1].Status != "incomplete" {
			nv = vs[1]
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new version after the session: %+v", vs)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if nv.Labels["nbd-origin"] != v.UID || nv.Labels["role"] != "db" || nv.Status != "valid" {
		t.Errorf("new version %+v: want labels nbd-origin=%s and role=db, valid", nv, v.UID)
	}
	// Only the changed blocks were read and stored.
	if nv.BytesWritten > 2*4*e2eMiB || nv.BytesRead > 3*4*e2eMiB {
		t.Errorf("the commit wrote %d and read %d bytes for two changed blocks", nv.BytesWritten, nv.BytesRead)
	}
	wantPath := b.path("want.img")
	e2eWriteFile(t, wantPath, want)
	b.restore(nv.UID, wantPath)
	b.restore(v.UID, img) // the served version never changes
	// Through NBD, too, and as vm-3@latest.
	out := filepath.Join(t.TempDir(), "latest.img")
	e2eNBDCopy(t, e2eNBDURI(addr, "vm-3@latest"), out)
	e2eSameFile(t, out, wantPath)
	// A session that only reads makes nothing.
	e2eNBDQemuIO(t, e2eNBDURI(addr, nv.UID), "read -P 0xab 1000 64k")
	e2eNBDQemuIO(t, uri, "read 0 64k")
	e2eNBDServeStop(t, p)
	if got := b.lsUIDs(); len(got) != 2 {
		t.Errorf("versions after a reading session: %v, want 2", got)
	}

	// --discard-changes drops the writes.
	p, addr = e2eNBDServeStart(b, "--discard-changes")
	e2eNBDQemuIO(t, e2eNBDURI(addr, v.UID), "write -P 0xcd 0 4k")
	e2eNBDServeStop(t, p)
	if got := b.lsUIDs(); len(got) != 2 {
		t.Errorf("versions after a discarded session: %v, want 2", got)
	}
	b.ok("scrub", "--all")
}

func TestE2ENBDServeBadInput(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	img := b.path("x.img")
	e2eRandomFile(t, img, e2eMiB, 41)
	b.backup(img, "x")
	// A busy port is a clear error.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	r := b.run("nbd", "--listen", ln.Addr().String())
	if r.code == 0 || !strings.Contains(r.stderr, ln.Addr().String()) || strings.Count(strings.TrimSpace(r.stderr), "\n") > 0 {
		t.Errorf("nbd on a busy port: want a one-line error naming it\n%v", r)
	}
	b.fail(64, "nbd", "extra-argument")
	// A raw client speaking nonsense is dropped; the server lives on.
	p, addr := e2eNBDServeStart(b, "--read-only")
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	_, _ = c.Write(bytes.Repeat([]byte{0xff}, 4096))
	_, rerr := c.Read(make([]byte, 4096))
	for rerr == nil {
		_, rerr = c.Read(make([]byte, 4096))
	}
	c.Close()
	if errors.Is(rerr, os.ErrDeadlineExceeded) {
		t.Error("the server kept a garbage-speaking connection open")
	}
	if _, err := net.Dial("tcp", addr); err != nil || p.exited() {
		t.Errorf("the server died after a garbage client: %v", err)
	}
	e2eNBDServeStop(t, p)
}

// TestE2ENBDServeCtrlCCommits: Ctrl-C while a copy-on-write session is
// open closes it, and its writes still become a new version before the
// server exits.
func TestE2ENBDServeCtrlCCommits(t *testing.T) {
	e2eNBDTool(t, "qemu-io")
	t.Parallel()
	b := e2eNewBox(t)
	img := b.path("disk.img")
	e2eRandomFile(t, img, 5*e2eMiB, 51)
	v := b.backup(img, "vm-5")
	p, addr := e2eNBDServeStart(b)
	// qemu-io writes, then keeps the connection open (sleep is in ms).
	// stdbuf: qemu-io buffers its output when it is not a terminal.
	cmd := exec.Command("stdbuf", append([]string{"-oL", "qemu-io"}, e2eNBDQemuIOArgs(false, e2eNBDURI(addr, v.UID), "write -P 0x5a 4096 8k", "sleep 60000")...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	// qemu-io says "wrote 8192/8192 bytes" once the server acknowledged.
	wrote := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "wrote 8192/8192") {
				wrote <- true
				return
			}
		}
		wrote <- false
	}()
	select {
	case ok := <-wrote:
		if !ok {
			t.Fatal("qemu-io ended without writing")
		}
	case <-time.After(60 * time.Second):
		t.Fatal("qemu-io did not write within 60 s")
	}
	r := e2eNBDServeStop(t, p)
	vs := b.ls("vm-5")
	if len(vs) != 2 || vs[1].Status != "valid" || vs[1].Labels["nbd-origin"] != v.UID {
		t.Fatalf("after Ctrl-C with an open session: versions %+v, want the session's new version\n%v", vs, r)
	}
	if !strings.Contains(r.stdout, vs[1].UID) {
		t.Errorf("the server should print the new version's uid:\n%v", r)
	}
	want := e2eReadFile(t, img)
	copy(want[4096:], bytes.Repeat([]byte{0x5a}, 8*e2eKiB))
	wantPath := b.path("want.img")
	e2eWriteFile(t, wantPath, want)
	b.restore(vs[1].UID, wantPath)
}
