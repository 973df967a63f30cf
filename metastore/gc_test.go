package metastore

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/backy/backy/internal/block"
)

// collectAll runs CollectGarbage to the end in batches of n and forgets the
// trash (as the cleanup engine does once the objects are deleted).
func collectAll(t *testing.T, db *DB, n int) []block.Record {
	t.Helper()
	out, err := collectAllErr(db, n)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func collectAllErr(db *DB, n int) ([]block.Record, error) {
	var out []block.Record
	after := block.Sparse
	for {
		c, err := db.CollectGarbage(after, n)
		if err != nil {
			return out, err
		}
		names := make([]block.Name, len(c.Records))
		for i, r := range c.Records {
			names[i] = r.Name
		}
		trashed, err := db.InTrash(names)
		if err != nil {
			return out, err
		}
		for i, ok := range trashed {
			if !ok {
				return out, fmt.Errorf("collected object %s not in the trash", names[i])
			}
		}
		if err := db.ForgetTrash(names); err != nil {
			return out, err
		}
		out = append(out, c.Records...)
		if c.Done {
			return out, nil
		}
		after = c.Last
	}
}

func TestCollectGarbageExact(t *testing.T) {
	db := newTestDB(t)
	var recs []block.Record
	for i := range 10 {
		r := rec(i)
		r.StoredSize = uint32(1000 + i)
		r.Size = uint32(2000 + i)
		if i%2 == 1 {
			r.EncVersion = 1
		}
		recs = append(recs, r)
	}
	ids := func(rs []block.Record) []block.ID {
		out := make([]block.ID, len(rs))
		for i, r := range rs {
			out[i] = r.ID
		}
		return out
	}
	if _, err := db.RegisterEncVersion(1, []byte("{}")); err != nil {
		t.Fatal(err)
	}
	keep, drop := newVersion(t, db, "vol"), newVersion(t, db, "vol")
	// keep: blocks 0-5; drop: blocks 3-9 (3-5 shared).
	if _, err := db.Commit(Commit{UID: keep.UID, Pages: []PageWrite{NewPage(ids(recs[:6]))}, New: recs[:6]}); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Commit(Commit{UID: drop.UID, Pages: []PageWrite{NewPage(ids(recs[3:]))}, New: recs[6:]}); err != nil {
		t.Fatal(err)
	}
	before, _ := db.Stats()
	encBefore, _ := db.EncStats()
	if got := collectAll(t, db, 2); len(got) != 0 {
		t.Fatalf("collected %d blocks with every block referenced", len(got))
	}
	if err := db.RemoveVersion(drop.UID); err != nil {
		t.Fatal(err)
	}
	got := collectAll(t, db, 3)
	want := recs[6:]
	slices.SortFunc(got, func(a, b block.Record) int { return compareIDs(a.ID, b.ID) })
	slices.SortFunc(want, func(a, b block.Record) int { return compareIDs(a.ID, b.ID) })
	if !slices.Equal(got, want) {
		t.Fatalf("collected %v, want %v", got, want)
	}
	after, _ := db.Stats()
	var stored, plain int64
	for _, r := range want {
		stored += int64(r.StoredSize)
		plain += int64(r.Size)
	}
	if after.Blocks != before.Blocks-4 || after.StoredBytes != before.StoredBytes-stored || after.PlainBytes != before.PlainBytes-plain ||
		after.Unreferenced != 0 || after.Trash != 0 {
		t.Fatalf("stats %+v after collecting from %+v (freed %d stored, %d plain)", after, before, stored, plain)
	}
	encAfter, _ := db.EncStats()
	var freed [2]EncStat
	for _, r := range want {
		freed[r.EncVersion].Blocks++
		freed[r.EncVersion].StoredBytes += int64(r.StoredSize)
	}
	for v := range uint16(2) {
		if encAfter[v].Blocks != encBefore[v].Blocks-freed[v].Blocks || encAfter[v].StoredBytes != encBefore[v].StoredBytes-freed[v].StoredBytes {
			t.Fatalf("encstats[%d] = %+v, was %+v, freed %+v", v, encAfter[v], encBefore[v], freed[v])
		}
	}
	look := make([]Lookup, 6)
	if err := db.LookupBlocks(ids(recs[:6]), look); err != nil {
		t.Fatal(err)
	}
	for i, l := range look {
		if !l.Found {
			t.Fatalf("referenced block %d was collected", i)
		}
	}
	// newTestDB's cleanup runs Check.
}

func compareIDs(a, b block.ID) int {
	for i := range a {
		if a[i] != b[i] {
			return int(a[i]) - int(b[i])
		}
	}
	return 0
}

// TestCollectGarbageRereferenced: a block that a writer references again
// after the cleanup listed it (here: committed before the cleanup's
// transaction) is not deleted, and one referenced after the cleanup's
// transaction makes the writer's commit fail with MissingBlocksError.
func TestCollectGarbageRereferenced(t *testing.T) {
	db := newTestDB(t)
	a, b := rec(1), rec(2)
	v1 := newVersion(t, db, "vol")
	if _, err := db.Commit(Commit{UID: v1.UID, Pages: []PageWrite{NewPage([]block.ID{a.ID, b.ID})}, New: []block.Record{a, b}}); err != nil {
		t.Fatal(err)
	}
	if err := db.RemoveVersion(v1.UID); err != nil {
		t.Fatal(err)
	}
	if st, _ := db.Stats(); st.Unreferenced != 2 {
		t.Fatalf("unreferenced = %d, want 2", st.Unreferenced)
	}
	// A backup looked a up (found, count 0) and commits a page naming it
	// before the cleanup's transaction: the count is 1 again.
	v2 := newVersion(t, db, "vol")
	look := make([]Lookup, 1)
	if err := db.LookupBlocks([]block.ID{a.ID}, look); err != nil || !look[0].Found {
		t.Fatalf("lookup: %v %v", look[0].Found, err)
	}
	if _, err := db.Commit(Commit{UID: v2.UID, Pages: []PageWrite{NewPage([]block.ID{a.ID})}}); err != nil {
		t.Fatal(err)
	}
	got := collectAll(t, db, 10)
	if len(got) != 1 || got[0].ID != b.ID {
		t.Fatalf("collected %v, want only b", got)
	}
	if refsOf(t, db, a.ID) != 1 {
		t.Fatal("a lost its reference")
	}
	// Another backup looked b up before the cleanup and commits after it:
	// the commit fails as a whole and the writer stores b again.
	v3 := newVersion(t, db, "vol")
	_, err := db.Commit(Commit{UID: v3.UID, Pages: []PageWrite{NewPage([]block.ID{a.ID, b.ID})}})
	var mb *MissingBlocksError
	if !errors.As(err, &mb) || len(mb.IDs) != 1 || mb.IDs[0] != b.ID {
		t.Fatalf("commit after cleanup = %v, want MissingBlocksError for b", err)
	}
	b2 := b
	b2.Name[0] ^= 0x55
	if _, err := db.Commit(Commit{UID: v3.UID, Pages: []PageWrite{NewPage([]block.ID{a.ID, b.ID})}, New: []block.Record{b2}}); err != nil {
		t.Fatal(err)
	}
	if refsOf(t, db, b.ID) != 1 || refsOf(t, db, a.ID) != 2 {
		t.Fatalf("refs a=%d b=%d, want 2 and 1", refsOf(t, db, a.ID), refsOf(t, db, b.ID))
	}
}

// TestCollectGarbageConcurrentCommits: cleanups racing commits that
// re-reference the same blocks never leave a page naming a missing block,
// and the counts stay exact (Check at the end).
func TestCollectGarbageConcurrentCommits(t *testing.T) {
	db := newTestDB(t)
	var recs []block.Record
	var all []block.ID
	for i := range 40 {
		recs = append(recs, rec(i))
		all = append(all, recs[i].ID)
	}
	v0 := newVersion(t, db, "vol")
	if _, err := db.Commit(Commit{UID: v0.UID, Pages: []PageWrite{NewPage(all)}, New: recs}); err != nil {
		t.Fatal(err)
	}
	if err := db.RemoveVersion(v0.UID); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 20 {
			if _, err := collectAllErr(db, 7); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	deadline := time.Now().Add(5 * time.Second)
	var kept []string
	for i := 0; i < 20 && time.Now().Before(deadline); i++ {
		v := newVersion(t, db, "vol")
		page := all[i%4*10 : i%4*10+10]
		for {
			_, err := db.Commit(Commit{UID: v.UID, Pages: []PageWrite{NewPage(page)}})
			var mb *MissingBlocksError
			if errors.As(err, &mb) {
				// Store the missing blocks again, as the backup does.
				var again []block.Record
				for _, id := range mb.IDs {
					r := recs[slices.Index(all, id)]
					r.Name[1] ^= byte(i + 1)
					again = append(again, r)
				}
				_, err = db.Commit(Commit{UID: v.UID, Pages: []PageWrite{NewPage(page)}, New: again})
				if errors.As(err, &mb) {
					continue
				}
			}
			if err != nil {
				t.Fatal(err)
			}
			break
		}
		kept = append(kept, v.UID)
		if i%3 == 0 {
			if err := db.RemoveVersion(v.UID); err != nil {
				t.Fatal(err)
			}
			kept = kept[:len(kept)-1]
		}
	}
	<-done
	for _, uid := range kept {
		err := db.WalkMap(uid, func(c MapChunk) error {
			for i, ok := range c.Found {
				if !ok {
					t.Errorf("version %s: block %d has no record", uid, c.First+int64(i))
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

func TestRecordedNamesAndTrash(t *testing.T) {
	db := newTestDB(t)
	v := newVersion(t, db, "vol")
	var recs []block.Record
	var ids []block.ID
	for i := range 50 {
		recs = append(recs, rec(i))
		ids = append(ids, recs[i].ID)
	}
	if _, err := db.Commit(Commit{UID: v.UID, Pages: []PageWrite{NewPage(ids)}, New: recs}); err != nil {
		t.Fatal(err)
	}
	for _, rng := range [][2]byte{{0, 255}, {0, 0x7f}, {0x80, 0xff}, {0x10, 0x10}} {
		var got []block.Name
		after := block.Sparse
		for {
			names, last, done, err := db.RecordedNames(rng[0], rng[1], after, 7)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, names...)
			if done {
				break
			}
			after = last
		}
		var want []block.Name
		for _, r := range recs {
			if r.Name[0] >= rng[0] && r.Name[0] <= rng[1] {
				want = append(want, r.Name)
			}
		}
		if len(got) != len(want) {
			t.Fatalf("range %x-%x: %d names, want %d", rng[0], rng[1], len(got), len(want))
		}
		for _, n := range want {
			if !slices.Contains(got, n) {
				t.Fatalf("range %x-%x: %s missing", rng[0], rng[1], n)
			}
		}
	}
	if err := db.RemoveVersion(v.UID); err != nil {
		t.Fatal(err)
	}
	c, err := db.CollectGarbage(block.Sparse, 5)
	if err != nil || len(c.Records) != 5 || c.Done {
		t.Fatalf("collect: %d records, done %v, %v", len(c.Records), c.Done, err)
	}
	names := []block.Name{c.Records[0].Name, recs[0].Name}
	if slices.Contains(c.Records, recs[0]) {
		names[1] = c.Records[len(c.Records)-1].Name
		names[1][3] ^= 1
	}
	in, err := db.InTrash(names)
	if err != nil || !in[0] || in[1] {
		t.Fatalf("InTrash = %v, %v; want [true false]", in, err)
	}
	// Leave the store consistent for Check: collect the rest.
	if err := db.ForgetTrash([]block.Name{c.Records[0].Name}); err != nil {
		t.Fatal(err)
	}
	collectAll(t, db, 100)
}

func TestLockWriters(t *testing.T) {
	db := newTestDB(t)
	w1, err := db.LockWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	w2, err := db.LockWriter(nil)
	if err != nil {
		t.Fatal("writers share the lock:", err)
	}
	if _, err := db.LockWritersExclusive(false); !errors.Is(err, ErrLocked) {
		t.Fatalf("exclusive with writers running = %v, want ErrLocked", err)
	}
	got := make(chan *Lock)
	go func() {
		lk, err := db.LockWritersExclusive(true)
		if err != nil {
			t.Error(err)
		}
		got <- lk
	}()
	w1.Unlock()
	select {
	case <-got:
		t.Fatal("exclusive lock granted while a writer holds it")
	case <-time.After(100 * time.Millisecond):
	}
	w2.Unlock()
	ex := <-got
	waited := make(chan error, 1)
	var notified error
	go func() {
		lk, err := db.LockWriter(func(err error) { notified = err })
		lk.Unlock()
		waited <- err
	}()
	select {
	case <-waited:
		t.Fatal("writer not held back by the sweep")
	case <-time.After(100 * time.Millisecond):
	}
	ex.Unlock()
	if err := <-waited; err != nil || !errors.Is(notified, ErrLocked) {
		t.Fatalf("writer after the sweep: %v (notified %v)", err, notified)
	}
}
