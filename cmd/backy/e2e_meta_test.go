package main

// End-to-end tests of version metadata in the data backend (issue 6)
// through the built binary (see e2e_helpers_test.go): export and import,
// rebuild-metastore, restore --from-backend, cleanup keeping the blocks of
// versions only the backend knows, rm deleting a version's snapshots, and
// the same over S3. Every store uses 64 KiB blocks (e2eEncBS) and is named
// by a configuration file. Identifiers start with "e2eMeta".

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/backy/backy/blockstore/backend/s3/s3test"
)

// e2eMetaRebuildRes is 'backy rebuild-metastore --json'.
type e2eMetaRebuildRes struct {
	Versions        int      `json:"versions"`
	Unreadable      []string `json:"unreadable"`
	OlderSnapshots  int      `json:"older_snapshots"`
	Blocks          int64    `json:"blocks"`
	BlockRecords    int64    `json:"block_records"`
	Conflicts       int      `json:"conflicts"`
	KeptAside       string   `json:"kept_aside"`
	OldProblem      string   `json:"old_metastore_problem"`
	DurationSeconds float64  `json:"duration_seconds"`
}

// e2eMetaImportRes is 'backy import --json'.
type e2eMetaImportRes struct {
	Versions       []string `json:"versions"`
	Blocks         int64    `json:"blocks"`
	Records        int64    `json:"records"`
	ObjectsChecked int64    `json:"objects_checked"`
}

// e2eMetaExportRes is 'backy export -o FILE --json'.
type e2eMetaExportRes struct {
	File     string   `json:"file"`
	Versions []string `json:"versions"`
	Bytes    int64    `json:"bytes"`
}

// e2eMetaCleanupRes is 'backy cleanup --json'.
type e2eMetaCleanupRes struct {
	BlocksDeleted int64 `json:"blocks_deleted"`
	Kept          int64 `json:"kept_for_backend_versions"`
	Orphans       *struct {
		Objects int64 `json:"objects_deleted"`
		Listed  int64 `json:"objects_listed"`
		Kept    int64 `json:"kept_for_backend_versions"`
	} `json:"orphans"`
}

// e2eMetaStats is the part of 'backy stats --json' these tests compare.
type e2eMetaStats struct {
	Versions     int   `json:"versions"`
	Blocks       int64 `json:"blocks"`
	StoredBytes  int64 `json:"stored_bytes"`
	Unreferenced int64 `json:"unreferenced_blocks"`
}

// e2eMetaConf writes (mode 0600) a configuration of a store whose
// metastore is meta and whose data directory is data.
func e2eMetaConf(t *testing.T, path, meta, data string, lines ...string) string {
	t.Helper()
	var sb strings.Builder
	fmt.Fprintf(&sb, "[MetaBackend]\npath = %s\n\n[DataBackend]\npath = %s\n\n[DEFAULTS]\n", meta, data)
	for _, l := range lines {
		sb.WriteString(l + "\n")
	}
	e2eEncSecretFile(t, path, sb.String())
	return path
}

// e2eMetaStore is a store in b.dir/name: metastore name/backy.db, data
// name/data, 64 KiB blocks.
type e2eMetaStore struct {
	*e2eBox // $BACKY_CONFIG is the store's configuration
	db      string
	data    string
}

// e2eMetaNew writes the configuration of store name (extra [DEFAULTS]
// lines) and creates the store.
func e2eMetaNew(b *e2eBox, name string, lines ...string) *e2eMetaStore {
	b.t.Helper()
	cfg, data := e2eCopyStore(b, name, true, lines...)
	return &e2eMetaStore{e2eBox: e2eEncWithConfig(b, cfg), db: filepath.Join(b.path(name), "backy.db"), data: data}
}

// e2eMetaState is what a refused command must leave as it was.
type e2eMetaState struct {
	ls, stats string // stdout of ls --json and stats --json
	db        string // SHA-256 of the metastore file
	data      map[string]string
}

func e2eMetaStateOf(s *e2eMetaStore) e2eMetaState {
	s.t.Helper()
	return e2eMetaState{
		ls:    s.ok("ls", "--json").stdout,
		stats: s.ok("stats", "--json").stdout,
		db:    e2eSHA(s.t, s.db),
		data:  e2eEncSnap(s.t, s.data),
	}
}

// e2eMetaSame requires the store to be in state before.
func e2eMetaSame(t *testing.T, what string, s *e2eMetaStore, before e2eMetaState) {
	t.Helper()
	// The metastore file first: ls and stats only read, but compare it
	// before anything else opens it.
	if e2eSHA(t, s.db) != before.db {
		t.Errorf("%s changed the metastore file", what)
	}
	after := e2eMetaStateOf(s)
	if after.ls != before.ls {
		t.Errorf("%s changed 'ls --json':\nbefore: %s\nafter:  %s", what, before.ls, after.ls)
	}
	if after.stats != before.stats {
		t.Errorf("%s changed 'stats --json':\nbefore: %s\nafter:  %s", what, before.stats, after.stats)
	}
	e2eEncSameSnap(t, what, s.data, before.data)
}

// e2eMetaLs returns 'ls --json' with every field, by uid.
func e2eMetaLs(s *e2eMetaStore) map[string]map[string]any {
	s.t.Helper()
	out := map[string]map[string]any{}
	for _, v := range e2eDecode[[]map[string]any](s.t, s.ok("ls", "--json")) {
		out[v["uid"].(string)] = v
	}
	return out
}

// e2eMetaSameLs requires two listings to be equal in every field but
// the ignored ones.
func e2eMetaSameLs(t *testing.T, what string, got, want map[string]map[string]any, ignore ...string) {
	t.Helper()
	if len(ignore) > 0 {
		strip := func(m map[string]map[string]any) map[string]map[string]any {
			out := map[string]map[string]any{}
			for uid, v := range m {
				c := maps.Clone(v)
				for _, k := range ignore {
					delete(c, k)
				}
				out[uid] = c
			}
			return out
		}
		got, want = strip(got), strip(want)
	}
	if reflect.DeepEqual(got, want) {
		return
	}
	for uid, w := range want {
		g, ok := got[uid]
		if !ok {
			t.Errorf("%s: %s is not listed", what, uid)
			continue
		}
		for k := range w {
			if !reflect.DeepEqual(g[k], w[k]) {
				t.Errorf("%s: %s field %q is %v, want %v", what, uid, k, g[k], w[k])
			}
		}
		for k := range g {
			if _, ok := w[k]; !ok {
				t.Errorf("%s: %s has the new field %q = %v", what, uid, k, g[k])
			}
		}
	}
	for uid := range got {
		if _, ok := want[uid]; !ok {
			t.Errorf("%s: %s is listed, but should not be", what, uid)
		}
	}
}

