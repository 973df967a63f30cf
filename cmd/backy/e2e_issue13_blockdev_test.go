package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// e2eLoop attaches a loop device to a new sparse file of size bytes and
// returns the device; it is detached when the test ends. Loop devices need
// root, as CI runs the tests.
func e2eLoop(t *testing.T, dir string, size int64) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("loop devices need root (CI runs the tests as root)")
	}
	img := filepath.Join(dir, "loop-backing.img")
	e2eWriteFile(t, img, nil)
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	losetup := e2eTool(t, "losetup")
	out, err := exec.Command(losetup, "-f", "--show", img).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup -f --show %s: %v\n%s", img, err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command(losetup, "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v\n%s", dev, err, out)
		}
	})
	return dev
}

// e2eMount makes an ext4 file system on dev and mounts it; it is
// unmounted when the test ends. It returns the mount point.
func e2eMount(t *testing.T, dir, dev string) string {
	t.Helper()
	if out, err := exec.Command(e2eTool(t, "mkfs.ext4"), "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", dev).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 %s: %v\n%s", dev, err, out)
	}
	mnt := filepath.Join(dir, "mnt")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(e2eTool(t, "mount"), dev, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount %s %s: %v\n%s", dev, mnt, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command(e2eTool(t, "umount"), mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", mnt, err, out)
		}
	})
	return mnt
}

// TestIssue13RestoreBlockDevice: restore --force onto a block device opens
// it exclusively: a mounted one is refused (exit 73) naming the mount
// point and left untouched; one not in use is restored bit for bit. A
// backup reads a device in use (a live origin) as before.
func TestIssue13RestoreBlockDevice(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	img := e2eExt4(t, b.dir, "disk", 1310)
	v := b.backup(img, "vol")

	t.Run("mounted", func(t *testing.T) {
		b := b.with(t)
		dir := t.TempDir()
		dev := e2eLoop(t, dir, v.Size)
		mnt := e2eMount(t, dir, dev)
		e2eWriteFile(t, filepath.Join(mnt, "precious.txt"), []byte("in use"))
		// The file system's own writes (journal commits; no lazy inode
		// table init, see e2eMount) are done before the device is read.
		syscall.Sync()
		before, err := os.ReadFile(dev)
		if err != nil {
			t.Fatal(err)
		}
		r := b.fail(73, "restore", "--force", v.UID, dev)
		for _, w := range []string{dev, "mounted at " + mnt, "unmount"} {
			if !strings.Contains(r.stderr, w) {
				t.Errorf("the message should say %q:\n%v", w, r)
			}
		}
		if after, err := os.ReadFile(dev); err != nil || !bytes.Equal(before, after) {
			t.Errorf("the mounted device was written (%v)", err)
		}
		if got, err := os.ReadFile(filepath.Join(mnt, "precious.txt")); err != nil || string(got) != "in use" {
			t.Errorf("the mounted file system lost a file: %q, %v", got, err)
		}
		// Reading a device in use is normal: a backup of it works.
		if bv := e2eDecode[e2eVersion](t, b.ok("backup", dev, "mounted-dev", "--json")); bv.Status != "valid" || bv.Size != v.Size {
			t.Errorf("backup of the mounted device made %+v", bv)
		}
	})
	t.Run("not mounted", func(t *testing.T) {
		b := b.with(t)
		dir := t.TempDir()
		dev := e2eLoop(t, dir, v.Size+e2eMiB)
		b.fail(73, "restore", v.UID, dev) // exists, no --force
		b.ok("restore", "--force", v.UID, dev)
		if err := e2eCompare(dev, img, v.Size); err != nil {
			t.Fatal(err)
		}
		b.ok("restore", "--force", "--sparse", v.UID, dev)
		if err := e2eCompare(dev, img, v.Size); err != nil {
			t.Fatal(err)
		}
	})
}
