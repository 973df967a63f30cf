package main

// Helpers of the end-to-end tests (e2e_test.go): they build the backy
// binary once, run it in a sandbox per test (own temp dir, clean
// environment, default store in $BACKY_HOME) and check its output, exit
// code and the bytes it restores. Every identifier starts with "e2e" so
// that nothing here collides with the package's own code.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

const (
	e2eKiB = 1 << 10
	e2eMiB = 1 << 20
	// e2eBS is the block size of the built-in default configuration.
	e2eBS = 4 * e2eMiB
	// e2eBigSize is the size of the shared random file used by the tests
	// that need a backup to be still running (kill, concurrency).
	e2eBigSize = 256 * e2eMiB
	// e2eObjOverhead bounds the bytes an object adds to a block's data.
	e2eObjOverhead = 4 * e2eKiB
	// e2eCmdTimeout bounds every single run of backy.
	e2eCmdTimeout = 3 * time.Minute
)

var (
	e2eBin    string // the backy binary under test
	e2eShared string // temp dir shared by all tests (binary, big file)

	e2eBigOnce sync.Once
	e2eBigPath string
	e2eBigErr  error
)

func TestMain(m *testing.M) { os.Exit(e2eMain(m)) }

func e2eMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "backy-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	e2eShared = dir
	e2eBin = filepath.Join(dir, "backy")
	goTool, err := exec.LookPath("go")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: the go command is needed to build backy:", err)
		return 1
	}
	args := []string{"build", "-o", e2eBin}
	if e2eRace {
		args = append(args, "-race")
	}
	cmd := exec.Command(goTool, append(args, ".")...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: building backy (%s): %v\n", strings.Join(cmd.Args, " "), err)
		return 1
	}
	return m.Run()
}

// e2eBox is one test's sandbox: a temp dir that is the working directory
// and $HOME, and the default store in dir/store ($BACKY_HOME).
type e2eBox struct {
	t    *testing.T
	dir  string
	home string
	env  []string
}

func e2eNewBox(t *testing.T) *e2eBox {
	t.Helper()
	b := &e2eBox{t: t, dir: t.TempDir()}
	b.setHome(filepath.Join(b.dir, "store"))
	return b
}

// with returns the sandbox for use in the subtest t.
func (b *e2eBox) with(t *testing.T) *e2eBox {
	c := *b
	c.t = t
	return &c
}

// setHome points $BACKY_HOME at home.
func (b *e2eBox) setHome(home string) {
	b.home = home
	b.env = []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + b.dir,
		"BACKY_HOME=" + home,
		// Not UTC, so that UTC dates in the output are not an accident.
		"TZ=Asia/Tokyo",
		// A race in the binary must not pass for one of backy's codes.
		"GORACE=exitcode=86 atexit_sleep_ms=0",
	}
}

// path returns a path in the sandbox.
func (b *e2eBox) path(name string) string { return filepath.Join(b.dir, name) }

// dataDir is the data directory of the default store.
func (b *e2eBox) dataDir() string { return filepath.Join(b.home, "data") }

// e2eRes is the outcome of one run of backy.
type e2eRes struct {
	args           []string
	stdout, stderr string
	code           int // -1 when killed by a signal
	dur            time.Duration
}

func (r e2eRes) String() string {
	return fmt.Sprintf("backy %s: exit %d (%s)\n--- stdout:\n%s--- stderr:\n%s", strings.Join(r.args, " "), r.code,
		r.dur.Round(time.Millisecond), r.stdout, r.stderr)
}

// runEnv runs backy with args, the sandbox environment plus extra.
func (b *e2eBox) runEnv(extra []string, args ...string) e2eRes {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), e2eCmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, e2eBin, args...)
	cmd.Dir = b.dir
	cmd.Env = append(slices.Clone(b.env), extra...)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	start := time.Now()
	err := cmd.Run()
	r := e2eRes{args: args, stdout: so.String(), stderr: se.String(), dur: time.Since(start)}
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			b.t.Fatalf("running backy %q: %v", args, err)
		}
		r.code = ee.ExitCode()
		if ctx.Err() != nil {
			b.t.Fatalf("backy %q did not finish within %s", args, e2eCmdTimeout)
		}
	}
	e2eCheckRace(b.t, r)
	return r
}

