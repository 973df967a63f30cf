package main

import (
	"reflect"
	"slices"
	"strings"
	"testing"
)

// e2eRetVersion is the version object with the fields retention uses.
type e2eRetVersion struct {
	e2eVersion
	Expire *string `json:"expire"`
}

func e2eRetUIDs(vs []e2eRetVersion) []string {
	out := []string{}
	for _, v := range vs {
		out = append(out, v.UID)
	}
	slices.Sort(out)
	return out
}

func e2eSorted(s ...string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

func TestRetentionEnforceExpire(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	img := b.path("a.img")
	e2eRandomFile(t, img, 1*e2eMiB, 31)
	a1 := b.backup(img, "vol-a")
	a2 := b.backup(img, "vol-a")
	a3 := b.backup(img, "vol-a")
	a4 := b.backup(img, "vol-a")
	b1 := b.backup(img, "vol-b")
	b2 := b.backup(img, "vol-b")
	b.ok("protect", a1.UID)
	all := e2eSorted(a1.UID, a2.UID, a3.UID, a4.UID, b1.UID, b2.UID)

	// --dry-run --json lists the version objects that would go, as ls
	// prints them, and removes nothing.
	r := b.ok("enforce", "latest1", "--dry-run", "--json")
	dry := e2eDecode[[]e2eRetVersion](t, r)
	if got, want := e2eRetUIDs(dry), e2eSorted(a2.UID, a3.UID, b1.UID); !slices.Equal(got, want) {
		t.Fatalf("enforce latest1 --dry-run lists %v, want %v:\n%v", got, want, r)
	}
	for _, v := range dry {
		if lv := b.version(v.UID); !reflect.DeepEqual(v.e2eVersion, lv) {
			t.Errorf("enforce --dry-run --json prints %+v, ls --json %+v", v.e2eVersion, lv)
		}
	}
	if got := e2eSorted(b.lsUIDs()...); !slices.Equal(got, all) {
		t.Fatalf("--dry-run removed versions: ls lists %v", got)
	}
	r = b.ok("enforce", "latest1", "vol-a", "--dry-run", "--json")
	if got, want := e2eRetUIDs(e2eDecode[[]e2eRetVersion](t, r)), e2eSorted(a2.UID, a3.UID); !slices.Equal(got, want) {
		t.Errorf("enforce latest1 vol-a --dry-run lists %v, want %v", got, want)
	}
	r = b.ok("enforce", "latest1", "--dry-run", "--timezone", "Europe/Berlin")
	if l := e2eLines(r.stdout); len(l) != 4 || !strings.HasPrefix(l[0], "UID") || strings.Count(r.stdout, "would remove") != 3 {
		t.Errorf("enforce --dry-run table:\n%v", r)
	}

	// The real run removes exactly those; the protected version stays.
	r = b.ok("enforce", "latest1", "--json")
	if got := e2eRetUIDs(e2eDecode[[]e2eRetVersion](t, r)); !slices.Equal(got, e2eRetUIDs(dry)) {
		t.Errorf("enforce removed %v, --dry-run said %v", got, e2eRetUIDs(dry))
	}
	if got, want := e2eSorted(b.lsUIDs()...), e2eSorted(a1.UID, a4.UID, b2.UID); !slices.Equal(got, want) {
		t.Fatalf("after enforce ls lists %v, want %v", got, want)
	}
	b.restore(a4.UID, img)
	r = b.ok("enforce", "latest1", "--json")
	if got := e2eDecode[[]e2eRetVersion](t, r); len(got) != 0 {
		t.Errorf("a second enforce removed %v", e2eRetUIDs(got))
	}

	// Expiry dates: a past one removes even the newest version, a
	// protected version stays whatever its date, "never" clears.
	r = b.ok("expire", a4.UID, "2000-01-01", "--json")
	if v := e2eDecode[e2eRetVersion](t, r); v.UID != a4.UID || v.Expire == nil || *v.Expire != "2000-01-01T00:00:00Z" {
		t.Errorf("expire --json: %+v\n%v", v, r)
	}
	r = b.ok("expire", a1.UID, "2000-01-01T12:00:00+01:00")
	if strings.TrimSpace(r.stdout) != a1.UID+" expire=2000-01-01T11:00:00Z" {
		t.Errorf("expire output:\n%v", r)
	}
	r = b.ok("expire", b2.UID, "2999-06-01", "--timezone", "Europe/Berlin", "--json")
	if v := e2eDecode[e2eRetVersion](t, r); v.Expire == nil || *v.Expire != "2999-05-31T22:00:00Z" {
		t.Errorf("expire --timezone Europe/Berlin: %+v", v)
	}
	// a4 has expired, but it is vol-a's newest valid version: kept.
	r = b.ok("enforce", "latest1", "--json")
	if got := e2eRetUIDs(e2eDecode[[]e2eRetVersion](t, r)); len(got) != 0 {
		t.Errorf("enforce after expire removed %v, want nothing (%s is the newest valid version):\n%v", got, a4.UID, r)
	}
	// With a newer version, it goes.
	a5 := b.backup(img, "vol-a")
	r = b.ok("enforce", "latest1", "--json")
	if got := e2eRetUIDs(e2eDecode[[]e2eRetVersion](t, r)); !slices.Equal(got, []string{a4.UID}) {
		t.Errorf("enforce after expire removed %v, want [%s]:\n%v", got, a4.UID, r)
	}
	if got, want := e2eSorted(b.lsUIDs()...), e2eSorted(a1.UID, a5.UID, b2.UID); !slices.Equal(got, want) {
		t.Fatalf("ls lists %v, want %v", got, want)
	}
	r = b.ok("expire", b2.UID, "never", "--json")
	if v := e2eDecode[e2eRetVersion](t, r); v.Expire != nil {
		t.Errorf("expire never left %v", *v.Expire)
	}

	// backup --expire.
	e := b.backup(img, "vol-c", "--expire", "2999-12-31")
	var ev *e2eRetVersion
	for _, v := range e2eDecode[[]e2eRetVersion](t, b.ok("ls", "vol-c", "--json")) {
		if v.UID == e.UID {
			ev = &v
		}
	}
	if ev == nil || ev.Expire == nil || *ev.Expire != "2999-12-31T00:00:00Z" {
		t.Errorf("backup --expire: ls --json shows %+v", ev)
	}
	b.fail(64, "backup", img, "vol-c", "--expire", "2000-01-01")
	b.fail(64, "backup", img, "vol-c", "--expire", "soon")
	if got := b.ls("vol-c"); len(got) != 1 {
		t.Errorf("a refused backup --expire made a version: %+v", got)
	}
}

func TestRetentionBadArguments(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	img := b.path("a.img")
	e2eRandomFile(t, img, 64*e2eKiB, 32)
	v := b.backup(img, "vol")
	for _, rules := range []string{"days0", "foo3", "latest1,latest2", "latest", "", "days3,", "hours 2", "days-1"} {
		r := b.fail(64, "enforce", rules, "--dry-run")
		if !strings.Contains(r.stderr, "retention rules") {
			t.Errorf("enforce %q: the message does not say what is wrong:\n%v", rules, r)
		}
	}
	b.fail(64, "enforce")
	b.fail(64, "enforce", "latest1", "--timezone", "Mars/Olympus_Mons")
	b.fail(66, "enforce", "latest1", "no-such-volume")
	b.fail(64, "expire", v.UID)
	b.fail(64, "expire", v.UID, "next-tuesday")
	b.fail(64, "expire", v.UID, "2026-02-30")
	b.fail(66, "expire", "V0000000000000000000f", "2030-01-01")
	if got := b.lsUIDs(); !slices.Equal(got, []string{v.UID}) {
		t.Errorf("ls lists %v", got)
	}
	// JSON errors stay one line too.
	r := b.run("enforce", "latest0", "--json")
	if r.code != 64 || len(e2eLines(r.stderr)) != 1 || !strings.Contains(r.stderr, `"exit_code":64`) {
		t.Errorf("enforce latest0 --json:\n%v", r)
	}
}
