package file

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/backy/backy/blockstore/backend"
	"github.com/backy/backy/blockstore/backend/backendtest"
	"github.com/backy/backy/internal/unprivileged"
)

func newTest(t testing.TB) *Backend {
	t.Helper()
	b, err := New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestConformance(t *testing.T) {
	backendtest.Run(t, func(t *testing.T) backend.Backend { return newTest(t) })
}

func BenchmarkBackend(b *testing.B) {
	backendtest.Bench(b, func(b *testing.B) backend.Backend { return newTest(b) })
}

func TestNew(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "x", "y")
	b, err := New(root)
	if err != nil {
		t.Fatal(err)
	}
	if b.Root() != root {
		t.Errorf("Root() = %q, want %q", b.Root(), root)
	}
	if fi, err := os.Stat(root); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Errorf("root: %v, %v", fi, err)
	}
	if got := b.Properties(); got.Location != "file:"+root || got.Connections != 4 {
		t.Errorf("Properties() = %+v", got)
	}
	if err := b.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	// An existing root is fine, a relative one becomes absolute.
	t.Chdir(dir)
	b, err = New("x/y")
	if err != nil || b.Root() != root {
		t.Errorf("New(relative) = %v, %v; want root %q", b, err, root)
	}
	// A file is no root.
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := New(file); err == nil {
		t.Error("New(a file) succeeded")
	}
	if _, err := New(filepath.Join(file, "below")); err == nil {
		t.Error("New(below a file) succeeded")
	}
	if _, err := New(""); err == nil {
		t.Error(`New("") succeeded`)
	}
}

func TestLayout(t *testing.T) {
	b := newTest(t)
	ctx := t.Context()
	if err := b.Put(ctx, "blocks/3f/3f0c", []byte("data")); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(b.Root(), "blocks", "3f", "3f0c"))
	if err != nil || string(got) != "data" {
		t.Fatalf("file = %q, %v", got, err)
	}
	if err := b.Delete(ctx, "blocks/3f/3f0c"); err != nil {
		t.Fatal(err)
	}
	// Empty directories stay.
	if fi, err := os.Stat(filepath.Join(b.Root(), "blocks", "3f")); err != nil || !fi.IsDir() {
		t.Errorf("directory after Delete: %v", err)
	}
	if entries := readDir(t, b.Root()); !slices.Equal(entries, []string{"blocks"}) {
		t.Errorf("root holds %v", entries)
	}
}

