package main

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// e2eStoreStats is 'backy stats --json' of the store.
type e2eStoreStats struct {
	Versions     int   `json:"versions"`
	Blocks       int64 `json:"blocks"`
	StoredBytes  int64 `json:"stored_bytes"`
	Unreferenced int64 `json:"unreferenced_blocks"`
	Trash        int64 `json:"trash_objects"`
}

type e2eCleanupRes struct {
	BlocksDeleted int64 `json:"blocks_deleted"`
	BytesFreed    int64 `json:"bytes_freed"`
	TrashDeleted  int64 `json:"trash_objects_deleted"`
	Orphans       *struct {
		Objects   int64 `json:"objects_deleted"`
		Bytes     int64 `json:"bytes_freed"`
		Listed    int64 `json:"objects_listed"`
		TempFiles int   `json:"temp_files_removed"`
	} `json:"orphans"`
}

// e2eObjectUsage counts the objects below dir and their bytes, and
// separately the temporary files (names starting with ".").
func e2eObjectUsage(t *testing.T, dir string) (e2eUsage, int) {
	t.Helper()
	var u e2eUsage
	temps := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // the root not yet made, or a temp file renamed
			}
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		if strings.HasPrefix(d.Name(), ".") {
			temps++
			return nil
		}
		info, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		u.files++
		u.bytes += info.Size()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return u, temps
}

func (b *e2eBox) storeStats() e2eStoreStats {
	b.t.Helper()
	return e2eDecode[e2eStoreStats](b.t, b.ok("stats", "--json"))
}

// TestCleanupAfterRm: rm + cleanup frees exactly the removed version's
// blocks, on disk and in the statistics; the other version restores.
func TestCleanupAfterRm(t *testing.T) {
	b := e2eNewBox(t)
	a, c := b.path("a.img"), b.path("c.img")
	e2eRandomFile(t, a, 16<<20, 1)
	e2eRandomFile(t, c, 16<<20, 2)
	// c shares its first 4 MiB block with a.
	e2eWriteAt(t, c, 0, e2eReadFile(t, a)[:4<<20])
	va := b.backup(a, "vol")
	vc := b.backup(c, "vol")
	before := b.storeStats()
	usage := e2eDirUsage(t, filepath.Join(b.dataDir(), "blocks"))
	b.ok("rm", "--force", vc.UID)
	if st := b.storeStats(); st.Unreferenced != 3 {
		t.Fatalf("after rm: %+v, want 3 unreferenced blocks", st)
	}
	res := e2eDecode[e2eCleanupRes](t, b.ok("cleanup", "--json"))
	after := b.storeStats()
	if res.BlocksDeleted != 3 || res.BytesFreed != before.StoredBytes-after.StoredBytes || res.BytesFreed < 3*(4<<20) {
		t.Fatalf("cleanup %+v; stats before %+v, after %+v", res, before, after)
	}
	if after.Blocks != before.Blocks-3 || after.Unreferenced != 0 || after.Trash != 0 {
		t.Fatalf("stats after cleanup: %+v", after)
	}
	u := e2eDirUsage(t, filepath.Join(b.dataDir(), "blocks"))
	if u.files != usage.files-3 || u.bytes != usage.bytes-res.BytesFreed {
		t.Fatalf("data usage %+v -> %+v, freed %d", usage, u, res.BytesFreed)
	}
	b.restore(va.UID, a)
	// The table form, and nothing left to do.
	r := b.ok("cleanup")
	if !strings.Contains(r.stdout, "unreferenced blocks deleted") {
		t.Fatalf("cleanup output:\n%v", r)
	}
	if res := e2eDecode[e2eCleanupRes](t, b.ok("cleanup", "--json")); res.BlocksDeleted != 0 || res.Orphans != nil {
		t.Fatalf("second cleanup: %+v", res)
	}
	b.fail(exitUsage, "cleanup", "--no-wait")
}

