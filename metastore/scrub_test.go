package metastore

import (
	"slices"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/backy/backy/internal/block"
)

// validVersion makes a valid 3-block version (10 MiB at 4 MiB) of entries.
func validVersion(t *testing.T, db *DB, entries []block.ID, recs ...block.Record) *Version {
	t.Helper()
	v := newVersion(t, db, "vol")
	_, err := db.Commit(Commit{UID: v.UID, Pages: []PageWrite{NewPage(entries)}, New: recs,
		Update: func(v *Version) error { v.Status, v.BlocksDone = StatusValid, 3; return nil }})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func statusOf(t *testing.T, db *DB, uid string) Status {
	t.Helper()
	v, err := db.Version(uid)
	if err != nil {
		t.Fatal(err)
	}
	return v.Status
}

func invalidFlag(t *testing.T, db *DB, id block.ID) bool {
	t.Helper()
	out := make([]Lookup, 1)
	if err := db.LookupBlocks([]block.ID{id}, out); err != nil || !out[0].Found {
		t.Fatalf("lookup %s: %v %v", id.Short(), out[0].Found, err)
	}
	return out[0].Record.Invalid
}

// TestMarkValid: healing a block makes valid again exactly the versions
// that have no other invalid block, and only when the verified object is
// still the one the record names.
func TestMarkValid(t *testing.T) {
	db := newTestDB(t)
	a, b, c := rec(1), rec(2), rec(3)
	v1 := validVersion(t, db, []block.ID{a.ID, block.Sparse, b.ID}, a, b)
	v2 := validVersion(t, db, []block.ID{a.ID, c.ID, block.Sparse}, c)
	v3 := newVersion(t, db, "vol") // incomplete: never made valid
	if _, err := db.Commit(Commit{UID: v3.UID, Pages: []PageWrite{NewPage([]block.ID{a.ID})}}); err != nil {
		t.Fatal(err)
	}
	uids, err := db.MarkInvalid([]block.ID{a.ID, b.ID})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(uids)
	want := []string{v1.UID, v2.UID, v3.UID}
	slices.Sort(want)
	if !slices.Equal(uids, want) {
		t.Fatalf("MarkInvalid affected %v, want %v", uids, want)
	}
	if statusOf(t, db, v3.UID) != StatusIncomplete {
		t.Fatal("MarkInvalid changed an incomplete version")
	}
	// A record that names another object than the one verified stays.
	other := a
	other.Name[1] ^= 1
	healed, valid, err := db.MarkValid([]block.Record{other})
	if err != nil || len(healed)+len(valid) != 0 || !invalidFlag(t, db, a.ID) {
		t.Fatalf("MarkValid of another object healed %v, validated %v (%v)", healed, valid, err)
	}
	healed, valid, err = db.MarkValid([]block.Record{a, a})
	if err != nil {
		t.Fatal(err)
	}
	if len(healed) != 1 || healed[0] != a.ID || !slices.Equal(valid, []string{v2.UID}) {
		t.Fatalf("MarkValid(a) healed %v, validated %v; want a and %s only", healed, valid, v2.UID)
	}
	if invalidFlag(t, db, a.ID) || statusOf(t, db, v1.UID) != StatusInvalid || statusOf(t, db, v3.UID) != StatusIncomplete {
		t.Fatal("MarkValid(a): wrong states")
	}
	_, valid, err = db.MarkValid([]block.Record{b})
	if err != nil || !slices.Equal(valid, []string{v1.UID}) {
		t.Fatalf("MarkValid(b) validated %v (%v), want %s", valid, err, v1.UID)
	}
	// Already valid: nothing to do.
	healed, valid, err = db.MarkValid([]block.Record{b})
	if err != nil || len(healed)+len(valid) != 0 {
		t.Fatalf("second MarkValid(b): %v %v %v", healed, valid, err)
	}
}

// TestScrubMapAndRevalidate: a missing page is reported without ending the
// walk, keeps the version from being made valid, and a version marked
// invalid for its map becomes valid once the map is whole again.
func TestScrubMapAndRevalidate(t *testing.T) {
	db := newTestDB(t)
	a, b := rec(1), rec(2)
	v := validVersion(t, db, []block.ID{a.ID, block.Sparse, b.ID}, a, b)
	pl, err := db.PageList(v.UID)
	if err != nil {
		t.Fatal(err)
	}
	var raw []byte
	_ = db.update(func(tx *bolt.Tx) error {
		raw = slices.Clone(tx.Bucket(bktPages).Get(pl[0][:]))
		return tx.Bucket(bktPages).Delete(pl[0][:])
	})
	var chunks []ScrubChunk
	if err := db.ScrubMap(v.UID, func(c ScrubChunk) error { chunks = append(chunks, c); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(chunks) != 1 || chunks[0].Problem == "" || len(chunks[0].IDs) != 0 {
		t.Fatalf("ScrubMap of a map with a missing page gave %+v", chunks)
	}
	if changed, err := db.MarkVersionInvalid(v.UID); err != nil || !changed {
		t.Fatalf("MarkVersionInvalid: %v %v", changed, err)
	}
	if changed, err := db.Revalidate(v.UID); err != nil || changed {
		t.Fatalf("Revalidate with a page missing: %v %v", changed, err)
	}
	_ = db.update(func(tx *bolt.Tx) error { return tx.Bucket(bktPages).Put(pl[0][:], raw) })
	chunks = nil
	if err := db.ScrubMap(v.UID, func(c ScrubChunk) error { chunks = append(chunks, c); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(chunks) != 1 || chunks[0].Problem != "" || len(chunks[0].IDs) != 3 || !chunks[0].Found[0] || chunks[0].Records[2].ID != b.ID {
		t.Fatalf("ScrubMap of a whole map gave %+v", chunks)
	}
	if changed, err := db.Revalidate(v.UID); err != nil || !changed || statusOf(t, db, v.UID) != StatusValid {
		t.Fatalf("Revalidate of a whole map: %v %v", changed, err)
	}
	// A version whose blocks_done falls short is not complete.
	if _, err := db.UpdateVersion(v.UID, func(v *Version) error { v.Status, v.BlocksDone = StatusInvalid, 2; return nil }); err != nil {
		t.Fatal(err)
	}
	if changed, err := db.Revalidate(v.UID); err != nil || changed {
		t.Fatalf("Revalidate of an incomplete map: %v %v", changed, err)
	}
	at := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := db.SetLastScrub(v.UID, ScrubRecord{At: at, Kind: "deep-scrub", Percent: 50, OK: true, BlocksChecked: 2}); err != nil {
		t.Fatal(err)
	}
	got, err := db.Version(v.UID)
	if err != nil || got.LastScrub == nil || !got.LastScrub.At.Equal(at) || got.LastScrub.Kind != "deep-scrub" || got.LastScrub.BlocksChecked != 2 {
		t.Fatalf("last scrub = %+v (%v)", got.LastScrub, err)
	}
}
