package metastore

import (
	"bytes"
	"errors"
	"testing"

	"github.com/backy/backy/internal/block"
)

func encRec(i int, ev uint16, stored uint32) block.Record {
	r := rec(i)
	r.EncVersion = ev
	r.StoredSize = stored
	return r
}

func mustRegister(t *testing.T, db *DB, v uint16) {
	t.Helper()
	if _, err := db.RegisterEncVersion(v, []byte(`{"v":1}`)); err != nil {
		t.Fatal(err)
	}
}

func wantEncStats(t *testing.T, db *DB, want map[uint16]EncStat) {
	t.Helper()
	got, err := db.EncStats()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("encstats = %v, want %v", got, want)
	}
	for v, w := range want {
		if got[v] != w {
			t.Fatalf("encstats[%d] = %+v, want %+v (all: %v)", v, got[v], w, got)
		}
	}
}

func TestRegisterEncVersion(t *testing.T) {
	db := newTestDB(t)
	if _, err := db.RegisterEncVersion(0, []byte("x")); err == nil {
		t.Fatal("version 0 registered")
	}
	got, err := db.RegisterEncVersion(2, []byte("first"))
	if err != nil || string(got) != "first" {
		t.Fatalf("register: %q, %v", got, err)
	}
	// The second registration of a version loses: the first stays.
	got, err = db.RegisterEncVersion(2, []byte("second"))
	if err != nil || string(got) != "first" {
		t.Fatalf("second register: %q, %v", got, err)
	}
	all, err := db.EncVersions()
	if err != nil || len(all) != 1 || !bytes.Equal(all[2], []byte("first")) {
		t.Fatalf("EncVersions = %v, %v", all, err)
	}
}

