package main

// End-to-end tests of the built backy binary (see e2e_helpers_test.go):
// real ext4 images made with mkfs.ext4, every command run as a separate
// process with a clean environment, exit codes and output checked, and
// every restore compared byte for byte with what was backed up.

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// TestRoundTrip backs up an ext4 image, lists it and restores it in every
// way restore offers.
func TestRoundTrip(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	img := e2eExt4(t, b.dir, "disk", 1)
	const size = 64 * e2eMiB
	before := time.Now().UTC().Truncate(time.Second)

	// First use: the default store is created, with one line on stderr.
	r := b.ok("backup", img, "vm-101-disk-0", "--snapshot", "snap-1", "--label", "env=test", "--label", "owner=e2e")
	out := e2eLines(r.stdout)
	if len(out) != 1 || !e2eUIDShape(out[0]) {
		t.Fatalf("backup should print the new uid alone:\n%v", r)
	}
	uid := out[0]
	if l := e2eLines(r.stderr); len(l) != 1 || !strings.HasPrefix(l[0], "backy: ") || !strings.Contains(l[0], b.home) ||
		!strings.Contains(l[0], "created") {
		t.Errorf("first use should print one stderr line saying the store was created in %s:\n%v", b.home, r)
	}
	if _, err := os.Stat(filepath.Join(b.home, "backy.db")); err != nil {
		t.Errorf("no metastore in $BACKY_HOME: %v", err)
	}

	// A second command does not say it again.
	r = b.ok("ls", "--json")
	if r.stderr != "" {
		t.Errorf("second command printed on stderr:\n%v", r)
	}
	var raw []map[string]json.RawMessage
	if err := json.Unmarshal([]byte(r.stdout), &raw); err != nil || len(raw) != 1 {
		t.Fatalf("ls --json should list one version (%v):\n%v", err, r)
	}
	kinds := map[string]byte{
		"uid": '"', "volume": '"', "snapshot": '"', "date": '"', "status": '"',
		"size": '0', "block_size": '0', "bytes_read": '0', "bytes_written": '0',
		"bytes_deduplicated": '0', "bytes_sparse": '0', "duration_seconds": '0',
		"protected": 'b', "labels": '{',
	}
	for k, kind := range kinds {
		v, ok := raw[0][k]
		if !ok {
			t.Errorf("ls --json: field %q missing", k)
			continue
		}
		c := bytes.TrimSpace(v)[0]
		switch {
		case kind == '0' && (c == '-' || c >= '0' && c <= '9'),
			kind == 'b' && (c == 't' || c == 'f'),
			kind == c:
		default:
			t.Errorf("ls --json: field %q is %s, of the wrong JSON type", k, v)
		}
	}
	v := e2eDecode[[]e2eVersion](t, r)[0]
	if v.UID != uid || v.Volume != "vm-101-disk-0" || v.Snapshot != "snap-1" || v.Status != "valid" || v.Protected ||
		v.Size != size || v.BlockSize != e2eBS {
		t.Errorf("ls --json: %+v, want uid %s, volume vm-101-disk-0, snapshot snap-1, valid, unprotected, size %d, block size %d",
			v, uid, size, e2eBS)
	}
	if len(v.Labels) != 2 || v.Labels["env"] != "test" || v.Labels["owner"] != "e2e" {
		t.Errorf("labels = %v, want env=test owner=e2e", v.Labels)
	}
	date, err := time.Parse(time.RFC3339, v.Date)
	if err != nil || !strings.HasSuffix(v.Date, "Z") {
		t.Errorf("date %q is not RFC 3339 in UTC (%v)", v.Date, err)
	} else if date.Before(before) || date.After(time.Now().Add(time.Second)) {
		t.Errorf("date %s is not the time of the backup (started %s)", v.Date, before.Format(time.RFC3339))
	}
	// The image holds a few MiB of files and much empty space.
	if v.BytesRead <= 0 || v.BytesRead > size || v.BytesWritten < 2*e2eMiB || v.BytesWritten > v.BytesRead+16*e2eObjOverhead ||
		v.BytesSparse < 32*e2eMiB || v.BytesSparse > size || v.BytesDeduplicated < 0 || v.DurationSeconds <= 0 {
		t.Errorf("implausible statistics for a fresh backup of an ext4 image with empty space: %+v", v)
	}
	if sum := v.BytesWritten + v.BytesDeduplicated + v.BytesSparse; sum < size || sum > size+16*e2eObjOverhead {
		t.Errorf("bytes_written+bytes_deduplicated+bytes_sparse = %d, want the size %d (plus object overhead)", sum, size)
	}

	t.Run("restore", func(t *testing.T) {
		b := b.with(t)
		got := b.restore(uid, img)
		if a := e2eAllocated(t, got); a < size {
			t.Errorf("restore without --sparse should write zeros, but only %d of %d bytes are allocated", a, size)
		}
	})
	t.Run("restore --sparse", func(t *testing.T) {
		b := b.with(t)
		got := b.restore(uid, img, "--sparse")
		if a := e2eAllocated(t, got); a >= size || a > size-v.BytesSparse+e2eMiB {
			t.Errorf("restore --sparse allocated %d bytes of %d; %d bytes are empty blocks and should be holes", a, size, v.BytesSparse)
		}
	})
	t.Run("existing target without --force", func(t *testing.T) {
		b := b.with(t)
		target := b.path("precious.img")
		e2eWriteFile(t, target, []byte("precious data\n"))
		r := b.fail(73, "restore", uid, target)
		if !strings.Contains(r.stderr, "--force") {
			t.Errorf("the message should mention --force:\n%v", r)
		}
		if got := e2eReadFile(t, target); string(got) != "precious data\n" {
			t.Errorf("the existing target changed: %q", got)
		}
	})
	prefilled := func(t *testing.T, name string, n int64) (string, []byte) {
		target := b.path(name)
		fill := bytes.Repeat([]byte{0xa5}, int(n))
		e2eWriteFile(t, target, fill)
		return target, fill
	}
	for _, sparse := range []bool{false, true} {
		t.Run(fmt.Sprintf("--force onto a larger file, sparse=%v", sparse), func(t *testing.T) {
			b := b.with(t)
			target, fill := prefilled(t, fmt.Sprintf("larger-%v.img", sparse), size+3*e2eMiB)
			args := []string{"restore", uid, target, "--force"}
			if sparse {
				args = append(args, "--sparse")
			}
			b.ok(args...)
			if err := e2eCompare(target, img, size); err != nil {
				t.Fatal(err)
			}
			got := e2eReadFile(t, target)
			if len(got) != len(fill) || !bytes.Equal(got[size:], fill[size:]) {
				t.Errorf("restore --force changed the target beyond the version's %d bytes (now %d bytes)", size, len(got))
			}
		})
	}
	t.Run("--force onto a too small file", func(t *testing.T) {
		b := b.with(t)
		target, fill := prefilled(t, "small.img", size-4096)
		r := b.fail(73, "restore", uid, target, "--force")
		if !strings.Contains(r.stderr, "small") && !strings.Contains(r.stderr, "bytes") {
			t.Errorf("the message should say the target is too small:\n%v", r)
		}
		if !bytes.Equal(e2eReadFile(t, target), fill) {
			t.Errorf("the too small target was changed")
		}
	})
	t.Run("--json after the command", func(t *testing.T) {
		b := b.with(t)
		if vs := e2eDecode[[]e2eVersion](t, b.ok("ls", "--json")); len(vs) != 1 || vs[0].UID != uid {
			t.Errorf("ls --json: %+v", vs)
		}
		if vs := e2eDecode[[]e2eVersion](t, b.ok("ls", "vm-101-disk-0", "--json")); len(vs) != 1 || vs[0].UID != uid {
			t.Errorf("ls VOLUME --json: %+v", vs)
		}
		if st := e2eDecode[map[string]any](t, b.ok("stats", "--json")); st["versions"] != 1.0 {
			t.Errorf("stats --json: %v", st)
		}
	})
	t.Run("--json before the command", func(t *testing.T) {
		b := b.with(t)
		r := b.ok("--json", "ls")
		var vs []e2eVersion
		if err := json.Unmarshal([]byte(r.stdout), &vs); err != nil || len(vs) != 1 || vs[0].UID != uid {
			t.Errorf("global --json before the command should print JSON (%v):\n%v", err, r)
		}
		r = b.ok("--json", "stats", uid)
		var sv e2eVersion
		if err := json.Unmarshal([]byte(r.stdout), &sv); err != nil || sv.UID != uid {
			t.Errorf("global --json before the command should print JSON (%v):\n%v", err, r)
		}
	})
}

