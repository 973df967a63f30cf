package main

// End-to-end tests of issue 13's scrub items: the sampling rotation of
// --percent (item 24), a difference from the source as its own result
// (item 25), and what 'ls' and the scrub table show (item 30: the last
// deep-scrub kept, "none sampled", rows in order).

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
)

// e2eScrubWindow is the rotation window of scrub's --json output.
type e2eScrubWindow struct {
	Window *struct {
		From float64 `json:"from"`
		To   float64 `json:"to"`
	} `json:"window"`
	Versions []struct {
		UID           string `json:"uid"`
		Result        string `json:"result"`
		BlocksChecked int64  `json:"blocks_checked"`
	} `json:"versions"`
	BlocksChecked int64 `json:"blocks_checked"`
}

// e2eScrubRecord is a version's last_scrub or last_deep_scrub.
type e2eScrubRecord struct {
	Kind            string  `json:"kind"`
	Percent         float64 `json:"percent"`
	OK              bool    `json:"ok"`
	BlocksChecked   int64   `json:"blocks_checked"`
	BlocksBad       int64   `json:"blocks_bad"`
	BlocksDiffering int64   `json:"blocks_differing"`
}

type e2eScrubVersion13 struct {
	UID           string          `json:"uid"`
	Status        string          `json:"status"`
	LastScrub     *e2eScrubRecord `json:"last_scrub"`
	LastDeepScrub *e2eScrubRecord `json:"last_deep_scrub"`
}

func e2eScrubLs13(b *e2eBox) map[string]e2eScrubVersion13 {
	b.t.Helper()
	out := map[string]e2eScrubVersion13{}
	for _, v := range e2eDecode[[]e2eScrubVersion13](b.t, b.ok("ls", "--json")) {
		out[v.UID] = v
	}
	return out
}

// e2eLsRow returns the 'ls' table line of version uid.
func e2eLsRow(t *testing.T, b *e2eBox, uid string) string {
	t.Helper()
	for _, l := range e2eLines(b.ok("ls").stdout) {
		if strings.HasPrefix(l, uid) {
			return l
		}
	}
	t.Fatalf("ls does not list %s", uid)
	return ""
}

// TestScrubE2ERotation: the maintenance unit's nightly
// 'deep-scrub --all --percent 5' reads every block once in 20 nights: the
// windows of the 20 runs tile the rotation, their blocks add up to the
// store's, and the 21st run starts again where the first did.
func TestScrubE2ERotation(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	b.ok("init", "--block-size", "65536")
	img := b.path("disk.img")
	e2eRandomFile(t, img, 400*65536, 91)
	b.backup(img, "vol")
	var sum int64
	next := 0.0
	for run := range 21 {
		r := e2eDecode[e2eScrubWindow](t, b.ok("deep-scrub", "--all", "--percent", "5", "--json"))
		if r.Window == nil {
			t.Fatalf("run %d: no rotation window in the output", run)
		}
		if d := r.Window.From - next; d > 1e-9 || d < -1e-9 {
			t.Errorf("run %d starts at %v%%, want %v%%", run, r.Window.From, next)
		}
		next = r.Window.To
		if next > 99.999999 {
			next = 0
		}
		if run < 20 {
			sum += r.BlocksChecked
		}
	}
	if sum != 400 {
		t.Errorf("20 runs at 5%% checked %d blocks in all, want each of the 400 once", sum)
	}
	out := b.ok("deep-scrub", "--all", "--percent", "5").stdout
	if !strings.Contains(out, "5% sample: 5% to 10% of the rotation") {
		t.Errorf("the summary should say which part of the rotation was checked:\n%s", out)
	}
}

// TestScrubE2ESourceDiffers: 'deep-scrub V --source S' of an intact
// version against a source that changed reports DIFFERS (exit 65), marks
// nothing invalid and says so, and 'ls' shows nothing bad; the same
// source compared again after it is put back is "ok".
func TestScrubE2ESourceDiffers(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	b.ok("init", "--block-size", "65536")
	img := b.path("disk.img")
	e2eRandomFile(t, img, 16*65536, 92)
	v := b.backup(img, "vol")
	changed := b.path("changed.img")
	e2eCopy(t, img, changed)
	for _, blk := range []int64{1, 5, 9} {
		e2eWriteAt(t, changed, blk*65536+7, []byte("changed"))
	}
	r := b.fail(65, "deep-scrub", v.UID, "--source", changed)
	if !strings.Contains(r.stdout, "DIFFERS") || strings.Contains(r.stdout, "DAMAGED") {
		t.Errorf("the table should say DIFFERS, not DAMAGED:\n%v", r)
	}
	if !strings.Contains(r.stderr, "differs") || !strings.Contains(r.stderr, "nothing was marked invalid") ||
		strings.Contains(r.stderr, "are marked invalid") || strings.Contains(r.stderr, "damage") {
		t.Errorf("the message should say the version differs and nothing was marked:\n%v", r)
	}
	if !strings.Contains(r.stdout, "3 block(s) differ from the source") {
		t.Errorf("the summary should count the differences:\n%v", r)
	}
	ls := e2eScrubLs13(b)[v.UID]
	if ls.Status != "valid" || ls.LastScrub == nil || !ls.LastScrub.OK || ls.LastScrub.BlocksBad != 0 || ls.LastScrub.BlocksDiffering != 3 {
		t.Errorf("after the comparison: %+v %+v", ls, ls.LastScrub)
	}
	if row := e2eLsRow(t, b, v.UID); strings.Contains(row, "bad") || !strings.Contains(row, "3 differ from the source") {
		t.Errorf("ls shows: %s", row)
	}
	b.ok("restore", v.UID, b.path("back.img"))
	if out := b.ok("deep-scrub", v.UID, "--source", img).stdout; !strings.Contains(out, " ok ") {
		t.Errorf("the same source again:\n%s", out)
	}
	if row := e2eLsRow(t, b, v.UID); !strings.Contains(row, " ok") || strings.Contains(row, "differ") {
		t.Errorf("ls after a clean comparison: %s", row)
	}
}

