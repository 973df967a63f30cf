package atomicfile_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/backy/backy/internal/atomicfile"
)

// entries lists the names in dir.
func entries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}

func wantFile(t *testing.T, path, want string) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil || string(got) != want {
		t.Errorf("%s = %q, %v; want %q", filepath.Base(path), got, err, want)
	}
}

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	if err := atomicfile.WriteFile(path, []byte("one"), atomicfile.Options{}); err != nil {
		t.Fatal(err)
	}
	wantFile(t, path, "one")
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
	if err := atomicfile.WriteFile(path, []byte("two"), atomicfile.Options{Perm: 0o644}); err != nil {
		t.Fatal(err)
	}
	wantFile(t, path, "two")
	if got := entries(t, dir); len(got) != 1 {
		t.Errorf("files left: %v, want only f", got)
	}
	// A fixed temporary name, existing already (a crash's debris).
	tmp := filepath.Join(dir, "f.tmp")
	if err := os.WriteFile(tmp, []byte("debris, longer than the new file"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := atomicfile.WriteFile(path, []byte("three"), atomicfile.Options{Temp: tmp}); err != nil {
		t.Fatal(err)
	}
	wantFile(t, path, "three")
	if _, err := os.Stat(tmp); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the fixed temporary file is still there: %v", err)
	}
}

