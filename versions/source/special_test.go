package source_test

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/backy/backy/versions/source"
)

// within fails the test if fn does not return within a few seconds: a
// FIFO must never make Open or CreateTarget wait in open(2).
func within(t *testing.T, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatalf("%s did not return: it waits in open(2)", what)
	}
}

// specialFiles makes a FIFO and a socket in a temporary directory.
func specialFiles(t *testing.T) (fifo, sock string) {
	t.Helper()
	dir := t.TempDir()
	fifo = filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	sock = filepath.Join(dir, "sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return fifo, sock
}

// TestOpenSpecialFiles: a source that is a FIFO, a socket, a character
// device or a directory is refused at once with ErrUnsupported (exit 64)
// and a message saying what it is; Open never blocks on a FIFO.
func TestOpenSpecialFiles(t *testing.T) {
	fifo, sock := specialFiles(t)
	for _, tc := range []struct {
		name, path, want string
	}{
		{"fifo", fifo, "is a FIFO"},
		{"fifo-url", "file://" + fifo, "is a FIFO"},
		{"socket", sock, "is a socket"},
		{"dev-zero", "/dev/zero", "is a character device"},
		{"dev-null", "/dev/null", "is a character device"},
		{"directory", t.TempDir(), "is a directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			within(t, "Open", func() {
				var s *source.File
				if s, err = source.Open(tc.path); s != nil {
					s.Close()
				}
			})
			if !errors.Is(err, source.ErrUnsupported) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Open(%s) = %v, want ErrUnsupported saying %q", tc.path, err, tc.want)
			}
		})
	}
}

// TestCreateTargetSpecialFiles: an existing target that is a directory, a
// FIFO, a socket or a character device is refused as a target
// (ErrBadTarget, exit 64), with or without force, without waiting and
// without touching it.
func TestCreateTargetSpecialFiles(t *testing.T) {
	fifo, sock := specialFiles(t)
	dir := t.TempDir()
	for _, tc := range []struct {
		name, path, want string
	}{
		{"directory", dir, "it is a directory; name the image file to create, e.g. " + filepath.Join(dir, "disk.img")},
		{"fifo", fifo, "it is a FIFO"},
		{"socket", sock, "it is a socket"},
		{"dev-full", "/dev/full", "it is a character device; restore to a regular file or a block device"},
		{"dev-null", "/dev/null", "deep-scrub"},
	} {
		for _, force := range []bool{false, true} {
			t.Run(tc.name, func(t *testing.T) {
				var err error
				within(t, "CreateTarget", func() {
					var tgt *source.Target
					if tgt, err = source.CreateTarget(tc.path, 4096, force); tgt != nil {
						tgt.Abort()
					}
				})
				if !errors.Is(err, source.ErrBadTarget) || !strings.Contains(err.Error(), tc.want) ||
					!strings.Contains(err.Error(), "unusable restore target "+tc.path) || strings.Contains(err.Error(), "source") {
					t.Fatalf("CreateTarget(%s, force %v) = %v, want ErrBadTarget saying %q", tc.path, force, err, tc.want)
				}
			})
		}
	}
	if ents, err := os.ReadDir(dir); err != nil || len(ents) != 0 {
		t.Errorf("the directory target holds %v (%v)", ents, err)
	}
}