func e2eCheckRace(t *testing.T, r e2eRes) {
	t.Helper()
	if strings.Contains(r.stderr, "WARNING: DATA RACE") || r.code == 86 {
		t.Errorf("data race in backy:\n%v", r)
	}
}

func (b *e2eBox) run(args ...string) e2eRes {
	b.t.Helper()
	return b.runEnv(nil, args...)
}

// ok runs backy and requires exit code 0.
func (b *e2eBox) ok(args ...string) e2eRes {
	b.t.Helper()
	r := b.run(args...)
	if r.code != 0 {
		b.t.Fatalf("want exit 0:\n%v", r)
	}
	return r
}

// fail runs backy and checks that it exits with code want and prints
// exactly one line, starting with "backy: ", on stderr.
func (b *e2eBox) fail(want int, args ...string) e2eRes {
	b.t.Helper()
	r := b.run(args...)
	e2eWantFail(b.t, r, want)
	return r
}

func e2eWantFail(t *testing.T, r e2eRes, want int) {
	t.Helper()
	if r.code != want {
		t.Errorf("want exit %d:\n%v", want, r)
	}
	if l := e2eLines(r.stderr); len(l) != 1 || !strings.HasPrefix(l[0], "backy: ") {
		t.Errorf("want exactly one stderr line starting with \"backy: \", got %d lines:\n%v", len(l), r)
	}
}