// TestNoReplace: without replacing, an existing name is refused
// (fs.ErrExist), also one that appears while the file is written, and
// the existing file and the directory are left as they were.
func TestNoReplace(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	o := atomicfile.Options{NoReplace: true}
	if err := atomicfile.WriteFile(path, []byte("first"), o); err != nil {
		t.Fatal(err)
	}
	wantFile(t, path, "first")
	if err := atomicfile.WriteFile(path, []byte("second"), o); !errors.Is(err, fs.ErrExist) {
		t.Errorf("WriteFile over an existing file = %v, want fs.ErrExist", err)
	}
	wantFile(t, path, "first")

	late := filepath.Join(dir, "late")
	f, err := atomicfile.Create(late, o)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("mine"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(late, []byte("theirs"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := f.Commit(t.Context()); !errors.Is(err, fs.ErrExist) {
		t.Errorf("Commit to a name that appeared meanwhile = %v, want fs.ErrExist", err)
	}
	wantFile(t, late, "theirs")
	if got := entries(t, dir); strings.Join(got, " ") != "f late" {
		t.Errorf("files left: %v, want f and late", got)
	}

	// Move, as the metastore puts a new database in place.
	tmp := filepath.Join(dir, "db.creating")
	if err := os.WriteFile(tmp, []byte("db"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := atomicfile.Move(tmp, path, o); !errors.Is(err, fs.ErrExist) {
		t.Errorf("Move over an existing file = %v, want fs.ErrExist", err)
	}
	wantFile(t, path, "first")
	if err := atomicfile.WriteFile(tmp, []byte("db"), atomicfile.Options{}); err != nil {
		t.Fatal(err)
	}
	if err := atomicfile.Move(tmp, filepath.Join(dir, "db"), o); err != nil {
		t.Fatal(err)
	}
	wantFile(t, filepath.Join(dir, "db"), "db")
	if _, err := os.Stat(tmp); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Move left its temporary name: %v", err)
	}
}

// TestFailures injects a failure into every step and checks that it is
// reported, that nothing is left but the old file (untouched) before the
// file has its name, and that the new file is complete after.
func TestFailures(t *testing.T) {
	errInjected := errors.New("injected")
	for _, tc := range []struct {
		name    string
		ops     atomicfile.Ops
		locked  bool
		visible bool // the failure comes after the move
	}{
		{name: "fsync", ops: atomicfile.Ops{Sync: func(*os.File) error { return errInjected }}},
		{name: "close", ops: atomicfile.Ops{Close: func(f *os.File) error { f.Close(); return errInjected }}},
		{name: "rename", ops: atomicfile.Ops{Rename: func(string, string) error { return errInjected }}},
		{name: "close after the move", locked: true, visible: true, ops: atomicfile.Ops{Close: func(f *os.File) error { f.Close(); return errInjected }}},
		{name: "directory fsync", visible: true, ops: atomicfile.Ops{SyncDir: func(string) error { return errInjected }}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "f")
			if err := atomicfile.WriteFile(path, []byte("old"), atomicfile.Options{}); err != nil {
				t.Fatal(err)
			}
			ops := tc.ops
			err := atomicfile.WriteFile(path, []byte("new"), atomicfile.Options{Ops: &ops, Locked: tc.locked})
			if !errors.Is(err, errInjected) {
				t.Errorf("WriteFile = %v, want the injected failure", err)
			}
			want := "old"
			if tc.visible {
				want = "new"
			}
			wantFile(t, path, want)
			if got := entries(t, dir); len(got) != 1 {
				t.Errorf("files left: %v, want only f", got)
			}
		})
	}
}

// TestCancelled: a context that ended before the move leaves nothing.
func TestCancelled(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	f, err := atomicfile.Create(path, atomicfile.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := f.Commit(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Commit = %v, want context.Canceled", err)
	}
	if got := entries(t, dir); len(got) != 0 {
		t.Errorf("files left: %v", got)
	}
	f.Abort() // after Commit: nothing
	if err := f.Commit(t.Context()); !errors.Is(err, fs.ErrClosed) {
		t.Errorf("a second Commit = %v", err)
	}
	g, err := atomicfile.Create(path, atomicfile.Options{})
	if err != nil {
		t.Fatal(err)
	}
	g.Abort()
	if got := entries(t, dir); len(got) != 0 {
		t.Errorf("files left after Abort: %v", got)
	}
}

// TestLockedStaysOpen: with Locked the temporary file is still open (its
// lock held) when it is moved; without, it is closed before.
func TestLockedStaysOpen(t *testing.T) {
	for _, locked := range []bool{false, true} {
		dir := t.TempDir()
		path := filepath.Join(dir, "f")
		f, err := os.CreateTemp(dir, ".f.lock-*")
		if err != nil {
			t.Fatal(err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			t.Fatal(err)
		}
		var openAtMove bool
		ops := atomicfile.Ops{Rename: func(from, to string) error {
			_, err := f.Stat()
			openAtMove = err == nil
			return os.Rename(from, to)
		}}
		if err := atomicfile.Commit(t.Context(), f, path, atomicfile.Options{Locked: locked, Ops: &ops}); err != nil {
			t.Fatal(err)
		}
		if openAtMove != locked {
			t.Errorf("Locked %v: open at the move %v", locked, openAtMove)
		}
		if _, err := f.Stat(); err == nil {
			t.Errorf("Locked %v: still open after Commit", locked)
		}
	}
	// Without replacing, a locked file is linked or renamed while open
	// too, and its temporary name goes.
	dir := t.TempDir()
	f, err := os.CreateTemp(dir, ".f.lock-*")
	if err != nil {
		t.Fatal(err)
	}
	if err := atomicfile.Commit(t.Context(), f, filepath.Join(dir, "f"), atomicfile.Options{Locked: true, NoReplace: true}); err != nil {
		t.Fatal(err)
	}
	if got := entries(t, dir); strings.Join(got, " ") != "f" {
		t.Errorf("files left: %v, want only f", got)
	}
}

// The crash test: a child process (this test binary, re-run) writes
// generation after generation of a file with WriteFile until it is
// killed; the file must then be one complete generation, never part of
// one or a mix. A second child is killed while it writes a new file that
// never got its name: the name must not exist.

const (
	childEnv  = "ATOMICFILE_TEST_CHILD"
	genSize   = 4 << 20
	genHeader = 8 + sha256.Size
)

// generation is a file of genSize bytes: its number, the hash of its
// body, the body.
func generation(n uint64) []byte {
	b := make([]byte, genSize)
	binary.BigEndian.PutUint64(b, n)
	for i := genHeader; i < len(b); i += 8 {
		binary.BigEndian.PutUint64(b[i:], n*0x9e3779b97f4a7c15+uint64(i))
	}
	sum := sha256.Sum256(b[genHeader:])
	copy(b[8:], sum[:])
	return b
}

// checkGeneration reports whether b is a complete generation.
func checkGeneration(b []byte) error {
	if len(b) != genSize {
		return fmt.Errorf("%d bytes, want %d", len(b), genSize)
	}
	sum := sha256.Sum256(b[genHeader:])
	if !bytes.Equal(sum[:], b[8:genHeader]) {
		return fmt.Errorf("generation %d: the body does not match its hash", binary.BigEndian.Uint64(b))
	}
	return nil
}

func TestMain(m *testing.M) {
	switch os.Getenv(childEnv) {
	case "generations":
		path := os.Args[len(os.Args)-1]
		for n := uint64(1); ; n++ {
			if err := atomicfile.WriteFile(path, generation(n), atomicfile.Options{}); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
		}
	case "never":
		path := os.Args[len(os.Args)-1]
		f, err := atomicfile.Create(path, atomicfile.Options{})
		if err != nil {
			os.Exit(1)
		}
		for {
			if _, err := f.Write(generation(1)[:1<<16]); err != nil {
				os.Exit(1)
			}
		}
	}
	os.Exit(m.Run())
}

func runChild(t *testing.T, mode, path string, until func() bool) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$", path)
	cmd.Env = append(os.Environ(), childEnv+"="+mode)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for !until() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
}

func TestCrash(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	for round := range 5 {
		// Kill the writer after a few generations, at a moment that
		// differs from round to round.
		start := time.Now()
		wait := time.Duration(20+round*13) * time.Millisecond
		runChild(t, "generations", path, func() bool {
			_, err := os.Stat(path)
			return err == nil && time.Since(start) > wait
		})
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if err := checkGeneration(b); err != nil {
			t.Fatalf("round %d: after the writer was killed the file is not one complete generation: %v", round, err)
		}
	}

	never := filepath.Join(dir, "never")
	runChild(t, "never", never, func() bool {
		for _, name := range entries(t, dir) {
			if fi, err := os.Stat(filepath.Join(dir, name)); err == nil && strings.HasPrefix(name, ".never.tmp-") && fi.Size() > 1<<20 {
				return true
			}
		}
		return false
	})
	if _, err := os.Stat(never); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a file killed while being written is visible under its name: %v", err)
	}
}
