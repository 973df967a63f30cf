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