// TestConfigFile uses a store named by a configuration file (-c and
// $BACKY_CONFIG) instead of the default store.
func TestConfigFile(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	cfg := b.path("conf/backy.cfg")
	e2eWriteFile(t, cfg, []byte(`# written by the e2e test
[DEFAULTS]
block_size = 1MiB
workers = 2

[MetaBackend]
type = bbolt
path = ../srv/meta/backy.db

[DataBackend]
type = file
path = ../srv/blocks
simultaneous_writes = 2
`))
	// A configured store is not created implicitly.
	r := b.fail(66, "-c", cfg, "ls")
	if !strings.Contains(r.stderr, "backy init") {
		t.Errorf("the message should tell to run 'backy init':\n%v", r)
	}
	r = b.ok("-c", cfg, "init")
	if !strings.Contains(r.stdout, "created store") || !strings.Contains(r.stdout, b.path("srv/blocks")) {
		t.Errorf("init should say where it created the store:\n%v", r)
	}
	b.fail(73, "-c", cfg, "init")

	img := e2eExt4(t, b.dir, "cfgdisk", 7)
	r = b.ok("-c", cfg, "backup", img, "vol", "--json")
	v := e2eDecode[e2eVersion](t, r)
	if v.BlockSize != e2eMiB || v.Status != "valid" {
		t.Errorf("version %+v: want the configured block size %d", v, e2eMiB)
	}
	if r.stderr != "" {
		t.Errorf("unexpected stderr:\n%v", r)
	}
	if _, err := os.Stat(b.path("srv/meta/backy.db")); err != nil {
		t.Errorf("the metastore is not where the configuration puts it (relative to the file): %v", err)
	}
	if u := e2eDirUsage(t, b.path("srv/blocks")); u.files < 2 {
		t.Errorf("the data directory of the configuration holds %d files", u.files)
	}
	if _, err := os.Stat(b.home); err == nil {
		t.Errorf("the default store %s was created although -c was given", b.home)
	}
	target := b.path("cfg-restored.img")
	b.ok("--config="+cfg, "restore", v.UID, target)
	e2eSameFile(t, target, img)

	// $BACKY_CONFIG names the same store.
	r = b.runEnv([]string{"BACKY_CONFIG=" + cfg}, "ls", "--json")
	if vs := e2eDecode[[]e2eVersion](t, r); r.code != 0 || len(vs) != 1 || vs[0].UID != v.UID {
		t.Errorf("with $BACKY_CONFIG, ls should list %s:\n%v", v.UID, r)
	}
	r = b.runEnv([]string{"BACKY_CONFIG=" + b.path("nope.cfg")}, "ls")
	e2eWantFail(t, r, 66)
}

