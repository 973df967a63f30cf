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

// TestIssue13GlobalFlagsAfterCommand: -c/--config and --log-level work
// before and after the command name, as --json does (the README's first
// example is "backy init -c /etc/backy.cfg").
func TestIssue13GlobalFlagsAfterCommand(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	cfg := b.path("backy.cfg")
	e2eWriteFile(t, cfg, []byte("[MetaBackend]\npath = other/backy.db\n[DataBackend]\npath = other/data\n"))
	b.ok("init", "-c", cfg)
	img := b.path("disk.img")
	e2eRandomFile(t, img, 64*e2eKiB, 1327)
	r := b.ok("backup", img, "vol", "--config", cfg, "--log-level", "info")
	if !strings.Contains(r.stderr, "backup started") {
		t.Errorf("--log-level info after the command shows no info lines:\n%v", r)
	}
	uid := strings.TrimSpace(r.stdout)
	if r := b.ok("ls", "vol", "-c", cfg); !strings.Contains(r.stdout, uid) {
		t.Errorf("ls vol -c CFG does not list the version made in CFG's store:\n%v", r)
	}
	if r := b.ok("-c", cfg, "ls", "--log-level=debug"); !strings.Contains(r.stdout, uid) {
		t.Errorf("-c before and --log-level after the command:\n%v", r)
	}
	// Nothing went into the default store.
	if r := b.ok("ls", "--json"); strings.Contains(r.stdout, uid) {
		t.Errorf("the version went into the default store:\n%v", r)
	}
	b.fail(exitUsage, "ls", "vol", "-c", cfg, "--log-level", "bogus")
	b.fail(exitNotFound, "ls", "-c", b.path("missing.cfg"))
}
