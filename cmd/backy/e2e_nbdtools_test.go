package main

// Helpers of the end-to-end tests of `backy nbd`: they drive real NBD
// clients from Debian packages against a server on 127.0.0.1:
//
//	libnbd-bin  nbdinfo, nbdcopy, nbdfuse
//	qemu-utils  qemu-img, qemu-io (and qemu-nbd, the reference server)
//
// .ci/install-test-tools installs them. The tests never skip on their
// own: a missing tool fails the test, naming the package. Only
// BACKY_TEST_NBD=skip, set on purpose (a laptop without the tools),
// skips them, loudly; CI never sets it (as BACKY_TEST_S3 for S3).
//
// Mounting an export (e2eNBDMountRO) needs root: nbdfuse exposes the
// export as a file, which is then loop-mounted read-only. Every step is
// bounded in time; a FUSE connection that hangs (a server that stops
// answering leaves readers in uninterruptible sleep, which no signal
// ends) is aborted through /sys/fs/fuse/connections, which fails the
// blocked reads with an error instead.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// e2eNBDTimeout bounds every run of a client (nbdinfo, nbdcopy,
	// qemu-io, qemu-img) and every step of mounting and unmounting.
	e2eNBDTimeout = 2 * time.Minute
	// e2eNBDMountLimit is how long a mount may stay before the helper
	// aborts its FUSE connection, so that a test blocked reading a hung
	// mount fails instead of hanging the run.
	e2eNBDMountLimit = 5 * time.Minute
	// e2eNBDFuseConns is where the kernel's fusectl file system lists the
	// FUSE connections (one directory, with an abort file, per mount).
	e2eNBDFuseConns = "/sys/fs/fuse/connections"
)

// e2eNBDPackages names the Debian package of each program the helpers run.
var e2eNBDPackages = map[string]string{
	"nbdinfo":  "libnbd-bin",
	"nbdcopy":  "libnbd-bin",
	"nbdfuse":  "libnbd-bin",
	"qemu-img": "qemu-utils",
	"qemu-io":  "qemu-utils",
	"qemu-nbd": "qemu-utils",
	"mount":    "mount",
}

// e2eNBDSkipping reports whether BACKY_TEST_NBD=skip is set.
func e2eNBDSkipping() bool { return os.Getenv("BACKY_TEST_NBD") == "skip" }

// e2eNBDTool returns the path of an NBD client (or of qemu-nbd or mount).
// It skips the test if BACKY_TEST_NBD=skip is set, and fails it if the
// program is missing. A test of `backy nbd` calls it first for every tool
// it uses, so that it skips before doing any work.
func e2eNBDTool(t *testing.T, name string) string {
	t.Helper()
	if e2eNBDSkipping() {
		t.Skip("NBD client tests skipped: BACKY_TEST_NBD=skip is set (CI never sets it)")
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, d := range []string{"/usr/bin", "/usr/sbin", "/sbin", "/bin", "/usr/local/sbin"} {
		if p := filepath.Join(d, name); e2eIsExec(p) {
			return p
		}
	}
	pkg := e2eNBDPackages[name]
	if pkg == "" {
		pkg = "the package providing it"
	}
	t.Fatalf("%s not found: install %s (as root: .ci/install-test-tools), or set BACKY_TEST_NBD=skip to skip the NBD client tests", name, pkg)
	return ""
}

// e2eNBDURI returns the NBD URI of export on addr (host:port), the export
// name percent-encoded as the NBD URI specification wants:
// nbd://127.0.0.1:10809/name.
func e2eNBDURI(addr, export string) string {
	u := url.URL{Scheme: "nbd", Host: addr, Path: "/" + export}
	return u.String()
}

// e2eNBDRes is the outcome of one run of a client.
type e2eNBDRes struct {
	args           []string
	stdout, stderr string
	err            error // nil when it exited 0
	dur            time.Duration
}

func (r e2eNBDRes) String() string {
	st := "exit 0"
	if r.err != nil {
		st = r.err.Error()
	}
	return fmt.Sprintf("%s: %s (%s)\n--- stdout:\n%s--- stderr:\n%s", strings.Join(r.args, " "), st,
		r.dur.Round(time.Millisecond), e2eNBDTail(r.stdout), e2eNBDTail(r.stderr))
}

// e2eNBDTail shortens s to its last 4 KiB, ending it with a newline.
func e2eNBDTail(s string) string {
	if len(s) > 4*e2eKiB {
		s = "[...]" + s[len(s)-4*e2eKiB:]
	}
	if s != "" && !strings.HasSuffix(s, "\n") {
		s += "\n"
	}
	return s
}

// e2eNBDExec runs the program name (see e2eNBDTool) with args, killed
// after e2eNBDTimeout, and returns what happened; it fails the test only
// if the program is missing. For runs that are expected to fail.
func e2eNBDExec(t *testing.T, name string, args ...string) e2eNBDRes {
	t.Helper()
	bin := e2eNBDTool(t, name)
	ctx, cancel := context.WithTimeout(context.Background(), e2eNBDTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.WaitDelay = 5 * time.Second
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	start := time.Now()
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("killed after %s: %w", e2eNBDTimeout, err)
	}
	return e2eNBDRes{args: append([]string{name}, args...), stdout: so.String(), stderr: se.String(), err: err,
		dur: time.Since(start)}
}

// e2eNBDRun runs name with args, fails the test unless it exits 0 and
// returns its standard output.
func e2eNBDRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	r := e2eNBDExec(t, name, args...)
	if r.err != nil {
		t.Fatalf("%v", r)
	}
	return r.stdout
}

