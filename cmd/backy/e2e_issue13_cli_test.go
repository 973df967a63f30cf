package main

import (
	"strings"
	"testing"
)

// TestIssue13ProtectAllOrNothing: protect/unprotect check every uid before
// changing any; an unknown one changes nothing and says so (exit 66).
func TestIssue13ProtectAllOrNothing(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	img := b.path("disk.img")
	e2eRandomFile(t, img, 1*e2eMiB, 1302)
	v1 := b.backup(img, "vol")
	v2 := b.backup(img, "vol")
	const bogus = "V0123456789abcdef0123"
	r := b.fail(exitNotFound, "protect", v1.UID, bogus, "Vbogus")
	if !strings.Contains(r.stderr, bogus+" Vbogus") || !strings.Contains(r.stderr, "nothing was changed") {
		t.Errorf("protect with unknown uids must name them and say nothing was changed:\n%v", r)
	}
	if b.version(v1.UID).Protected {
		t.Fatalf("protect %s %s protected %s", v1.UID, bogus, v1.UID)
	}
	b.ok("protect", v1.UID, v2.UID)
	b.fail(exitNotFound, "unprotect", v1.UID, "Vbogus")
	if !b.version(v1.UID).Protected {
		t.Fatalf("unprotect %s Vbogus unprotected %s", v1.UID, v1.UID)
	}
	r = b.ok("unprotect", v1.UID, v2.UID)
	if want := v1.UID + " protected=false\n" + v2.UID + " protected=false\n"; r.stdout != want {
		t.Errorf("unprotect prints %q, want %q", r.stdout, want)
	}
}
