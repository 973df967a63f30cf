package main

// End-to-end tests of scrub and deep-scrub: exit codes, JSON output,
// damage recorded and healed, and 'ls' showing the last scrub.

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// e2eScrubResult is scrub's --json output.
type e2eScrubResult struct {
	Kind     string `json:"kind"`
	Percent  float64
	Versions []struct {
		UID           string `json:"uid"`
		Status        string `json:"status"`
		OK            bool   `json:"ok"`
		BlocksChecked int64  `json:"blocks_checked"`
		BlocksBad     int64  `json:"blocks_bad"`
	} `json:"versions"`
	BlocksChecked int64 `json:"blocks_checked"`
	Failures      []struct {
		Version string `json:"version"`
		Index   int64  `json:"index"`
		ID      string `json:"id"`
		Kind    string `json:"kind"`
	} `json:"failures"`
	FailuresTotal int64 `json:"failures_total"`
	Differences   []struct {
		Version string `json:"version"`
		Index   int64  `json:"index"`
		Kind    string `json:"kind"`
	} `json:"differences"`
	DifferencesTotal int64    `json:"differences_total"`
	InvalidVersions  []string `json:"invalid_versions"`
	BlocksHealed     int64    `json:"blocks_healed"`
	ValidVersions    []string `json:"valid_versions"`
}

type e2eScrubVersion struct {
	UID       string `json:"uid"`
	Status    string `json:"status"`
	LastScrub *struct {
		Kind          string  `json:"kind"`
		Percent       float64 `json:"percent"`
		OK            bool    `json:"ok"`
		BlocksChecked int64   `json:"blocks_checked"`
		BlocksBad     int64   `json:"blocks_bad"`
	} `json:"last_scrub"`
}

func e2eScrubLs(b *e2eBox) map[string]e2eScrubVersion {
	b.t.Helper()
	out := map[string]e2eScrubVersion{}
	for _, v := range e2eDecode[[]e2eScrubVersion](b.t, b.ok("ls", "--json")) {
		out[v.UID] = v
	}
	return out
}