func TestEncStatsFollowCommitsAndReplacements(t *testing.T) {
	db := newTestDB(t)
	mustRegister(t, db, 1)
	mustRegister(t, db, 3)
	a, b, c := encRec(1, 0, 100), encRec(2, 0, 200), encRec(3, 1, 300)
	v := newVersion(t, db, "vol")
	if _, err := db.Commit(Commit{UID: v.UID, Pages: []PageWrite{NewPage([]block.ID{a.ID, b.ID, c.ID, a.ID})}, New: []block.Record{a, b, c}}); err != nil {
		t.Fatal(err)
	}
	wantEncStats(t, db, map[uint16]EncStat{0: {2, 300}, 1: {1, 300}})
	if n, err := db.EncVersionsOf(v.UID); err != nil || len(n) != 2 || n[0] != 3 || n[1] != 1 {
		t.Fatalf("EncVersionsOf = %v, %v", n, err)
	}

	// Replace a and c at version 3; b's replacement names a stale object
	// and is skipped.
	na, nc, nb := encRec(1, 3, 150), encRec(3, 3, 350), encRec(2, 3, 250)
	na.Name[1]++
	nc.Name[1]++
	nb.Name[1]++
	stale := b.Name
	stale[2]++
	res, err := db.ReplaceObjects([]Replacement{{Old: a.Name, New: na}, {Old: c.Name, New: nc}, {Old: stale, New: nb}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Replaced) != 2 || res.Replaced[0] != a.Name || res.Replaced[1] != c.Name {
		t.Fatalf("replaced %v", res.Replaced)
	}
	if len(res.Skipped) != 1 || res.Skipped[0] != nb.Name {
		t.Fatalf("skipped %v", res.Skipped)
	}
	wantEncStats(t, db, map[uint16]EncStat{0: {1, 200}, 3: {2, 500}})
	if got := refsOf(t, db, a.ID); got != 2 {
		t.Fatalf("a has %d references after replacement, want 2", got)
	}
	out := make([]Lookup, 1)
	if err := db.LookupBlocks([]block.ID{a.ID}, out); err != nil || out[0].Record.Name != na.Name || out[0].Record.EncVersion != 3 {
		t.Fatalf("lookup after replacement: %+v, %v", out[0], err)
	}
	trash, err := db.Trash(10)
	if err != nil || len(trash) != 3 {
		t.Fatalf("trash = %v, %v; want the two old objects and the skipped new one", trash, err)
	}
	var names []block.Name
	for _, e := range trash {
		names = append(names, e.Name)
	}
	if err := db.ForgetTrash(names); err != nil {
		t.Fatal(err)
	}
	if trash, _ := db.Trash(10); len(trash) != 0 {
		t.Fatalf("trash not emptied: %v", trash)
	}
	if n, err := db.EncVersionsOf(v.UID); err != nil || n[0] != 1 || n[3] != 3 {
		t.Fatalf("EncVersionsOf after replacement = %v, %v", n, err)
	}

	// Removing the version moves no statistics: records stay until cleanup.
	if err := db.RemoveVersion(v.UID); err != nil {
		t.Fatal(err)
	}
	wantEncStats(t, db, map[uint16]EncStat{0: {1, 200}, 3: {2, 500}})
}

func TestReplaceObjectsSkipsInvalidRecords(t *testing.T) {
	db := newTestDB(t)
	mustRegister(t, db, 1)
	a := encRec(1, 0, 100)
	v := newVersion(t, db, "vol")
	if _, err := db.Commit(Commit{UID: v.UID, Pages: []PageWrite{NewPage([]block.ID{a.ID})}, New: []block.Record{a}}); err != nil {
		t.Fatal(err)
	}
	if _, err := db.MarkInvalid([]block.ID{a.ID}); err != nil {
		t.Fatal(err)
	}
	na := encRec(1, 1, 120)
	na.Name[3]++
	res, err := db.ReplaceObjects([]Replacement{{Old: a.Name, New: na}})
	if err != nil || len(res.Replaced) != 0 || len(res.Skipped) != 1 {
		t.Fatalf("replace of an invalid record: %+v, %v", res, err)
	}
	_ = db.ForgetTrash(res.Skipped)
}

func TestBlocksBelowPages(t *testing.T) {
	db := newTestDB(t)
	mustRegister(t, db, 2)
	v := newVersion(t, db, "vol")
	var recs []block.Record
	var ids []block.ID
	want := map[block.ID]bool{}
	for i := range 50 {
		ev := uint16(0)
		if i%3 == 0 {
			ev = 2
		} else {
			want[rec(i).ID] = true
		}
		r := encRec(i, ev, 10)
		recs = append(recs, r)
		ids = append(ids, r.ID)
	}
	if _, err := db.Commit(Commit{UID: v.UID, Pages: []PageWrite{NewPage(ids)}, New: recs}); err != nil {
		t.Fatal(err)
	}
	got := map[block.ID]bool{}
	after := block.Sparse
	for calls := 0; ; calls++ {
		if calls > 20 {
			t.Fatal("scan does not end")
		}
		rs, last, done, err := db.BlocksBelow(1, after, 7)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rs {
			if r.EncVersion >= 1 || got[r.ID] {
				t.Fatalf("unexpected record %+v", r)
			}
			got[r.ID] = true
		}
		if done {
			break
		}
		after = last
	}
	if len(got) != len(want) {
		t.Fatalf("found %d blocks below version 1, want %d", len(got), len(want))
	}
}

func TestCheckFindsUnregisteredEncVersion(t *testing.T) {
	db, err := Create(t.TempDir()+"/backy.db", 4<<20, [16]byte{1}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	v := newVersion(t, db, "vol")
	a := encRec(1, 5, 100)
	if _, err := db.Commit(Commit{UID: v.UID, Pages: []PageWrite{NewPage([]block.ID{a.ID})}, New: []block.Record{a}}); err != nil {
		t.Fatal(err)
	}
	problems, err := db.Check()
	if err != nil {
		t.Fatal(err)
	}
	if len(problems) != 1 || !errors.Is(problems[0], ErrCorrupt) {
		t.Fatalf("problems = %v, want one about the unregistered version", problems)
	}
}
