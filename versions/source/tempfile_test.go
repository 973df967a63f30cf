package source_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/backy/backy/versions/source"
)

// TestStaleTemps: a temporary file a live writer holds is never removed;
// one whose writer is gone (its descriptor closed, as by a kill) is, and
// nothing else in the directory is touched.
func TestStaleTemps(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "disk.img")
	live, err := source.CreateTemp(target, "backy-restore", 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	dead, err := source.CreateTemp(target, "backy-restore", 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dead.Write([]byte("partial")); err != nil {
		t.Fatal(err)
	}
	deadName := dead.Name()
	dead.Close() // its writer died: the kernel dropped the lock
	otherKind, err := source.CreateTemp(target, "backy-export", 0o600)
	if err != nil {
		t.Fatal(err)
	}
	otherKind.Close()
	otherTarget, err := source.CreateTemp(filepath.Join(dir, "other.img"), "backy-restore", 0o600)
	if err != nil {
		t.Fatal(err)
	}
	otherTarget.Close()
	// Names close to the pattern, and an old-style temporary file.
	for _, n := range []string{".disk.img.backy-restore-0123", ".disk.img.backy-restore-0123456789AB", ".disk.img.backy-0123456789ab", "disk.img"} {
		if err := os.WriteFile(filepath.Join(dir, n), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{live.Name(), deadName} {
		if !strings.HasPrefix(filepath.Base(f), ".disk.img.backy-restore-") {
			t.Fatalf("temporary name %s", f)
		}
	}
	before := names(t, dir)
	stale, err := source.RemoveStaleTemps(target, "backy-restore")
	if err != nil {
		t.Fatal(err)
	}
	if len(stale) != 1 || stale[0].Path != deadName || stale[0].Size != 7 {
		t.Fatalf("removed %+v, want only %s (7 bytes)", stale, deadName)
	}
	after := names(t, dir)
	want := slices.DeleteFunc(slices.Clone(before), func(n string) bool { return n == filepath.Base(deadName) })
	if !slices.Equal(after, want) {
		t.Errorf("directory after: %v, want %v", after, want)
	}
	// The live writer still holds its file, and its name.
	if _, err := os.Stat(live.Name()); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(live.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatalf("the live writer lost its lock: %v", err)
	}
}

// TestCheckDir: a missing directory, or a file in its place, is
// ErrNoTargetDir naming the directory.
func TestCheckDir(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ path, dir string }{
		{filepath.Join(dir, "missing", "x.img"), filepath.Join(dir, "missing")},
		{filepath.Join(file, "x.img"), file},
		{filepath.Join(dir, "a", "b", "x.img"), filepath.Join(dir, "a", "b")},
	} {
		err := source.CheckDir(c.path, "restore target")
		if !errors.Is(err, source.ErrNoTargetDir) || !strings.Contains(err.Error(), c.dir) {
			t.Errorf("CheckDir(%s) = %v, want ErrNoTargetDir naming %s", c.path, err, c.dir)
		}
	}
	if err := source.CheckDir(filepath.Join(dir, "x.img"), "restore target"); err != nil {
		t.Error(err)
	}
}

func names(t *testing.T, dir string) []string {
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