func e2eMetaStatsOf(s *e2eMetaStore) e2eMetaStats {
	s.t.Helper()
	return e2eDecode[e2eMetaStats](s.t, s.ok("stats", "--json"))
}

// e2eMetaImage writes n blocks of random data with the blocks in zero
// left empty (sparse in the version).
func e2eMetaImage(t *testing.T, path string, n int, zero []int, seed uint64) string {
	t.Helper()
	b := e2eRandom(n*e2eEncBS, seed)
	for _, z := range zero {
		clear(b[z*e2eEncBS : (z+1)*e2eEncBS])
	}
	e2eWriteFile(t, path, b)
	return path
}

// e2eMetaSnapDirs lists the snapshot directories ("<gen>-<tag>") of uid
// in a data directory, each checked for the documented shape.
func e2eMetaSnapDirs(t *testing.T, data, uid string) []string {
	t.Helper()
	root := filepath.Join(data, "versions", strings.ToLower(uid))
	ents, err := os.ReadDir(root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if !e2eMetaDirRe.MatchString(e.Name()) || !e.IsDir() {
			t.Errorf("%s/%s does not have the shape <16 hex>-<8 hex>/", root, e.Name())
			continue
		}
		chunks, err := os.ReadDir(filepath.Join(root, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if len(chunks) == 0 {
			continue // an emptied directory
		}
		for _, c := range chunks {
			if !e2eMetaChunkRe.MatchString(c.Name()) {
				t.Errorf("%s/%s/%s does not have the shape <8 hex>", root, e.Name(), c.Name())
			}
		}
		out = append(out, e.Name())
	}
	return out
}

var (
	e2eMetaDirRe   = regexp.MustCompile(`^[0-9a-f]{16}-[0-9a-f]{8}$`)
	e2eMetaChunkRe = regexp.MustCompile(`^[0-9a-f]{8}$`)
)

// e2eMetaFiles lists the regular files below dir (relative paths).
func e2eMetaFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && p == dir {
				return fs.SkipAll
			}
			return err
		}
		if d.Type().IsRegular() && !strings.HasPrefix(d.Name(), ".") {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// e2eMetaBlockFiles lists the block objects of a data directory.
func e2eMetaBlockFiles(t *testing.T, data string) []string {
	t.Helper()
	return e2eMetaFiles(t, filepath.Join(data, "blocks"))
}

// e2eMetaRunStdin runs backy with stdin read from the file in.
func e2eMetaRunStdin(b *e2eBox, in string, args ...string) e2eRes {
	b.t.Helper()
	f, err := os.Open(in)
	if err != nil {
		b.t.Fatal(err)
	}
	defer f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), e2eCmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, e2eBin, args...)
	cmd.Dir, cmd.Env, cmd.Stdin = b.dir, b.env, f
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err = cmd.Run()
	r := e2eRes{args: args, stdout: so.String(), stderr: se.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
	} else if err != nil {
		b.t.Fatalf("running backy %q: %v", args, err)
	}
	e2eCheckRace(b.t, r)
	return r
}

// e2eMetaRebuild runs 'rebuild-metastore --json EXTRA...', which must
// succeed, and checks the result reports nothing unreadable.
func e2eMetaRebuild(s *e2eMetaStore, extra ...string) e2eMetaRebuildRes {
	s.t.Helper()
	r := s.ok(append([]string{"rebuild-metastore", "--json"}, extra...)...)
	res := e2eDecode[e2eMetaRebuildRes](s.t, r)
	if len(res.Unreadable) > 0 || res.Conflicts != 0 || res.OlderSnapshots != 0 {
		s.t.Errorf("rebuild-metastore: %+v, want no unreadable versions, no conflicts, no older snapshots\n%v", res, r)
	}
	return res
}

// e2eMetaUnused returns a version uid no store holds.
func e2eMetaUnused() string { return "V" + strings.Repeat("0", 19) + "1" }

