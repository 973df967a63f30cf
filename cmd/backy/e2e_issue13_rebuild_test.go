package main

// End-to-end tests of issue 13, rebuild-metastore: item 1 (a version the
// old metastore knows is never dropped silently), item 6 (a lost
// keys/<N>.json with the key configured) and the blank values of item 30.
// Identifiers start with "e2eR13".

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// TestE2ER13MissingKeyRegistration (item 6): with keys/1.json gone,
// 'ls --from-backend' and rebuild-metastore (metastore deleted) work when
// the raw key is configured, in [DEFAULTS] or in the [Encryption1]
// section the old message suggested: the registration is made again from
// the key (the objects carry its key id) and keys/1.json rewritten. A
// wrong key is refused (77) and writes nothing. A passphrase, whose salt
// was only in the registration, is refused (77) saying what is missing
// and what to do.
func TestE2ER13MissingKeyRegistration(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		section bool
	}{{"key in DEFAULTS", false}, {"key in [Encryption1]", true}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := e2eNewBox(t)
			key := e2eEncNewMat(t, b.dir, "key_file", 1331)
			s := e2eMetaNew(b, "s", "encryption_version = 1", key.line())
			img := e2eMetaImage(t, b.path("one.img"), 20, []int{2}, 1332)
			v := s.backup(img, "vol", "--label", "a=b")
			reg := filepath.Join(s.data, "keys", "1.json")
			want := e2eReadFile(t, reg)
			wantLs := e2eMetaLs(s)
			read := s.e2eBox
			if tc.section {
				read = e2eEncWithConfig(b, e2eMetaConf(t, b.path("read.cfg"), s.db, s.data, "[Encryption1]", key.sectionLine()))
			}
			wrong := e2eEncWithConfig(b, e2eMetaConf(t, b.path("wrong.cfg"), s.db, s.data, "[Encryption1]",
				e2eEncNewMat(t, b.dir, "key_file", 1333).sectionLine()))

			if err := os.Remove(reg); err != nil {
				t.Fatal(err)
			}
			r := wrong.fail(77, "ls", "--from-backend")
			if !strings.Contains(r.stderr, "keys/1.json is missing") || !strings.Contains(r.stderr, "key id") {
				t.Errorf("a wrong key should be told apart, naming the missing registration and the key ids:\n%v", r)
			}
			if _, err := os.Stat(reg); err == nil {
				t.Error("a wrong key wrote keys/1.json")
			}
			vs := e2eDecode[[]e2eVersion](t, read.ok("ls", "--from-backend", "--json"))
			if len(vs) != 1 || vs[0].UID != v.UID || vs[0].Labels["a"] != "b" {
				t.Errorf("ls --from-backend without keys/1.json: %+v, want %s", vs, v.UID)
			}
			if got, err := os.ReadFile(reg); err != nil {
				t.Errorf("ls --from-backend did not rewrite keys/1.json: %v", err)
			} else if string(got[:strings.Index(string(got), `"registered"`)]) != string(want[:strings.Index(string(want), `"registered"`)]) {
				t.Errorf("keys/1.json rewritten as\n%s\nwant (but for the time)\n%s", got, want)
			}

			// The same for a rebuild, with the metastore gone too.
			if err := os.Remove(reg); err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(s.db); err != nil {
				t.Fatal(err)
			}
			read.ok("rebuild-metastore", "--json")
			if _, err := os.Stat(reg); err != nil {
				t.Errorf("rebuild-metastore did not rewrite keys/1.json: %v", err)
			}
			e2eMetaSameLs(t, "after the rebuild", e2eMetaLs(s), wantLs)
			s.restore(v.UID, img)
			s.ok("deep-scrub", "--all")
		})
	}
	t.Run("passphrase", func(t *testing.T) {
		t.Parallel()
		b := e2eNewBox(t)
		pass := e2eEncNewMat(t, b.dir, "passphrase_file", 1334)
		s := e2eMetaNew(b, "s", "encryption_version = 1", pass.line())
		img := e2eMetaImage(t, b.path("one.img"), 8, nil, 1335)
		v := s.backup(img, "vol")
		if err := os.Remove(filepath.Join(s.data, "keys", "1.json")); err != nil {
			t.Fatal(err)
		}
		r := s.fail(77, "ls", "--from-backend")
		for _, want := range []string{"passphrase", "keys/1.json is missing", "salt", "backy import"} {
			if !strings.Contains(r.stderr, want) {
				t.Errorf("the message should say what is missing and what to do (%q):\n%v", want, r)
			}
		}
		e2eEncNoSecrets(t, r, pass)
		// rebuild-metastore takes it from the old metastore, and writes
		// keys/1.json again.
		want := e2eMetaLs(s)
		s.ok("rebuild-metastore", "--force")
		if _, err := os.Stat(filepath.Join(s.data, "keys", "1.json")); err != nil {
			t.Errorf("rebuild-metastore did not write keys/1.json back: %v", err)
		}
		e2eMetaSameLs(t, "after the rebuild", e2eMetaLs(s), want, "last_scrub")
		s.ok("ls", "--from-backend")
		s.restore(v.UID, img)
	})
}

