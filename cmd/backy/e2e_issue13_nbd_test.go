package main

// End-to-end tests of issue 13 items 9, 16 (nbd's listen address), 17 and
// 19 ('backy nbd'). Identifiers start with e2eI13NBD.

import (
	"bufio"
	"fmt"
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
