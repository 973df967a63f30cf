package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// e2eRunReadOnly runs backy with args in a private mount namespace in
// which dir is bind-mounted read-only over itself (writes there fail with
// EROFS, as on a read-only mount or snapshot). As root it uses unshare -m,
// otherwise an unprivileged user namespace (unshare -rm).
func (b *e2eBox) e2eRunReadOnly(dir string, args ...string) e2eRes {
	b.t.Helper()
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		b.t.Fatalf("unshare (util-linux) is needed to mount a read-only store: %v", err)
	}
	ns := "-m"
	if os.Geteuid() != 0 {
		ns = "-rm"
	}
	script := `mount --bind -o ro "$1" "$1" || exit 99; shift; exec "$@"`
	wrapped := append([]string{ns, "sh", "-c", script, "sh", dir, e2eBin}, args...)
	r := b.runWith(unshare, wrapped)
	if r.code == 99 {
		b.t.Fatalf("could not bind-mount %s read-only (unshare %s):\n%v", dir, ns, r)
	}
	r.args = args
	return r
}

func TestIssue13ReadOnlyStore(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	img := b.path("disk.img")
	e2eRandomFile(t, img, 9*e2eMiB, 1301)
	v1 := b.backup(img, "vol")
	v2 := b.backup(img, "vol")
	// A version whose lock file does not exist (as after rebuild-metastore
	// or import): on the read-only mount it cannot be created.
	if err := os.Remove(filepath.Join(b.home, "backy.db.locks", "version-"+v2.UID+".lock")); err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()

	r := b.e2eRunReadOnly(b.home, "ls")
	if r.code != 0 || !strings.Contains(r.stdout, v1.UID) || !strings.Contains(r.stdout, v2.UID) {
		t.Fatalf("ls on a read-only store:\n%v", r)
	}
	r = b.e2eRunReadOnly(b.home, "stats", "--json")
	if r.code != 0 {
		t.Fatalf("stats on a read-only store:\n%v", r)
	}
	for _, v := range []e2eVersion{v1, v2} {
		target := filepath.Join(out, v.UID+".img")
		r = b.e2eRunReadOnly(b.home, "restore", v.UID, target)
		if r.code != 0 {
			t.Fatalf("restore on a read-only store:\n%v", r)
		}
		e2eSameFile(t, target, img)
	}
	r = b.e2eRunReadOnly(b.home, "export", v1.UID, "-o", filepath.Join(out, "v1.bkym"))
	if r.code != 0 {
		t.Fatalf("export on a read-only store:\n%v", r)
	}
	// A command that changes the store fails with one line, exit 74, and
	// says why.
	r = b.e2eRunReadOnly(b.home, "protect", v1.UID)
	e2eWantFail(t, r, exitIOErr)
	if !strings.Contains(r.stderr, "read-only") {
		t.Errorf("protect on a read-only store does not say why:\n%v", r)
	}
	// The store is intact and writable again outside the namespace.
	b.ok("protect", v1.UID)
}
