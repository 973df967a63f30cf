package main

import (
	"slices"
	"strings"
	"testing"
)

// TestIssue13EnforceKeepsExpiredNewest: enforce never removes the newest
// valid version of a volume, even when it has expired; it lists it as kept
// and warns. It goes once a newer valid version exists.
func TestIssue13EnforceKeepsExpiredNewest(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	img := b.path("disk.img")
	e2eRandomFile(t, img, 1*e2eMiB, 1320)
	v1 := b.backup(img, "vol")
	v2 := b.backup(img, "vol")
	b.ok("expire", v2.UID, "2020-01-01")

	r := b.ok("enforce", "latest5", "--dry-run")
	if !strings.Contains(r.stdout, v2.UID) || !strings.Contains(r.stdout, "kept (newest valid)") || strings.Contains(r.stdout, "would remove") {
		t.Errorf("enforce --dry-run must list the expired newest version as kept:\n%v", r)
	}
	r = b.ok("enforce", "latest5", "--json")
	if got := e2eDecode[[]e2eRetVersion](t, r); len(got) != 0 {
		t.Errorf("enforce removed %v, want nothing (the expired version is the newest valid one):\n%v", e2eRetUIDs(got), r)
	}
	if !strings.Contains(strings.ToLower(r.stderr), "warn") || !strings.Contains(r.stderr, v2.UID) {
		t.Errorf("enforce does not warn about the expired version it keeps:\n%v", r)
	}
	if got, want := b.lsUIDs(), []string{v1.UID, v2.UID}; !slices.Equal(got, want) {
		t.Fatalf("after enforce ls lists %v, want %v", got, want)
	}
	// Once a newer valid version exists, the expired one goes.
	v3 := b.backup(img, "vol")
	r = b.ok("enforce", "latest5", "--json")
	if got := e2eRetUIDs(e2eDecode[[]e2eRetVersion](t, r)); !slices.Equal(got, []string{v2.UID}) {
		t.Errorf("enforce after a new backup removed %v, want %s:\n%v", got, v2.UID, r)
	}
	if got, want := b.lsUIDs(), []string{v1.UID, v3.UID}; !slices.Equal(got, want) {
		t.Errorf("ls lists %v, want %v", got, want)
	}
}

// TestIssue13DatesOneRule: a YYYY-MM-DD date means midnight in the zone of
// --timezone, else of the configuration's timezone, in every command that
// takes one (backup --expire and expire alike).
func TestIssue13DatesOneRule(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	cfg := b.path("berlin.cfg")
	e2eWriteFile(t, cfg, []byte("[DEFAULTS]\ntimezone = Europe/Berlin\n[MetaBackend]\npath = store/backy.db\n[DataBackend]\npath = store/data\n"))
	b.ok("-c", cfg, "init")
	img := b.path("disk.img")
	e2eRandomFile(t, img, 64*e2eKiB, 1321)
	expireOf := func(r e2eRes) string {
		t.Helper()
		v := e2eDecode[e2eRetVersion](t, r)
		if v.Expire == nil {
			t.Fatalf("no expiry date:\n%v", r)
		}
		return *v.Expire
	}
	const berlin = "2998-12-31T23:00:00Z" // 2999-01-01 00:00 in Berlin (CET)
	v1 := e2eDecode[e2eRetVersion](t, b.ok("-c", cfg, "backup", img, "vol", "--expire", "2999-01-01", "--json"))
	if v1.Expire == nil || *v1.Expire != berlin {
		t.Errorf("backup --expire 2999-01-01 with timezone = Europe/Berlin stored %v, want %s", e2eDeref(v1.Expire), berlin)
	}
	v2 := e2eDecode[e2eRetVersion](t, b.ok("-c", cfg, "backup", img, "vol", "--json"))
	if got := expireOf(b.ok("-c", cfg, "expire", v2.UID, "2999-01-01", "--json")); got != berlin {
		t.Errorf("expire V 2999-01-01 with timezone = Europe/Berlin stored %s, want %s", got, berlin)
	}
	// --timezone overrides the configuration, in both.
	v3 := e2eDecode[e2eRetVersion](t, b.ok("-c", cfg, "backup", img, "vol", "--expire", "2999-07-01", "--timezone", "UTC", "--json"))
	if v3.Expire == nil || *v3.Expire != "2999-07-01T00:00:00Z" {
		t.Errorf("backup --expire 2999-07-01 --timezone UTC stored %v", e2eDeref(v3.Expire))
	}
	if got := expireOf(b.ok("-c", cfg, "expire", v2.UID, "2999-07-01", "--timezone", "America/New_York", "--json")); got != "2999-07-01T04:00:00Z" {
		t.Errorf("expire --timezone America/New_York stored %s", got)
	}
	// RFC 3339 carries its own offset.
	if got := expireOf(b.ok("-c", cfg, "expire", v2.UID, "2999-01-01T12:00:00+05:00", "--json")); got != "2999-01-01T07:00:00Z" {
		t.Errorf("expire with an RFC 3339 date stored %s", got)
	}
	r := b.fail(exitUsage, "-c", cfg, "backup", img, "vol", "--expire", "2999-01-01", "--timezone", "Mars/Olympus_Mons")
	if !strings.Contains(r.stderr, "--timezone") {
		t.Errorf("a bad --timezone is not named:\n%v", r)
	}
}

func e2eDeref(s *string) string {
	if s == nil {
		return "(none)"
	}
	return *s
}