// TestUnchangedRebackup: backing up the same image again stores nothing.
func TestUnchangedRebackup(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	img := e2eExt4(t, b.dir, "disk", 2)
	v1 := b.backup(img, "vol")
	// Blocks only: each version also gets its metadata under versions/.
	u1 := e2eDirUsage(t, filepath.Join(b.dataDir(), "blocks"))
	if u1.files < 2 || u1.bytes < v1.BytesWritten {
		t.Fatalf("data directory %s holds %d files, %d bytes after a backup that wrote %d bytes", b.dataDir(), u1.files, u1.bytes, v1.BytesWritten)
	}
	v2 := b.backup(img, "vol")
	if v2.UID == v1.UID {
		t.Fatalf("second backup reused uid %s", v1.UID)
	}
	if v2.BytesWritten != 0 {
		t.Errorf("second backup of an unchanged image wrote %d bytes, want 0", v2.BytesWritten)
	}
	if v2.BytesDeduplicated <= 0 || v2.BytesDeduplicated+v2.BytesSparse != v2.Size {
		t.Errorf("second backup: deduplicated %d + sparse %d, want the size %d", v2.BytesDeduplicated, v2.BytesSparse, v2.Size)
	}
	if u2 := e2eDirUsage(t, filepath.Join(b.dataDir(), "blocks")); u2 != u1 {
		t.Errorf("blocks in the data directory changed from %+v to %+v", u1, u2)
	}
	if m := e2eDirUsage(t, filepath.Join(b.dataDir(), "versions")); m.files != 2 {
		t.Errorf("versions/ holds %d objects after two small backups, want one snapshot each", m.files)
	}
	b.restore(v2.UID, img)
	b.restore(v1.UID, img)
	if got := b.lsUIDs(); !slices.Equal(got, []string{v1.UID, v2.UID}) {
		t.Errorf("ls lists %v, want %v oldest first", got, []string{v1.UID, v2.UID})
	}
}

// TestZeroImages: images of zeros, sparse or written out, store nothing.
func TestZeroImages(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		size   int64
		sparse bool
	}{
		{"sparse 256 MiB", 256 * e2eMiB, true},
		{"written zeros 64 MiB", 64 * e2eMiB, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := e2eNewBox(t)
			img := b.path("zero.img")
			f, err := os.Create(img)
			if err != nil {
				t.Fatal(err)
			}
			if tc.sparse {
				err = f.Truncate(tc.size)
			} else {
				zeros := make([]byte, e2eMiB)
				for i := int64(0); i < tc.size/e2eMiB && err == nil; i++ {
					_, err = f.Write(zeros)
				}
				if err == nil {
					err = f.Sync()
				}
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				t.Fatal(err)
			}
			if a := e2eAllocated(t, img); !tc.sparse && a < tc.size {
				t.Fatalf("the zero file is sparse (%d bytes allocated): the test needs explicit zeros", a)
			}
			v := b.backup(img, "zeros")
			if v.BytesWritten != 0 || v.BytesSparse != tc.size || v.BytesDeduplicated != 0 {
				t.Errorf("backup of zeros: written %d, sparse %d, deduplicated %d; want 0, %d, 0", v.BytesWritten, v.BytesSparse,
					v.BytesDeduplicated, tc.size)
			}
			if u := e2eDirUsage(t, filepath.Join(b.dataDir(), "blocks")); u.files != 0 {
				t.Errorf("%d block objects stored for an image of zeros", u.files)
			}
			got := b.restore(v.UID, img, "--sparse")
			if a := e2eAllocated(t, got); a > e2eMiB {
				t.Errorf("sparse restore of zeros allocated %d bytes", a)
			}
			b.restore(v.UID, img)
		})
	}
}

// TestDedupAcrossVolumes: the same image under another volume name stores
// nothing new.
func TestDedupAcrossVolumes(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	img := e2eExt4(t, b.dir, "disk", 3)
	va := b.backup(img, "vm-1-disk-0")
	u := e2eDirUsage(t, filepath.Join(b.dataDir(), "blocks"))
	vb := b.backup(img, "vm-2-disk-0")
	if vb.BytesWritten != 0 || vb.BytesDeduplicated != va.Size-va.BytesSparse || vb.BytesSparse != va.BytesSparse {
		t.Errorf("backup under another volume: written %d, deduplicated %d, sparse %d; want 0, %d, %d",
			vb.BytesWritten, vb.BytesDeduplicated, vb.BytesSparse, va.Size-va.BytesSparse, va.BytesSparse)
	}
	if u2 := e2eDirUsage(t, filepath.Join(b.dataDir(), "blocks")); u2 != u {
		t.Errorf("blocks in the data directory changed from %+v to %+v", u, u2)
	}
	if vs := b.ls("vm-2-disk-0"); len(vs) != 1 || vs[0].UID != vb.UID || vs[0].Volume != "vm-2-disk-0" {
		t.Errorf("ls vm-2-disk-0: %+v", vs)
	}
	b.restore(vb.UID, img)
}