// e2eLines splits output into lines; "" has none.
func e2eLines(s string) []string {
	s = strings.TrimSuffix(s, "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// e2eVersion is backy's version object as printed with --json.
type e2eVersion struct {
	UID               string            `json:"uid"`
	Volume            string            `json:"volume"`
	Snapshot          string            `json:"snapshot"`
	Date              string            `json:"date"`
	Size              int64             `json:"size"`
	BlockSize         int64             `json:"block_size"`
	Status            string            `json:"status"`
	Protected         bool              `json:"protected"`
	Labels            map[string]string `json:"labels"`
	Base              string            `json:"base"`
	BlocksDone        int64             `json:"blocks_done"`
	BytesRead         int64             `json:"bytes_read"`
	BytesWritten      int64             `json:"bytes_written"`
	BytesDeduplicated int64             `json:"bytes_deduplicated"`
	BytesSparse       int64             `json:"bytes_sparse"`
	DurationSeconds   float64           `json:"duration_seconds"`
}

func e2eDecode[T any](t *testing.T, r e2eRes) T {
	t.Helper()
	var v T
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("stdout is not the expected JSON (%v):\n%v", err, r)
	}
	if dec.More() {
		t.Fatalf("stdout holds more than one JSON value:\n%v", r)
	}
	return v
}

// ls returns the versions 'backy ls --json' lists.
func (b *e2eBox) ls(args ...string) []e2eVersion {
	b.t.Helper()
	r := b.ok(append([]string{"ls", "--json"}, args...)...)
	return e2eDecode[[]e2eVersion](b.t, r)
}

// lsUIDs returns the uids 'backy ls --json' lists.
func (b *e2eBox) lsUIDs() []string {
	b.t.Helper()
	var out []string
	for _, v := range b.ls() {
		out = append(out, v.UID)
	}
	return out
}

// version returns the listed version uid, or fails the test.
func (b *e2eBox) version(uid string) e2eVersion {
	b.t.Helper()
	for _, v := range b.ls() {
		if v.UID == uid {
			return v
		}
	}
	b.t.Fatalf("version %s is not listed by 'backy ls'", uid)
	return e2eVersion{}
}

// backup runs 'backup SRC VOLUME --json EXTRA...', which must succeed with
// a valid version of src's size.
func (b *e2eBox) backup(src, volume string, extra ...string) e2eVersion {
	b.t.Helper()
	r := b.ok(append([]string{"backup", src, volume, "--json"}, extra...)...)
	v := e2eDecode[e2eVersion](b.t, r)
	if v.Status != "valid" || !e2eUIDShape(v.UID) {
		b.t.Fatalf("backup printed %+v, want a valid version with a uid:\n%v", v, r)
	}
	if st, err := os.Stat(src); err == nil && st.Size() != v.Size {
		b.t.Fatalf("backup of %s (%d bytes) made a version of size %d", src, st.Size(), v.Size)
	}
	return v
}

func e2eUIDShape(s string) bool {
	if len(s) != 21 || s[0] != 'V' {
		return false
	}
	_, err := hex.DecodeString(s[1:])
	return err == nil && strings.ToLower(s[1:]) == s[1:]
}

var e2eRestoreSeq atomic.Int64

// restore restores uid to a new file in the sandbox (extra flags added),
// checks it is bit-identical to want and returns its path.
func (b *e2eBox) restore(uid, want string, extra ...string) string {
	b.t.Helper()
	target := b.path(fmt.Sprintf("restored-%d.img", e2eRestoreSeq.Add(1)))
	b.ok(append([]string{"restore", uid, target}, extra...)...)
	e2eSameFile(b.t, target, want)
	return target
}

// e2eSameFile requires the files at got and want to hold the same bytes.
func e2eSameFile(t *testing.T, got, want string) {
	t.Helper()
	if err := e2eCompare(got, want, -1); err != nil {
		t.Fatal(err)
	}
}

// e2eCompare compares the files, or their first n bytes if n >= 0.
func e2eCompare(got, want string, n int64) error {
	fg, err := os.Open(got)
	if err != nil {
		return err
	}
	defer fg.Close()
	fw, err := os.Open(want)
	if err != nil {
		return err
	}
	defer fw.Close()
	sg, _ := fg.Stat()
	sw, _ := fw.Stat()
	if n < 0 {
		if sg.Size() != sw.Size() {
			return fmt.Errorf("%s has %d bytes, want %d (as %s)", got, sg.Size(), sw.Size(), want)
		}
		n = sw.Size()
	}
	bg, bw := make([]byte, e2eMiB), make([]byte, e2eMiB)
	for off := int64(0); off < n; {
		c := min(int64(len(bg)), n-off)
		if _, err := io.ReadFull(fg, bg[:c]); err != nil {
			return fmt.Errorf("%s: reading at %d: %w", got, off, err)
		}
		if _, err := io.ReadFull(fw, bw[:c]); err != nil {
			return fmt.Errorf("%s: reading at %d: %w", want, off, err)
		}
		if !bytes.Equal(bg[:c], bw[:c]) {
			i := int64(0)
			for bg[i] == bw[i] {
				i++
			}
			return fmt.Errorf("%s differs from %s at byte %d (block %d)", got, want, off+i, (off+i)/e2eBS)
		}
		off += c
	}
	return nil
}

func e2eSHA(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// e2eAllocated returns the bytes the file occupies on disk.
func e2eAllocated(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// e2eRandom returns n pseudo-random bytes from seed.
func e2eRandom(n int, seed uint64) []byte {
	var s [32]byte
	s[0], s[1] = byte(seed), byte(seed>>8)
	s[2], s[3] = byte(seed>>16), byte(seed>>24)
	b := make([]byte, n)
	_, _ = rand.NewChaCha8(s).Read(b)
	return b
}

// e2eRandomFile writes a file of size pseudo-random bytes.
func e2eRandomFile(t *testing.T, path string, size int64, seed uint64) {
	t.Helper()
	if err := e2eWriteRandom(path, size, seed); err != nil {
		t.Fatal(err)
	}
}

func e2eWriteRandom(path string, size int64, seed uint64) error {
	var s [32]byte
	s[0], s[1], s[31] = byte(seed), byte(seed>>8), 0x5a
	rng := rand.NewChaCha8(s)
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	buf := make([]byte, 4*e2eMiB)
	for left := size; left > 0; {
		c := min(left, int64(len(buf)))
		_, _ = rng.Read(buf[:c])
		if _, err := f.Write(buf[:c]); err != nil {
			f.Close()
			return err
		}
		left -= c
	}
	return f.Close()
}

// e2eScribble overwrites [off, off+n) of the file with random bytes.
func e2eScribble(t *testing.T, path string, off, n int64, seed uint64) {
	t.Helper()
	e2eWriteAt(t, path, off, e2eRandom(int(n), seed))
}

func e2eWriteAt(t *testing.T, path string, off int64, p []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(p, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// e2eCopy copies a file (densely).
func e2eCopy(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

func e2eWriteFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func e2eReadFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// e2eUsage counts the regular files below dir and their bytes.
type e2eUsage struct{ files, bytes int64 }

func e2eDirUsage(t *testing.T, dir string) e2eUsage {
	t.Helper()
	var u e2eUsage
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && p == dir {
				return fs.SkipAll
			}
			return err
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			u.files++
			u.bytes += info.Size()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// e2eTool finds an e2fsprogs tool, also in the sbin directories that are
// not always in $PATH.
func e2eTool(t *testing.T, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		if p := filepath.Join(d, name); e2eIsExec(p) {
			return p
		}
	}
	t.Fatalf("%s not found: install e2fsprogs (the end-to-end tests back up real ext4 images)", name)
	return ""
}

func e2eIsExec(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

// e2eExt4 makes a 64 MiB ext4 image dir/name.img holding real files: a
// few MiB of random and text data, some empty files, and (if present)
// files copied from /usr/share/doc. Most of the image is empty space.
func e2eExt4(t *testing.T, dir, name string, seed uint64) string {
	t.Helper()
	mkfs := e2eTool(t, "mkfs.ext4")
	root := filepath.Join(dir, name+".d")
	e2eWriteFile(t, filepath.Join(root, "data", "random.bin"), e2eRandom(1536*e2eKiB+int(seed)*4099, seed))
	e2eWriteFile(t, filepath.Join(root, "data", "random2.bin"), e2eRandom(700*e2eKiB, seed+1000))
	var text bytes.Buffer
	for i := 0; text.Len() < 600*e2eKiB; i++ {
		fmt.Fprintf(&text, "line %d of image %s: the quick brown fox jumps over the lazy dog %d\n", i, name, int(seed)*i)
	}
	e2eWriteFile(t, filepath.Join(root, "etc", "notes.txt"), text.Bytes())
	e2eWriteFile(t, filepath.Join(root, "etc", "hostname"), []byte(name+"\n"))
	e2eWriteFile(t, filepath.Join(root, "empty"), nil)
	e2eCopyTree(t, "/usr/share/doc", filepath.Join(root, "doc"), 2*e2eMiB)
	img := filepath.Join(dir, name+".img")
	cmd := exec.Command(mkfs, "-q", "-F", "-d", root, "-b", "4096", "-U", "6f1c2a3e-4b5d-4e6f-8a9b-0c1d2e3f4a5b",
		"-E", "root_owner=0:0", img, "64M")
	cmd.Env = append(os.Environ(), "E2FSPROGS_FAKE_TIME=1700000000")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
	}
	if st, err := os.Stat(img); err != nil || st.Size() != 64*e2eMiB {
		t.Fatalf("mkfs.ext4 made %v (%v), want a 64 MiB image", st, err)
	}
	return img
}

// e2eCopyTree copies regular files below src into dst, in a fixed order,
// until limit bytes are copied. A missing src copies nothing.
func e2eCopyTree(t *testing.T, src, dst string, limit int64) {
	t.Helper()
	var total int64
	_ = filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil || total >= limit {
			return fs.SkipDir
		}
		if !d.Type().IsRegular() {
			return nil
		}
		info, err := d.Info()
		if err != nil || info.Size() > 256*e2eKiB {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(src, p)
		e2eWriteFile(t, filepath.Join(dst, rel), data)
		total += int64(len(data))
		return nil
	})
}

// e2eHint is one entry of an rbd-diff style hints file.
type e2eHint struct {
	Offset int64 `json:"offset"`
	Length int64 `json:"length"`
	Exists any   `json:"exists"`
}

// e2eHints writes a hints file: one line as 'rbd diff --format=json'
// prints it, or pretty-printed over many lines.
func e2eHints(t *testing.T, path string, hints []e2eHint, pretty bool) string {
	t.Helper()
	var b []byte
	var err error
	if pretty {
		b, err = json.MarshalIndent(hints, "", "    ")
	} else {
		b, err = json.Marshal(hints)
	}
	if err != nil {
		t.Fatal(err)
	}
	e2eWriteFile(t, path, append(b, '\n'))
	return path
}

// e2eBig returns the shared file of e2eBigSize random bytes, made once.
func e2eBig(t *testing.T) string {
	t.Helper()
	e2eBigOnce.Do(func() {
		e2eBigPath = filepath.Join(e2eShared, "big.img")
		e2eBigErr = e2eWriteRandom(e2eBigPath, e2eBigSize, 424242)
	})
	if e2eBigErr != nil {
		t.Fatal(e2eBigErr)
	}
	return e2eBigPath
}

// e2eProc is backy running in the background.
type e2eProc struct {
	cmd    *exec.Cmd
	so, se bytes.Buffer
	done   chan struct{}
	err    error
	start  time.Time
	end    time.Time
}

// start runs backy in the background; the test's cleanup kills it.
func (b *e2eBox) start(args ...string) *e2eProc {
	b.t.Helper()
	p := &e2eProc{done: make(chan struct{})}
	p.cmd = exec.Command(e2eBin, args...)
	p.cmd.Dir = b.dir
	p.cmd.Env = slices.Clone(b.env)
	p.cmd.Stdout, p.cmd.Stderr = &p.so, &p.se
	p.start = time.Now()
	if err := p.cmd.Start(); err != nil {
		b.t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		p.end = time.Now()
		close(p.done)
	}()
	b.t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
	})
	return p
}

func (p *e2eProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait waits for the process and returns its outcome.
func (p *e2eProc) wait(t *testing.T) e2eRes {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(e2eCmdTimeout):
		t.Fatalf("backy %q did not finish within %s", p.cmd.Args[1:], e2eCmdTimeout)
	}
	r := e2eRes{args: p.cmd.Args[1:], stdout: p.so.String(), stderr: p.se.String(), code: p.cmd.ProcessState.ExitCode(),
		dur: p.end.Sub(p.start)}
	e2eCheckRace(t, r)
	return r
}

// e2eThrottle slows a process down without changing its code: it stops it
// (SIGSTOP) for stop, lets it run for run, and so on, until the returned
// function is called. Wall-clock timers in the process (such as the
// interval between commits of a backup) keep running, so a throttled
// backup commits its progress long before it could finish.
func e2eThrottle(p *os.Process, run, stop time.Duration) (release func()) {
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer p.Signal(syscall.SIGCONT)
		for {
			if p.Signal(syscall.SIGSTOP) != nil {
				return
			}
			select {
			case <-quit:
				return
			case <-time.After(stop):
			}
			if p.Signal(syscall.SIGCONT) != nil {
				return
			}
			select {
			case <-quit:
				return
			case <-time.After(run):
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() { close(quit) })
		wg.Wait()
	}
}

// waitVersion polls 'ls --json' until want accepts a version, and returns
// it. It fails the test if p ends first or nothing shows up in time.
func (b *e2eBox) waitVersion(p *e2eProc, want func(e2eVersion) bool) e2eVersion {
	b.t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		for _, v := range b.ls() {
			if want(v) {
				return v
			}
		}
		if p.exited() {
			b.t.Fatalf("backup ended before the awaited state:\n%v", p.wait(b.t))
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("no awaited version listed within 90 s; listed: %+v", b.ls())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
