package versions_test

import (
	"errors"
	"testing"
	"time"

	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/metastore/metastoretest"
	"github.com/backy/backy/versions"
)

func newDB(t *testing.T) *metastore.DB {
	t.Helper()
	return metastoretest.Create(t, "", 64<<10)
}

var now = time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)

// addVersion records a version of volume made at date with the given status.
func addVersion(t *testing.T, db *metastore.DB, volume string, date time.Time, status metastore.Status, protected bool) string {
	t.Helper()
	uid, err := metastore.NewUID(date)
	if err != nil {
		t.Fatal(err)
	}
	v := &metastore.Version{UID: uid, Volume: volume, Date: date, BlockSize: 64 << 10, Status: metastore.StatusIncomplete}
	if err := db.CreateVersion(v); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Commit(metastore.Commit{UID: uid, Update: func(v *metastore.Version) error {
		v.Status, v.Protected = status, protected
		return nil
	}}); err != nil {
		t.Fatal(err)
	}
	return uid
}

func TestRemove(t *testing.T) {
	const day = 24 * time.Hour
	minAge := 7 * day
	cases := []struct {
		name      string
		age       time.Duration
		status    metastore.Status
		protected bool
		o         versions.RemoveOptions
		want      error // nil: removed
	}{
		{"old-enough", 8 * day, metastore.StatusValid, false, versions.RemoveOptions{MinAge: minAge, Now: now}, nil},
		{"exactly-min-age", 7 * day, metastore.StatusValid, false, versions.RemoveOptions{MinAge: minAge, Now: now}, nil},
		{"too-young", 6 * day, metastore.StatusValid, false, versions.RemoveOptions{MinAge: minAge, Now: now}, versions.ErrTooYoung},
		{"too-young-forced", 6 * day, metastore.StatusValid, false, versions.RemoveOptions{Force: true, MinAge: minAge, Now: now}, nil},
		{"too-young-invalid", time.Hour, metastore.StatusInvalid, false, versions.RemoveOptions{MinAge: minAge, Now: now}, versions.ErrTooYoung},
		// A failed backup may always go.
		{"young-incomplete", time.Hour, metastore.StatusIncomplete, false, versions.RemoveOptions{MinAge: minAge, Now: now}, nil},
		{"no-min-age", 0, metastore.StatusValid, false, versions.RemoveOptions{Now: now}, nil},
		{"protected", 100 * day, metastore.StatusValid, true, versions.RemoveOptions{MinAge: minAge, Now: now}, versions.ErrProtected},
		{"protected-forced", 100 * day, metastore.StatusValid, true, versions.RemoveOptions{Force: true, Now: now}, versions.ErrProtected},
		{"protected-incomplete", time.Hour, metastore.StatusIncomplete, true, versions.RemoveOptions{Force: true, Now: now}, versions.ErrProtected},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			db := newDB(t)
			uid := addVersion(t, db, "vol", now.Add(-c.age), c.status, c.protected)
			keep := addVersion(t, db, "vol", now.Add(-100*day), metastore.StatusValid, false)
			err := versions.Remove(db, uid, c.o)
			if c.want == nil && err != nil || !errors.Is(err, c.want) {
				t.Fatalf("Remove = %v, want %v", err, c.want)
			}
			_, verr := db.Version(uid)
			if removed := errors.Is(verr, metastore.ErrVersionNotFound); removed != (c.want == nil) {
				t.Errorf("version removed: %v (%v)", removed, verr)
			}
			if _, err := db.Version(keep); err != nil {
				t.Errorf("other version: %v", err)
			}
		})
	}
}