// e2eR13RebuildRes is the part of 'backy rebuild-metastore --json' these
// tests read.
type e2eR13RebuildRes struct {
	Versions    int      `json:"versions"`
	Unreadable  []string `json:"unreadable"`
	Recovered   []string `json:"recovered_from_old_metastore"`
	OldVersions int      `json:"old_metastore_versions"`
	KeptAside   string   `json:"kept_aside"`
	Lost        []struct {
		UID    string `json:"uid"`
		Volume string `json:"volume"`
		Date   string `json:"date"`
		Status string `json:"status"`
		Why    string `json:"why"`
	} `json:"lost"`
}

// e2eR13TableValues checks that every row of a FIELD/VALUE table has a
// value (issue 13 item 30: no blank values) and returns them by field.
func e2eR13TableValues(t *testing.T, out string) map[string]string {
	t.Helper()
	rows := map[string]string{}
	lines := e2eLines(out)
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "FIELD") {
		t.Fatalf("no FIELD/VALUE table:\n%s", out)
	}
	col := strings.Index(lines[0], "VALUE")
	for _, l := range lines[1:] {
		if l == "" {
			break // the table of lost versions follows
		}
		if len(l) <= col || strings.TrimSpace(l[col:]) == "" {
			t.Errorf("the row %q has no value", strings.TrimSpace(l))
			continue
		}
		rows[strings.TrimSpace(l[:col])] = strings.TrimSpace(l[col:])
	}
	return rows
}

// e2eR13Flip flips a byte in the middle of every chunk of uid's snapshots.
func e2eR13Flip(t *testing.T, data, uid string) {
	t.Helper()
	root := filepath.Join(data, "versions", strings.ToLower(uid))
	for _, d := range e2eMetaSnapDirs(t, data, uid) {
		for _, f := range e2eMetaFiles(t, filepath.Join(root, d)) {
			p := filepath.Join(root, d, f)
			b := e2eReadFile(t, p)
			b[len(b)/2] ^= 0x20
			e2eWriteFile(t, p, b)
		}
	}
}