// TestCleanupOrphansAfterKill: a backup killed with SIGKILL leaves stored,
// uncommitted objects; 'cleanup --orphans' removes them and nothing else,
// and the killed version can still be resumed.
func TestCleanupOrphansAfterKill(t *testing.T) {
	b := e2eNewBox(t)
	a, big := b.path("a.img"), b.path("big.img")
	e2eRandomFile(t, a, 8<<20, 3)
	e2eRandomFile(t, big, 256<<20, 4)
	va := b.backup(a, "vol")
	blocks := filepath.Join(b.dataDir(), "blocks")
	u0, _ := e2eObjectUsage(t, blocks)
	base := u0.files
	p := b.start("backup", big, "vol")
	// Kill it once it has stored some objects (it commits every 2 s).
	deadline := time.Now().Add(60 * time.Second)
	for u, _ := e2eObjectUsage(t, blocks); u.files < base+4; u, _ = e2eObjectUsage(t, blocks) {
		if p.exited() || time.Now().After(deadline) {
			t.Fatalf("backup ended or stalled before it stored 4 objects:\n%v", p.wait(t))
		}
		time.Sleep(5 * time.Millisecond)
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	p.wait(t)
	st := b.storeStats()
	objects, temps := e2eObjectUsage(t, blocks)
	// A stale temporary file, as a writer killed in mid-Put leaves.
	if err := os.MkdirAll(filepath.Join(blocks, "00"), 0o700); err != nil {
		t.Fatal(err)
	}
	e2eWriteFile(t, filepath.Join(blocks, "00", ".tmp-killed"), []byte("partial"))
	orphans := objects.files - st.Blocks
	if orphans <= 0 {
		t.Fatalf("%d objects, %d records: the kill left no orphans", objects.files, st.Blocks)
	}
	res := e2eDecode[e2eCleanupRes](t, b.ok("cleanup", "--orphans", "--json"))
	if res.Orphans == nil || res.Orphans.Objects != orphans || res.Orphans.TempFiles != temps+1 || res.BlocksDeleted != 0 {
		t.Fatalf("cleanup --orphans: %+v (orphans %+v), want %d orphans and %d temp files", res, res.Orphans, orphans, temps+1)
	}
	if u, tmp := e2eObjectUsage(t, blocks); u.files != st.Blocks || tmp != 0 || objects.bytes-u.bytes != res.Orphans.Bytes {
		t.Fatalf("after the sweep: %+v (%d temp files), %d records; before %+v, freed %d", u, tmp, st.Blocks, objects, res.Orphans.Bytes)
	}
	b.restore(va.UID, a)
	var killed string
	for _, v := range b.ls() {
		if v.Status == "incomplete" {
			killed = v.UID
		}
	}
	if killed == "" {
		t.Fatal("no incomplete version after the kill")
	}
	b.ok("backup", big, "vol", "--resume", killed)
	b.restore(killed, big)
	if res := e2eDecode[e2eCleanupRes](t, b.ok("cleanup", "--orphans", "--json")); res.Orphans.Objects != 0 {
		t.Fatalf("orphans after the resumed backup: %+v", res.Orphans)
	}
}

// TestCleanupOrphansNoWait: the orphan sweep refuses to run beside a
// backup with --no-wait (exit 75), and waits for it without.
func TestCleanupOrphansNoWait(t *testing.T) {
	b := e2eNewBox(t)
	big := b.path("big.img")
	e2eRandomFile(t, big, 64<<20, 5)
	b.ok("stats") // creates the default store
	p := b.start("backup", big, "vol", "--json")
	release := e2eThrottle(p.cmd.Process, 2*time.Millisecond, 20*time.Millisecond)
	// Wait until the backup holds the writers lock (its version exists).
	b.waitVersion(p, func(v e2eVersion) bool { return true })
	r := b.fail(exitLocked, "cleanup", "--orphans", "--no-wait")
	if !strings.Contains(r.stderr, "backup or migrate-encryption is running") {
		t.Fatalf("message: %s", r.stderr)
	}
	sweep := b.start("cleanup", "--orphans", "--json")
	time.Sleep(300 * time.Millisecond)
	if sweep.exited() {
		t.Fatalf("the sweep did not wait for the backup:\n%v", sweep.wait(t))
	}
	release()
	if r := p.wait(t); r.code != 0 {
		t.Fatalf("backup:\n%v", r)
	}
	rs := sweep.wait(t)
	if rs.code != 0 {
		t.Fatalf("sweep:\n%v", rs)
	}
	if res := e2eDecode[e2eCleanupRes](t, rs); res.Orphans == nil || res.Orphans.Objects != 0 || res.Orphans.Listed != 16 {
		t.Fatalf("sweep after the backup: %+v", res.Orphans)
	}
	v := b.ls()[0]
	b.restore(v.UID, big)
}
