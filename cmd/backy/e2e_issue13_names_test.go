package main

// Issue 13 item 2: names the version metadata in the data backend cannot
// hold are refused before anything is written (exit 64, saying which
// rule), and a version whose metadata cannot be written (one made by an
// older backy) no longer makes every later command fail.

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/backy/backy/metastore"
)

func TestIssue13NameRules(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	img := b.path("a.img")
	e2eRandomFile(t, img, 3*e2eMiB, 1401)
	long := strings.Repeat("v", 256)
	for _, tc := range []struct {
		name string
		args []string
		rule string
	}{
		{"volume too long", []string{long}, "has 256 bytes, the limit is 255"},
		{"volume with ESC", []string{"vm\x1b[31m-101"}, "control character U+001B"},
		{"volume with newline", []string{"vm\n101"}, "control character U+000A"},
		{"volume with tab", []string{"vm\t101"}, "control character U+0009"},
		{"volume not UTF-8", []string{"vm\xff\xfe"}, "not valid UTF-8"},
		{"snapshot too long", []string{"vm", "--snapshot", long}, "snapshot name"},
		{"snapshot with ESC", []string{"vm", "--snapshot", "s\x1b"}, "control character U+001B"},
		{"label value with newline", []string{"vm", "--label", "k=a\nb"}, "control character U+000A"},
		{"label value too long", []string{"vm", "--label", "k=" + long}, "has 256 bytes, the limit is 255"},
		{"label key not UTF-8", []string{"vm", "--label", "k\xff=v"}, "not valid UTF-8"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := b.with(t).fail(64, append([]string{"backup", img}, tc.args...)...)
			if !strings.Contains(r.stderr, tc.rule) {
				t.Errorf("the message does not say which rule (%q):\n%v", tc.rule, r)
			}
			if strings.ContainsAny(r.stderr[:len(r.stderr)-1], "\x1b\n\t") {
				t.Errorf("the message carries the control character:\n%q", r.stderr)
			}
		})
	}
	// Nothing was written: no store was even created.
	if vs := b.ls(); len(vs) != 0 {
		t.Errorf("refused backups left versions: %+v", vs)
	}
	// Right at the limits is fine, and a later backup of another volume
	// reaches the backend.
	ok := strings.Repeat("é", 127) + "x" // 255 bytes
	v := b.backup(img, ok, "--snapshot", strings.Repeat("s", 255), "--label", "k="+strings.Repeat("w", 255))
	w := b.backup(img, "vm-2")
	got := map[string]bool{}
	for _, x := range e2eDecode[[]e2eVersion](t, b.ok("ls", "--from-backend", "--json")) {
		got[x.UID] = true
	}
	if !got[v.UID] || !got[w.UID] {
		t.Errorf("ls --from-backend lists %v, want %s and %s", got, v.UID, w.UID)
	}
}

// TestIssue13OneBadVersionDoesNotWedge: a version whose metadata cannot
// be written to the data backend (here: one an older backy let in with a
// 300-byte volume name) stays pending and is warned about, but backups,
// protect and cleanup of other versions succeed and their metadata
// reaches the backend.
func TestIssue13OneBadVersionDoesNotWedge(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	img := b.path("a.img")
	e2eRandomFile(t, img, 3*e2eMiB, 1402)
	bad := b.backup(img, "vm-bad")
	good := b.backup(img, "vm-good")
	// As an older backy (which checked only for an empty name) recorded it.
	db, err := metastore.Open(filepath.Join(b.home, "backy.db"), metastore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.UpdateVersion(bad.UID, func(v *metastore.Version) error {
		v.Volume = strings.Repeat("x", 300)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	for _, args := range [][]string{{"protect", good.UID}, {"backup", img, "vm-new", "--json"}, {"cleanup"}, {"unprotect", good.UID}} {
		r := b.run(args...)
		if r.code != 0 {
			t.Fatalf("with another version's metadata unwritable: want exit 0\n%v", r)
		}
		if !strings.Contains(r.stderr, bad.UID) {
			t.Errorf("no warning names the version whose metadata could not be written:\n%v", r)
		}
	}
	// Their metadata reached the backend; the bad version's did not.
	vs := e2eDecode[[]e2eVersion](t, b.ok("ls", "--from-backend", "--json"))
	found := map[string]e2eVersion{}
	for _, v := range vs {
		found[v.UID] = v
	}
	if g, ok := found[good.UID]; !ok || g.Protected {
		t.Errorf("ls --from-backend: %s is %+v, want listed, unprotected", good.UID, g)
	}
	if len(vs) != 3 || found[bad.UID].Volume != "vm-bad" {
		t.Errorf("ls --from-backend lists %d versions %+v; want 3, %s with its old metadata", len(vs), vs, bad.UID)
	}
	// The command's own version still fails it: protect of the bad one.
	r := b.run("protect", bad.UID)
	if r.code == 0 || !strings.Contains(r.stderr, bad.UID) {
		t.Errorf("protect of the version whose metadata cannot be written: want a failure naming it\n%v", r)
	}
}