// e2eNBDCopy copies the whole export to out with nbdcopy: out is a file
// (created or overwritten; zero ranges are left as holes) or "null:" to
// read everything and throw it away.
func e2eNBDCopy(t *testing.T, uri, out string) {
	t.Helper()
	e2eNBDRun(t, "nbdcopy", uri, out)
}

// e2eNBDExport is one export as `nbdinfo --json` describes it (the fields
// the tests use; nbdinfo prints more).
type e2eNBDExport struct {
	Name         string   `json:"export-name"`
	Description  string   `json:"description"`
	URI          string   `json:"uri"`
	Size         int64    `json:"export-size"`
	Contexts     []string `json:"contexts"`
	IsReadOnly   bool     `json:"is_read_only"`
	CanFlush     bool     `json:"can_flush"`
	CanMultiConn bool     `json:"can_multi_conn"`
	CanTrim      bool     `json:"can_trim"`
	CanZero      bool     `json:"can_zero"`
	BlockMin     int64    `json:"block_size_minimum"`
	BlockPref    int64    `json:"block_size_preferred"`
	BlockMax     int64    `json:"block_size_maximum"`
}

// e2eNBDServerInfo is the output of `nbdinfo --json` and of
// `nbdinfo --list --json`.
type e2eNBDServerInfo struct {
	Protocol   string         `json:"protocol"`
	TLS        bool           `json:"TLS"`
	Structured bool           `json:"structured"`
	Exports    []e2eNBDExport `json:"exports"`
}

// e2eNBDInfo returns what nbdinfo reports of the export at uri (without
// probing its content, which costs a read and a run of file(1)).
func e2eNBDInfo(t *testing.T, uri string) e2eNBDExport {
	t.Helper()
	info := e2eNBDJSON[e2eNBDServerInfo](t, "nbdinfo", "--json", "--no-content", uri)
	if len(info.Exports) != 1 {
		t.Fatalf("nbdinfo --json %s: %d exports, want 1: %+v", uri, len(info.Exports), info)
	}
	return info.Exports[0]
}

// e2eNBDList returns the exports the server at uri (nbd://HOST:PORT)
// lists (NBD_OPT_LIST), with their details.
func e2eNBDList(t *testing.T, uri string) []e2eNBDExport {
	t.Helper()
	return e2eNBDJSON[e2eNBDServerInfo](t, "nbdinfo", "--list", "--json", uri).Exports
}

// e2eNBDJSON runs a client and decodes its JSON output into a T.
func e2eNBDJSON[T any](t *testing.T, name string, args ...string) T {
	t.Helper()
	r := e2eNBDExec(t, name, args...)
	if r.err != nil {
		t.Fatalf("%v", r)
	}
	var v T
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
		t.Fatalf("%s: output is not the expected JSON: %v\n%v", strings.Join(r.args, " "), err, r)
	}
	return v
}

