package metastore

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/backy/backy/internal/block"
)

// finished makes a valid version with the given records as its one page.
func finished(t *testing.T, db *DB, recs ...block.Record) *Version {
	t.Helper()
	v := newVersion(t, db, "vol")
	ids := make([]block.ID, 3)
	for i := range ids {
		ids[i] = block.Sparse
	}
	for i, r := range recs {
		ids[i] = r.ID
	}
	if _, err := db.Commit(Commit{UID: v.UID, Pages: []PageWrite{NewPage(ids)}, New: recs, Update: func(v *Version) error {
		v.Status, v.BlocksDone = StatusValid, 3
		return nil
	}}); err != nil {
		t.Fatal(err)
	}
	return v
}

func pending(t *testing.T, db *DB) []string {
	t.Helper()
	p, err := db.PendingSnapshots()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// record writes a snapshot of uid at the current generation.
func record(t *testing.T, db *DB, uid string) uint64 {
	t.Helper()
	_, gen, err := db.SnapshotVersion(uid)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := db.SetSnapshot(uid, gen, 7); err != nil || !ok {
		t.Fatalf("SetSnapshot(%s, %d) = %v, %v", uid, gen, ok, err)
	}
	return gen
}

func TestSnapshotBookkeeping(t *testing.T) {
	db := newTestDB(t)
	incomplete := newVersion(t, db, "vol")
	a := finished(t, db, rec(1))
	b := finished(t, db, rec(2))
	if got := pending(t, db); !slices.Equal(got, []string{a.UID, b.UID}) {
		t.Fatalf("pending = %v, want the two complete versions %s %s (not %s)", got, a.UID, b.UID, incomplete.UID)
	}
	ga := record(t, db, a.UID)
	record(t, db, b.UID)
	if got := pending(t, db); len(got) != 0 {
		t.Fatalf("pending after recording = %v", got)
	}
	// An older snapshot never replaces a newer record.
	if ok, err := db.SetSnapshot(a.UID, ga-1, 1); err != nil || ok {
		t.Errorf("SetSnapshot with an older generation = %v, %v; want false", ok, err)
	}
	// The outcome of a scrub is not worth a new snapshot.
	if err := db.SetLastScrub(a.UID, ScrubRecord{Kind: "scrub", OK: true}); err != nil {
		t.Fatal(err)
	}
	if got := pending(t, db); len(got) != 0 {
		t.Errorf("pending after SetLastScrub = %v, want none", got)
	}
	// A protection change is.
	if _, err := db.UpdateVersion(a.UID, func(v *Version) error { v.Protected = true; return nil }); err != nil {
		t.Fatal(err)
	}
	if got := pending(t, db); !slices.Equal(got, []string{a.UID}) {
		t.Errorf("pending after protect = %v, want %s", got, a.UID)
	}
	record(t, db, a.UID)
	// A record switching objects makes every snapshot stale.
	nr := rec(1)
	nr.Name[1] ^= 0x55
	if _, err := db.ReplaceObjects([]Replacement{{Old: rec(1).Name, New: nr}}); err != nil {
		t.Fatal(err)
	}
	if got := pending(t, db); !slices.Equal(got, []string{a.UID, b.UID}) {
		t.Errorf("pending after a replacement = %v, want both", got)
	}
	_ = db.ForgetTrash([]block.Name{rec(1).Name})
	record(t, db, a.UID)
	record(t, db, b.UID)
	// Marking a block invalid changes the versions using it.
	if _, err := db.MarkInvalid([]block.ID{rec(2).ID}); err != nil {
		t.Fatal(err)
	}
	if got := pending(t, db); !slices.Equal(got, []string{b.UID}) {
		t.Errorf("pending after MarkInvalid = %v, want %s", got, b.UID)
	}
	// Removal drops the bookkeeping (Check verifies no vmeta entry is left).
	if err := db.RemoveVersion(a.UID); err != nil {
		t.Fatal(err)
	}
	st, err := db.Snapshots()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := st[a.UID]; ok {
		t.Errorf("vmeta entry of removed %s remains", a.UID)
	}
	if _, err := db.SetSnapshot(a.UID, 1<<40, 1); !errors.Is(err, ErrVersionNotFound) {
		t.Errorf("SetSnapshot of a removed version: %v", err)
	}
}

func TestImportAllOrNothing(t *testing.T) {
	db := newTestDB(t)
	existing := finished(t, db, rec(1))
	trashed := rec(3)
	// Put an object in the trash: a record whose only page goes.
	gone := finished(t, db, trashed)
	if err := db.RemoveVersion(gone.UID); err != nil {
		t.Fatal(err)
	}
	if _, err := db.CollectGarbage(block.Sparse, 10); err != nil {
		t.Fatal(err)
	}
	before, _ := db.Stats()
	uid, _ := NewUID(time.Now())
	v := &Version{UID: uid, Volume: "imp", Size: 3 << 22, BlockSize: 4 << 20, Status: StatusValid, BlocksDone: 3}
	cases := []struct {
		name string
		fn   func(im *Importer) error
		want error
	}{
		{"uid exists", func(im *Importer) error {
			c := *existing
			return im.CreateVersion(&c)
		}, nil},
		{"trashed object", func(im *Importer) error {
			if err := im.CreateVersion(v); err != nil {
				return err
			}
			_, err := im.AppendPage(uid, []block.ID{rec(4).ID, trashed.ID, block.Sparse}, []block.Record{rec(4), trashed})
			return err
		}, ErrTrashed},
		{"no record", func(im *Importer) error {
			if err := im.CreateVersion(v); err != nil {
				return err
			}
			_, err := im.AppendPage(uid, []block.ID{rec(5).ID, rec(6).ID, block.Sparse}, []block.Record{rec(5)})
			return err
		}, nil},
		{"unregistered encryption version", func(im *Importer) error {
			if err := im.CreateVersion(v); err != nil {
				return err
			}
			r := rec(7)
			r.EncVersion = 3
			_, err := im.AppendPage(uid, []block.ID{r.ID, block.Sparse, block.Sparse}, []block.Record{r})
			return err
		}, nil},
	}
	for _, tc := range cases {
		err := db.Import(tc.fn)
		if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
			t.Errorf("%s: Import = %v, want an error (%v)", tc.name, err, tc.want)
		}
		if after, _ := db.Stats(); after != before {
			t.Errorf("%s: a failed import changed the store: %+v -> %+v", tc.name, before, after)
		}
	}
	// A good import; the existing record of block 1 wins over another name.
	other := rec(1)
	other.Name[2] ^= 1
	err := db.Import(func(im *Importer) error {
		if err := im.CreateVersion(v); err != nil {
			return err
		}
		n, err := im.AppendPage(uid, []block.ID{rec(1).ID, rec(8).ID, rec(8).ID}, []block.Record{other, rec(8)})
		if err != nil {
			return err
		}
		if n != 1 {
			t.Errorf("AppendPage reported %d conflicts, want 1 (block 1)", n)
		}
		return im.SetSnapshot(uid, 1000, 9)
	})
	if err != nil {
		t.Fatal(err)
	}
	if r, ok, _ := db.LookupBlock(rec(1).ID); !ok || r.Name != rec(1).Name {
		t.Errorf("record of block 1 = %v, %v; want the existing one", r, ok)
	}
	if n := refsOf(t, db, rec(8).ID); n != 2 {
		t.Errorf("block 8 has %d references, want 2", n)
	}
	if got := pending(t, db); slices.Contains(got, uid) {
		t.Errorf("imported version with its snapshot recorded is pending: %v", got)
	}
	// The generation moved past the imported snapshot's.
	if _, gen, _ := db.SnapshotVersion(uid); gen < 1000 {
		t.Errorf("generation %d after importing a snapshot of generation 1000", gen)
	}
}