// e2eR13DropPage deletes the first page of uid's map from a metastore
// file, as damage would.
func e2eR13DropPage(t *testing.T, db, uid string) {
	t.Helper()
	bdb, err := bolt.Open(db, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer bdb.Close()
	err = bdb.Update(func(tx *bolt.Tx) error {
		m := tx.Bucket([]byte("maps")).Get([]byte(uid))
		if len(m) < 32 {
			return fmt.Errorf("the map of %s has no page", uid)
		}
		return tx.Bucket([]byte("pages")).Delete(m[:32])
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestE2ER13RebuildKeepsVersions (item 1, rebuild side; item 30): a
// version whose metadata snapshot in the data backend was deleted, or
// damaged, is not dropped by rebuild-metastore --force: it is taken from
// the old metastore (the table says so, with a value in every row), its
// snapshot is written again (a later rebuild from the backend alone has
// it), it restores bit-identically, and cleanup --orphans deletes none of
// its blocks. A version neither the backend nor the old metastore (its
// map damaged there) can give is listed with its volume and date, and
// the rebuild exits 66 changing nothing; --accept-loss rebuilds without
// it, keeping the old file aside.
func TestE2ER13RebuildKeepsVersions(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	key := e2eEncNewMat(t, b.dir, "key_file", 1341)
	s := e2eMetaNew(b, "s", "encryption_version = 1", key.line())
	img1 := e2eMetaImage(t, b.path("one.img"), 30, []int{7}, 1342)
	img2 := e2eEncChangeBlocks(t, img1, b.path("two.img"), []int{0, 12}, "", 1343)
	img3 := e2eMetaImage(t, b.path("three.img"), 12, nil, 1344)
	v1 := s.backup(img1, "vol", "--label", "k=v")
	s.ok("protect", v1.UID)
	v2 := s.backup(img2, "vol")
	v3 := s.backup(img3, "other")
	want := e2eMetaLs(s)
	blocks := e2eMetaBlockFiles(t, s.data)

	// v1's snapshot is gone.
	if err := os.RemoveAll(filepath.Join(s.data, "versions", strings.ToLower(v1.UID))); err != nil {
		t.Fatal(err)
	}
	r := s.ok("rebuild-metastore", "--force")
	rows := e2eR13TableValues(t, r.stdout)
	if rows["taken from the old metastore"] != v1.UID || rows["versions"] != "3" || rows["unreadable versions"] != "none" ||
		!strings.HasPrefix(rows["old metastore kept as"], s.db+".replaced-") || rows["versions in the old metastore"] != "3" {
		t.Errorf("rebuild-metastore --force should say it took %s from the old metastore:\n%v", v1.UID, r)
	}
	e2eMetaSameLs(t, "after rebuilding without v1's snapshot", e2eMetaLs(s), want, "last_scrub")
	s.restore(v1.UID, img1)
	if d := e2eMetaSnapDirs(t, s.data, v1.UID); len(d) != 1 {
		t.Errorf("%s has the snapshots %v after the rebuild, want one written again", v1.UID, d)
	}
	if cr := e2eDecode[e2eMetaCleanupRes](t, s.ok("cleanup", "--orphans", "--json")); cr.BlocksDeleted != 0 || cr.Orphans == nil || cr.Orphans.Objects != 0 {
		t.Errorf("cleanup --orphans after the rebuild deleted something: %+v %+v", cr, cr.Orphans)
	}
	if got := e2eMetaBlockFiles(t, s.data); !slices.Equal(got, blocks) {
		t.Errorf("the block objects changed: %d, want %d", len(got), len(blocks))
	}
	// The backend alone has it again.
	if err := os.Remove(s.db); err != nil {
		t.Fatal(err)
	}
	rows = e2eR13TableValues(t, s.ok("rebuild-metastore").stdout)
	if rows["versions"] != "3" || rows["versions in the old metastore"] != "none (there was no metastore)" || rows["old metastore kept as"] != "none" {
		t.Errorf("a rebuild from the backend alone: %v", rows)
	}
	e2eMetaSameLs(t, "after a rebuild from the backend alone", e2eMetaLs(s), want, "last_scrub")

	// v2's snapshot is damaged: the same.
	e2eR13Flip(t, s.data, v2.UID)
	res := e2eDecode[e2eR13RebuildRes](t, s.ok("rebuild-metastore", "--force", "--json"))
	if !slices.Equal(res.Recovered, []string{v2.UID}) || len(res.Unreadable) != 0 || len(res.Lost) != 0 || res.Versions != 3 {
		t.Errorf("rebuild-metastore --force with a damaged snapshot of %s: %+v, want it taken from the old metastore", v2.UID, res)
	}
	s.restore(v2.UID, img2)
	s.ok("deep-scrub", "--all")

	// v3: no snapshot, and its map damaged in the metastore too.
	if err := os.RemoveAll(filepath.Join(s.data, "versions", strings.ToLower(v3.UID))); err != nil {
		t.Fatal(err)
	}
	e2eR13DropPage(t, s.db, v3.UID)
	sum := e2eSHA(t, s.db)
	aside, _ := filepath.Glob(s.db + ".replaced-*")
	r = s.fail(66, "rebuild-metastore", "--force")
	for _, w := range []string{v3.UID, "volume other", "Nothing was changed", "--accept-loss"} {
		if !strings.Contains(r.stderr, w) {
			t.Errorf("the refusal should name the version, its volume, that nothing changed and --accept-loss (%q):\n%v", w, r)
		}
	}
	if !strings.Contains(r.stdout, "LOST VERSION") || !strings.Contains(r.stdout, v3.UID) || !strings.Contains(r.stdout, v3.Date[:10]) {
		t.Errorf("the refusal should list the version with its date on stdout:\n%v", r)
	}
	if e2eSHA(t, s.db) != sum {
		t.Error("a refused rebuild changed the metastore")
	}
	if now, _ := filepath.Glob(s.db + ".replaced-*"); len(now) != len(aside) {
		t.Errorf("a refused rebuild kept a metastore aside: %v", now)
	}
	if uids := s.lsUIDs(); !slices.Contains(uids, v3.UID) {
		t.Errorf("after the refused rebuild ls lists %v", uids)
	}
	res = e2eDecode[e2eR13RebuildRes](t, s.ok("rebuild-metastore", "--force", "--accept-loss", "--json"))
	if len(res.Lost) != 1 || res.Lost[0].UID != v3.UID || res.Lost[0].Volume != "other" || res.Lost[0].Date == "" || res.KeptAside == "" || res.Versions != 2 {
		t.Errorf("rebuild-metastore --accept-loss: %+v, want %s lost and the old metastore kept aside", res, v3.UID)
	}
	if got := e2eSHA(t, res.KeptAside); got != sum {
		t.Errorf("%s is not the old metastore", res.KeptAside)
	}
	if uids := s.lsUIDs(); !slices.Equal(uids, []string{v1.UID, v2.UID}) {
		t.Errorf("after --accept-loss ls lists %v, want %s %s", uids, v1.UID, v2.UID)
	}
	s.restore(v1.UID, img1)
}
