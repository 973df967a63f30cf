package restore_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/metastore/blockmap"
	"github.com/backy/backy/versions/restore"
)

// discardTarget counts what a restore writes and zeroes, and keeps nothing.
type discardTarget struct{ written, zeroed atomic.Int64 }

func (d *discardTarget) WriteAt(p []byte, _ int64) (int, error) {
	d.written.Add(int64(len(p)))
	return len(p), nil
}

func (d *discardTarget) Zero(_, n int64, _ bool, _ []byte) error {
	d.zeroed.Add(n)
	return nil
}

// lostVersion creates a valid version of the given blocks, whose records (new
// ones for ids not recorded yet) name objects that were never stored.
func (e *env) lostVersion(ids []block.ID, recorded map[block.ID]bool) *metastore.Version {
	e.t.Helper()
	uid, err := metastore.NewUID(time.Now())
	if err != nil {
		e.t.Fatal(err)
	}
	v := &metastore.Version{UID: uid, Volume: "lost", Size: int64(len(ids)) * bs, BlockSize: bs, Status: metastore.StatusIncomplete}
	if err := e.db.CreateVersion(v); err != nil {
		e.t.Fatal(err)
	}
	var pages []metastore.PageWrite
	for p := range slices.Chunk(ids, blockmap.PageEntries) {
		pages = append(pages, metastore.NewPage(p))
	}
	var recs []block.Record
	for _, id := range ids {
		if !recorded[id] {
			recorded[id] = true
			var name block.Name
			_, _ = rand.Read(name[:])
			recs = append(recs, block.Record{ID: id, Name: name, Size: bs, StoredSize: bs + 64})
		}
	}
	if _, err := e.db.Commit(metastore.Commit{UID: uid, Pages: pages, New: recs, Update: func(v *metastore.Version) error {
		v.BlocksDone = int64(len(ids))
		v.Status = metastore.StatusValid
		return nil
	}}); err != nil {
		e.t.Fatal(err)
	}
	return v
}

// TestEveryDamagedBlockRecorded: a forced restore of a version whose
// objects are all gone, with more bad blocks than it lists one by one
// (10,000), records every one of them as invalid (in batches, made small
// here), and every version using one is invalid.
func TestEveryDamagedBlockRecorded(t *testing.T) {
	restore.SetDamageBatch(t, 1000)
	e := newEnv(t)
	const n = 10_000 + 300
	ids := make([]block.ID, n)
	for i := range ids {
		_, _ = rand.Read(ids[i][:])
	}
	recorded := map[block.ID]bool{}
	v := e.lostVersion(ids, recorded)
	// Another version shares only the last blocks: past the first 10,000
	// however the workers go.
	tail := e.lostVersion(ids[n-5:], recorded)
	intact := e.backup(random(11, 3*bs), "vol")

	tgt := &discardTarget{}
	res, err := restore.Run(t.Context(), e.st, e.db, v, tgt, restore.Options{Force: true, Workers: 4})
	if !errors.Is(err, restore.ErrBadBlocks) {
		t.Fatalf("forced restore = %v, want ErrBadBlocks", err)
	}
	if len(res.BadBlocks) != 10_000 || tgt.zeroed.Load() != n*bs || tgt.written.Load() != 0 {
		t.Errorf("%d bad blocks listed, %d bytes zeroed, %d written", len(res.BadBlocks), tgt.zeroed.Load(), tgt.written.Load())
	}
	look := make([]metastore.Lookup, n)
	if err := e.db.LookupBlocks(ids, look); err != nil {
		t.Fatal(err)
	}
	marked := 0
	for _, l := range look {
		if l.Found && l.Record.Invalid {
			marked++
		}
	}
	if marked != n {
		t.Errorf("%d of %d damaged blocks are recorded invalid", marked, n)
	}
	want := []string{v.UID, tail.UID}
	slices.Sort(want)
	if !slices.Equal(res.InvalidVersions, want) {
		t.Errorf("invalid versions %v, want %v", res.InvalidVersions, want)
	}
	for _, c := range []struct {
		uid  string
		want metastore.Status
	}{{v.UID, metastore.StatusInvalid}, {tail.UID, metastore.StatusInvalid}, {intact.UID, metastore.StatusValid}} {
		if got := e.status(c.uid); got != c.want {
			t.Errorf("version %s is %s, want %s", c.uid, got, c.want)
		}
	}
	// The intact version restores as before.
	got, _, err := e.restore(intact.UID, restore.Options{})
	if err != nil || !bytes.Equal(got, random(11, 3*bs)) {
		t.Errorf("restore of the intact version: %v", err)
	}
}