// e2eNBDExtent is one extent of the base:allocation map, as
// `nbdinfo --map --json` prints it:
//
//	[
//	{ "offset": 0, "length": 10485760, "type": 3, "description": "hole,zero"},
//	{ "offset": 10485760, "length": 4194304, "type": 0, "description": "data"}
//	]
type e2eNBDExtent struct {
	Offset      int64  `json:"offset"`
	Length      int64  `json:"length"`
	Type        uint32 `json:"type"`
	Description string `json:"description"`
}

// Flags of base:allocation extents (NBD_STATE_HOLE, NBD_STATE_ZERO).
const (
	e2eNBDHole = 1
	e2eNBDZero = 2
)

// Hole reports whether the server says the extent is not allocated.
func (e e2eNBDExtent) Hole() bool { return e.Type&e2eNBDHole != 0 }

// Zero reports whether the server says the extent reads as zeros.
func (e e2eNBDExtent) Zero() bool { return e.Type&e2eNBDZero != 0 }

// e2eNBDMap returns the base:allocation map of the export, as
// `nbdinfo --map --json` reports it. It fails the test unless the output
// has exactly the expected fields, the descriptions match the types and
// the extents follow each other from offset 0.
func e2eNBDMap(t *testing.T, uri string) []e2eNBDExtent {
	t.Helper()
	r := e2eNBDExec(t, "nbdinfo", "--map", "--json", uri)
	if r.err != nil {
		t.Fatalf("%v", r)
	}
	var ext []e2eNBDExtent
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ext); err != nil {
		t.Fatalf("nbdinfo --map --json: unexpected output: %v\n%v", err, r)
	}
	if _, err := dec.Token(); err != io.EOF {
		t.Fatalf("nbdinfo --map --json: unexpected data after the extents (%v)\n%v", err, r)
	}
	var off int64
	for i, e := range ext {
		want := map[uint32]string{0: "data", e2eNBDHole: "hole", e2eNBDZero: "zero", e2eNBDHole | e2eNBDZero: "hole,zero"}[e.Type]
		if e.Offset != off || e.Length <= 0 || want == "" || e.Description != want {
			t.Fatalf("nbdinfo --map --json: extent %d is %+v (want offset %d, a positive length, a description matching the type)\n%v",
				i, e, off, r)
		}
		off += e.Length
	}
	return ext
}

// e2eNBDMerge joins adjacent extents of the same type.
func e2eNBDMerge(ext []e2eNBDExtent) []e2eNBDExtent {
	var out []e2eNBDExtent
	for _, e := range ext {
		if n := len(out); n > 0 && out[n-1].Type == e.Type && out[n-1].Offset+out[n-1].Length == e.Offset {
			out[n-1].Length += e.Length
			continue
		}
		out = append(out, e)
	}
	return out
}

// e2eNBDFileMap returns the data and holes of a local file (SEEK_DATA,
// SEEK_HOLE) as a base:allocation map: data is type 0, holes are type 3
// (hole,zero). It is what a server exporting the file should report.
func e2eNBDFileMap(t *testing.T, path string) []e2eNBDExtent {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	size := st.Size()
	var ext []e2eNBDExtent
	add := func(off, end int64, typ uint32) {
		if end > off {
			desc := map[uint32]string{0: "data", 3: "hole,zero"}[typ]
			ext = append(ext, e2eNBDExtent{Offset: off, Length: end - off, Type: typ, Description: desc})
		}
	}
	for off := int64(0); off < size; {
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			data = size
		} else if err != nil {
			t.Fatalf("%s: SEEK_DATA at %d: %v", path, off, err)
		}
		add(off, data, 3)
		if data >= size {
			break
		}
		hole, err := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			t.Fatalf("%s: SEEK_HOLE at %d: %v", path, data, err)
		}
		add(data, hole, 0)
		off = hole
	}
	return ext
}