// TestHintsDifferential backs up a changed image reading only the blocks
// the hints name.
func TestHintsDifferential(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	v1img := e2eExt4(t, b.dir, "v1", 4)
	v1 := b.backup(v1img, "vol")

	v2img := b.path("v2.img")
	e2eCopy(t, v1img, v2img)
	changes := []e2eHint{
		{Offset: 2*e2eBS + 12345, Length: 100000},     // inside block 2
		{Offset: 5 * e2eBS, Length: e2eBS},            // all of block 5
		{Offset: 10*e2eBS - 4096, Length: 8192},       // across blocks 9 and 10
		{Offset: 16*e2eBS - 1000, Length: 1000},       // the end of the last block
		{Offset: 12*e2eBS + e2eMiB, Length: 3 * 4096}, // inside block 12
	}
	touched := int64(6) // blocks 2, 5, 9, 10, 12, 15
	for i := range changes {
		e2eScribble(t, v2img, changes[i].Offset, changes[i].Length, uint64(100+i))
		changes[i].Exists = "true" // as rbd diff prints it
	}
	oneLine := e2eHints(t, b.path("hints.json"), changes, false)
	for i := range changes {
		changes[i].Exists = true
	}
	pretty := e2eHints(t, b.path("hints-pretty.json"), changes, true)
	if bytes.Count(e2eReadFile(t, pretty), []byte("\n")) < 10 {
		t.Fatal("the pretty hints file should span many lines")
	}

	for _, hints := range []string{oneLine, pretty} {
		t.Run(filepath.Base(hints), func(t *testing.T) {
			b := b.with(t)
			v2 := b.backup(v2img, "vol", "--from", v1.UID, "--hints", hints)
			if v2.BytesRead != touched*e2eBS {
				t.Errorf("bytes_read = %d, want only the %d hinted blocks (%d bytes)", v2.BytesRead, touched, touched*e2eBS)
			}
			if v2.Base != v1.UID {
				t.Errorf("base = %q, want %s", v2.Base, v1.UID)
			}
			if v2.BytesWritten > touched*(e2eBS+e2eObjOverhead) {
				t.Errorf("bytes_written = %d, more than the %d hinted blocks", v2.BytesWritten, touched)
			}
			b.restore(v2.UID, v2img)
		})
	}
	t.Run("full backup of v2", func(t *testing.T) {
		b := b.with(t)
		full := b.backup(v2img, "vol")
		if full.BytesWritten != 0 {
			t.Errorf("full backup after the differential ones wrote %d bytes, want 0", full.BytesWritten)
		}
		b.restore(full.UID, v2img)
	})
	b.restore(v1.UID, v1img)
}

// TestPartialDiscardHint: an exists=false hint covering part of a block
// that still holds data must not make the block sparse (the backy2
// data-loss case).
func TestPartialDiscardHint(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	v1img := e2eExt4(t, b.dir, "v1", 5)
	e2eScribble(t, v1img, e2eBS, e2eBS, 55) // block 1 full of data
	v1 := b.backup(v1img, "vol")

	v2img := b.path("v2.img")
	e2eCopy(t, v1img, v2img)
	e2eWriteAt(t, v2img, e2eBS+e2eMiB, make([]byte, e2eMiB)) // discard 1 MiB of block 1
	hints := e2eHints(t, b.path("discard.json"), []e2eHint{{Offset: e2eBS + e2eMiB, Length: e2eMiB, Exists: false}}, false)
	v2 := b.backup(v2img, "vol", "--from", v1.UID, "--hints", hints)
	if v2.BytesRead != e2eBS {
		t.Errorf("bytes_read = %d, want block 1 read (%d bytes)", v2.BytesRead, e2eBS)
	}
	b.restore(v2.UID, v2img)
	b.restore(v2.UID, v2img, "--sparse")

	// A discard covering whole blocks makes them sparse without reading.
	v3img := b.path("v3.img")
	e2eCopy(t, v2img, v3img)
	e2eWriteAt(t, v3img, e2eBS, make([]byte, e2eBS))
	hints = e2eHints(t, b.path("discard-all.json"), []e2eHint{{Offset: e2eBS, Length: e2eBS, Exists: "false"}}, true)
	v3 := b.backup(v3img, "vol", "--from", v2.UID, "--hints", hints)
	if v3.BytesRead != 0 {
		t.Errorf("bytes_read = %d for a whole-block discard, want 0", v3.BytesRead)
	}
	b.restore(v3.UID, v3img)
}

// TestHintsSanityCheck: hints that miss changed blocks are caught by the
// sanity check before any version is created.
func TestHintsSanityCheck(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	v1img := e2eExt4(t, b.dir, "v1", 6)
	v1 := b.backup(v1img, "vol")
	v2img := b.path("v2.img")
	e2eCopy(t, v1img, v2img)
	// Every block changes, so whichever unhinted blocks the check samples
	// differ from the base; the hints name block 3 only.
	for i := int64(0); i < 16; i++ {
		e2eScribble(t, v2img, i*e2eBS+8192, 4096, uint64(600+i))
	}
	hints := e2eHints(t, b.path("h.json"), []e2eHint{{Offset: 3*e2eBS + 8192, Length: 4096, Exists: true}}, false)
	usage := e2eDirUsage(t, b.dataDir())
	r := b.fail(65, "backup", v2img, "vol", "--from", v1.UID, "--hints", hints)
	if !strings.Contains(r.stderr, v1.UID) || !strings.Contains(r.stderr, "hints") {
		t.Errorf("the message should name the base %s and the hints:\n%v", v1.UID, r)
	}
	if got := b.lsUIDs(); !slices.Equal(got, []string{v1.UID}) {
		t.Errorf("ls lists %v after the failed backup, want only %s", got, v1.UID)
	}
	if u := e2eDirUsage(t, b.dataDir()); u != usage {
		t.Errorf("the failed backup stored data: %+v -> %+v", usage, u)
	}
	// Correct hints pass.
	var all []e2eHint
	for i := int64(0); i < 16; i++ {
		all = append(all, e2eHint{Offset: i*e2eBS + 8192, Length: 4096, Exists: true})
	}
	v2 := b.backup(v2img, "vol", "--from", v1.UID, "--hints", e2eHints(t, b.path("all.json"), all, false))
	b.restore(v2.UID, v2img)
}

