package blockread_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/metastore/metastoretest"
	"github.com/backy/backy/versions/blockread"
)

// fakeMarker records every MarkInvalid call; a block is used by the
// versions in users (none: no version). Calls listed in failOn fail.
type fakeMarker struct {
	mu     sync.Mutex
	calls  [][]block.ID
	users  func(id block.ID) []string
	failOn map[int]bool
}

var errMark = errors.New("metastore is read-only")

func (m *fakeMarker) MarkInvalid(ids []block.ID) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls = append(m.calls, slices.Clone(ids))
	if m.failOn[len(m.calls)] {
		return nil, errMark
	}
	set := map[string]bool{}
	for _, id := range ids {
		if m.users != nil {
			for _, u := range m.users(id) {
				set[u] = true
			}
		}
	}
	var out []string
	for u := range set {
		out = append(out, u)
	}
	slices.Sort(out)
	return out, nil
}

func idOf(i int) block.ID {
	var id block.ID
	binary.BigEndian.PutUint64(id[:], uint64(i)+1)
	return id
}

// TestRecorderRecordsEveryBlock adds more damaged blocks than the old
// restore recorded (10,000), each several times and from several
// goroutines, and checks that every one is recorded exactly once, in
// batches of the asked size, and that every version they name is returned.
func TestRecorderRecordsEveryBlock(t *testing.T) {
	const n = 25_000
	for _, batch := range []int{0, 1000, 7} {
		t.Run(fmt.Sprint("batch=", batch), func(t *testing.T) {
			m := &fakeMarker{users: func(id block.ID) []string {
				return []string{fmt.Sprintf("V%d", binary.BigEndian.Uint64(id[:])%13)}
			}}
			r := blockread.NewRecorder(m, batch)
			var wg sync.WaitGroup
			var mu sync.Mutex
			added := 0
			for w := range 4 {
				wg.Go(func() {
					for i := range n {
						if r.Add(idOf((i + w*977) % n)) {
							mu.Lock()
							added++
							mu.Unlock()
						}
					}
				})
			}
			wg.Wait()
			if r.Add(block.Sparse) {
				t.Error("a sparse id was added")
			}
			if err := r.Flush(); err != nil {
				t.Fatal(err)
			}
			if err := r.Flush(); err != nil || len(m.calls) == 0 {
				t.Fatal(err)
			}
			size := batch
			if size == 0 {
				size = blockread.DefaultBatch
			}
			seen := map[block.ID]int{}
			for i, c := range m.calls {
				if len(c) == 0 || len(c) > size || i < len(m.calls)-1 && len(c) != size {
					t.Errorf("call %d of %d records %d blocks, batch %d", i, len(m.calls), len(c), size)
				}
				for _, id := range c {
					seen[id]++
				}
			}
			if want := (n + size - 1) / size; len(m.calls) != want {
				t.Errorf("%d MarkInvalid calls, want %d", len(m.calls), want)
			}
			for i := range n {
				if seen[idOf(i)] != 1 {
					t.Fatalf("block %d recorded %d times", i, seen[idOf(i)])
				}
			}
			if len(seen) != n || r.Blocks() != n || added != n || len(r.IDs()) != n || !r.Has(idOf(n-1)) || r.Has(idOf(n)) {
				t.Errorf("%d recorded, Blocks %d, %d added as new, %d IDs", len(seen), r.Blocks(), added, len(r.IDs()))
			}
			if !slices.IsSortedFunc(r.IDs(), func(a, b block.ID) int { return strings.Compare(a.String(), b.String()) }) {
				t.Error("IDs are not sorted")
			}
			var want []string
			for k := range 13 {
				want = append(want, fmt.Sprintf("V%d", k))
			}
			slices.Sort(want)
			if got := r.Versions(); !slices.Equal(got, want) {
				t.Errorf("versions %v, want %v", got, want)
			}
		})
	}
}