// TestE2EMetaExportImport: an export of versions (labels, snapshot name,
// protection, expiry, statistics, last scrub) imported into a fresh
// metastore over the same data directory, and back into the store after
// the versions were removed, lists them with every field as the source
// did, the store's statistics agree, and they restore bit-identically;
// export to standard output writes the same bytes as -o, and import reads
// standard input.
func TestE2EMetaExportImport(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		fresh bool // import into a fresh metastore, else back after rm
		stdin bool
	}{
		{"fresh metastore", true, false},
		{"fresh metastore from stdin", true, true},
		{"same metastore after rm", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := e2eNewBox(t)
			a := e2eMetaNew(b, "a")
			// The metastore as init left it: no versions, same store.
			freshDB := b.path("fresh/backy.db")
			e2eWriteFile(t, freshDB, e2eReadFile(t, a.db))
			img1 := e2eMetaImage(t, b.path("one.img"), 40, []int{5, 6, 33}, 601)
			img2 := e2eEncChangeBlocks(t, img1, b.path("two.img"), []int{1, 20, 39}, "", 602)
			v1 := a.backup(img1, "vm-1", "--snapshot", "nightly", "--label", "host=pve1", "--label", "env=prod", "--expire", "2031-01-02")
			a.ok("protect", v1.UID)
			v2 := a.backup(img2, "vm-1", "--label", "k=v")
			a.ok("scrub", v2.UID)
			want := e2eMetaLs(a)
			wantStats := e2eMetaStatsOf(a)
			if w := want[v1.UID]; w["protected"] != true || w["expire"] != "2031-01-02T00:00:00Z" || w["snapshot"] != "nightly" ||
				!reflect.DeepEqual(w["labels"], map[string]any{"host": "pve1", "env": "prod"}) || w["bytes_sparse"] != float64(3*e2eEncBS) {
				t.Fatalf("the source version is not what the test set up: %v", w)
			}
			if want[v2.UID]["last_scrub"] == nil {
				t.Fatalf("the scrubbed version has no last_scrub: %v", want[v2.UID])
			}

			exp := b.path("versions.bkm")
			r := a.ok("export", v1.UID, v2.UID, "-o", exp, "--json")
			er := e2eDecode[e2eMetaExportRes](t, r)
			st, err := os.Stat(exp)
			if err != nil {
				t.Fatal(err)
			}
			if er.File != exp || !slices.Equal(er.Versions, []string{v1.UID, v2.UID}) || er.Bytes != st.Size() || er.Bytes == 0 {
				t.Errorf("export --json: %+v, want file %s, versions %s %s and its %d bytes", er, exp, v1.UID, v2.UID, st.Size())
			}
			if !bytes.HasPrefix(e2eReadFile(t, exp), []byte("BKYM\x01")) {
				t.Errorf("the export does not start with the magic BKYM and format 1")
			}
			// Standard output: the same bytes; an existing -o file is
			// kept without --force.
			if out := a.ok("export", v1.UID, v2.UID).stdout; out != string(e2eReadFile(t, exp)) {
				t.Errorf("export to standard output wrote %d bytes that differ from the %d of export -o", len(out), st.Size())
			}
			sum := e2eSHA(t, exp)
			a.fail(73, "export", v1.UID, "-o", exp)
			if e2eSHA(t, exp) != sum {
				t.Error("export without --force replaced the existing file")
			}
			if r := a.ok("export", v1.UID, v2.UID, "-o", exp, "--force"); strings.TrimSpace(r.stderr) != "" {
				t.Errorf("export --force printed on stderr:\n%v", r)
			}
			a.fail(66, "export", e2eMetaUnused())

			tgt := a
			if tc.fresh {
				// init refuses a data directory that holds a store.
				cfgX := e2eMetaConf(t, b.path("x.cfg"), b.path("x/backy.db"), a.data)
				r := b.fail(73, "-c", cfgX, "init", "--block-size", "65536")
				if !strings.Contains(r.stderr, "rebuild-metastore") {
					t.Errorf("init over an existing data directory should point at rebuild-metastore:\n%v", r)
				}
				if _, err := os.Stat(b.path("x/backy.db")); err == nil {
					t.Error("a refused init created a metastore")
				}
				cfgF := e2eMetaConf(t, b.path("fresh.cfg"), freshDB, a.data)
				tgt = &e2eMetaStore{e2eBox: e2eEncWithConfig(b, cfgF), db: freshDB, data: a.data}
				if uids := tgt.lsUIDs(); len(uids) != 0 {
					t.Fatalf("the fresh metastore lists %v", uids)
				}
			} else {
				a.ok("unprotect", v1.UID)
				a.ok("rm", v1.UID, v2.UID)
				if st := e2eMetaStatsOf(a); st.Versions != 0 || st.Unreferenced != wantStats.Blocks {
					t.Fatalf("after rm: %+v, want no versions and %d unreferenced blocks", st, wantStats.Blocks)
				}
			}
			var ir e2eRes
			if tc.stdin {
				ir = e2eMetaRunStdin(tgt.e2eBox, exp, "import", "--json")
				if ir.code != 0 {
					t.Fatalf("import from standard input:\n%v", ir)
				}
			} else {
				ir = tgt.ok("import", exp, "--json")
			}
			res := e2eDecode[e2eMetaImportRes](t, ir)
			if !slices.Equal(res.Versions, []string{v1.UID, v2.UID}) || res.Blocks != 80 || res.Records != 74 ||
				res.ObjectsChecked != res.Records || wantStats.Blocks != 40 {
				// Each version has 40 blocks, 3 of them empty; v2 shares
				// all but 3 of v1's 37 stored blocks. The stream holds
				// the records of each version's pages: 37 + 37.
				t.Errorf("import --json: %+v; want versions %s %s, 80 blocks, 74 records and objects checked (store: %d blocks, want 40)",
					res, v1.UID, v2.UID, wantStats.Blocks)
			}
			e2eMetaSameLs(t, "after import", e2eMetaLs(tgt), want)
			// import wrote the versions' metadata to the backend (after
			// rm it had none there).
			for _, v := range []e2eVersion{v1, v2} {
				if d := e2eMetaSnapDirs(t, a.data, v.UID); len(d) == 0 || (!tc.fresh && len(d) != 1) {
					t.Errorf("after import %s has snapshots %v in the data directory, want one", v.UID, d)
				}
			}
			if got := e2eMetaStatsOf(tgt); got != wantStats {
				t.Errorf("stats after import: %+v, want %+v", got, wantStats)
			}
			tgt.restore(v1.UID, img1)
			tgt.restore(v2.UID, img2)
			// Nothing the versions use is garbage; and the imported
			// versions protect their blocks as backed-up ones do.
			if cr := e2eDecode[e2eMetaCleanupRes](t, tgt.ok("cleanup", "--orphans", "--json")); cr.BlocksDeleted != 0 || cr.Orphans == nil || cr.Orphans.Objects != 0 {
				t.Errorf("cleanup after import deleted something: %+v %+v", cr, cr.Orphans)
			}
			tgt.ok("deep-scrub", "--all")
			tgt.restore(v2.UID, img2)
			// Protection is enforced as before.
			tgt.fail(64, "rm", v1.UID)
		})
	}
}