// e2eNBDQemuIO runs qemu-io on the export (format raw, opened read-write)
// with the commands (each one -c), e.g. "write -P 0xab 0 64k", and
// returns its output. It fails the test if any command fails: qemu-io
// runs them all and exits 1 if one failed (a "read -P" whose data is not
// the pattern fails). To expect a failure, use e2eNBDExec("qemu-io", ...).
func e2eNBDQemuIO(t *testing.T, uri string, cmds ...string) string {
	t.Helper()
	return e2eNBDRun(t, "qemu-io", e2eNBDQemuIOArgs(false, uri, cmds...)...)
}

// e2eNBDQemuIORO is e2eNBDQemuIO opening the export read-only (-r): qemu-io
// cannot open a read-only export otherwise ("Could not open image:
// Permission denied").
func e2eNBDQemuIORO(t *testing.T, uri string, cmds ...string) string {
	t.Helper()
	return e2eNBDRun(t, "qemu-io", e2eNBDQemuIOArgs(true, uri, cmds...)...)
}

// e2eNBDQemuIOArgs returns the arguments of qemu-io for the commands.
func e2eNBDQemuIOArgs(readOnly bool, uri string, cmds ...string) []string {
	args := []string{"-f", "raw"}
	if readOnly {
		args = append(args, "-r")
	}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	return append(args, uri)
}

// e2eNBDQemuNBD serves the raw image file as export on 127.0.0.1 with
// qemu-nbd (persistent, any number of clients) until the test ends, and
// returns its address. The listening socket is made here and handed over
// by socket activation (LISTEN_FDS), so there is no race for a port.
func e2eNBDQemuNBD(t *testing.T, img, export string, readOnly bool) string {
	t.Helper()
	qemuNBD := e2eNBDTool(t, "qemu-nbd")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	lf, err := ln.(*net.TCPListener).File()
	ln.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	args := []string{"-f", "raw", "-t", "-e", "0", "-x", export}
	if readOnly {
		args = append(args, "-r")
	}
	// qemu-nbd takes the socket at fd 3 only if LISTEN_PID is its own pid,
	// which the shell knows before exec.
	cmd := exec.Command("/bin/sh", append([]string{"-c", `LISTEN_PID=$$ LISTEN_FDS=1; export LISTEN_PID LISTEN_FDS; exec "$0" "$@"`,
		qemuNBD}, append(args, img)...)...)
	cmd.ExtraFiles = []*os.File{lf}
	logs := new(e2eNBDLog)
	cmd.Stdout, cmd.Stderr = logs, logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("qemu-nbd %s (%v) said:\n%s", addr, waitErr, logs)
		}
	})
	// The socket listens already; a size query proves qemu-nbd serves.
	uri := e2eNBDURI(addr, export)
	r := e2eNBDExec(t, "nbdinfo", "--size", uri)
	if r.err != nil {
		select {
		case <-exited:
			t.Fatalf("qemu-nbd %s exited (%v):\n%s", strings.Join(cmd.Args[3:], " "), waitErr, logs)
		default:
		}
		t.Fatalf("qemu-nbd does not serve %s:\n%v", uri, r)
	}
	return addr
}

// e2eNBDLog is an output buffer safe for concurrent writes and reads.
type e2eNBDLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *e2eNBDLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *e2eNBDLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// e2eNBDMountInfo is one line of /proc/self/mountinfo.
type e2eNBDMountInfo struct {
	dev    string // major:minor of the mounted file system
	point  string
	fstype string
	source string
}

// e2eNBDMountOf returns the mount at exactly the path point, if any (the
// last one, which hides the others).
func e2eNBDMountOf(point string) (e2eNBDMountInfo, bool) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return e2eNBDMountInfo{}, false
	}
	defer f.Close()
	var found e2eNBDMountInfo
	ok := false
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*e2eKiB), e2eMiB)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS
		fields := strings.Fields(sc.Text())
		sep := -1
		for i := 6; i < len(fields); i++ {
			if fields[i] == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+2 >= len(fields) || e2eNBDUnescape(fields[4]) != point {
			continue
		}
		found = e2eNBDMountInfo{dev: fields[2], point: point, fstype: fields[sep+1], source: e2eNBDUnescape(fields[sep+2])}
		ok = true
	}
	return found, ok
}