func TestRemoveProtectedThenUnprotected(t *testing.T) {
	db := newDB(t)
	uid := addVersion(t, db, "vol", now, metastore.StatusValid, false)
	v, err := versions.SetProtected(db, uid, true)
	if err != nil || !v.Protected {
		t.Fatalf("SetProtected = %+v, %v", v, err)
	}
	if err := versions.Remove(db, uid, versions.RemoveOptions{Force: true, Now: now}); !errors.Is(err, versions.ErrProtected) {
		t.Fatalf("Remove = %v", err)
	}
	if v, err = versions.SetProtected(db, uid, false); err != nil || v.Protected {
		t.Fatalf("SetProtected(false) = %+v, %v", v, err)
	}
	if err := versions.Remove(db, uid, versions.RemoveOptions{Now: now}); err != nil {
		t.Fatal(err)
	}
	if _, err := versions.SetProtected(db, uid, true); !errors.Is(err, metastore.ErrVersionNotFound) {
		t.Errorf("SetProtected of a removed version = %v", err)
	}
}

// TestRemoveLocked: a version in use cannot be removed, whatever the
// options.
func TestRemoveLocked(t *testing.T) {
	for _, mode := range []metastore.LockMode{metastore.Shared, metastore.Exclusive} {
		for _, force := range []bool{false, true} {
			db := newDB(t)
			uid := addVersion(t, db, "vol", now.Add(-1000*time.Hour), metastore.StatusValid, false)
			lk, err := db.LockVersion(uid, mode)
			if err != nil {
				t.Fatal(err)
			}
			err = versions.Remove(db, uid, versions.RemoveOptions{Force: force, Now: now})
			if !errors.Is(err, metastore.ErrLocked) {
				t.Errorf("mode %v force %v: Remove = %v, want ErrLocked", mode, force, err)
			}
			if _, err := db.Version(uid); err != nil {
				t.Errorf("locked version: %v", err)
			}
			lk.Unlock()
			if err := versions.Remove(db, uid, versions.RemoveOptions{Now: now}); err != nil {
				t.Errorf("Remove after unlock: %v", err)
			}
		}
	}
}

func TestRemoveMissing(t *testing.T) {
	db := newDB(t)
	for _, uid := range []string{"V0123456789abcdef0123", "nonsense", ""} {
		if err := versions.Remove(db, uid, versions.RemoveOptions{Now: now}); !errors.Is(err, metastore.ErrVersionNotFound) {
			t.Errorf("Remove(%q) = %v", uid, err)
		}
	}
}

func TestList(t *testing.T) {
	db := newDB(t)
	b := addVersion(t, db, "b", now.Add(-time.Hour), metastore.StatusValid, false)
	a2 := addVersion(t, db, "a", now, metastore.StatusValid, false)
	a1 := addVersion(t, db, "a", now.Add(-2*time.Hour), metastore.StatusIncomplete, false)
	cases := []struct {
		volume string
		want   []string
	}{
		{"", []string{a1, b, a2}},
		{"a", []string{a1, a2}},
		{"b", []string{b}},
		{"c", nil},
	}
	for _, c := range cases {
		vs, err := versions.List(db, c.volume)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, v := range vs {
			got = append(got, v.UID)
		}
		if len(got) != len(c.want) {
			t.Errorf("List(%q) = %v, want %v", c.volume, got, c.want)
			continue
		}
		for i := range got {
			if got[i] != c.want[i] {
				t.Errorf("List(%q) = %v, want %v (oldest first)", c.volume, got, c.want)
				break
			}
		}
	}
}