// TestBadHints: unusable hints files are refused before anything is written.
func TestBadHints(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	img := e2eExt4(t, b.dir, "disk", 8)
	v1 := b.backup(img, "vol")
	size := int64(64 * e2eMiB)
	for _, tc := range []struct {
		name, content string
		from          bool
	}{
		{"not JSON", "this is not JSON\n", true},
		{"not JSON, no base", "{{{", false},
		{"negative offset", `[{"offset":-4096,"length":4096,"exists":true}]`, true},
		{"past the end", fmt.Sprintf(`[{"offset":%d,"length":8192,"exists":"true"}]`, size-4096), true},
		{"not an array", `{"offset":0,"length":4096,"exists":true}`, true},
		// A missing file is not bad data but not found (66): see
		// TestIssue13SpecialFiles.
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := b.with(t)
			path := b.path("hints-" + strings.ReplaceAll(tc.name, " ", "_") + ".json")
			if tc.content != "" {
				e2eWriteFile(t, path, []byte(tc.content))
			}
			args := []string{"backup", img, "vol", "--hints", path}
			if tc.from {
				args = append(args, "--from", v1.UID)
			}
			r := b.fail(65, args...)
			if !strings.Contains(r.stderr, "hint") {
				t.Errorf("the message should be about the hints:\n%v", r)
			}
			if got := b.lsUIDs(); !slices.Equal(got, []string{v1.UID}) {
				t.Errorf("ls lists %v, want only %s", got, v1.UID)
			}
		})
	}
}

// TestKillDuringBackup: a backup killed with SIGKILL harms no other
// version, leaves an incomplete version that --resume finishes without
// storing again what was committed, or that rm removes.
func TestKillDuringBackup(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: backs up 256 MiB several times")
	}
	t.Parallel()
	b := e2eNewBox(t)
	small := b.path("small.img")
	e2eRandomFile(t, small, 12*e2eMiB+12345, 91)
	img := e2eExt4(t, b.dir, "disk", 9)
	vSmall := b.backup(small, "small")
	vDisk := b.backup(img, "disk")
	big := e2eBig(t)
	bigSHA := e2eSHA(t, big)
	const nBlocks = e2eBigSize / e2eBS

	// Run the backup throttled (1 ms in every 100 ms) until it has
	// committed some blocks (it commits every 2 s), then kill it.
	p := b.start("backup", big, "big")
	release := e2eThrottle(p.cmd.Process, time.Millisecond, 99*time.Millisecond)
	inc := b.waitVersion(p, func(v e2eVersion) bool { return v.Volume == "big" && v.Status == "incomplete" && v.BlocksDone > 0 })
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	release()
	r := p.wait(t)
	if ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("the backup was not killed by SIGKILL (it had finished?):\n%v", r)
	}
	killed := b.version(inc.UID)
	t.Logf("killed at %d of %d blocks committed", killed.BlocksDone, nBlocks)
	if killed.Status != "incomplete" || killed.BlocksDone <= 0 || killed.BlocksDone >= nBlocks {
		t.Fatalf("after the kill ls shows %+v, want an incomplete version with some blocks done", killed)
	}

	// The versions made before are intact.
	b.restore(vSmall.UID, small)
	b.restore(vDisk.UID, img)
	// The incomplete version is not restorable without --force.
	b.fail(70, "restore", inc.UID, b.path("incomplete.img"))
	if _, err := os.Stat(b.path("incomplete.img")); err == nil {
		t.Error("a refused restore left its target behind")
	}

	// Resume finishes it without storing the committed blocks again.
	before := e2eDirUsage(t, b.dataDir())
	res := b.backup(big, "big", "--resume", inc.UID)
	if res.UID != inc.UID || res.Status != "valid" || res.BlocksDone != nBlocks {
		t.Errorf("resume returned %+v, want %s valid with %d blocks", res, inc.UID, nBlocks)
	}
	after := e2eDirUsage(t, b.dataDir())
	grown := after.bytes - before.bytes
	t.Logf("resume stored %d bytes (%d blocks were committed before the kill)", grown, killed.BlocksDone)
	if maxGrown := (nBlocks - killed.BlocksDone) * (e2eBS + e2eObjOverhead); grown > maxGrown || grown >= e2eBigSize {
		t.Errorf("resume stored %d bytes; only the %d blocks not yet committed (%d bytes) should be stored",
			grown, nBlocks-killed.BlocksDone, maxGrown)
	}
	// Its statistics describe the version once, not the blocks of the
	// killed run twice.
	if res.BytesRead > e2eBigSize || res.BytesDeduplicated+res.BytesSparse+res.BytesWritten > e2eBigSize+nBlocks*e2eObjOverhead {
		t.Errorf("resumed version counts blocks twice: size %d, bytes_read %d, bytes_written %d, bytes_deduplicated %d, bytes_sparse %d",
			res.Size, res.BytesRead, res.BytesWritten, res.BytesDeduplicated, res.BytesSparse)
	}
	target := b.path("big-restored.img")
	b.ok("restore", inc.UID, target)
	if got := e2eSHA(t, target); got != bigSHA {
		t.Errorf("the resumed version restores to sha256 %s, want %s", got, bigSHA)
	}
	if err := os.Remove(target); err != nil {
		t.Fatal(err)
	}

	// Another killed backup, removed with rm.
	p = b.start("backup", big, "big2")
	release = e2eThrottle(p.cmd.Process, time.Millisecond, 99*time.Millisecond)
	inc2 := b.waitVersion(p, func(v e2eVersion) bool { return v.Volume == "big2" && v.Status == "incomplete" })
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	release()
	if r := p.wait(t); r.code == 0 {
		t.Fatalf("the second backup finished before it was killed:\n%v", r)
	}
	r = b.ok("rm", inc2.UID)
	if strings.TrimSpace(r.stdout) != "removed "+inc2.UID {
		t.Errorf("rm should say what it removed:\n%v", r)
	}
	if got := b.lsUIDs(); !slices.Equal(got, []string{vSmall.UID, vDisk.UID, inc.UID}) {
		t.Errorf("ls lists %v after rm, want %v", got, []string{vSmall.UID, vDisk.UID, inc.UID})
	}
}

