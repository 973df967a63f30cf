package source_test

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/backy/backy/versions/source"
)

// testTool finds a system tool, also in the sbin directories.
func testTool(t *testing.T, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, d := range []string{"/usr/sbin", "/sbin"} {
		if p := filepath.Join(d, name); exec.Command(p, "--version").Run() == nil {
			return p
		}
	}
	t.Fatalf("%s not found (util-linux, e2fsprogs): the block device tests need it", name)
	return ""
}

// loopDevice attaches a loop device to a new file of size bytes and
// returns its path; it is detached when the test ends. It needs root (as
// CI runs the tests).
func loopDevice(t *testing.T, size int64) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("loop devices need root (CI runs the tests as root)")
	}
	img := filepath.Join(t.TempDir(), "loop.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(testTool(t, "losetup"), "-f", "--show", img).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup -f --show %s: %v\n%s", img, err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command(testTool(t, "losetup"), "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v\n%s", dev, err, out)
		}
	})
	return dev
}

// mountExt4 makes an ext4 file system on dev and mounts it on a new
// directory, unmounted when the test ends; it returns the mount point.
func mountExt4(t *testing.T, dev string) string {
	t.Helper()
	if out, err := exec.Command(testTool(t, "mkfs.ext4"), "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", dev).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 %s: %v\n%s", dev, err, out)
	}
	mnt := filepath.Join(t.TempDir(), "mnt point") // a blank, escaped in mountinfo
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(testTool(t, "mount"), dev, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount %s %s: %v\n%s", dev, mnt, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command(testTool(t, "umount"), mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", mnt, err, out)
		}
	})
	return mnt
}

// TestCreateTargetBlockDevice: a block device target is opened
// exclusively: one that is mounted, or opened exclusively by someone else,
// is refused with ErrTargetBusy naming the mount point; one that is not in
// use is written, and keeps others from claiming it meanwhile.
func TestCreateTargetBlockDevice(t *testing.T) {
	const size = 32 << 20
	t.Run("mounted", func(t *testing.T) {
		dev := loopDevice(t, size)
		mnt := mountExt4(t, dev)
		// The file system's own writes (its journal; no lazy inode table
		// init, see mountExt4) are done before the device is read.
		unix.Sync()
		before, err := os.ReadFile(dev)
		if err != nil {
			t.Fatal(err)
		}
		tgt, err := source.CreateTarget(dev, 4<<20, true)
		if err == nil {
			tgt.Abort()
			t.Fatalf("CreateTarget of %s, mounted on %s, succeeded", dev, mnt)
		}
		if !errors.Is(err, source.ErrTargetBusy) || !strings.Contains(err.Error(), "mounted at "+mnt) {
			t.Fatalf("CreateTarget = %v, want ErrTargetBusy naming the mount point %s", err, mnt)
		}
		if after, err := os.ReadFile(dev); err != nil || !bytes.Equal(before, after) {
			t.Fatalf("the mounted device changed (%v)", err)
		}
	})
	t.Run("held-exclusively", func(t *testing.T) {
		dev := loopDevice(t, size)
		fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		tgt, err := source.CreateTarget(dev, 4<<20, true)
		if err == nil {
			tgt.Abort()
			t.Fatal("CreateTarget of a device opened exclusively succeeded")
		}
		if !errors.Is(err, source.ErrTargetBusy) || !strings.Contains(err.Error(), "opened exclusively by another process") {
			t.Fatalf("CreateTarget = %v, want ErrTargetBusy", err)
		}
	})
	t.Run("free", func(t *testing.T) {
		dev := loopDevice(t, size)
		if _, err := source.CreateTarget(dev, size+1, true); !errors.Is(err, source.ErrTargetTooSmall) {
			t.Fatalf("CreateTarget larger than the device = %v, want ErrTargetTooSmall", err)
		}
		if _, err := source.CreateTarget(dev, size, false); !errors.Is(err, source.ErrTargetExists) {
			t.Fatalf("CreateTarget without force = %v, want ErrTargetExists", err)
		}
		tgt, err := source.CreateTarget(dev, size, true)
		if err != nil {
			t.Fatal(err)
		}
		// While the restore runs, nobody else claims the device.
		if fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC, 0); err == nil {
			unix.Close(fd)
			t.Error("the device could be opened exclusively during the restore")
		} else if !errors.Is(err, unix.EBUSY) {
			t.Errorf("opening the device exclusively during the restore: %v, want EBUSY", err)
		}
		if _, err := tgt.WriteAt([]byte("restored"), 1<<20); err != nil {
			t.Fatal(err)
		}
		if err := tgt.Commit(); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 8)
		f, err := os.Open(dev)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.ReadAt(b, 1<<20); err != nil || string(b) != "restored" {
			t.Fatalf("device holds %q (%v)", b, err)
		}
		// Released: another exclusive open succeeds.
		fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatalf("the device stays claimed after Commit: %v", err)
		}
		unix.Close(fd)
	})
	t.Run("source-in-use", func(t *testing.T) {
		// Reading a device in use is normal (a snapshot of it): Open
		// does not need it exclusively.
		dev := loopDevice(t, size)
		mountExt4(t, dev)
		s, err := source.Open(dev)
		if err != nil {
			t.Fatalf("Open of a mounted device: %v", err)
		}
		defer s.Close()
		if s.Size() != size {
			t.Errorf("Size = %d", s.Size())
		}
	})
}