// TestFinishRemovals: a version left "removing" by a remover that died (no
// one holds its lock) is removed, its blocks become unreferenced, and the
// hook runs first; one whose lock is held (a removal still running) and
// one whose hook fails are left; ordinary versions are not touched.
func TestFinishRemovals(t *testing.T) {
	db := newDB(t)
	withBlocks := func(volume string, seed byte) string {
		uid := addVersion(t, db, volume, now.Add(-time.Duration(seed)*time.Hour), metastore.StatusValid, false)
		var ids []block.ID
		var recs []block.Record
		for i := range 3 {
			id := block.Sum([]byte{seed, byte(i)})
			var n block.Name
			copy(n[:], id[:])
			ids, recs = append(ids, id), append(recs, block.Record{ID: id, Name: n, Size: 100, StoredSize: 140})
		}
		if _, err := db.Commit(metastore.Commit{UID: uid, Pages: []metastore.PageWrite{metastore.NewPage(ids)}, New: recs}); err != nil {
			t.Fatal(err)
		}
		return uid
	}
	// What metastore.RemoveVersion's first transaction leaves.
	markRemoving := func(uid string) {
		if _, err := db.UpdateVersion(uid, func(v *metastore.Version) error {
			v.Status, v.Removing = metastore.StatusIncomplete, true
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	dead, live, failing, other, normal := withBlocks("a", 1), withBlocks("a", 2), withBlocks("a", 3), withBlocks("b", 4), withBlocks("a", 5)
	for _, uid := range []string{dead, live, failing, other} {
		markRemoving(uid)
	}
	lk, err := db.LockVersion(live, metastore.Exclusive)
	if err != nil {
		t.Fatal(err)
	}
	defer lk.Unlock()
	var hooked []string
	hookErr := errors.New("backend unreachable")
	done, busy, err := versions.FinishRemovals(db, func(v *metastore.Version) bool { return v.Volume == "a" }, func(v *metastore.Version) error {
		hooked = append(hooked, v.UID)
		if v.UID == failing {
			return hookErr
		}
		return nil
	})
	if !errors.Is(err, hookErr) {
		t.Errorf("err = %v, want the hook's error", err)
	}
	if len(done) != 1 || done[0].UID != dead || !done[0].Removing {
		t.Errorf("done = %+v, want %s as it was", done, dead)
	}
	if len(busy) != 1 || busy[0] != live {
		t.Errorf("busy = %v, want [%s]", busy, live)
	}
	if len(hooked) != 2 {
		t.Errorf("hook ran for %v, want %s and %s", hooked, dead, failing)
	}
	for uid, want := range map[string]bool{dead: false, live: true, failing: true, other: true, normal: true} {
		if _, err := db.Version(uid); (err == nil) != want {
			t.Errorf("version %s: %v, want present %v", uid, err, want)
		}
	}
	st, err := db.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Unreferenced != 3 {
		t.Errorf("%d unreferenced blocks, want the 3 of the removed version", st.Unreferenced)
	}
	lk.Unlock()
	// All of them, once nothing holds them.
	done, busy, err = versions.FinishRemovals(db, nil, nil)
	if err != nil || len(done) != 3 || len(busy) != 0 {
		t.Errorf("second run: done %d, busy %v, err %v; want the 3 left", len(done), busy, err)
	}
	if vs, _ := db.Versions(nil); len(vs) != 1 || vs[0].UID != normal {
		t.Errorf("left: %+v, want only %s", vs, normal)
	}
}

// TestRemoveMarksBeforeOtherCopies: a version is marked removing (and
// incomplete) before BeforeRemove deletes its other copies (its metadata
// in the data backend), so a kill in between never leaves a complete
// version whose copy is gone; a failing BeforeRemove leaves the removal
// begun, for the next rm, enforce or cleanup to finish.
func TestRemoveMarksBeforeOtherCopies(t *testing.T) {
	db := newDB(t)
	uid := addVersion(t, db, "vol", now.Add(-time.Hour), metastore.StatusValid, false)
	boom := errors.New("backend down")
	err := versions.Remove(db, uid, versions.RemoveOptions{BeforeRemove: func(*metastore.Version) error {
		v, err := db.Version(uid)
		if err != nil {
			t.Fatal(err)
		}
		if !v.Removing || v.Status != metastore.StatusIncomplete {
			t.Errorf("during BeforeRemove: removing %v, status %s; want removing and incomplete", v.Removing, v.Status)
		}
		return boom
	}})
	if !errors.Is(err, boom) {
		t.Fatalf("Remove = %v, want %v", err, boom)
	}
	done, busy, err := versions.FinishRemovals(db, nil, nil)
	if err != nil || len(done) != 1 || len(busy) != 0 {
		t.Fatalf("FinishRemovals = %d done, %v busy, %v", len(done), busy, err)
	}
	if _, err := db.Version(uid); !errors.Is(err, metastore.ErrVersionNotFound) {
		t.Errorf("after FinishRemovals: %v", err)
	}
}
