package main

import (
	"os"
	"slices"
	"strings"
	"testing"
)

// TestIssue13EmptyHints: hints that name no data (an empty list, or only
// exists=false extents) without --from are refused (exit 65, nothing
// made) unless --hints-allow-empty says the image is really empty; with
// --from they mean "nothing changed".
func TestIssue13EmptyHints(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	img := e2eExt4(t, b.dir, "disk", 1313)
	empty := b.path("empty.json")
	e2eWriteFile(t, empty, []byte("[]\n"))
	discards := e2eHints(t, b.path("discards.json"), []e2eHint{{Offset: 0, Length: 8 * e2eMiB, Exists: false}}, true)
	b.ok("init")

	for _, h := range []string{empty, discards} {
		r := b.fail(65, "backup", img, "vol", "--hints", h)
		for _, w := range []string{h, "exists=true", "--from", "--hints-allow-empty"} {
			if !strings.Contains(r.stderr, w) {
				t.Errorf("the message should mention %q:\n%v", w, r)
			}
		}
	}
	if got := b.lsUIDs(); len(got) != 0 {
		t.Fatalf("the refused backups made versions %v", got)
	}
	b.fail(64, "backup", img, "vol", "--hints-allow-empty")

	// Said on purpose: an all-zero version.
	z := b.backup(img, "vol", "--hints", empty, "--hints-allow-empty")
	if z.BytesRead != 0 || z.BytesSparse != z.Size {
		t.Errorf("--hints-allow-empty made %+v, want an all-sparse version", z)
	}
	zeros := b.path("zeros.img")
	e2eWriteFile(t, zeros, nil)
	if err := os.Truncate(zeros, z.Size); err != nil {
		t.Fatal(err)
	}
	b.restore(z.UID, zeros)

	// With --from: nothing changed.
	v1 := b.backup(img, "vol")
	v2 := b.backup(img, "vol", "--from", v1.UID, "--hints", empty)
	b.restore(v2.UID, img)
	b.fail(64, "backup", img, "vol", "--from", v1.UID, "--hints", empty, "--hints-allow-empty")
	if got := b.lsUIDs(); !slices.Equal(got, []string{z.UID, v1.UID, v2.UID}) {
		t.Errorf("ls lists %v", got)
	}
}