// TestBadInputs: each mistake has its documented exit code and one line
// on stderr.
func TestBadInputs(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	img := b.path("disk.img")
	e2eRandomFile(t, img, 6*e2eMiB, 10)
	v := b.backup(img, "vol")
	e2eWriteFile(t, b.path("exists.img"), []byte("keep me"))
	e2eWriteFile(t, b.path("malformed.cfg"), []byte("[DEFAULTS]\nblock_size = 3 apples\n"))
	e2eWriteFile(t, b.path("unknown-section.cfg"), []byte("[Foo]\nbar = 1\n"))
	const unknownUID = "V0000000000001234abcd"

	for _, tc := range []struct {
		name string
		code int
		args []string
		want string // in the message
	}{
		{"missing source", 66, []string{"backup", b.path("nope.img"), "vol"}, "nope.img"},
		{"empty volume", 64, []string{"backup", img, ""}, "volume"},
		{"blank volume", 64, []string{"backup", img, "  "}, "volume"},
		{"source is a directory", 64, []string{"backup", b.dir, "vol"}, ""},
		{"restore unknown version", 66, []string{"restore", unknownUID, b.path("r.img")}, unknownUID},
		{"restore malformed uid", 66, []string{"restore", "nonsense", b.path("r.img")}, "nonsense"},
		{"rm unknown version", 66, []string{"rm", unknownUID}, unknownUID},
		{"stats unknown version", 66, []string{"stats", unknownUID}, unknownUID},
		{"protect unknown version", 66, []string{"protect", unknownUID}, unknownUID},
		{"--from unknown version", 66, []string{"backup", img, "vol", "--from", unknownUID}, unknownUID},
		{"--resume a valid version", 64, []string{"backup", img, "vol", "--resume", v.UID}, v.UID},
		{"restore target exists", 73, []string{"restore", v.UID, b.path("exists.img")}, "exists.img"},
		{"malformed config", 78, []string{"-c", b.path("malformed.cfg"), "ls"}, "malformed.cfg"},
		{"unknown config section", 78, []string{"-c", b.path("unknown-section.cfg"), "ls"}, "Foo"},
		{"missing config", 66, []string{"-c", b.path("nope.cfg"), "ls"}, "nope.cfg"},
		{"backup one argument", 64, []string{"backup", img}, ""},
		{"backup three arguments", 64, []string{"backup", img, "vol", "extra"}, ""},
		{"restore one argument", 64, []string{"restore", v.UID}, ""},
		{"ls two arguments", 64, []string{"ls", "a", "b"}, ""},
		{"rm no argument", 64, []string{"rm"}, ""},
		{"init with argument", 64, []string{"init", "x"}, ""},
		{"unknown flag", 64, []string{"ls", "--bogus"}, "bogus"},
		{"unknown flag after arguments", 64, []string{"backup", img, "vol", "--bogus"}, "bogus"},
		{"unknown global flag", 64, []string{"--bogus", "ls"}, "bogus"},
		{"bad label", 64, []string{"backup", img, "vol", "--label", "novalue"}, "label"},
		{"unknown command", 64, []string{"frobnicate"}, "frobnicate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := b.with(t)
			r := b.fail(tc.code, tc.args...)
			if tc.want != "" && !strings.Contains(r.stderr, tc.want) {
				t.Errorf("the message should mention %q:\n%v", tc.want, r)
			}
		})
	}
	if got := b.lsUIDs(); !slices.Equal(got, []string{v.UID}) {
		t.Errorf("ls lists %v after the failed commands, want only %s", got, v.UID)
	}
	if got := e2eReadFile(t, b.path("exists.img")); string(got) != "keep me" {
		t.Errorf("the existing restore target changed: %q", got)
	}
	if _, err := os.Stat(b.path("r.img")); err == nil {
		t.Error("a failed restore left a target file")
	}

	t.Run("store under a regular file", func(t *testing.T) {
		b := e2eNewBox(t)
		e2eWriteFile(t, b.path("afile"), []byte("x"))
		b.setHome(b.path("afile/store"))
		r := b.run("ls")
		if r.code == 0 || len(e2eLines(r.stderr)) != 1 || !strings.HasPrefix(r.stderr, "backy: ") ||
			!strings.Contains(r.stderr, "afile") {
			t.Errorf("want a non-zero exit and one stderr line naming the path:\n%v", r)
		}
		r = b.run("backup", img, "vol")
		if r.code == 0 || len(e2eLines(r.stderr)) != 1 {
			t.Errorf("want a non-zero exit and one stderr line:\n%v", r)
		}
	})

	t.Run("newer metastore schema", func(t *testing.T) {
		b := e2eNewBox(t)
		v := b.backup(img, "vol")
		db, err := bolt.Open(filepath.Join(b.home, "backy.db"), 0o600, &bolt.Options{Timeout: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		err = db.Update(func(tx *bolt.Tx) error {
			m := tx.Bucket([]byte("meta"))
			if m == nil {
				return fmt.Errorf("no bucket meta in the metastore")
			}
			if len(m.Get([]byte("schema"))) != 4 {
				return fmt.Errorf("meta/schema is %x, not 4 bytes", m.Get([]byte("schema")))
			}
			return m.Put([]byte("schema"), binary.BigEndian.AppendUint32(nil, 99))
		})
		if cerr := db.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, args := range [][]string{{"ls"}, {"restore", v.UID, b.path("x.img")}, {"backup", img, "vol"}} {
			r := b.fail(79, args...)
			if !strings.Contains(r.stderr, "upgrade backy") {
				t.Errorf("the message should tell to upgrade backy:\n%v", r)
			}
		}
	})
}

// TestRmProtectStats: rm, protect, unprotect and stats.
func TestRmProtectStats(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	imgA, imgB := b.path("a.img"), b.path("b.img")
	e2eRandomFile(t, imgA, 8*e2eMiB, 21)
	e2eRandomFile(t, imgB, 10*e2eMiB+4096, 22)
	a := b.backup(imgA, "vol-a")
	bv := b.backup(imgB, "vol-b")

	r := b.ok("protect", a.UID)
	if strings.TrimSpace(r.stdout) != a.UID+" protected=true" {
		t.Errorf("protect output:\n%v", r)
	}
	if !b.version(a.UID).Protected {
		t.Errorf("ls does not show %s protected", a.UID)
	}
	r = b.run("rm", a.UID)
	if r.code != 64 || !strings.Contains(r.stderr, "protected") || !strings.Contains(r.stderr, "unprotect") {
		t.Errorf("rm of a protected version: want exit 64 and a message about unprotect:\n%v", r)
	}
	if l := e2eLines(r.stderr); len(l) == 0 || !strings.HasPrefix(l[len(l)-1], "backy: ") {
		t.Errorf("rm of a protected version should end with a \"backy: \" line:\n%v", r)
	}
	if got := b.lsUIDs(); !slices.Equal(got, []string{a.UID, bv.UID}) {
		t.Errorf("protected version removed: ls lists %v", got)
	}
	b.restore(a.UID, imgA)

	r = b.ok("unprotect", a.UID, "--json")
	if ps := e2eDecode[[]e2eVersion](t, r); len(ps) != 1 || ps[0].UID != a.UID || ps[0].Protected {
		t.Errorf("unprotect --json: %+v", ps)
	}
	r = b.ok("rm", a.UID, "--json")
	if rm := e2eDecode[map[string][]string](t, r); !slices.Equal(rm["removed"], []string{a.UID}) {
		t.Errorf("rm --json: %v", rm)
	}
	if got := b.lsUIDs(); !slices.Equal(got, []string{bv.UID}) {
		t.Errorf("ls lists %v after rm, want only %s", got, bv.UID)
	}
	b.fail(66, "restore", a.UID, b.path("gone.img"))
	b.restore(bv.UID, imgB)

	// stats of the store.
	r = b.ok("stats")
	rows := e2eTable(t, r)
	if rows["versions"] != "1" || rows["block size"] != "4.0 MiB" || rows["stored blocks"] == "" {
		t.Errorf("stats table: %v\n%v", rows, r)
	}
	st := e2eDecode[map[string]any](t, b.ok("stats", "--json"))
	if st["versions"] != 1.0 || st["block_size"] != float64(e2eBS) || st["blocks"] == nil || st["stored_bytes"] == nil {
		t.Errorf("stats --json: %v", st)
	}
	// stats of a version.
	r = b.ok("stats", bv.UID)
	rows = e2eTable(t, r)
	if rows["uid"] != bv.UID || rows["volume"] != "vol-b" || rows["status"] != "valid" ||
		!strings.Contains(rows["size"], fmt.Sprint(bv.Size)) {
		t.Errorf("stats VERSION table: %v\n%v", rows, r)
	}
	sv := e2eDecode[e2eVersion](t, b.ok("stats", bv.UID, "--json"))
	lv := b.version(bv.UID)
	if sv.UID != bv.UID || sv.Size != lv.Size || sv.BytesWritten != lv.BytesWritten || sv.Status != "valid" {
		t.Errorf("stats VERSION --json: %+v, ls: %+v", sv, lv)
	}
}

// e2eTable parses a FIELD/VALUE table into a map.
func e2eTable(t *testing.T, r e2eRes) map[string]string {
	t.Helper()
	lines := e2eLines(r.stdout)
	if len(lines) < 2 || !strings.HasPrefix(lines[0], "FIELD") {
		t.Fatalf("not a FIELD/VALUE table:\n%v", r)
	}
	col := strings.Index(lines[0], "VALUE")
	rows := map[string]string{}
	for _, l := range lines[1:] {
		if len(l) < col {
			t.Fatalf("short table row %q:\n%v", l, r)
		}
		rows[strings.TrimSpace(l[:col])] = strings.TrimSpace(l[col:])
	}
	return rows
}

// TestConcurrency runs backups side by side with each other and with ls.
// It is not parallel with the other tests: it measures how long ls takes.
func TestConcurrency(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: backs up 256 MiB")
	}
	t.Run("two backups", func(t *testing.T) {
		b := e2eNewBox(t)
		b.ok("ls") // creates the store
		imgs := []string{b.path("a.img"), b.path("b.img")}
		e2eRandomFile(t, imgs[0], 48*e2eMiB, 31)
		e2eRandomFile(t, imgs[1], 40*e2eMiB+512, 32)
		ps := []*e2eProc{b.start("backup", imgs[0], "vol-a", "--json"), b.start("backup", imgs[1], "vol-b", "--json")}
		for i, p := range ps {
			r := p.wait(t)
			if r.code != 0 {
				t.Fatalf("concurrent backup %d failed:\n%v", i, r)
			}
			v := e2eDecode[e2eVersion](t, r)
			if v.Status != "valid" {
				t.Errorf("concurrent backup %d: %+v", i, v)
			}
			b.restore(v.UID, imgs[i])
		}
		if vs := b.ls(); len(vs) != 2 {
			t.Errorf("ls lists %d versions, want 2", len(vs))
		}
	})

	t.Run("first use by two processes", func(t *testing.T) {
		// Two commands that both find no store yet must not break it.
		for round := range 6 {
			b := e2eNewBox(t)
			ps := []*e2eProc{b.start("ls"), b.start("ls"), b.start("stats")}
			for _, p := range ps {
				if r := p.wait(t); r.code != 0 {
					t.Errorf("round %d: concurrent first use failed:\n%v", round, r)
				}
			}
			if r := b.run("ls"); r.code != 0 || r.stderr != "" {
				t.Fatalf("round %d: the store is unusable after concurrent first use:\n%v", round, r)
			}
		}
	})

	t.Run("ls during a backup", func(t *testing.T) {
		b := e2eNewBox(t)
		b.ok("ls")
		big := e2eBig(t)
		p := b.start("backup", big, "big", "--json")
		release := e2eThrottle(p.cmd.Process, time.Millisecond, 99*time.Millisecond)
		defer release()
		inc := b.waitVersion(p, func(v e2eVersion) bool { return v.Status == "incomplete" })
		for range 5 {
			r := b.ok("ls", "--json")
			if r.dur > 2*time.Second {
				t.Errorf("ls took %s during a backup, want < 2 s", r.dur)
			}
			if p.exited() {
				t.Fatalf("the backup ended before ls could be measured during it:\n%v", p.wait(t))
			}
			time.Sleep(100 * time.Millisecond)
		}
		release()
		r := p.wait(t)
		if r.code != 0 {
			t.Fatalf("the backup failed:\n%v", r)
		}
		if v := e2eDecode[e2eVersion](t, r); v.UID != inc.UID || v.Status != "valid" {
			t.Errorf("backup: %+v, want %s valid", v, inc.UID)
		}
	})
}