// readDir lists the names in dir, temporary files included.
func readDir(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestDirectoryIsNoObject(t *testing.T) {
	b := newTest(t)
	ctx := t.Context()
	if err := b.Put(ctx, "dir/x", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := b.Delete(ctx, "dir"); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("Delete(dir) = %v, want ErrNotFound", err)
	}
	if _, err := b.Get(ctx, "dir/x", nil); err != nil {
		t.Errorf("Get(dir/x) after Delete(dir): %v", err)
	}
	// An object cannot also be a directory on disk.
	if err := b.Put(ctx, "dir/x/y", []byte("y")); err == nil || errors.Is(err, backend.ErrNotFound) {
		t.Errorf("Put below an object = %v, want an error other than ErrNotFound", err)
	}
	if err := b.Put(ctx, "dir", []byte("y")); err == nil {
		t.Error("Put over a directory succeeded")
	}
	assertNoTemp(t, b.Root())
}

func TestListSkipsForeignFiles(t *testing.T) {
	b := newTest(t)
	ctx := t.Context()
	if err := b.Put(ctx, "blocks/ab/ab01", []byte("x")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{
		"blocks/ab/.tmp-123", "blocks/.tmp-9", ".tmp-1", "blocks/ab/UPPER", "blocks/.hidden/x", "README",
	} {
		path := filepath.Join(b.Root(), filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte("junk"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("ab01", filepath.Join(b.Root(), "blocks", "ab", "link")); err != nil {
		t.Fatal(err)
	}
	for _, prefix := range []string{"", "blocks/", "blocks/ab/", "blocks/ab/.", "."} {
		var got []string
		err := b.List(ctx, prefix, func(info backend.Info) error {
			got = append(got, info.Name)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"blocks/ab/ab01"}
		if !strings.HasPrefix(want[0], prefix) {
			want = nil
		}
		if !slices.Equal(got, want) {
			t.Errorf("List(%q) = %v, want %v", prefix, got, want)
		}
	}
}

func TestListStaysInRoot(t *testing.T) {
	dir := t.TempDir()
	b, err := New(filepath.Join(dir, "root"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "outside"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, prefix := range []string{"../", "../o", "/", "./"} {
		err := b.List(t.Context(), prefix, func(info backend.Info) error {
			t.Errorf("List(%q) reported %q", prefix, info.Name)
			return nil
		})
		if err != nil {
			t.Errorf("List(%q): %v", prefix, err)
		}
	}
}

// assertNoTemp fails if a temporary file is left anywhere below root.
func assertNoTemp(t *testing.T, root string) {
	t.Helper()
	filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), tempPrefix) {
			t.Errorf("temporary file left behind: %s", path)
		}
		return nil
	})
}

var errEIO = syscall.EIO

// TestPutFailures injects a failure into every step of Put and checks that
// the error is reported, classified and wrapped, that no temporary file is
// left and that the object is absent, or, for an overwrite, still the old
// version.
func TestPutFailures(t *testing.T) {
	cases := []struct {
		name      string
		inject    func(o *osOps)
		cause     error
		permanent bool
		// visible: the failure comes after the rename, so the new version
		// is in place although Put reports an error.
		visible bool
	}{
		{name: "write ENOSPC", cause: syscall.ENOSPC, permanent: true, inject: func(o *osOps) {
			o.write = func(f *os.File, p []byte) (int, error) {
				n, _ := f.Write(p[:len(p)/2]) // a partial write, then the disk is full
				return n, &fs.PathError{Op: "write", Path: f.Name(), Err: syscall.ENOSPC}
			}
		}},
		{name: "write EDQUOT", cause: syscall.EDQUOT, permanent: true, inject: func(o *osOps) {
			o.write = func(f *os.File, p []byte) (int, error) {
				return 0, &fs.PathError{Op: "write", Path: f.Name(), Err: syscall.EDQUOT}
			}
		}},
		{name: "short write", cause: nil, inject: func(o *osOps) {
			o.write = func(f *os.File, p []byte) (int, error) { return f.Write(p[:len(p)-1]) }
		}},
		{name: "fsync EIO", cause: errEIO, inject: func(o *osOps) {
			o.syncFile = func(*os.File) error { return errEIO }
		}},
		{name: "close EIO", cause: errEIO, inject: func(o *osOps) {
			o.closeFile = func(f *os.File) error { f.Close(); return errEIO }
		}},
		{name: "create EACCES", cause: syscall.EACCES, permanent: true, inject: func(o *osOps) {
			o.createTemp = func(dir string) (*os.File, error) {
				return nil, &fs.PathError{Op: "open", Path: dir, Err: syscall.EACCES}
			}
		}},
		{name: "create EROFS", cause: syscall.EROFS, permanent: true, inject: func(o *osOps) {
			o.createTemp = func(dir string) (*os.File, error) {
				return nil, &fs.PathError{Op: "open", Path: dir, Err: syscall.EROFS}
			}
		}},
		{name: "rename EPERM", cause: syscall.EPERM, permanent: true, inject: func(o *osOps) {
			o.rename = func(from, to string) error {
				return &os.LinkError{Op: "rename", Old: from, New: to, Err: syscall.EPERM}
			}
		}},
		{name: "directory fsync EIO", cause: errEIO, visible: true, inject: func(o *osOps) {
			o.syncDir = func(string) error { return errEIO }
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			for _, name := range []string{"x", "new/dir/x", "old"} {
				b := newTest(t)
				ctx := t.Context()
				old := []byte("old version")
				if name == "old" {
					if err := b.Put(ctx, name, old); err != nil {
						t.Fatal(err)
					}
				} else {
					old = nil
				}
				c.inject(&b.ops)
				data := bytes.Repeat([]byte("new"), 1000)
				err := b.Put(ctx, name, data)
				if err == nil {
					t.Fatalf("Put(%q) succeeded despite the failure", name)
				}
				if c.cause != nil && !errors.Is(err, c.cause) {
					t.Errorf("Put(%q) = %v, want it to wrap %v", name, err, c.cause)
				}
				if got := errors.Is(err, backend.ErrPermanent); got != c.permanent {
					t.Errorf("Put(%q) = %v: permanent %v, want %v", name, err, got, c.permanent)
				}
				if errors.Is(err, backend.ErrNotFound) {
					t.Errorf("Put(%q) = %v, which claims ErrNotFound", name, err)
				}
				if !strings.Contains(err.Error(), "put") || !strings.Contains(err.Error(), name) {
					t.Errorf("Put error %q does not name the operation and object", err)
				}
				assertNoTemp(t, b.Root())

				b.ops = defaultOps
				got, err := b.Get(ctx, name, nil)
				switch {
				case c.visible && err == nil && bytes.Equal(got, data):
				case old == nil && errors.Is(err, backend.ErrNotFound):
				case old != nil && err == nil && bytes.Equal(got, old):
				default:
					t.Errorf("after the failed Put(%q), Get = %q, %v", name, head(got), err)
				}
			}
		})
	}
}

func head(p []byte) []byte {
	return p[:min(len(p), 20)]
}

func TestPutSyncsNewDirectories(t *testing.T) {
	b := newTest(t)
	var synced []string
	inner := b.ops.syncDir
	b.ops.syncDir = func(dir string) error {
		rel, _ := filepath.Rel(b.Root(), dir)
		synced = append(synced, filepath.ToSlash(rel))
		return inner(dir)
	}
	ctx := t.Context()
	if err := b.Put(ctx, "a/b/x", []byte("x")); err != nil {
		t.Fatal(err)
	}
	// The root (for a), a (for b), then a/b for the object.
	if want := []string{".", "a", "a/b"}; !slices.Equal(synced, want) {
		t.Errorf("synced %v, want %v", synced, want)
	}
	synced = nil
	if err := b.Put(ctx, "a/b/y", []byte("y")); err != nil {
		t.Fatal(err)
	}
	if want := []string{"a/b"}; !slices.Equal(synced, want) {
		t.Errorf("synced %v for an existing directory, want %v", synced, want)
	}
	synced = nil
	if err := b.Delete(ctx, "a/b/y"); err != nil {
		t.Fatal(err)
	}
	if want := []string{"a/b"}; !slices.Equal(synced, want) {
		t.Errorf("Delete synced %v, want %v", synced, want)
	}
}

func TestMkdirFailure(t *testing.T) {
	b := newTest(t)
	b.ops.mkdir = func(dir string) error {
		return &fs.PathError{Op: "mkdir", Path: dir, Err: syscall.ENOSPC}
	}
	err := b.Put(t.Context(), "d/x", []byte("x"))
	if !errors.Is(err, syscall.ENOSPC) || !errors.Is(err, backend.ErrPermanent) {
		t.Errorf("Put = %v, want a permanent ENOSPC", err)
	}
	// A directory created concurrently (EEXIST) is fine.
	b.ops.mkdir = func(dir string) error {
		os.Mkdir(dir, 0o700)
		return &fs.PathError{Op: "mkdir", Path: dir, Err: fs.ErrExist}
	}
	if err := b.Put(t.Context(), "d/x", []byte("x")); err != nil {
		t.Errorf("Put after a concurrent mkdir: %v", err)
	}
}

func TestDeleteFailures(t *testing.T) {
	b := newTest(t)
	ctx := t.Context()
	if err := b.Put(ctx, "x", []byte("x")); err != nil {
		t.Fatal(err)
	}
	b.ops.remove = func(path string) error {
		return &fs.PathError{Op: "remove", Path: path, Err: syscall.EROFS}
	}
	err := b.Delete(ctx, "x")
	if !errors.Is(err, syscall.EROFS) || !errors.Is(err, backend.ErrPermanent) {
		t.Errorf("Delete = %v, want a permanent EROFS", err)
	}
	// Removed between our Lstat and the remove: not found.
	b.ops.remove = func(path string) error {
		os.Remove(path)
		return os.Remove(path)
	}
	if err := b.Delete(ctx, "x"); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("Delete of a vanishing object = %v, want ErrNotFound", err)
	}
}

func TestGetPermissionDenied(t *testing.T) {
	if unprivileged.Run(t) { // root reads every file
		return
	}
	b := newTest(t)
	ctx := t.Context()
	if err := b.Put(ctx, "x", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(b.Root(), "x"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Get(ctx, "x", nil); !errors.Is(err, backend.ErrPermanent) || !errors.Is(err, fs.ErrPermission) {
		t.Errorf("Get of an unreadable file = %v, want a permanent permission error", err)
	}
}

func TestCancelDuringPut(t *testing.T) {
	b := newTest(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	writes := 0
	b.ops.write = func(f *os.File, p []byte) (int, error) {
		writes++
		cancel() // cancelled after the first chunk
		return f.Write(p)
	}
	err := b.Put(ctx, "big", make([]byte, 3*chunkSize))
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Put = %v, want context.Canceled", err)
	}
	if writes != 1 {
		t.Errorf("Put wrote %d chunks after cancellation, want 1", writes)
	}
	assertNoTemp(t, b.Root())
	b.ops = defaultOps
	if _, err := b.Stat(t.Context(), "big"); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("Stat after the cancelled Put = %v, want ErrNotFound", err)
	}
}

func TestCleanTemp(t *testing.T) {
	b := newTest(t)
	ctx := t.Context()
	root := b.Root()
	for _, name := range []string{"keep", "blocks/ab/ab01"} {
		if err := b.Put(ctx, name, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-2 * time.Hour)
	write := func(rel string, mtime time.Time) string {
		path := filepath.Join(root, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte("debris"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(path, mtime, mtime); err != nil {
			t.Fatal(err)
		}
		return path
	}
	oldTemps := []string{write(".tmp-1", old), write("blocks/ab/.tmp-2", old), write("blocks/.tmp-3", old)}
	fresh := write("blocks/ab/.tmp-4", time.Now())
	oldObject := write("versions/v1", old)
	foreign := write(".other/.tmp-5", old) // not below an object directory
	hidden := write("blocks/.hidden", old) // not a temporary file

	n, err := CleanTemp(root, time.Hour)
	if err != nil || n != len(oldTemps) {
		t.Errorf("CleanTemp = %d, %v; want %d, nil", n, err, len(oldTemps))
	}
	for _, p := range oldTemps {
		if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s survived: %v", p, err)
		}
	}
	for _, p := range []string{fresh, oldObject, foreign, hidden} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s was removed: %v", p, err)
		}
	}
	for _, name := range []string{"keep", "blocks/ab/ab01", "versions/v1"} {
		if _, err := b.Stat(ctx, name); err != nil {
			t.Errorf("object %s: %v", name, err)
		}
	}
	// With age 0 the fresh one goes too.
	if n, err := CleanTemp(root, 0); err != nil || n != 1 {
		t.Errorf("CleanTemp(0) = %d, %v; want 1, nil", n, err)
	}
	if _, err := CleanTemp(filepath.Join(root, "missing"), time.Hour); err == nil {
		t.Error("CleanTemp of a missing root succeeded")
	}
}

func TestClassify(t *testing.T) {
	for _, errno := range []syscall.Errno{syscall.ENOSPC, syscall.EDQUOT, syscall.EROFS, syscall.EACCES, syscall.EPERM} {
		err := classify(&fs.PathError{Op: "write", Path: "p", Err: errno})
		if !errors.Is(err, backend.ErrPermanent) || !errors.Is(err, errno) {
			t.Errorf("classify(%v) = %v, want permanent and wrapping", errno, err)
		}
	}
	for _, errno := range []syscall.Errno{syscall.EIO, syscall.EINTR, syscall.ENOENT} {
		if err := classify(errno); errors.Is(err, backend.ErrPermanent) {
			t.Errorf("classify(%v) is permanent", errno)
		}
	}
}

// TestDeletePrunesEmptyDirectories: deleting the last object of a
// directory below the top level removes the directories it leaves empty
// (snapshots under versions/ would otherwise leave one per rewrite); the
// shards of blocks/ stay, and a Put into a pruned directory works.
func TestDeletePrunesEmptyDirectories(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	b, err := New(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"versions/v1/s1/00000000", "versions/v1/s1/00000001", "versions/v1/s2/00000000", "blocks/ab/ab01"} {
		if err := b.Put(ctx, n, []byte(n)); err != nil {
			t.Fatal(err)
		}
	}
	exists := func(rel string) bool {
		_, err := os.Stat(filepath.Join(root, rel))
		return err == nil
	}
	steps := []struct {
		del  string
		gone []string
		kept []string
	}{
		{"versions/v1/s1/00000000", nil, []string{"versions/v1/s1"}},
		{"versions/v1/s1/00000001", []string{"versions/v1/s1"}, []string{"versions/v1"}},
		{"versions/v1/s2/00000000", []string{"versions/v1"}, []string{"versions"}},
		{"blocks/ab/ab01", nil, []string{"blocks/ab"}},
	}
	for _, s := range steps {
		if err := b.Delete(ctx, s.del); err != nil {
			t.Fatal(err)
		}
		for _, g := range s.gone {
			if exists(g) {
				t.Errorf("after deleting %s, %s still exists", s.del, g)
			}
		}
		for _, k := range s.kept {
			if !exists(k) {
				t.Errorf("after deleting %s, %s is gone", s.del, k)
			}
		}
	}
	if err := b.Put(ctx, "versions/v1/s3/00000000", []byte("again")); err != nil {
		t.Fatalf("Put into a pruned directory: %v", err)
	}
}
