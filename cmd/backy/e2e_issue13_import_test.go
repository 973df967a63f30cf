package main

// End-to-end tests of issue 13, items 7, 8 and the export/import parts of
// item 16: an export made before migrate-encryption imports afterwards
// (records resolved against the store's), the upgrade seed workflow
// (export every version, move the metastore away, import the exports),
// a truncated export of an existing version reported as damaged (65), and
// export -o onto an existing file. Identifiers start with "e2eI13".

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// e2eI13ImportRes is 'backy import --json'.
type e2eI13ImportRes struct {
	Versions        []string `json:"versions"`
	Records         int64    `json:"records"`
	ObjectsChecked  int64    `json:"objects_checked"`
	RecordsResolved int64    `json:"records_resolved"`
}

// TestE2EI13ImportAfterMigrateEncryption (item 7): versions exported from
// an unencrypted store, then migrate-encryption --all (every object
// rewritten under a new name), then the versions removed: importing the
// old export uses the store's records of the blocks (their current
// objects), and the versions restore bit-identically and deep-scrub clean.
// Into a metastore without those records (moved away, so the import makes
// a new one) the same export is refused with exit 70 and a message that
// says why and what to do, and leaves no metastore behind.
func TestE2EI13ImportAfterMigrateEncryption(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	store := b.path("store")
	data := filepath.Join(store, "data")
	db := filepath.Join(store, "backy.db")
	key := e2eEncNewMat(t, b.dir, "key_file", 1301)
	plain := e2eEncConf(t, b.path("plain.cfg"), store)
	enc := e2eEncConf(t, b.path("enc.cfg"), store, "encryption_version = 1", key.line())
	b.ok("-c", plain, "init", "--block-size", "65536")
	pb, eb := e2eEncWithConfig(b, plain), e2eEncWithConfig(b, enc)
	img1 := e2eMetaImage(t, b.path("one.img"), 24, []int{4}, 1302)
	img2 := e2eEncChangeBlocks(t, img1, b.path("two.img"), []int{1, 9}, "", 1303)
	img3 := e2eMetaImage(t, b.path("three.img"), 8, nil, 1304)
	v1, v2, v3 := pb.backup(img1, "vol"), pb.backup(img2, "vol"), pb.backup(img3, "other")
	exp12, exp3 := b.path("v12.bkm"), b.path("v3.bkm")
	pb.ok("export", v1.UID, v2.UID, "-o", exp12)
	pb.ok("export", v3.UID, "-o", exp3)
	before := e2eEncObjects(t, data)

	if res := e2eEncMigrate(b, enc, "--all"); res.Migrated == 0 || res.Remaining != 0 {
		t.Fatalf("migrate-encryption --all: %+v", res)
	}
	for _, o := range e2eEncObjects(t, data) {
		for _, p := range before {
			if o.path == p.path {
				t.Fatalf("object %s kept its name through migrate-encryption: the test cannot fail", o.path)
			}
		}
	}
	eb.ok("rm", v1.UID, v2.UID) // their records stay until cleanup (v3 has none of their blocks)
	r := eb.ok("import", exp12, "--json")
	res := e2eDecode[e2eI13ImportRes](t, r)
	if !slices.Equal(res.Versions, []string{v1.UID, v2.UID}) || res.RecordsResolved != res.Records || res.ObjectsChecked != res.Records || res.Records == 0 {
		t.Errorf("import of the pre-migration export: %+v, want both versions, every record resolved to the store's and checked", res)
	}
	for _, v := range []e2eVersion{v1, v2} {
		if got := eb.version(v.UID); got.Status != "valid" {
			t.Errorf("the imported %s is %q", v.UID, got.Status)
		}
	}
	eb.restore(v1.UID, img1)
	eb.restore(v2.UID, img2)
	eb.ok("deep-scrub", "--all")
	if cr := e2eDecode[e2eMetaCleanupRes](t, eb.ok("cleanup", "--orphans", "--json")); cr.BlocksDeleted != 0 || cr.Orphans == nil || cr.Orphans.Objects != 0 {
		t.Errorf("cleanup --orphans after the import deleted something: %+v %+v", cr, cr.Orphans)
	}
	eb.restore(v3.UID, img3)

	// No record to resolve against: the metastore is gone, so the import
	// makes a new one of the store, which knows no block.
	if err := os.Rename(db, db+".away"); err != nil {
		t.Fatal(err)
	}
	snap := e2eEncSnap(t, data)
	r = eb.fail(70, "import", exp3)
	for _, want := range []string{"no record of their blocks", "migrate-encryption", "rebuild-metastore"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("the refusal should say why and what to do (%q):\n%v", want, r)
		}
	}
	if _, err := os.Stat(db); err == nil {
		t.Error("a refused import left a metastore behind")
	}
	if m, _ := filepath.Glob(db + ".*"); len(m) != 2 { // backy.db.away, backy.db.locks
		t.Errorf("a refused import left files beside the metastore: %v", m)
	}
	e2eEncSameSnap(t, "a refused import", data, snap)
}