// TestE2EMetaRebuild: with the metastore file deleted, commands say to
// rebuild it; rebuild-metastore brings back every version with every
// field and the store's statistics; they restore bit-identically, scrub
// and deep-scrub clean, and a new backup of the same image deduplicates
// everything. A second rebuild of the healthy metastore is refused (73)
// and changes nothing; with --force it works and keeps the old file.
func TestE2EMetaRebuild(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	s := e2eMetaNew(b, "s")
	ext := e2eExt4(t, b.dir, "disk", 611)
	rnd := e2eMetaImage(t, b.path("rnd.img"), 30, []int{0, 29}, 612)
	v1 := s.backup(ext, "disk", "--snapshot", "nightly", "--label", "host=pve1", "--expire", "2031-01-02")
	s.ok("protect", v1.UID)
	v2 := s.backup(rnd, "rnd")
	ext2 := b.path("disk2.img")
	e2eCopy(t, ext, ext2)
	e2eScribble(t, ext2, 5*e2eMiB, e2eMiB+123, 613)
	v3 := s.backup(ext2, "disk", "--from", v1.UID)
	s.ok("scrub", "--all")
	want := e2eMetaLs(s)
	wantStats := s.ok("stats", "--json").stdout
	stats := e2eMetaStatsOf(s)

	if err := os.Remove(s.db); err != nil {
		t.Fatal(err)
	}
	r := s.fail(66, "ls")
	if !strings.Contains(r.stderr, "rebuild-metastore") {
		t.Errorf("without its metastore, ls should point at rebuild-metastore:\n%v", r)
	}
	res := e2eMetaRebuild(s)
	// block_records counts the records of every snapshot's pages, so a
	// block several versions use counts more than once.
	if res.Versions != 3 || res.BlockRecords < stats.Blocks || res.Blocks != 2*1024+30 || res.KeptAside != "" || res.OldProblem != "" {
		t.Errorf("rebuild-metastore: %+v, want 3 versions, %d blocks, at least %d block records, nothing kept aside", res, 2*1024+30, stats.Blocks)
	}
	// A scrub's outcome does not make a snapshot stale (docs/FORMAT.md,
	// metastore schema 3), so the scrub above is not in the backend.
	for uid, v := range want {
		if v["last_scrub"] == nil {
			t.Errorf("%s has no last_scrub before the rebuild", uid)
		}
	}
	e2eMetaSameLs(t, "after rebuild-metastore", e2eMetaLs(s), want, "last_scrub", "last_deep_scrub")
	if got := s.ok("stats", "--json").stdout; got != wantStats {
		t.Errorf("stats after rebuild-metastore:\n%s\nwant\n%s", got, wantStats)
	}
	s.restore(v1.UID, ext)
	s.restore(v2.UID, rnd)
	s.restore(v3.UID, ext2)
	s.ok("scrub", "--all")
	s.ok("deep-scrub", "--all")
	for _, v := range []e2eVersion{v1, v2} {
		if got := s.version(v.UID); got.Status != "valid" {
			t.Errorf("after scrubs %s is %q", v.UID, got.Status)
		}
	}
	// The block records and reference counts are back: nothing is
	// stored again, nothing is garbage.
	for _, src := range []struct{ img, vol string }{{ext, "disk"}, {rnd, "rnd"}, {ext2, "disk"}} {
		if v := s.backup(src.img, src.vol); v.BytesWritten != 0 {
			t.Errorf("a backup of %s after the rebuild wrote %d bytes, want 0", src.img, v.BytesWritten)
		}
	}
	if cr := e2eDecode[e2eMetaCleanupRes](t, s.ok("cleanup", "--orphans", "--json")); cr.BlocksDeleted != 0 || cr.Orphans == nil || cr.Orphans.Objects != 0 {
		t.Errorf("cleanup --orphans after the rebuild deleted something: %+v %+v", cr, cr.Orphans)
	}

	// A healthy metastore is refused, and stays as it was.
	before := e2eMetaStateOf(s)
	r = s.fail(73, "rebuild-metastore")
	if !strings.Contains(r.stderr, "--force") {
		t.Errorf("the refusal should mention --force:\n%v", r)
	}
	e2eMetaSame(t, "a refused rebuild-metastore", s, before)
	if m, _ := filepath.Glob(s.db + ".replaced-*"); len(m) != 0 {
		t.Errorf("a refused rebuild kept %v aside", m)
	}
	want = e2eMetaLs(s)
	oldDB := e2eSHA(t, s.db)
	res = e2eMetaRebuild(s, "--force")
	if res.Versions != 6 || res.OldProblem != "" || !strings.HasPrefix(res.KeptAside, s.db+".replaced-") {
		t.Errorf("rebuild-metastore --force: %+v, want 6 versions and the old metastore kept as %s.replaced-*", res, s.db)
	}
	if res.KeptAside != "" {
		if got := e2eSHA(t, res.KeptAside); got != oldDB {
			t.Errorf("the metastore kept aside as %s is not the old one", res.KeptAside)
		}
	}
	e2eMetaSameLs(t, "after rebuild-metastore --force", e2eMetaLs(s), want, "last_scrub", "last_deep_scrub")
	s.restore(v1.UID, ext)
	s.ok("deep-scrub", "--all")

	// A damaged metastore is rebuilt without --force, and kept aside.
	garbage := bytes.Repeat([]byte("not a metastore "), 1024)
	e2eWriteFile(t, s.db, garbage)
	s.fail(70, "ls")
	res = e2eMetaRebuild(s)
	if res.Versions != 6 || res.OldProblem == "" || res.KeptAside == "" {
		t.Errorf("rebuild-metastore of a damaged metastore: %+v, want 6 versions, the problem named and the old file kept aside", res)
	} else if !bytes.Equal(e2eReadFile(t, res.KeptAside), garbage) {
		t.Errorf("%s is not the damaged metastore", res.KeptAside)
	}
	e2eMetaSameLs(t, "after rebuilding a damaged metastore", e2eMetaLs(s), want, "last_scrub", "last_deep_scrub")
	s.restore(v3.UID, ext2)
}

