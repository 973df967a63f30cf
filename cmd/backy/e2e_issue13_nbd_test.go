package main

// End-to-end tests of issue 13 items 9, 16 (nbd's listen address), 17 and
// 19 ('backy nbd'). Identifiers start with e2eI13NBD.

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// e2eI13NBDConfig writes a configuration of the box's default store with
// the [NBD] keys nbd (lines "key = value") and returns its path.
func e2eI13NBDConfig(b *e2eBox, name, nbd string) string {
	b.t.Helper()
	cfg := b.path(name)
	e2eWriteFile(b.t, cfg, []byte(fmt.Sprintf("[MetaBackend]\npath = %s\n[DataBackend]\npath = %s\n[NBD]\n%s\n",
		filepath.Join(b.home, "backy.db"), b.dataDir(), nbd)))
	return cfg
}

// TestE2EI13NBDListenErrors (item 16): a busy or malformed listen address
// is one line with a documented code: 64 for --listen, 78 for [NBD]
// listen, 73 for an address in use.
func TestE2EI13NBDListenErrors(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	img := b.path("x.img")
	e2eRandomFile(t, img, e2eMiB, 131)
	b.backup(img, "x")
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busyAddr := busy.Addr().String()
	for _, c := range []struct {
		name string
		code int
		args []string
		want string // in the message
	}{
		{"busy port", 73, []string{"nbd", "--listen", busyAddr}, busyAddr},
		{"busy port from the config", 73, []string{"-c", e2eI13NBDConfig(b, "busy.cfg", "listen = "+busyAddr), "nbd"}, busyAddr},
		{"no port", 64, []string{"nbd", "--listen", "127.0.0.1"}, "127.0.0.1"},
		{"port out of range", 64, []string{"nbd", "--listen", "127.0.0.1:70000"}, "70000"},
		{"a URL", 64, []string{"nbd", "--listen", "nbd://127.0.0.1:10809"}, "URL"},
		{"not an address of this host", 64, []string{"nbd", "--listen", "192.0.2.1:10809"}, "192.0.2.1:10809"},
		{"malformed in the config", 78, []string{"-c", e2eI13NBDConfig(b, "bad.cfg", "listen = 127.0.0.1:x"), "nbd"}, "[NBD] listen"},
		{"not of this host in the config", 78, []string{"-c", e2eI13NBDConfig(b, "far.cfg", "listen = 192.0.2.1:10809"), "nbd"}, "[NBD] listen"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := b.with(t).run(c.args...)
			e2eWantFail(t, r, c.code)
			if !strings.Contains(r.stderr, c.want) {
				t.Errorf("the message should name %q:\n%v", c.want, r)
			}
		})
	}
}

// TestE2EI13NBDLockHolder (item 17): 'rm' of a version a 'backy nbd'
// session holds names that server, not the backup that made the version.
func TestE2EI13NBDLockHolder(t *testing.T) {
	e2eNBDTool(t, "qemu-io")
	t.Parallel()
	b := e2eNewBox(t)
	img := b.path("disk.img")
	e2eRandomFile(t, img, 5*e2eMiB, 171)
	v := b.backup(img, "vm-17")
	p, addr := e2eNBDServeStart(b, "--read-only")
	// A session that stays open: qemu-io reads, then sleeps (ms).
	cmd := exec.Command("stdbuf", append([]string{"-oL", "qemu-io"}, e2eNBDQemuIOArgs(true, e2eNBDURI(addr, v.UID), "read 0 4k", "sleep 60000")...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	read := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "read 4096/4096") {
				read <- true
				return
			}
		}
		read <- false
	}()
	select {
	case ok := <-read:
		if !ok {
			t.Fatal("qemu-io ended without reading")
		}
	case <-time.After(60 * time.Second):
		t.Fatal("qemu-io did not read within 60 s")
	}
	r := b.run("rm", "--force", v.UID)
	e2eWantFail(t, r, 75)
	if strings.Contains(r.stderr, "backy backup") {
		t.Errorf("rm names the backup that made the version long ago, not the live holder:\n%v", r)
	}
	if want := "pid " + strconv.Itoa(p.cmd.Process.Pid) + ","; !strings.Contains(r.stderr, want) || !strings.Contains(r.stderr, " nbd ") {
		t.Errorf("rm should name the serving process (%q, 'nbd'):\n%v", want, r)
	}
	_ = cmd.Process.Kill()
	e2eNBDServeStop(t, p)
	b.ok("rm", "--force", v.UID)
}

// e2eI13NBDStart starts 'backy [global...] nbd --listen ADDR extra...' on
// a free port and waits until it accepts connections.
func e2eI13NBDStart(b *e2eBox, global []string, extra ...string) (*e2eProc, string) {
	b.t.Helper()
	addr := e2eNBDServeFreeAddr(b.t)
	args := append(append(append([]string{}, global...), "nbd", "--listen", addr), extra...)
	p := b.start(args...)
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

// TestE2EI13NBDIdleSockets (item 19): 300 idle sockets (from 127.0.0.1,
// as every local client) do not lock real clients out, the log stays
// short, and the handshake deadline of [NBD] closes idle sockets.
func TestE2EI13NBDIdleSockets(t *testing.T) {
	e2eNBDTool(t, "nbdinfo")
	e2eNBDTool(t, "qemu-io")
	t.Parallel()
	b := e2eNewBox(t)
	img := b.path("disk.img")
	e2eRandomFile(t, img, 3*e2eMiB, 191)
	v := b.backup(img, "vm-19")
	p, addr := e2eNBDServeStart(b, "--read-only")
	var idle []net.Conn
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	for range 300 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("socket %d: %v", len(idle), err)
		}
		idle = append(idle, c)
	}
	uri := e2eNBDURI(addr, v.UID)
	if info := e2eNBDInfo(t, uri); info.Size != v.Size {
		t.Errorf("nbdinfo beside 300 idle sockets: size %d, want %d", info.Size, v.Size)
	}
	e2eNBDQemuIORO(t, uri, "read 0 64k")
	r := e2eNBDServeStop(t, p)
	if n := strings.Count(r.stderr, "level=WARN"); n > 3 {
		t.Errorf("%d WARN lines for 300 idle sockets of one client, want at most 3:\n%v", n, r)
	}

	// handshake_timeout = 1s: an idle socket is closed by the server.
	cfg := e2eI13NBDConfig(b, "hs.cfg", "handshake_timeout = 1s\nmax_connections_per_client = 4")
	p, addr = e2eI13NBDStart(b, []string{"-c", cfg})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(60 * time.Second))
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Errorf("an idle socket was not closed by the handshake deadline: %v", err)
	}
	e2eNBDInfo(t, e2eNBDURI(addr, v.UID))
	e2eNBDServeStop(t, p)
}