// TestFullDisk: a backup that fills the store's file system fails with
// exit 71 and leaves the store usable.
func TestFullDisk(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	mnt := b.path("mnt")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Fatalf("mounting a 20 MiB tmpfs (this test needs root): %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	b.setHome(filepath.Join(mnt, "store"))
	b.ok("init")
	big := b.path("random64.img")
	e2eRandomFile(t, big, 64*e2eMiB, 41)
	r := b.fail(71, "backup", big, "vol")
	if !strings.Contains(r.stderr, "space") {
		t.Errorf("the message should say there is no space left:\n%v", r)
	}
	vs := b.ls()
	if len(vs) != 1 || vs[0].Status != "incomplete" {
		t.Fatalf("ls after the failed backup: %+v, want one incomplete version", vs)
	}
	small := b.path("small.img")
	e2eRandomFile(t, small, 2*e2eMiB+100, 42)
	v := b.backup(small, "small")
	b.restore(v.UID, small)
	b.ok("rm", vs[0].UID)
	if got := b.lsUIDs(); !slices.Equal(got, []string{v.UID}) {
		t.Errorf("ls lists %v after rm of the incomplete version, want only %s", got, v.UID)
	}
}

// TestVersionCommand: version needs no store.
func TestVersionCommand(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	r := b.ok("version")
	if !strings.HasPrefix(r.stdout, "backy ") || !strings.Contains(r.stdout, "metastore schema") || r.stderr != "" {
		t.Errorf("version:\n%v", r)
	}
	info := e2eDecode[map[string]any](t, b.ok("version", "--json"))
	if info["version"] == nil || info["metastore_schema"] == nil {
		t.Errorf("version --json: %v", info)
	}
	if _, err := os.Stat(b.home); err == nil {
		t.Errorf("version created the store %s", b.home)
	}
}