// e2eNBDUnescape undoes the octal escapes (\040 for a space) of mountinfo.
func e2eNBDUnescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// e2eNBDBounded runs f, giving it limit to return. If it does not, it
// calls rescue (which should make f fail, such as aborting a FUSE
// connection) and waits 10 s more; after that f is abandoned, still
// blocked, and an error says so.
func e2eNBDBounded(limit time.Duration, f func() error, rescue func()) error {
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-time.After(limit):
	}
	rescue()
	select {
	case err := <-done:
		return fmt.Errorf("blocked for %s, failed after the FUSE connection was aborted: %w", limit, err)
	case <-time.After(10 * time.Second):
		return fmt.Errorf("blocked for %s, still blocked 10 s after the FUSE connection was aborted (abandoned)", limit)
	}
}

// e2eNBDMount is a mounted export (see e2eNBDMountRO).
type e2eNBDMount struct {
	t        *testing.T
	fuseDir  string // where nbdfuse shows the export as the file "nbd"
	mnt      string // where that file is loop-mounted
	conn     string // the FUSE connection, a name in e2eNBDFuseConns
	loop     string // the loop device, e.g. /dev/loop3
	cmd      *exec.Cmd
	logs     *e2eNBDLog
	exited   chan struct{}
	waitErr  error
	watchdog *time.Timer
	wdDone   chan struct{}

	abortOnce sync.Once
	cleanOnce sync.Once
}