// TestE2EMetaDefaultStoreLost: the default store ($BACKY_HOME) whose
// metastore is gone is not silently replaced by a new, empty store: 73,
// pointing at rebuild-metastore, which brings the version back.
func TestE2EMetaDefaultStoreLost(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	img := b.path("disk.img")
	e2eRandomFile(t, img, 9*e2eMiB+77, 681)
	v := b.backup(img, "vol")
	db := filepath.Join(b.home, "backy.db")
	if err := os.Remove(db); err != nil {
		t.Fatal(err)
	}
	data := e2eEncSnap(t, b.dataDir())
	for _, args := range [][]string{{"ls"}, {"backup", img, "vol"}} {
		r := b.fail(73, args...)
		if !strings.Contains(r.stderr, "rebuild-metastore") {
			t.Errorf("the message should point at rebuild-metastore:\n%v", r)
		}
	}
	if _, err := os.Stat(db); err == nil {
		t.Error("a refused command created a new metastore over the existing data")
	}
	e2eEncSameSnap(t, "commands without a metastore", b.dataDir(), data)
	b.ok("rebuild-metastore")
	if uids := b.lsUIDs(); !slices.Equal(uids, []string{v.UID}) {
		t.Fatalf("after the rebuild ls lists %v, want %s", uids, v.UID)
	}
	b.restore(v.UID, img)
}

// TestE2EMetaImportRefused: exports that are truncated, tampered with, of
// a newer format, of another store or of versions that exist are refused
// with their exit code and one line, and leave the metastore file, the
// listing, the statistics and the data directory as they were; the intact
// export then imports.
func TestE2EMetaImportRefused(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	s := e2eMetaNew(b, "s")
	img1 := e2eMetaImage(t, b.path("one.img"), 24, []int{3}, 621)
	img2 := e2eEncChangeBlocks(t, img1, b.path("two.img"), []int{0, 7, 8, 23}, "", 622)
	v1 := s.backup(img1, "vol")
	v2 := s.backup(img2, "vol", "--label", "a=b")
	exp2 := b.path("v2.bkm")
	both := b.path("both.bkm")
	s.ok("export", v2.UID, "-o", exp2)
	s.ok("export", v1.UID, v2.UID, "-o", both)
	s.ok("rm", v2.UID)
	good := e2eReadFile(t, exp2)
	n := len(good)

	// Exports of other stores: same block size, and another one.
	other := e2eMetaNew(b, "other")
	w := other.backup(img1, "vol")
	otherExp := b.path("other.bkm")
	other.ok("export", w.UID, "-o", otherExp)
	bigCfg := e2eEncConf(t, b.path("big128.cfg"), b.path("big128"))
	b.ok("-c", bigCfg, "init", "--block-size", "131072")
	big128 := e2eEncWithConfig(b, bigCfg)
	w128 := big128.backup(img1, "vol")
	big128Exp := b.path("big128.bkm")
	big128.ok("export", w128.UID, "-o", big128Exp)

	mutate := func(name string, fn func([]byte) []byte) string {
		p := b.path(name)
		e2eWriteFile(t, p, fn(slices.Clone(good)))
		return p
	}
	type tcase struct {
		name string
		file string
		code int
		want string // in the message
	}
	var cases []tcase
	for _, cut := range []int{0, 3, 5, 40, n / 3, n / 2, n - 33, n - 1} {
		cases = append(cases, tcase{fmt.Sprintf("truncated to %d of %d bytes", cut, n),
			mutate(fmt.Sprintf("cut-%d.bkm", cut), func(b []byte) []byte { return b[:cut] }), 65, ""})
	}
	cases = append(cases,
		tcase{"one byte flipped in the middle", mutate("flipped.bkm", func(b []byte) []byte { b[n/2] ^= 0x10; return b }), 65, ""},
		tcase{"a byte flipped in the checksum", mutate("flipped-sum.bkm", func(b []byte) []byte { b[n-5] ^= 0x01; return b }), 65, ""},
		tcase{"trailing garbage", mutate("trailing.bkm", func(b []byte) []byte { return append(b, 0) }), 65, ""},
		tcase{"not an export", mutate("text.bkm", func([]byte) []byte { return []byte("hello, world\n") }), 65, ""},
		tcase{"newer format", mutate("newer.bkm", func(b []byte) []byte { b[4] = 2; return b }), 79, ""},
		tcase{"another store", otherExp, 65, "another store"},
		tcase{"another store of another block size", big128Exp, 65, "another store"},
		tcase{"a version that exists", both, 73, v1.UID},
	)
	before := e2eMetaStateOf(s)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := &e2eMetaStore{e2eBox: s.with(t), db: s.db, data: s.data}
			for _, args := range [][]string{{"import", tc.file}, {"import", tc.file, "--no-verify"}} {
				r := s.fail(tc.code, args...)
				if !strings.Contains(r.stderr, tc.want) {
					t.Errorf("the message should contain %q:\n%v", tc.want, r)
				}
				if r.stdout != "" {
					t.Errorf("a refused import printed on stdout:\n%v", r)
				}
			}
			e2eMetaSame(t, "a refused import", s, before)
		})
	}
	// Refused too: a file that does not exist.
	s.fail(66, "import", b.path("no-such.bkm"))

	// The intact export imports.
	res := e2eDecode[e2eMetaImportRes](t, s.ok("import", exp2, "--json"))
	if !slices.Equal(res.Versions, []string{v2.UID}) {
		t.Fatalf("import: %+v", res)
	}
	if got := s.version(v2.UID); got.Labels["a"] != "b" || got.Status != "valid" {
		t.Errorf("the imported version: %+v", got)
	}
	s.restore(v2.UID, img2)
	s.restore(v1.UID, img1)
	// And once it is there, again: 73, nothing changed.
	before = e2eMetaStateOf(s)
	s.fail(73, "import", exp2)
	e2eMetaSame(t, "importing an existing version", s, before)
}

