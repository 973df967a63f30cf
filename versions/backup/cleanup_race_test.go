package backup_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/blockstore/backend/faulty"
	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/versions/backup"
)

// simulateCleanup does what a cleanup does to an unreferenced block: it
// deletes the object and then its record. The metastore has no API for the
// latter yet, so this edits the database directly (schema 3, the buckets of schema 2: buckets
// "blocks", "gc", "meta" with its counters, and "encstats").
func simulateCleanup(t *testing.T, e *env, id block.ID) {
	t.Helper()
	look := make([]metastore.Lookup, 1)
	if err := e.db.LookupBlocks([]block.ID{id}, look); err != nil || !look[0].Found {
		t.Fatalf("block %s to clean up: found %v, %v", id.Short(), look[0].Found, err)
	}
	rec := look[0].Record
	if err := os.Remove(filepath.Join(e.root, blockstore.ObjectName(rec.Name))); err != nil {
		t.Fatal(err)
	}
	if metastore.CurrentSchema != 3 {
		// Fail rather than skip, so a schema change updates this test
		// (or replaces it with the cleanup API) instead of dropping it.
		t.Fatal("simulateCleanup edits schema-3 buckets; update it for the new schema")
	}
	bdb, err := bolt.Open(e.db.Path(), 0o600, &bolt.Options{Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer bdb.Close()
	err = bdb.Update(func(tx *bolt.Tx) error {
		blocks, gc, meta := tx.Bucket([]byte("blocks")), tx.Bucket([]byte("gc")), tx.Bucket([]byte("meta"))
		if gc.Get(id[:]) == nil {
			return fmt.Errorf("block %s is referenced: no cleanup would remove it", id.Short())
		}
		if err := blocks.Delete(id[:]); err != nil {
			return err
		}
		if err := gc.Delete(id[:]); err != nil {
			return err
		}
		for k, d := range map[string]uint64{"blocks": 1, "stored_bytes": uint64(rec.StoredSize), "plain_bytes": uint64(rec.Size)} {
			v := binary.BigEndian.Uint64(meta.Get([]byte(k)))
			if err := meta.Put([]byte(k), binary.BigEndian.AppendUint64(nil, v-d)); err != nil {
				return err
			}
		}
		enc := tx.Bucket([]byte("encstats"))
		k := binary.BigEndian.AppendUint16(nil, rec.EncVersion)
		v := enc.Get(k)
		if len(v) != 16 {
			return fmt.Errorf("no encstats for encryption version %d", rec.EncVersion)
		}
		n, size := binary.BigEndian.Uint64(v)-1, binary.BigEndian.Uint64(v[8:])-uint64(rec.StoredSize)
		if n == 0 {
			return enc.Delete(k)
		}
		return enc.Put(k, binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, n), size))
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestCleanupRace: a block the backup deduplicated against is removed by a
// cleanup between the worker's lookup and the commit. The commit finds it
// missing; the engine reads the block from the source again, stores it and
// commits (or, if the source changed meanwhile, fails).
func TestCleanupRace(t *testing.T) {
	const bs = 64 << 10
	cases := []struct {
		name          string
		interval      time.Duration
		changeSource  bool
		want          error
		cleanupBlocks []int64 // blocks of B, deduplicated against A, whose block goes
	}{
		{"final-commit", 0, false, nil, []int64{5}},
		{"intermediate-commit", time.Millisecond, false, nil, []int64{5}},
		{"several", 0, false, nil, []int64{2, 5, 9}},
		{"source-changed", 0, true, backup.ErrSourceChanged, []int64{5}},
		// B holds A's block 3 eight times (blocks 2-9): workers that look
		// it up while another does wait for that one's answer.
		{"duplicates", 0, false, nil, []int64{9}},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, bs, blockstore.Options{})
			g := newGen(uint64(1000 + i))
			a := g.random(10 * bs)
			v1 := e.mustBackup(a, backup.Options{})
			// The blocks of A become unreferenced: a cleanup may remove them.
			if err := e.db.RemoveVersion(v1.UID); err != nil {
				t.Fatal(err)
			}
			// B holds A's blocks 0, 3 and 7 at positions 2, 5 and 9.
			b := g.random(12 * bs)
			copy(b[2*bs:3*bs], a[0:bs])
			copy(b[5*bs:6*bs], a[3*bs:4*bs])
			copy(b[9*bs:10*bs], a[7*bs:8*bs])
			newBlocks := 9
			if c.name == "duplicates" {
				for k := 2; k < 10; k++ {
					copy(b[k*bs:(k+1)*bs], a[3*bs:4*bs])
				}
				newBlocks = 4
			}
			path := e.writeImage(b)
			var mu sync.Mutex
			cleaned := map[int64]bool{}
			var last int64 = -1
			o := backup.Options{Workers: 4, CommitInterval: c.interval}
			if c.interval == 0 {
				o.CommitInterval = time.Hour
			}
			o.Progress = func(p backup.Progress) {
				// Called by the committer after it has taken block
				// p.Done/bs-1, before it commits it.
				mu.Lock()
				defer mu.Unlock()
				idx := (p.Done+bs-1)/bs - 1
				for k := last + 1; k <= idx; k++ {
					if slices.Contains(c.cleanupBlocks, k) && !cleaned[k] {
						cleaned[k] = true
						simulateCleanup(t, e, block.Sum(b[k*bs:(k+1)*bs]))
						if c.changeSource {
							f, err := os.OpenFile(path, os.O_WRONLY, 0)
							if err != nil {
								t.Fatal(err)
							}
							_, err = f.WriteAt([]byte("changed"), k*bs+10)
							f.Close()
							if err != nil {
								t.Fatal(err)
							}
						}
					}
				}
				last = idx
			}
			puts := e.fb.Calls(faulty.MethodPut)
			v, err := e.backup(t.Context(), path, o)
			if len(cleaned) != len(c.cleanupBlocks) {
				t.Fatalf("cleaned up %d blocks, want %d", len(cleaned), len(c.cleanupBlocks))
			}
			if c.want != nil {
				if !errors.Is(err, c.want) {
					t.Fatalf("backup = %v, want %v", err, c.want)
				}
				return
			}
			if err != nil {
				t.Fatalf("backup: %v", err)
			}
			// The new blocks, and the cleaned-up ones stored again.
			if n := e.fb.Calls(faulty.MethodPut) - puts; n != newBlocks+len(c.cleanupBlocks) {
				t.Errorf("%d puts, want %d", n, newBlocks+len(c.cleanupBlocks))
			}
			e.mustRestoreEqual(v.UID, b)
		})
	}
}