// TestRecorderFailure: a failed MarkInvalid is reported by Flush (with the
// number of blocks not on record), also later, and the recorder goes on
// recording the next batches.
func TestRecorderFailure(t *testing.T) {
	m := &fakeMarker{failOn: map[int]bool{2: true}, users: func(block.ID) []string { return []string{"V1"} }}
	r := blockread.NewRecorder(m, 10)
	for i := range 35 {
		r.Add(idOf(i))
	}
	err := r.Flush()
	if !errors.Is(err, errMark) || !strings.Contains(err.Error(), "recording 10 of 35 damaged block(s) as invalid failed") {
		t.Fatalf("Flush = %v", err)
	}
	if len(m.calls) != 4 || r.Versions()[0] != "V1" {
		t.Errorf("%d calls, versions %v", len(m.calls), r.Versions())
	}
	if err := r.Flush(); !errors.Is(err, errMark) {
		t.Errorf("second Flush = %v", err)
	}
}

// TestRecorderNothing: a recorder that was given nothing records nothing.
func TestRecorderNothing(t *testing.T) {
	m := &fakeMarker{}
	r := blockread.NewRecorder(m, 0)
	if err := r.Flush(); err != nil || len(m.calls) != 0 || r.Versions() != nil || r.Blocks() != 0 {
		t.Errorf("Flush = %v, %d calls, versions %v", err, len(m.calls), r.Versions())
	}
}

// TestRecorderMetastore records through a real metastore: the records are
// invalid, and so are the versions using them, however the batches fall.
func TestRecorderMetastore(t *testing.T) {
	const bs = 4096
	db := metastoretest.Create(t, filepath.Join(t.TempDir()), bs)
	var all []block.ID
	var uids []string
	for v := range 3 {
		uid, err := metastore.NewUID(timeOf(v))
		if err != nil {
			t.Fatal(err)
		}
		ids := []block.ID{idOf(100 + v), idOf(200 + v)}
		if err := db.CreateVersion(&metastore.Version{UID: uid, Volume: "vol", Size: 2 * bs, BlockSize: bs, Status: metastore.StatusIncomplete}); err != nil {
			t.Fatal(err)
		}
		var recs []block.Record
		for _, id := range ids {
			recs = append(recs, block.Record{ID: id, Name: block.Name{byte(len(all) + 1)}, Size: bs, StoredSize: bs + 64})
			all = append(all, id)
		}
		if _, err := db.Commit(metastore.Commit{UID: uid, Pages: []metastore.PageWrite{metastore.NewPage(ids)}, New: recs,
			Update: func(v *metastore.Version) error { v.BlocksDone, v.Status = 2, metastore.StatusValid; return nil }}); err != nil {
			t.Fatal(err)
		}
		uids = append(uids, uid)
	}
	r := blockread.NewRecorder(db, 1)
	r.Add(idOf(200)) // version 0
	r.Add(idOf(102)) // version 2
	r.Add(idOf(102))
	if err := r.Flush(); err != nil {
		t.Fatal(err)
	}
	if want := []string{uids[0], uids[2]}; !slices.Equal(r.Versions(), want) {
		t.Errorf("versions %v, want %v", r.Versions(), want)
	}
	look := make([]metastore.Lookup, len(all))
	if err := db.LookupBlocks(all, look); err != nil {
		t.Fatal(err)
	}
	for i, l := range look {
		want := all[i] == idOf(200) || all[i] == idOf(102)
		if l.Record.Invalid != want {
			t.Errorf("block %d invalid: %v", i, l.Record.Invalid)
		}
	}
	for i, uid := range uids {
		v, err := db.Version(uid)
		if err != nil {
			t.Fatal(err)
		}
		if want := i != 1; (v.Status == metastore.StatusInvalid) != want {
			t.Errorf("version %d is %s", i, v.Status)
		}
	}
}

func timeOf(i int) time.Time { return time.Date(2025, 1, 1, 0, 0, i, 0, time.UTC) }