// TestE2EMetaImportMissingObjects: an import naming objects that are no
// longer in the data directory is refused (70, one line naming the count)
// and changes nothing; with --no-verify it is accepted, and scrub then
// finds the damage (80) and marks the version invalid, while the other
// version still restores.
func TestE2EMetaImportMissingObjects(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	s := e2eMetaNew(b, "s")
	img1 := e2eMetaImage(t, b.path("one.img"), 24, nil, 631)
	img2 := e2eEncChangeBlocks(t, img1, b.path("two.img"), []int{2, 9, 15, 22}, "", 632)
	v1 := s.backup(img1, "vol")
	blocks1 := e2eMetaBlockFiles(t, s.data)
	v2 := s.backup(img2, "vol")
	var unique []string // the objects only v2 uses
	for _, f := range e2eMetaBlockFiles(t, s.data) {
		if !slices.Contains(blocks1, f) {
			unique = append(unique, f)
		}
	}
	if len(unique) != 4 {
		t.Fatalf("the second backup stored %d objects, want 4", len(unique))
	}
	exp := b.path("v2.bkm")
	s.ok("export", v2.UID, "-o", exp)
	s.ok("rm", v2.UID) // its records stay until cleanup
	for _, f := range unique[:3] {
		if err := os.Remove(filepath.Join(s.data, "blocks", f)); err != nil {
			t.Fatal(err)
		}
	}
	before := e2eMetaStateOf(s)
	r := s.fail(70, "import", exp)
	if !strings.Contains(r.stderr, "3 object(s)") {
		t.Errorf("the message should count the 3 missing objects:\n%v", r)
	}
	e2eMetaSame(t, "an import with missing objects", s, before)

	res := e2eDecode[e2eMetaImportRes](t, s.ok("import", exp, "--no-verify", "--json"))
	if !slices.Equal(res.Versions, []string{v2.UID}) || res.ObjectsChecked != 0 {
		t.Errorf("import --no-verify: %+v, want %s and no objects checked", res, v2.UID)
	}
	if got := s.version(v2.UID); got.Status != "valid" {
		t.Errorf("right after import --no-verify %s is %q, want valid (nothing checked yet)", v2.UID, got.Status)
	}
	s.fail(80, "scrub", "--all")
	if got := s.version(v2.UID); got.Status != "invalid" {
		t.Errorf("after scrub %s is %q, want invalid", v2.UID, got.Status)
	}
	if got := s.version(v1.UID); got.Status != "valid" {
		t.Errorf("after scrub %s is %q, want valid", v1.UID, got.Status)
	}
	s.restore(v1.UID, img1)
	s.fail(70, "restore", v2.UID, b.path("v2.img"))
}

// TestE2EMetaRestoreFromBackend: with the metastore file deleted, restore
// --from-backend restores an encrypted store's versions bit-identically
// and creates no metastore; with a wrong key it fails (77) and writes no
// target; an unknown version is 66.
func TestE2EMetaRestoreFromBackend(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		kind  string
		lines []string
	}{
		{"aes key", "key", []string{"encryption_version = 1"}},
		{"chacha key file zstd", "key_file", []string{"encryption_version = 2", "encryption_cipher = " + e2eEncChaCha, "compression = zstd"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := e2eNewBox(t)
			key := e2eEncNewMat(t, b.dir, tc.kind, 641)
			s := e2eMetaNew(b, "s", append(tc.lines, key.line())...)
			img1 := b.path("mixed.img")
			marker := e2eEncMarker(t, "FB")
			e2eEncMixedImage(t, img1, marker, 642)
			img2 := e2eEncChangeBlocks(t, img1, b.path("two.img"), []int{1, 4}, marker, 643)
			v1 := s.backup(img1, "vol", "--label", "x=y")
			v2 := s.backup(img2, "vol")
			if hits := e2eEncGrep(t, filepath.Join(s.data, "versions"), []byte(marker), []byte(`"labels"`), []byte(`"volume"`)); len(hits) > 0 {
				t.Errorf("version metadata in the clear in the data directory: %s", e2eEncFew(hits))
			}
			if err := os.Remove(s.db); err != nil {
				t.Fatal(err)
			}
			s.fail(66, "restore", v1.UID, b.path("plain.img"))
			// What the backend holds, without a metastore.
			listed := e2eDecode[[]e2eVersion](t, s.ok("ls", "--from-backend", "--json"))
			if len(listed) != 2 || listed[0].UID != v1.UID || listed[1].UID != v2.UID || listed[0].Labels["x"] != "y" {
				t.Errorf("ls --from-backend = %+v, want %s (labelled x=y) and %s", listed, v1.UID, v2.UID)
			}
			// A volume without versions in the backend: 66, as for ls.
			if r := s.run("ls", "--from-backend", "--json", "no-such-volume"); r.code != exitNotFound || r.stdout != "" {
				t.Errorf("ls --from-backend of a volume with no versions:\n%v", r)
			}
			for _, c := range []struct {
				uid, img string
			}{{v1.UID, img1}, {v2.UID, img2}} {
				out := b.path("from-backend-" + c.uid + ".img")
				s.ok("restore", "--from-backend", c.uid, out)
				e2eSameFile(t, out, c.img)
			}
			if _, err := os.Stat(s.db); err == nil {
				t.Error("restore --from-backend created a metastore")
			}
			// A wrong key.
			wrong := e2eEncNewMat(t, b.dir, tc.kind, 644)
			cfgBad := e2eMetaConf(t, b.path("bad.cfg"), s.db, s.data, append(tc.lines, wrong.line())...)
			data := e2eEncSnap(t, s.data)
			out := b.path("wrong-key.img")
			r := b.fail(77, "-c", cfgBad, "restore", "--from-backend", v1.UID, out)
			e2eEncNoSecrets(t, r, key, wrong)
			if _, err := os.Stat(out); err == nil {
				t.Error("a restore with a wrong key left its target")
			}
			// No key at all.
			cfgNone := e2eMetaConf(t, b.path("none.cfg"), s.db, s.data)
			b.fail(77, "-c", cfgNone, "restore", "--from-backend", v1.UID, out)
			// Unknown versions.
			r = s.fail(66, "restore", "--from-backend", e2eMetaUnused(), out)
			if !strings.Contains(r.stderr, "versions/") {
				t.Errorf("the message should say where the backend's versions are:\n%v", r)
			}
			s.fail(66, "restore", "--from-backend", "not-a-version", out)
			if _, err := os.Stat(out); err == nil {
				t.Error("a failed restore left its target")
			}
			e2eEncSameSnap(t, "restore --from-backend", s.data, data)
			if _, err := os.Stat(s.db); err == nil {
				t.Error("restore --from-backend created a metastore")
			}
			// And the metastore comes back with the key.
			if res := e2eMetaRebuild(s); res.Versions != 2 {
				t.Errorf("rebuild-metastore: %+v, want 2 versions", res)
			}
			s.restore(v2.UID, img2)
		})
	}
}

