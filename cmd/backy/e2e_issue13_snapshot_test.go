package main

// Issue 13 item 1: a lost or damaged version-metadata snapshot in the data
// backend is found by scrub (missing, chunks lacking, impossible sizes)
// and deep-scrub (reads and compares it), reported (exit 80, its own
// column and JSON fields) and written again from the metastore by the
// scrub itself.

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// e2eScrubOut is the part of scrub's JSON output these tests read.
type e2eScrubOut struct {
	Versions []struct {
		UID      string `json:"uid"`
		OK       bool   `json:"ok"`
		Snapshot string `json:"snapshot"`
		Status   string `json:"status"`
	} `json:"versions"`
	Failures []struct {
		Version string `json:"version"`
		Kind    string `json:"kind"`
		Reason  string `json:"reason"`
	} `json:"failures"`
	SnapshotsBad       []string `json:"snapshots_bad"`
	SnapshotsRewritten []string `json:"snapshots_rewritten"`
	InvalidVersions    []string `json:"invalid_versions"`
}

// e2eSnapChunks returns the chunk files of uid's snapshots in the default
// store's data directory.
func (b *e2eBox) e2eSnapChunks(uid string) []string {
	b.t.Helper()
	var out []string
	for _, d := range e2eMetaSnapDirs(b.t, b.dataDir(), uid) {
		dir := filepath.Join(b.dataDir(), "versions", strings.ToLower(uid), d)
		ents, err := os.ReadDir(dir)
		if err != nil {
			b.t.Fatal(err)
		}
		for _, e := range ents {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	return out
}

func TestIssue13SnapshotScrub(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	img := b.path("a.img")
	e2eRandomFile(t, img, 9*e2eMiB+100, 1301)
	other := b.path("b.img")
	e2eRandomFile(t, other, 5*e2eMiB, 1302)
	v1 := b.backup(img, "vol-a")
	v2 := b.backup(other, "vol-b")
	b.ok("scrub", "--all")
	b.ok("deep-scrub", "--all")
	chunks := b.e2eSnapChunks(v1.UID)
	if len(chunks) != 1 {
		t.Fatalf("version %s has snapshot chunks %v, want one", v1.UID, chunks)
	}
	intact := e2eReadFile(t, chunks[0])

	// rewritten checks that the snapshot of v1 is in the backend again,
	// whole, and that both scrubs are clean.
	rewritten := func(what string) {
		t.Helper()
		if got := b.e2eSnapChunks(v1.UID); len(got) != 1 {
			t.Errorf("%s: after the scrub v1 has snapshot chunks %v, want one", what, got)
		}
		b.ok("deep-scrub", "--all")
		b.ok("scrub", "--all")
		vs := e2eDecode[[]e2eVersion](t, b.ok("ls", "--from-backend", "--json"))
		if len(vs) != 2 {
			t.Errorf("%s: ls --from-backend lists %d versions, want 2", what, len(vs))
		}
	}

	for _, deep := range []bool{false, true} {
		cmd := "scrub"
		if deep {
			cmd = "deep-scrub"
		}
		t.Run("deleted/"+cmd, func(t *testing.T) {
			if err := os.Remove(b.e2eSnapChunks(v1.UID)[0]); err != nil {
				t.Fatal(err)
			}
			r := b.run(cmd, "--all", "--json")
			if r.code != 80 {
				t.Fatalf("%s --all with v1's metadata deleted: want exit 80\n%v", cmd, r)
			}
			out := e2eDecode[e2eScrubOut](t, r)
			if len(out.SnapshotsBad) != 1 || out.SnapshotsBad[0] != v1.UID || len(out.SnapshotsRewritten) != 1 || len(out.InvalidVersions) != 0 {
				t.Errorf("JSON: snapshots_bad %v, rewritten %v, invalid %v; want v1, v1, none", out.SnapshotsBad, out.SnapshotsRewritten, out.InvalidVersions)
			}
			for _, v := range out.Versions {
				want := "ok"
				if v.UID == v1.UID {
					want = "missing"
				}
				if v.Snapshot != want || !v.OK || v.Status != "valid" {
					t.Errorf("JSON row %+v, want snapshot %q, ok, valid", v, want)
				}
			}
			if len(out.Failures) != 1 || out.Failures[0].Kind != "snapshot" || !strings.Contains(out.Failures[0].Reason, "not in the data backend") {
				t.Errorf("failures %+v", out.Failures)
			}
			rewritten("deleted")
		})
	}

	t.Run("table", func(t *testing.T) {
		if err := os.Remove(b.e2eSnapChunks(v1.UID)[0]); err != nil {
			t.Fatal(err)
		}
		r := b.run("scrub", "--all")
		if r.code != 80 || !strings.Contains(r.stdout, "METADATA") || !strings.Contains(r.stdout, "MISSING") ||
			!strings.Contains(r.stdout, "written again from the metastore: "+v1.UID) {
			t.Errorf("scrub's table does not report the missing metadata and its rewrite:\n%v", r)
		}
		rewritten("table")
	})

	t.Run("truncated", func(t *testing.T) {
		if err := os.WriteFile(b.e2eSnapChunks(v1.UID)[0], intact[:10], 0o600); err != nil {
			t.Fatal(err)
		}
		out := e2eDecode[e2eScrubOut](t, b.fail80("scrub", "--all", "--json"))
		if len(out.SnapshotsBad) != 1 || out.SnapshotsBad[0] != v1.UID {
			t.Errorf("snapshots_bad %v", out.SnapshotsBad)
		}
		rewritten("truncated")
	})

	t.Run("flipped", func(t *testing.T) {
		c := b.e2eSnapChunks(v1.UID)[0]
		data := e2eReadFile(t, c)
		data[len(data)-3] ^= 0x01
		e2eWriteFile(t, c, data)
		// Same size: only a deep-scrub reads it.
		b.ok("scrub", "--all")
		out := e2eDecode[e2eScrubOut](t, b.fail80("deep-scrub", "--all", "--json"))
		if len(out.SnapshotsBad) != 1 || out.SnapshotsBad[0] != v1.UID || len(out.SnapshotsRewritten) != 1 {
			t.Errorf("deep-scrub: snapshots_bad %v, rewritten %v", out.SnapshotsBad, out.SnapshotsRewritten)
		}
		rewritten("flipped")
	})

	t.Run("older state", func(t *testing.T) {
		// An intact snapshot of v1 as it was before 'protect', under the
		// name of the current one: it reads, but describes another state.
		old := e2eReadFile(t, b.e2eSnapChunks(v1.UID)[0])
		b.ok("protect", v1.UID)
		cur := b.e2eSnapChunks(v1.UID)
		if len(cur) != 1 {
			t.Fatalf("chunks after protect %v", cur)
		}
		e2eWriteFile(t, cur[0], old)
		r := b.fail80("deep-scrub", v1.UID, "--json")
		out := e2eDecode[e2eScrubOut](t, r)
		if len(out.Failures) != 1 || !strings.Contains(out.Failures[0].Reason, "protected") {
			t.Errorf("deep-scrub of a snapshot of another state: %+v", out.Failures)
		}
		rewritten("older state")
		b.ok("unprotect", v1.UID)
	})

	t.Run("cleanup", func(t *testing.T) {
		// cleanup lists versions/ anyway: a deleted snapshot the
		// metastore recorded is written again by it too.
		if err := os.Remove(b.e2eSnapChunks(v1.UID)[0]); err != nil {
			t.Fatal(err)
		}
		r := b.ok("cleanup")
		if !strings.Contains(r.stderr, v1.UID) {
			t.Errorf("cleanup does not say it writes v1's metadata again:\n%v", r)
		}
		rewritten("cleanup")
	})

	// v2 was never touched.
	if got := b.e2eSnapChunks(v2.UID); len(got) != 1 {
		t.Errorf("v2 has snapshot chunks %v", got)
	}
}

// fail80 runs backy and requires exit 80 (a scrub that found damage,
// which prints its report on stdout).
func (b *e2eBox) fail80(args ...string) e2eRes {
	b.t.Helper()
	r := b.run(args...)
	if r.code != 80 {
		b.t.Fatalf("want exit 80:\n%v", r)
	}
	return r
}
