package metastore

import (
	"encoding/binary"
	"errors"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/backy/backy/internal/block"
)

// newTestDB creates a store in a temp dir and checks its consistency when
// the test ends, so every test is also a consistency test.
func newTestDB(t *testing.T) *DB {
	t.Helper()
	db, err := Create(filepath.Join(t.TempDir(), "backy.db"), 4<<20, [16]byte{1}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		problems, err := db.Check()
		if err != nil {
			t.Error(err)
		}
		for _, p := range problems {
			t.Error(p)
		}
		db.Close()
	})
	return db
}

func rec(i int) block.Record {
	id := block.Sum([]byte{byte(i), byte(i >> 8), 'x'})
	var n block.Name
	copy(n[:], id[:])
	n[0] ^= 0xff
	return block.Record{ID: id, Name: n, Size: 4 << 20, StoredSize: 4<<20 + 40}
}

func newVersion(t *testing.T, db *DB, volume string) *Version {
	t.Helper()
	uid, err := NewUID(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	v := &Version{UID: uid, Volume: volume, Date: time.Now().UTC(), Size: 10 << 20, BlockSize: 4 << 20, Status: StatusIncomplete}
	if err := db.CreateVersion(v); err != nil {
		t.Fatal(err)
	}
	return v
}

func refsOf(t *testing.T, db *DB, id block.ID) uint64 {
	t.Helper()
	var n uint64
	_ = db.view(func(tx *bolt.Tx) error {
		r, _ := decodeRecord(id[:], tx.Bucket(bktBlocks).Get(id[:]))
		n = r.Refs
		return nil
	})
	return n
}

func TestCommitCountsAndRemove(t *testing.T) {
	db := newTestDB(t)
	a, b, c := rec(1), rec(2), rec(3)
	v1 := newVersion(t, db, "vol")
	// Two commits: the second replaces the tail page.
	if _, err := db.Commit(Commit{UID: v1.UID, Pages: []PageWrite{NewPage([]block.ID{a.ID})}, New: []block.Record{a}}); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Commit(Commit{UID: v1.UID, At: 0, Pages: []PageWrite{NewPage([]block.ID{a.ID, block.Sparse, b.ID})}, New: []block.Record{b},
		Update: func(v *Version) error { v.Status = StatusValid; return nil }}); err != nil {
		t.Fatal(err)
	}
	if got := refsOf(t, db, a.ID); got != 1 {
		t.Fatalf("a refs = %d after tail replacement, want 1", got)
	}
	// A second version with the same content shares the page: no block
	// record changes.
	v2 := newVersion(t, db, "other")
	res, err := db.Commit(Commit{UID: v2.UID, Pages: []PageWrite{NewPage([]block.ID{a.ID, block.Sparse, b.ID})}, New: []block.Record{c, {ID: a.ID, Name: c.Name}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Redundant) != 1 {
		t.Fatalf("redundant = %v, want the duplicate upload of a", res.Redundant)
	}
	if err := db.ForgetTrash(res.Redundant); err != nil {
		t.Fatal(err)
	}
	if got := refsOf(t, db, a.ID); got != 1 {
		t.Fatalf("a refs = %d with a shared page, want 1", got)
	}
	pl, _ := db.PageList(v2.UID)
	if len(pl) != 1 {
		t.Fatalf("v2 has %d pages", len(pl))
	}
	// Reuse the page verbatim in a third version.
	v3 := newVersion(t, db, "vol")
	if _, err := db.Commit(Commit{UID: v3.UID, Pages: []PageWrite{ReusePage(pl[0]), NewPage([]block.ID{c.ID})}}); err != nil {
		t.Fatal(err)
	}
	for _, v := range []*Version{v1, v2} {
		if err := db.RemoveVersion(v.UID); err != nil {
			t.Fatal(err)
		}
	}
	if got := refsOf(t, db, a.ID); got != 1 {
		t.Fatalf("a refs = %d, want 1 (v3)", got)
	}
	if err := db.RemoveVersion(v3.UID); err != nil {
		t.Fatal(err)
	}
	st, err := db.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Versions != 0 || st.Unreferenced != 3 || st.Blocks != 3 {
		t.Fatalf("stats after removing everything: %+v", st)
	}
	if _, err := db.Version(v1.UID); !errors.Is(err, ErrVersionNotFound) {
		t.Fatalf("removed version still found: %v", err)
	}
}

// TestCommitMissingBlock: a page naming a block with no record (a cleanup
// removed it after the writer's lookup) fails as a whole.
func TestCommitMissingBlock(t *testing.T) {
	db := newTestDB(t)
	v := newVersion(t, db, "vol")
	a, gone := rec(1), rec(2)
	_, err := db.Commit(Commit{UID: v.UID, Pages: []PageWrite{NewPage([]block.ID{a.ID, gone.ID})}, New: []block.Record{a}})
	var mb *MissingBlocksError
	if !errors.As(err, &mb) || len(mb.IDs) != 1 || mb.IDs[0] != gone.ID {
		t.Fatalf("got %v, want MissingBlocksError for one block", err)
	}
	st, _ := db.Stats()
	if st.Blocks != 0 {
		t.Fatalf("failed commit left %d block records", st.Blocks)
	}
	if _, err := db.Commit(Commit{UID: v.UID, Pages: []PageWrite{NewPage([]block.ID{a.ID, gone.ID})}, New: []block.Record{a, gone}}); err != nil {
		t.Fatal(err)
	}
}

func TestInvalidBlockReplaced(t *testing.T) {
	db := newTestDB(t)
	v := newVersion(t, db, "vol")
	a := rec(1)
	if _, err := db.Commit(Commit{UID: v.UID, Pages: []PageWrite{NewPage([]block.ID{a.ID})}, New: []block.Record{a}}); err != nil {
		t.Fatal(err)
	}
	_ = db.update(func(tx *bolt.Tx) error {
		s := db.state(tx)
		r, _, _ := s.record(a.ID)
		r.Invalid = true
		return s.putRecord(r)
	})
	fresh := a
	fresh.Name[1] ^= 1
	v2 := newVersion(t, db, "vol")
	res, err := db.Commit(Commit{UID: v2.UID, Pages: []PageWrite{NewPage([]block.ID{a.ID, block.Sparse})}, New: []block.Record{fresh}})
	if err != nil || len(res.Redundant) != 0 {
		t.Fatalf("%v %v", res, err)
	}
	out := make([]Lookup, 1)
	if err := db.LookupBlocks([]block.ID{a.ID}, out); err != nil || out[0].Record.Invalid || out[0].Record.Name != fresh.Name {
		t.Fatalf("record not replaced by the fresh copy: %+v %v", out[0], err)
	}
}

func TestSchemaChecks(t *testing.T) {
	db := newTestDB(t)
	path := db.Path()
	if _, err := Create(path, 4<<20, [16]byte{1}, Options{}); !errors.Is(err, ErrExists) {
		t.Fatalf("Create over an existing store: %v", err)
	}
	if _, err := Open(filepath.Join(t.TempDir(), "none.db"), Options{}); !errors.Is(err, ErrNoStore) {
		t.Fatalf("Open of nothing: %v", err)
	}
	setSchema := func(n uint32) {
		_ = db.update(func(tx *bolt.Tx) error {
			return tx.Bucket(bktMeta).Put(keySchema, binary.BigEndian.AppendUint32(nil, n))
		})
	}
	setSchema(CurrentSchema + 1)
	if _, err := Open(path, Options{}); !errors.Is(err, ErrNewerSchema) {
		t.Fatalf("newer schema: %v", err)
	}
	if n, err := SchemaOf(path); err != nil || n != CurrentSchema+1 {
		t.Fatalf("SchemaOf = %d, %v", n, err)
	}
	setSchema(CurrentSchema)
	db2, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	db2.Close()
}

func TestVersionLocks(t *testing.T) {
	db := newTestDB(t)
	v := newVersion(t, db, "vol")
	r1, err := db.LockVersion(v.UID, Shared)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := db.LockVersion(v.UID, Shared)
	if err != nil {
		t.Fatal("two readers must share a version", err)
	}
	if _, err := db.LockVersion(v.UID, Exclusive); !errors.Is(err, ErrLocked) {
		t.Fatalf("exclusive lock while read: %v", err)
	}
	r1.Unlock()
	r2.Unlock()
	w, err := db.LockVersion(v.UID, Exclusive)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.LockVersion(v.UID, Shared); !errors.Is(err, ErrLocked) {
		t.Fatalf("shared lock while written: %v", err)
	}
	w.Unlock()
	if _, err := db.LockVersion("../etc", Shared); err == nil {
		t.Fatal("malformed uid accepted")
	}
}

func TestRemoveLargeVersionInBatches(t *testing.T) {
	db := newTestDB(t)
	v := newVersion(t, db, "vol")
	var pages []PageWrite
	var recs []block.Record
	for p := 0; p < removeBatchPages*2+3; p++ {
		r := rec(1000 + p)
		recs = append(recs, r)
		pages = append(pages, NewPage([]block.ID{r.ID, r.ID}))
	}
	if _, err := db.Commit(Commit{UID: v.UID, Pages: pages, New: recs}); err != nil {
		t.Fatal(err)
	}
	if err := db.RemoveVersion(v.UID); err != nil {
		t.Fatal(err)
	}
}