// TestE2EI13SeedWorkflow (item 8): backy2's upgrade procedure: export
// every version, move the metastore away, import the exports. The first
// import makes the metastore of the store the data backend holds (its
// identity and key registrations: here a passphrase, whose salt is only
// in the registration), the others add to it; every version comes back
// with its fields, restores bit-identically, deep-scrubs clean, and
// cleanup --orphans finds nothing to delete; its metadata in the data
// backend is rewritten once. The same for the default store ($BACKY_HOME).
func TestE2EI13SeedWorkflow(t *testing.T) {
	t.Parallel()
	t.Run("configured store, passphrase", func(t *testing.T) {
		t.Parallel()
		b := e2eNewBox(t)
		pass := e2eEncNewMat(t, b.dir, "passphrase_file", 1311)
		s := e2eMetaNew(b, "s", "encryption_version = 1", pass.line())
		ext := e2eExt4(t, b.dir, "disk", 1312)
		rnd := e2eMetaImage(t, b.path("rnd.img"), 30, []int{0, 29}, 1313)
		ext2 := b.path("disk2.img")
		e2eCopy(t, ext, ext2)
		e2eScribble(t, ext2, 5*e2eMiB, e2eMiB+123, 1314)
		v1 := s.backup(ext, "disk", "--snapshot", "nightly", "--label", "host=pve1", "--expire", "2031-01-02")
		s.ok("protect", v1.UID)
		v2 := s.backup(rnd, "rnd")
		v3 := s.backup(ext2, "disk", "--from", v1.UID)
		want := e2eMetaLs(s)
		wantStats := e2eMetaStatsOf(s)
		var exports []string
		for _, v := range []e2eVersion{v1, v2, v3} {
			p := b.path(v.UID + ".bkm")
			s.ok("export", v.UID, "-o", p)
			exports = append(exports, p)
		}
		if err := os.Rename(s.db, s.db+".old"); err != nil {
			t.Fatal(err)
		}
		for i, p := range exports {
			r := s.ok("import", p)
			if i == 0 && !strings.Contains(r.stderr, "made it for the store") {
				t.Errorf("the first import should say it made the metastore:\n%v", r)
			}
			if i > 0 && strings.TrimSpace(r.stderr) != "" {
				t.Errorf("import %d printed on stderr:\n%v", i+1, r)
			}
		}
		e2eMetaSameLs(t, "after the seed imports", e2eMetaLs(s), want)
		if got := e2eMetaStatsOf(s); got != wantStats {
			t.Errorf("stats after the seed imports: %+v, want %+v", got, wantStats)
		}
		s.restore(v1.UID, ext)
		s.restore(v2.UID, rnd)
		s.restore(v3.UID, ext2)
		s.ok("deep-scrub", "--all")
		if cr := e2eDecode[e2eMetaCleanupRes](t, s.ok("cleanup", "--orphans", "--json")); cr.BlocksDeleted != 0 || cr.Orphans == nil || cr.Orphans.Objects != 0 || cr.Kept != 0 {
			t.Errorf("cleanup --orphans after the seed imports: %+v %+v, want nothing deleted or kept", cr, cr.Orphans)
		}
		for _, v := range []e2eVersion{v1, v2, v3} {
			if d := e2eMetaSnapDirs(t, s.data, v.UID); len(d) != 1 {
				t.Errorf("%s has the snapshots %v in the data backend, want one", v.UID, d)
			}
		}
		s.fail(64, "rm", v1.UID) // still protected
		// A new backup deduplicates against what was imported.
		if v := s.backup(rnd, "rnd"); v.BytesWritten != 0 {
			t.Errorf("a backup after the seed imports wrote %d bytes, want 0", v.BytesWritten)
		}
	})
	t.Run("default store", func(t *testing.T) {
		t.Parallel()
		b := e2eNewBox(t)
		img := b.path("disk.img")
		e2eRandomFile(t, img, 9*e2eMiB+77, 1315)
		v := b.backup(img, "vol")
		exp := b.path("v.bkm")
		b.ok("export", v.UID, "-o", exp)
		db := filepath.Join(b.home, "backy.db")
		if err := os.Rename(db, db+".old"); err != nil {
			t.Fatal(err)
		}
		b.ok("import", exp)
		if uids := b.lsUIDs(); !slices.Equal(uids, []string{v.UID}) {
			t.Fatalf("after the import ls lists %v, want %s", uids, v.UID)
		}
		b.restore(v.UID, img)
		b.ok("deep-scrub", "--all")
	})
}

// TestE2EI13ExportImportMessages (item 16): a truncated export of a
// version the metastore has is reported as damaged (65), not as existing
// (73), saying both; export -o onto an existing file says the output file
// exists and how to replace it, not that a store exists.
func TestE2EI13ExportImportMessages(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	s := e2eMetaNew(b, "s")
	img := e2eMetaImage(t, b.path("one.img"), 24, []int{3}, 1321)
	v := s.backup(img, "vol")
	exp := b.path("v.bkm")
	s.ok("export", v.UID, "-o", exp)
	good := e2eReadFile(t, exp)
	before := e2eMetaStateOf(s)
	for _, cut := range []int{len(good) / 2, len(good) - 1} {
		p := b.path("cut.bkm")
		e2eWriteFile(t, p, good[:cut])
		r := s.fail(65, "import", p)
		if !strings.Contains(r.stderr, "invalid version metadata") || !strings.Contains(r.stderr, v.UID) {
			t.Errorf("a truncated export of an existing version should report the damage and name the existing version:\n%v", r)
		}
	}
	e2eMetaSame(t, "refused imports", s, before)
	s.fail(73, "import", exp) // intact: the version exists

	r := s.fail(73, "export", v.UID, "-o", exp)
	if !strings.Contains(r.stderr, "output file exists") || !strings.Contains(r.stderr, exp) || !strings.Contains(r.stderr, "--force") ||
		strings.Contains(r.stderr, "store") {
		t.Errorf("export onto an existing file should say the output file exists and how to replace it:\n%v", r)
	}
	if got := e2eReadFile(t, exp); string(got) != string(good) {
		t.Error("a refused export changed the existing file")
	}
}