// TestE2EMetaCleanupKeepsBackendVersions: B is backed up after a copy of
// the metastore was taken, and the copy is put back, so the metastore does
// not know B but the backend does. cleanup and cleanup --orphans keep
// every object of B (the ones the metastore calls orphans, and the ones it
// thinks only its removed version A used) and say so; rebuild-metastore
// (refused without --force) brings B back, bit-identical.
func TestE2EMetaCleanupKeepsBackendVersions(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	s := e2eMetaNew(b, "s")
	imgA := e2eMetaImage(t, b.path("a.img"), 32, nil, 651)
	imgB := e2eEncChangeBlocks(t, imgA, b.path("b.img"), []int{2, 9, 20, 27}, "", 652)
	// A only: C shares with A what B does not (blocks 2 and 9).
	imgC := e2eEncChangeBlocks(t, imgA, b.path("c.img"), []int{20, 27}, "", 753)
	vA := s.backup(imgA, "vol")
	vC := s.backup(imgC, "other")
	oldDB := e2eReadFile(t, s.db)
	filesAC := e2eMetaBlockFiles(t, s.data)
	vB := s.backup(imgB, "vol", "--label", "only=backend")
	filesABC := e2eMetaBlockFiles(t, s.data)
	if len(filesABC) != len(filesAC)+4 {
		t.Fatalf("B stored %d objects, want 4", len(filesABC)-len(filesAC))
	}
	if len(e2eMetaSnapDirs(t, s.data, vB.UID)) != 1 {
		t.Fatalf("B has no snapshot in the data directory")
	}
	// The metastore as it was before B.
	e2eWriteFile(t, s.db, oldDB)
	if uids := s.lsUIDs(); !slices.Equal(uids, []string{vA.UID, vC.UID}) {
		t.Fatalf("the old metastore lists %v, want %s %s", uids, vA.UID, vC.UID)
	}

	cr := e2eDecode[e2eMetaCleanupRes](t, s.ok("cleanup", "--json"))
	if cr.BlocksDeleted != 0 {
		t.Errorf("cleanup: %+v, want nothing deleted", cr)
	}
	r := s.ok("cleanup", "--orphans", "--json")
	cr = e2eDecode[e2eMetaCleanupRes](t, r)
	if cr.BlocksDeleted != 0 || cr.Orphans == nil || cr.Orphans.Objects != 0 || cr.Orphans.Listed != int64(len(filesABC)) {
		t.Errorf("cleanup --orphans: %+v (orphans %+v), want %d objects listed and none deleted\n%v", cr, cr.Orphans, len(filesABC), r)
	}
	if !strings.Contains(r.stderr, vB.UID) {
		t.Errorf("cleanup should warn naming %s, the version only the backend knows:\n%v", vB.UID, r)
	}
	if got := e2eMetaBlockFiles(t, s.data); !slices.Equal(got, filesABC) {
		t.Fatalf("cleanup --orphans deleted %d objects of B", len(filesABC)-len(got))
	}
	t.Run("the orphan sweep counts what it keeps", func(t *testing.T) {
		if cr.Kept != 4 && (cr.Orphans == nil || cr.Orphans.Kept != 4) {
			t.Errorf("cleanup --orphans kept B's 4 objects the metastore does not know, but reports %+v (orphans %+v)", cr, cr.Orphans)
		}
	})

	// Without A (and C), the metastore thinks A's blocks are garbage;
	// those B uses are kept.
	s.ok("rm", vA.UID, vC.UID)
	cr = e2eDecode[e2eMetaCleanupRes](t, s.ok("cleanup", "--json"))
	// A and C stored 32+2 objects; B uses 28 of A's, so 6 may go.
	if cr.BlocksDeleted != 6 || cr.Kept != 28 {
		t.Errorf("cleanup after rm: %+v, want 6 deleted and B's 28 kept", cr)
	}
	cr = e2eDecode[e2eMetaCleanupRes](t, s.ok("cleanup", "--orphans", "--json"))
	if cr.BlocksDeleted != 0 || cr.Orphans == nil || cr.Orphans.Objects != 0 || cr.Kept < 28 {
		t.Errorf("cleanup --orphans after rm: %+v (orphans %+v), want nothing deleted and B's objects kept", cr, cr.Orphans)
	}
	if got := e2eMetaBlockFiles(t, s.data); len(got) != 32 {
		t.Errorf("after the cleanups the data directory holds %d objects, want B's 32", len(got))
	}

	// The old metastore is healthy: refused without --force.
	before := e2eMetaStateOf(s)
	s.fail(73, "rebuild-metastore")
	e2eMetaSame(t, "a refused rebuild-metastore", s, before)
	res := e2eMetaRebuild(s, "--force")
	if res.Versions != 1 || res.BlockRecords != 32 || res.KeptAside == "" {
		t.Errorf("rebuild-metastore --force: %+v, want B only, 32 records, the old metastore kept aside", res)
	}
	if _, err := os.Stat(res.KeptAside); err != nil {
		t.Errorf("the old metastore is not kept aside: %v", err)
	}
	if uids := s.lsUIDs(); !slices.Equal(uids, []string{vB.UID}) {
		t.Fatalf("after the rebuild ls lists %v, want %s", uids, vB.UID)
	}
	if got := s.version(vB.UID); got.Labels["only"] != "backend" || got.BytesWritten != vB.BytesWritten || got.Date != vB.Date {
		t.Errorf("B after the rebuild: %+v, want %+v", got, vB)
	}
	s.restore(vB.UID, imgB)
	s.ok("deep-scrub", "--all")
	cr = e2eDecode[e2eMetaCleanupRes](t, s.ok("cleanup", "--orphans", "--json"))
	if cr.BlocksDeleted != 0 || cr.Kept != 0 || cr.Orphans == nil || cr.Orphans.Objects != 0 {
		t.Errorf("cleanup --orphans after the rebuild: %+v (orphans %+v), want nothing to do", cr, cr.Orphans)
	}
	s.restore(vB.UID, imgB)
}