// e2eScrubObjects lists the block object files of the default store.
func e2eScrubObjects(t *testing.T, b *e2eBox) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(filepath.Join(b.dataDir(), "blocks"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			out = append(out, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

// e2eScrubJSONFail runs backy, which must exit 80 with one JSON error line
// on stderr.
func e2eScrubJSONFail(b *e2eBox, args ...string) e2eRes {
	b.t.Helper()
	r := b.run(args...)
	if r.code != 80 || len(e2eLines(r.stderr)) != 1 || !strings.HasPrefix(r.stderr, `{"error":`) {
		b.t.Fatalf("want exit 80 and one JSON error line:\n%v", r)
	}
	return r
}

func TestScrubE2E(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	// 4 data blocks and a sparse one (4 MiB blocks), two volumes sharing them.
	img := b.path("disk.img")
	e2eRandomFile(t, img, 18*e2eMiB, 71)
	e2eWriteAt(t, img, 8*e2eMiB, make([]byte, 4*e2eMiB))
	v1 := b.backup(img, "vol")
	v2 := b.backup(img, "other")

	// Usage and selection errors.
	b.fail(64, "scrub")
	b.fail(64, "scrub", "--all", v1.UID)
	b.fail(64, "deep-scrub", "--all", "--source", img)
	b.fail(64, "scrub", "--all", "--percent", "0")
	b.fail(66, "scrub", "V000000000000000000000")
	b.fail(66, "scrub", "--volume", "nope")

	r := e2eDecode[e2eScrubResult](t, b.ok("scrub", "--all", "--json"))
	if r.Kind != "scrub" || len(r.Versions) != 2 || r.BlocksChecked != 4 || r.FailuresTotal != 0 || len(r.Failures) != 0 {
		t.Fatalf("clean scrub: %+v", r)
	}
	for _, v := range e2eScrubLs(b) {
		if v.LastScrub == nil || v.LastScrub.Kind != "scrub" || !v.LastScrub.OK || v.LastScrub.BlocksChecked != 4 {
			t.Errorf("ls after a clean scrub: %+v", v)
		}
	}
	out := b.ok("ls").stdout
	if !strings.Contains(out, "LAST SCRUB") || !strings.Contains(out, " ok") {
		t.Errorf("ls does not show the last scrub:\n%s", out)
	}
	b.ok("deep-scrub", v1.UID, "--source", img)

	// Damage: one object truncated, one with a flipped byte.
	objs := e2eScrubObjects(t, b)
	if len(objs) != 4 {
		t.Fatalf("%d objects, want 4", len(objs))
	}
	saved := map[string][]byte{}
	for _, p := range objs[:2] {
		saved[p] = e2eReadFile(t, p)
	}
	if err := os.Truncate(objs[0], int64(len(saved[objs[0]])-10)); err != nil {
		t.Fatal(err)
	}
	flipped := slices.Clone(saved[objs[1]])
	flipped[len(flipped)-100] ^= 1
	e2eWriteFile(t, objs[1], flipped)

	res := e2eScrubJSONFail(b, "scrub", "--volume", "vol", "--json")
	r = e2eDecode[e2eScrubResult](t, res)
	if r.FailuresTotal != 1 || len(r.Failures) != 1 || r.Failures[0].Kind != "corrupt" {
		t.Fatalf("scrub of a truncated object: %+v", r)
	}
	if !slices.Contains(r.InvalidVersions, v1.UID) || !slices.Contains(r.InvalidVersions, v2.UID) {
		t.Errorf("invalid versions %v, want both (they share the block)", r.InvalidVersions)
	}
	if !strings.Contains(res.stderr, `"exit_code":80`) {
		t.Errorf("JSON error line: %s", res.stderr)
	}
	ls := e2eScrubLs(b)
	if ls[v1.UID].Status != "invalid" || ls[v2.UID].Status != "invalid" {
		t.Errorf("statuses after the scrub: %+v", ls)
	}
	if ls[v1.UID].LastScrub == nil || ls[v1.UID].LastScrub.OK || ls[v1.UID].LastScrub.BlocksBad != 1 {
		t.Errorf("last scrub of %s: %+v", v1.UID, ls[v1.UID].LastScrub)
	}
	if ls[v2.UID].LastScrub == nil || !ls[v2.UID].LastScrub.OK {
		t.Errorf("the other volume's last scrub changed: %+v", ls[v2.UID].LastScrub)
	}

	res = b.fail(80, "deep-scrub", "--all")
	if !strings.Contains(res.stdout, "DAMAGED") || strings.Count(res.stdout, "  corrupt  ") != 2 {
		t.Errorf("deep-scrub table should list both damaged blocks:\n%v", res)
	}
	r = e2eDecode[e2eScrubResult](t, e2eScrubJSONFail(b, "deep-scrub", v2.UID, "--json"))
	if r.FailuresTotal != 2 || r.Versions[0].BlocksBad != 2 {
		t.Errorf("deep-scrub --json: %+v", r)
	}

	// Repair the objects: a deep-scrub makes blocks and versions valid.
	for p, data := range saved {
		e2eWriteFile(t, p, data)
	}
	r = e2eDecode[e2eScrubResult](t, b.ok("deep-scrub", "--all", "--json"))
	if r.BlocksHealed != 2 || len(r.ValidVersions) != 2 {
		t.Errorf("deep-scrub after the repair: %+v", r)
	}
	for _, v := range e2eScrubLs(b) {
		if v.Status != "valid" || v.LastScrub == nil || v.LastScrub.Kind != "deep-scrub" || !v.LastScrub.OK {
			t.Errorf("after the repair: %+v", v)
		}
	}
	b.restore(v1.UID, img)

	// A source that differs in a sparse block.
	other := b.path("other.img")
	e2eCopy(t, img, other)
	e2eWriteAt(t, other, 9*e2eMiB, []byte("not zero"))
	res = b.run("deep-scrub", v1.UID, "--source", other, "--json")
	r = e2eDecode[e2eScrubResult](t, res)
	if res.code != 65 || r.FailuresTotal != 0 || r.DifferencesTotal != 1 || r.Differences[0].Kind != "source" || r.Differences[0].Index != 2 || len(r.InvalidVersions) != 0 {
		t.Errorf("deep-scrub against a changed source: %+v\n%v", r, res)
	}
	b.fail(65, "deep-scrub", v1.UID, "--source", objs[2])

	// A sample.
	r = e2eDecode[e2eScrubResult](t, b.ok("deep-scrub", "--all", "--percent", "50", "--json"))
	if r.Percent != 50 || r.BlocksChecked > 4 {
		t.Errorf("50%% sample: %+v", r)
	}
	if ls := e2eScrubLs(b); ls[v1.UID].LastScrub.Percent != 50 {
		t.Errorf("last scrub percent: %+v", ls[v1.UID].LastScrub)
	}
}

// TestScrubE2EKeys: a deep-scrub of encrypted blocks without their key
// exits 77 before reading; a scrub needs no key.
func TestScrubE2EKeys(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	store := b.path("store")
	key := e2eEncNewMat(t, b.dir, "key_file", 72)
	plain := e2eEncConf(t, b.path("plain.cfg"), store)
	enc := e2eEncConf(t, b.path("enc.cfg"), store, "encryption_version = 1", key.line())
	b.ok("-c", plain, "init", "--block-size", "65536")
	img := b.path("disk.img")
	e2eRandomFile(t, img, 8*65536, 73)
	v := e2eDecode[e2eVersion](t, b.ok("-c", enc, "backup", img, "vol", "--json"))
	r := b.fail(77, "-c", plain, "deep-scrub", v.UID)
	if !strings.Contains(r.stderr, "encryption version 1") {
		t.Errorf("the message should name the encryption version:\n%v", r)
	}
	b.ok("-c", plain, "scrub", v.UID)
	b.ok("-c", enc, "deep-scrub", v.UID)
}