// e2eNBDMountRO mounts the file system in the export read-only, and
// returns the mount point and a function that unmounts it (also called
// when the test ends; calling it again does nothing). Needs root: nbdfuse
// -r shows the export as the file FUSEDIR/nbd, and `mount -o loop,ro`
// mounts that file. The unmount checks that nbdfuse exits and that the
// loop device is released.
//
// Every step is bounded (e2eNBDTimeout); a mount older than
// e2eNBDMountLimit has its FUSE connection aborted and fails the test, so
// that reads blocked on a hung server end with an error.
func e2eNBDMountRO(t *testing.T, uri string) (dir string, cleanup func()) {
	t.Helper()
	nbdfuse := e2eNBDTool(t, "nbdfuse")
	mount := e2eNBDTool(t, "mount")
	if os.Geteuid() != 0 {
		t.Fatalf("mounting an NBD export needs root (nbdfuse, then a loop mount): run the tests as root, or set BACKY_TEST_NBD=skip to skip the NBD client tests")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Fatalf("nbdfuse needs FUSE: %v (load the fuse module; in a container, pass --device /dev/fuse)", err)
	}
	base := t.TempDir()
	m := &e2eNBDMount{t: t, fuseDir: filepath.Join(base, "fuse"), mnt: filepath.Join(base, "mnt"),
		logs: new(e2eNBDLog), exited: make(chan struct{}), wdDone: make(chan struct{})}
	for _, d := range []string{m.fuseDir, m.mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	pidFile := filepath.Join(base, "nbdfuse.pid")
	m.cmd = exec.Command(nbdfuse, "-r", "-P", pidFile, m.fuseDir, uri)
	m.cmd.Stdout, m.cmd.Stderr = m.logs, m.logs
	// If the test binary dies, nbdfuse unmounts and exits on SIGTERM.
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	start := time.Now()
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { m.waitErr = m.cmd.Wait(); close(m.exited) }()
	t.Cleanup(m.cleanup)

	// nbdfuse writes its pid file once it serves the mount.
	for deadline := time.Now().Add(e2eNBDTimeout); ; {
		if b, err := os.ReadFile(pidFile); err == nil && len(bytes.TrimSpace(b)) > 0 {
			if mi, ok := e2eNBDMountOf(m.fuseDir); ok {
				m.conn = e2eNBDFuseConn(mi.dev)
				break
			}
		}
		select {
		case <-m.exited:
			t.Fatalf("nbdfuse %s exited before serving (%v):\n%s", uri, m.waitErr, m.logs)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("nbdfuse %s does not serve after %s:\n%s", uri, e2eNBDTimeout, m.logs)
		}
	}
	fuseReady := time.Since(start)

	var out []byte
	mstart := time.Now()
	err := e2eNBDBounded(e2eNBDTimeout, func() error {
		var err error
		out, err = exec.Command(mount, "-o", "loop,ro", filepath.Join(m.fuseDir, "nbd"), m.mnt).CombinedOutput()
		return err
	}, m.abort)
	if err != nil {
		t.Fatalf("mount -o loop,ro %s/nbd %s (export %s): %v\n%s\nnbdfuse said:\n%s", m.fuseDir, m.mnt, uri, err, out, m.logs)
	}
	mi, ok := e2eNBDMountOf(m.mnt)
	if !ok {
		t.Fatalf("mount -o loop,ro succeeded, but nothing is mounted on %s", m.mnt)
	}
	m.loop = mi.source
	t.Logf("mounted %s (%s on %s): nbdfuse ready in %s, mount in %s", uri, mi.fstype, m.loop,
		fuseReady.Round(time.Millisecond), time.Since(mstart).Round(time.Millisecond))
	m.watchdog = time.AfterFunc(e2eNBDMountLimit, func() {
		defer close(m.wdDone)
		t.Errorf("%s is still mounted after %s: aborting its FUSE connection", uri, e2eNBDMountLimit)
		m.abort()
	})
	return m.mnt, m.cleanup
}

// e2eNBDFuseConn returns the name of a FUSE connection in e2eNBDFuseConns
// from the major:minor of its mount: the kernel's dev_t, major<<20|minor.
func e2eNBDFuseConn(dev string) string {
	maj, min, ok := strings.Cut(dev, ":")
	a, err1 := strconv.ParseUint(maj, 10, 32)
	b, err2 := strconv.ParseUint(min, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return ""
	}
	return strconv.FormatUint(a<<20|b, 10)
}

// abort aborts the FUSE connection of nbdfuse: every request pending or
// to come fails (ENOTCONN), which ends reads blocked on a hung server.
// fusectl, which offers the abort file, is mounted first if need be
// (systemd mounts it, a container often does not).
func (m *e2eNBDMount) abort() {
	m.abortOnce.Do(func() {
		if m.conn == "" {
			return
		}
		p := filepath.Join(e2eNBDFuseConns, m.conn, "abort")
		if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
			_ = unix.Mount("fusectl", e2eNBDFuseConns, "fusectl", 0, "")
		}
		if err := os.WriteFile(p, []byte("1"), 0o200); err != nil {
			m.t.Logf("aborting the FUSE connection of %s: %v", m.fuseDir, err)
		} else {
			m.t.Logf("aborted the FUSE connection of %s", m.fuseDir)
		}
	})
}