// TestE2EMetaRmDeletesSnapshots: each version has exactly one snapshot in
// the data directory, replaced by a new one when the version changes; rm
// and enforce delete the removed versions' snapshots and leave the
// others' alone; after rebuild-metastore the removed versions stay gone.
func TestE2EMetaRmDeletesSnapshots(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	s := e2eMetaNew(b, "s")
	img1 := e2eMetaImage(t, b.path("one.img"), 16, nil, 661)
	img2 := e2eEncChangeBlocks(t, img1, b.path("two.img"), []int{3}, "", 662)
	v1 := s.backup(img1, "a")
	v2 := s.backup(img2, "a")
	w1 := s.backup(img1, "b")
	w2 := s.backup(img2, "b")
	dirs := map[string][]string{}
	for _, v := range []e2eVersion{v1, v2, w1, w2} {
		d := e2eMetaSnapDirs(t, s.data, v.UID)
		if len(d) != 1 {
			t.Fatalf("%s has snapshots %v, want one", v.UID, d)
		}
		dirs[v.UID] = d
	}
	// A change writes a new snapshot and deletes the old one.
	s.ok("protect", v2.UID)
	if d := e2eMetaSnapDirs(t, s.data, v2.UID); len(d) != 1 || d[0] == dirs[v2.UID][0] {
		t.Errorf("after protect %s has snapshots %v, want one other than %v", v2.UID, d, dirs[v2.UID])
	} else {
		dirs[v2.UID] = d
	}
	s.ok("unprotect", v2.UID)
	dirs[v2.UID] = e2eMetaSnapDirs(t, s.data, v2.UID)

	others := func(gone ...string) map[string][]string {
		out := map[string][]string{}
		for uid := range dirs {
			if !slices.Contains(gone, uid) {
				out[uid] = e2eMetaSnapDirs(t, s.data, uid)
			}
		}
		return out
	}
	s.ok("rm", v1.UID)
	if f := e2eMetaFiles(t, filepath.Join(s.data, "versions", strings.ToLower(v1.UID))); len(f) != 0 {
		t.Errorf("after rm %s the data directory holds its snapshot objects %v", v1.UID, f)
	}
	r := s.ok("enforce", "latest1", "b", "--json")
	if !strings.Contains(r.stdout, w1.UID) || s.lsUIDs()[1] != w2.UID {
		t.Fatalf("enforce latest1 b should remove %s:\n%v", w1.UID, r)
	}
	if f := e2eMetaFiles(t, filepath.Join(s.data, "versions", strings.ToLower(w1.UID))); len(f) != 0 {
		t.Errorf("after enforce removed %s the data directory holds its snapshot objects %v", w1.UID, f)
	}
	want := map[string][]string{v2.UID: dirs[v2.UID], w2.UID: dirs[w2.UID]}
	if got := others(v1.UID, w1.UID); !reflect.DeepEqual(got, want) {
		t.Errorf("the remaining versions' snapshots are %v, want %v", got, want)
	}

	if err := os.Remove(s.db); err != nil {
		t.Fatal(err)
	}
	if res := e2eMetaRebuild(s); res.Versions != 2 {
		t.Errorf("rebuild-metastore: %+v, want 2 versions", res)
	}
	if uids := s.lsUIDs(); !slices.Equal(uids, []string{v2.UID, w2.UID}) {
		t.Errorf("after the rebuild ls lists %v, want %s %s (the removed ones stay gone)", uids, v2.UID, w2.UID)
	}
	s.restore(v2.UID, img2)
	s.restore(w2.UID, img2)
	s.fail(66, "restore", "--from-backend", v1.UID, b.path("gone.img"))
}

// TestE2EMetaS3Rebuild: on an S3 store, the versions' metadata is in the
// bucket; with the metastore deleted, restore --from-backend and
// rebuild-metastore work from the bucket alone, and the versions restore
// bit-identically.
func TestE2EMetaS3Rebuild(t *testing.T) {
	t.Parallel()
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)
	b := e2eNewBox(t)
	const prefix = "meta/backy"
	b.useS3(srv, bucket, prefix, "compression = zstd\nencryption_version = 1\nencryption_key = "+hex.EncodeToString(e2eRandom(32, 671))+"\n", "")
	b.ok("init", "--block-size", "65536")
	img1 := e2eMetaImage(t, b.path("one.img"), 48, []int{10, 11}, 672)
	img2 := e2eEncChangeBlocks(t, img1, b.path("two.img"), []int{0, 30}, "", 673)
	v1 := b.backup(img1, "vol", "--label", "on=s3")
	b.ok("protect", v1.UID)
	v2 := b.backup(img2, "vol")
	s := &e2eMetaStore{e2eBox: b, db: b.path("backy-s3.cfg.meta/backy.db")}
	want := e2eMetaLs(s)
	stats := s.ok("stats", "--json").stdout
	for _, v := range []e2eVersion{v1, v2} {
		if keys := e2eS3Objects(t, srv, bucket, prefix+"/versions/"+strings.ToLower(v.UID)+"/"); len(keys) == 0 {
			t.Errorf("no snapshot of %s in the bucket", v.UID)
		}
	}

	if err := os.Remove(s.db); err != nil {
		t.Fatal(err)
	}
	out := b.path("from-backend.img")
	b.ok("restore", "--from-backend", v2.UID, out)
	e2eSameFile(t, out, img2)
	res := e2eMetaRebuild(s)
	if res.Versions != 2 {
		t.Errorf("rebuild-metastore: %+v, want 2 versions", res)
	}
	e2eMetaSameLs(t, "after rebuild-metastore", e2eMetaLs(s), want)
	if got := s.ok("stats", "--json").stdout; got != stats {
		t.Errorf("stats after rebuild-metastore:\n%s\nwant\n%s", got, stats)
	}
	b.restore(v1.UID, img1)
	b.restore(v2.UID, img2)
	if v := b.backup(img2, "vol"); v.BytesWritten != 0 {
		t.Errorf("a backup after the rebuild wrote %d bytes, want 0", v.BytesWritten)
	}
	b.ok("deep-scrub", "--all")
}