// TestScrubE2ELastDeepScrubKept: a plain scrub after a deep-scrub keeps the
// record of the deep-scrub (last_deep_scrub), and 'ls' shows both.
func TestScrubE2ELastDeepScrubKept(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	b.ok("init", "--block-size", "65536")
	img := b.path("disk.img")
	e2eRandomFile(t, img, 8*65536, 93)
	v := b.backup(img, "vol")
	b.ok("deep-scrub", "--all")
	b.ok("scrub", "--all")
	ls := e2eScrubLs13(b)[v.UID]
	if ls.LastScrub == nil || ls.LastScrub.Kind != "scrub" || ls.LastDeepScrub == nil || ls.LastDeepScrub.Kind != "deep-scrub" ||
		!ls.LastDeepScrub.OK || ls.LastDeepScrub.BlocksChecked != 8 {
		t.Fatalf("after deep-scrub and scrub: last_scrub %+v, last_deep_scrub %+v", ls.LastScrub, ls.LastDeepScrub)
	}
	if row := e2eLsRow(t, b, v.UID); !strings.Contains(row, "scrub 20") || !strings.Contains(row, "; deep-scrub 20") {
		t.Errorf("ls should show the last scrub and the last deep-scrub: %s", row)
	}
	b.ok("deep-scrub", "--all")
	if row := e2eLsRow(t, b, v.UID); strings.Count(row, "deep-scrub") != 1 {
		t.Errorf("ls after a deep-scrub shows it once: %s", row)
	}
}

// TestScrubE2ENoneSampled: a version of which a sampled run checked no
// block is shown "none sampled", not "ok", in the table and in 'ls'.
func TestScrubE2ENoneSampled(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	b.ok("init", "--block-size", "65536")
	small := b.path("small.img")
	e2eRandomFile(t, small, 65536, 94)
	v := b.backup(small, "small")
	// One block: at 5% it is in one window of twenty.
	for run := range 20 {
		r := b.ok("deep-scrub", "--all", "--percent", "5", "--json")
		res := e2eDecode[e2eScrubWindow](t, r)
		if res.Versions[0].BlocksChecked != 0 {
			continue
		}
		if res.Versions[0].Result != "none sampled" {
			t.Errorf("run %d: result %q with no block checked", run, res.Versions[0].Result)
		}
		if row := e2eLsRow(t, b, v.UID); !strings.Contains(row, "none sampled") || strings.Contains(row, " ok") {
			t.Errorf("ls after a run that sampled none of it: %s", row)
		}
		// The table says the same (the rotation moved on: run it again
		// until it samples nothing again).
		for range 20 {
			out := b.ok("deep-scrub", "--all", "--percent", "5").stdout
			if strings.Contains(out, "0 distinct block(s)") {
				// RESULT is the fifth column (METADATA, the snapshot's
				// state, may well say ok).
				var result string
				for _, line := range strings.Split(out, "\n") {
					if f := strings.Fields(line); len(f) > 5 && f[0] == v.UID {
						result = strings.Join(f[4:6], " ")
					}
				}
				if result != "none sampled" {
					t.Errorf("table of a run that sampled none:\n%s", out)
				}
				return
			}
		}
		t.Fatal("no second run sampled nothing")
	}
	t.Fatal("20 runs at 5% all sampled the one block")
}

// TestScrubE2ESorted: scrub lists its versions oldest first (as 'ls' does)
// whatever the order they were named in.
func TestScrubE2ESorted(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	b.ok("init", "--block-size", "65536")
	img := b.path("disk.img")
	e2eRandomFile(t, img, 4*65536, 95)
	var uids []string
	for _, vol := range []string{"c", "a", "b"} {
		uids = append(uids, b.backup(img, vol).UID)
	}
	r := b.ok("scrub", uids[2], uids[0], uids[1], "--json")
	var res struct {
		Versions []struct {
			UID string `json:"uid"`
		} `json:"versions"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, v := range res.Versions {
		got = append(got, v.UID)
	}
	if !slices.Equal(got, uids) {
		t.Errorf("--json versions %v, want oldest first %v", got, uids)
	}
	got = nil
	for _, l := range e2eLines(b.ok("scrub", uids[1], uids[2], uids[0]).stdout) {
		if f := strings.Fields(l); len(f) > 0 && slices.Contains(uids, f[0]) {
			got = append(got, f[0])
		}
	}
	if !slices.Equal(got, uids) {
		t.Errorf("table rows %v, want oldest first %v", got, uids)
	}
}