// e2eNBDUnmount unmounts point, retrying while it is busy for a while.
func e2eNBDUnmount(point string) error {
	var err error
	for i := 0; i < 20; i++ {
		if err = unix.Unmount(point, 0); !errors.Is(err, unix.EBUSY) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
	return err
}

// cleanup unmounts the file system, then the FUSE mount (nbdfuse then
// exits), and checks that nothing is left: mounts, nbdfuse, loop device.
func (m *e2eNBDMount) cleanup() {
	m.cleanOnce.Do(func() {
		t := m.t
		if m.watchdog != nil && !m.watchdog.Stop() {
			<-m.wdDone
		}
		for _, point := range []string{m.mnt, m.fuseDir} {
			if _, ok := e2eNBDMountOf(point); !ok {
				continue
			}
			if err := e2eNBDBounded(e2eNBDTimeout, func() error { return e2eNBDUnmount(point) }, m.abort); err != nil {
				t.Errorf("unmounting %s: %v; detaching it", point, err)
				if err := unix.Unmount(point, unix.MNT_DETACH); err != nil {
					t.Errorf("detaching %s: %v", point, err)
				}
			}
		}
		// With its mount gone nbdfuse exits by itself (status 0).
		select {
		case <-m.exited:
			if m.waitErr != nil {
				t.Errorf("nbdfuse: %v\n%s", m.waitErr, m.logs)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("nbdfuse still runs 10 s after its unmount: killing it\n%s", m.logs)
			m.abort()
			_ = m.cmd.Process.Kill()
			select {
			case <-m.exited:
			case <-time.After(10 * time.Second):
				t.Errorf("nbdfuse (pid %d) survives SIGKILL: abandoned", m.cmd.Process.Pid)
			}
		}
		if _, ok := e2eNBDMountOf(m.fuseDir); ok {
			t.Errorf("%s is still mounted after nbdfuse exited: detaching it", m.fuseDir)
			_ = unix.Unmount(m.fuseDir, unix.MNT_DETACH)
		}
		// mount -o loop sets autoclear: the unmount frees the loop device.
		if name, ok := strings.CutPrefix(m.loop, "/dev/"); ok && strings.HasPrefix(name, "loop") {
			backing := filepath.Join("/sys/block", name, "loop", "backing_file")
			for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
				b, err := os.ReadFile(backing)
				if err != nil || !strings.HasPrefix(string(b), m.fuseDir) {
					break
				}
				if time.Now().After(deadline) {
					t.Errorf("%s still holds %s after the unmount", m.loop, strings.TrimSpace(string(b)))
					break
				}
			}
		}
	})
}

// TestE2ENBDToolsAgainstQemuNBD proves the helpers above against a
// reference server, qemu-nbd serving files, before backy serves anything:
// nbdinfo (details, list, map), nbdcopy, nbdfuse with a loop mount,
// qemu-io (reads, pattern checks, writes through NBD) and qemu-img.
func TestE2ENBDToolsAgainstQemuNBD(t *testing.T) {
	for _, name := range []string{"nbdinfo", "nbdcopy", "nbdfuse", "qemu-img", "qemu-io", "qemu-nbd", "mount"} {
		e2eNBDTool(t, name)
	}
	t.Parallel()
	dir := t.TempDir()
	img := e2eExt4(t, dir, "nbd", 11)
	size := int64(64 * e2eMiB)
	// An export name that needs percent-encoding in the URI.
	const export = "vm 1/disk"
	addr := e2eNBDQemuNBD(t, img, export, true)
	uri := e2eNBDURI(addr, export)
	if want := "nbd://" + addr + "/vm%201/disk"; uri != want {
		t.Fatalf("e2eNBDURI = %s, want %s", uri, want)
	}

	t.Run("info", func(t *testing.T) {
		info := e2eNBDInfo(t, uri)
		if info.Name != export || info.Size != size || !info.IsReadOnly || info.URI != uri {
			t.Errorf("nbdinfo: %+v, want export %q, %d bytes, read-only, uri %s", info, export, size, uri)
		}
		list := e2eNBDList(t, e2eNBDURI(addr, ""))
		if len(list) != 1 || list[0].Name != export || list[0].Size != size {
			t.Errorf("nbdinfo --list: %+v, want the one export %q of %d bytes", list, export, size)
		}
		r := e2eNBDExec(t, "nbdinfo", "--no-content", e2eNBDURI(addr, "nosuch"))
		if r.err == nil || !strings.Contains(r.stderr, "nosuch") {
			t.Errorf("nbdinfo of a missing export: want a failure naming it, got\n%v", r)
		}
	})

	t.Run("map", func(t *testing.T) {
		ext := e2eNBDMap(t, uri)
		got, want := e2eNBDMerge(ext), e2eNBDFileMap(t, img)
		var holes, data int64
		for _, e := range got {
			if e.Hole() {
				holes += e.Length
			} else {
				data += e.Length
			}
		}
		if last := got[len(got)-1]; last.Offset+last.Length != size || holes == 0 || data == 0 {
			t.Fatalf("map of a sparse ext4 image: %+v\nwant %d bytes, some data and some holes", got, size)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("map over NBD:\n%+v\nthe file's own data and holes:\n%+v", got, want)
		}
		t.Logf("%d extents: %d bytes data, %d bytes holes", len(ext), data, holes)
	})

	t.Run("copy", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "copy.img")
		e2eNBDCopy(t, uri, out)
		e2eSameFile(t, out, img)
		if a, b := e2eAllocated(t, out), e2eAllocated(t, img); a > b+e2eMiB {
			t.Errorf("nbdcopy wrote %d bytes of %d, the image has %d: holes were filled", a, size, b)
		}
		e2eNBDCopy(t, uri, "null:")
		conv := filepath.Join(t.TempDir(), "convert.img")
		e2eNBDRun(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", uri, conv)
		e2eSameFile(t, conv, img)
		var qi struct {
			VirtualSize int64  `json:"virtual-size"`
			Format      string `json:"format"`
		}
		if err := json.Unmarshal([]byte(e2eNBDRun(t, "qemu-img", "info", "--output=json", "-f", "raw", uri)), &qi); err != nil {
			t.Fatal(err)
		}
		if qi.VirtualSize != size || qi.Format != "raw" {
			t.Errorf("qemu-img info: %+v, want raw of %d bytes", qi, size)
		}
	})

	t.Run("mount", func(t *testing.T) {
		mnt, unmount := e2eNBDMountRO(t, uri)
		src := filepath.Join(dir, "nbd.d")
		n := 0
		err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return err
			}
			rel, _ := filepath.Rel(src, p)
			if !bytes.Equal(e2eReadFile(t, filepath.Join(mnt, rel)), e2eReadFile(t, p)) {
				t.Errorf("%s differs in the mounted image", rel)
			}
			n++
			return nil
		})
		if err != nil || n < 4 {
			t.Fatalf("compared %d files (%v)", n, err)
		}
		if err := os.WriteFile(filepath.Join(mnt, "new"), nil, 0o644); !errors.Is(err, unix.EROFS) {
			t.Errorf("creating a file in the read-only mount: %v, want EROFS", err)
		}
		unmount()
		if _, ok := e2eNBDMountOf(mnt); ok {
			t.Errorf("%s is still mounted", mnt)
		}
		t.Logf("read %d files through nbdfuse and a loop mount", n)
		unmount() // again: nothing happens
	})

	t.Run("qemu-io", func(t *testing.T) {
		// Reads with pattern checks on the read-only export: the first KiB
		// of an ext4 image is zeros, its superblock magic (0xEF53) is at 1080.
		e2eNBDQemuIORO(t, uri, "read -P 0 0 1k", "read -P 0x53 1080 1", "read -P 0xef 1081 1")
		r := e2eNBDExec(t, "qemu-io", e2eNBDQemuIOArgs(true, uri, "write -P 0xab 0 64k")...)
		if r.err == nil || !strings.Contains(r.stdout+r.stderr, "read-only") {
			t.Errorf("write to a read-only export: want a failure, got\n%v", r)
		}
		r = e2eNBDExec(t, "qemu-io", e2eNBDQemuIOArgs(false, uri, "read 0 4k")...)
		if r.err == nil {
			t.Errorf("opening a read-only export read-write: want a failure, got\n%v", r)
		}

		// Writes through NBD reach the file.
		scratch := filepath.Join(t.TempDir(), "scratch.img")
		if err := os.WriteFile(scratch, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(scratch, 4*e2eMiB); err != nil {
			t.Fatal(err)
		}
		rw := e2eNBDURI(e2eNBDQemuNBD(t, scratch, "rw", false), "rw")
		out := e2eNBDQemuIO(t, rw, "write -P 0xab 0 64k", "read -P 0xab 0 64k", "write -z 1M 64k")
		if !strings.Contains(out, "wrote 65536/65536 bytes at offset 0") {
			t.Errorf("qemu-io output:\n%s", out)
		}
		got := e2eReadFile(t, scratch)
		if !bytes.Equal(got[:64*e2eKiB], bytes.Repeat([]byte{0xab}, 64*e2eKiB)) || got[64*e2eKiB] != 0 {
			t.Errorf("the file does not hold what qemu-io wrote through NBD")
		}
		r = e2eNBDExec(t, "qemu-io", e2eNBDQemuIOArgs(false, rw, "read -P 0xcd 0 64k")...)
		if r.err == nil || !strings.Contains(r.stdout, "Pattern verification failed") {
			t.Errorf("a read with the wrong pattern: want a failure, got\n%v", r)
		}
	})
}
