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

// TestIssue13SizeFlags: size flags take the configuration's units
// (init --block-size 1MiB as block_size = 1MiB), and messages print sizes
// in units.
func TestIssue13SizeFlags(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	cfg := b.path("backy.cfg")
	e2eWriteFile(t, cfg, []byte("[MetaBackend]\npath = s/backy.db\n[DataBackend]\npath = s/data\n"))
	r := b.ok("-c", cfg, "init", "--block-size", "1MiB", "--json")
	if got := e2eDecode[map[string]any](t, r)["block_size"]; got != float64(1<<20) {
		t.Errorf("init --block-size 1MiB made block size %v", got)
	}
	img := b.path("disk.img")
	e2eRandomFile(t, img, 3*e2eMiB, 1329)
	if v := b.backup(img, "vol", "-c", cfg); v.BlockSize != 1<<20 {
		t.Errorf("a backup into the 1MiB store has block size %d", v.BlockSize)
	}
	for _, bad := range []string{"1KiB", "3000", "1.5MiB", "lots"} {
		cfg2 := b.path("bad-" + bad + ".cfg")
		e2eWriteFile(t, cfg2, []byte("[MetaBackend]\npath = bad/backy.db\n[DataBackend]\npath = bad/data\n"))
		r := b.fail(exitUsage, "-c", cfg2, "init", "--block-size", bad)
		if !strings.Contains(r.stderr, "--block-size") || strings.Contains(r.stderr, "65536") || strings.Contains(r.stderr, "67108864") {
			t.Errorf("init --block-size %s: want the flag named and the range in units:\n%v", bad, r)
		}
	}
	// The default store's first use says its block size in units.
	r = b.ok("ls")
	if !strings.Contains(r.stderr, "block size 4MiB") {
		t.Errorf("the new default store's line does not give its block size in units:\n%v", r)
	}
	r = b.fail(exitUsage, "nbd", "--cache-size", "1KiB", "--read-only", "--listen", "127.0.0.1:0")
	if !strings.Contains(r.stderr, "between 1MiB and 64GiB") {
		t.Errorf("nbd --cache-size 1KiB:\n%v", r)
	}
}
