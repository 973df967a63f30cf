package blockread_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/versions/blockread"
)

// fakeStore holds objects by name; Get and Check of a name it lacks are
// ErrMissing, of a name in corrupt ErrCorrupt, of a name in fail that
// error. moveOnRead, if set, runs before each read (a concurrent switch).
type fakeStore struct {
	mu         sync.Mutex
	objects    map[block.Name][]byte
	corrupt    map[block.Name]bool
	fail       map[block.Name]error
	reads      []block.Name
	moveOnRead func(name block.Name)
}

func (s *fakeStore) read(rec block.Record) ([]byte, error) {
	s.mu.Lock()
	s.reads = append(s.reads, rec.Name)
	move := s.moveOnRead
	s.mu.Unlock()
	if move != nil {
		move(rec.Name)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.fail[rec.Name]; err != nil {
		return nil, err
	}
	if s.corrupt[rec.Name] {
		return nil, fmt.Errorf("%w: block %s (object %s): BLAKE3 mismatch", blockstore.ErrCorrupt, rec.ID.Short(), rec.Name)
	}
	data, ok := s.objects[rec.Name]
	if !ok {
		return nil, fmt.Errorf("%w: block %s (object %s): not found", blockstore.ErrMissing, rec.ID.Short(), rec.Name)
	}
	return data, nil
}

func (s *fakeStore) Get(_ context.Context, rec block.Record, buf []byte) ([]byte, error) {
	data, err := s.read(rec)
	if err != nil {
		return nil, err
	}
	return append(buf, data...), nil
}

func (s *fakeStore) Check(_ context.Context, rec block.Record) error {
	_, err := s.read(rec)
	return err
}

// fakeIndex holds the current record of each block.
type fakeIndex struct {
	mu      sync.Mutex
	recs    map[block.ID]block.Record
	err     error
	lookups int
}

func (ix *fakeIndex) LookupBlock(id block.ID) (block.Record, bool, error) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.lookups++
	if ix.err != nil {
		return block.Record{}, false, ix.err
	}
	r, ok := ix.recs[id]
	return r, ok, nil
}

func (ix *fakeIndex) set(r block.Record) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.recs[r.ID] = r
}

func name(b byte) block.Name { return block.Name{b} }

func rec(id block.ID, n byte) block.Record {
	return block.Record{ID: id, Name: name(n), Size: 5, StoredSize: 50}
}

// TestReadOutcomes runs Get and Check through every outcome: intact,
// moved (followed up to MaxFollows times), damaged in place (missing,
// corrupt), record removed, moving for ever, a backend error, a failed
// lookup.
func TestReadOutcomes(t *testing.T) {
	id := block.Sum([]byte("hello"))
	errBackend := errors.New("backend timeout")
	errLookup := errors.New("metastore unreadable")
	type setup struct {
		st *fakeStore
		ix *fakeIndex
	}
	cases := []struct {
		name string
		// prepare makes the store and index; the engine holds the record
		// of object 1.
		prepare func(s setup)
		want    error // nil, a sentinel, or errBackend/errLookup
		damage  bool  // IsDamage
		reads   []block.Name
		from    block.Name // the record returned
		lookups int
	}{
		{"intact", func(s setup) {
			s.st.objects[name(1)] = []byte("hello")
			s.ix.set(rec(id, 1))
		}, nil, false, []block.Name{name(1)}, name(1), 0},
		{"moved once", func(s setup) {
			s.st.objects[name(2)] = []byte("hello")
			s.ix.set(rec(id, 2))
		}, nil, false, []block.Name{name(1), name(2)}, name(2), 1},
		{"moved away from a corrupt object", func(s setup) {
			s.st.objects[name(1)] = []byte("hello")
			s.st.corrupt[name(1)] = true
			s.st.objects[name(2)] = []byte("hello")
			s.ix.set(rec(id, 2))
		}, nil, false, []block.Name{name(1), name(2)}, name(2), 1},
		{"moved MaxFollows times", func(s setup) {
			s.ix.set(rec(id, 2))
			s.st.objects[name(4)] = []byte("hello")
			s.st.moveOnRead = func(n block.Name) { // each read finds it moved on
				if n[0] < 4 {
					s.ix.set(rec(id, n[0]+1))
				}
			}
		}, nil, false, []block.Name{name(1), name(2), name(3), name(4)}, name(4), 3},
		{"missing", func(s setup) {
			s.ix.set(rec(id, 1))
		}, blockstore.ErrMissing, true, []block.Name{name(1)}, name(1), 1},
		{"corrupt", func(s setup) {
			s.st.objects[name(1)] = []byte("hello")
			s.st.corrupt[name(1)] = true
			s.ix.set(rec(id, 1))
		}, blockstore.ErrCorrupt, true, []block.Name{name(1)}, name(1), 1},
		{"moved to a missing object", func(s setup) {
			s.ix.set(rec(id, 2))
		}, blockstore.ErrMissing, true, []block.Name{name(1), name(2)}, name(2), 2},
		{"record removed", func(s setup) {}, blockread.ErrRemoved, true, []block.Name{name(1)}, name(1), 1},
		{"moving for ever", func(s setup) {
			s.ix.set(rec(id, 2))
			s.st.moveOnRead = func(n block.Name) { s.ix.set(rec(id, n[0]+1)) }
		}, blockread.ErrMoving, false, []block.Name{name(1), name(2), name(3), name(4)}, name(4), 4},
		{"backend error", func(s setup) {
			s.st.fail[name(1)] = errBackend
			s.ix.set(rec(id, 2))
		}, errBackend, false, []block.Name{name(1)}, name(1), 0},
		{"backend error after a move", func(s setup) {
			s.st.fail[name(2)] = errBackend
			s.ix.set(rec(id, 2))
		}, errBackend, false, []block.Name{name(1), name(2)}, name(2), 1},
		{"lookup fails", func(s setup) {
			s.ix.err = errLookup
		}, errLookup, false, []block.Name{name(1)}, name(1), 1},
	}
	for _, c := range cases {
		for _, op := range []string{"Get", "Check"} {
			t.Run(c.name+"/"+op, func(t *testing.T) {
				s := setup{
					st: &fakeStore{objects: map[block.Name][]byte{}, corrupt: map[block.Name]bool{}, fail: map[block.Name]error{}},
					ix: &fakeIndex{recs: map[block.ID]block.Record{}},
				}
				c.prepare(s)
				var (
					got  block.Record
					data []byte
					err  error
				)
				if op == "Get" {
					data, got, err = blockread.Get(t.Context(), s.st, s.ix, rec(id, 1), make([]byte, 0, 8))
				} else {
					got, err = blockread.Check(t.Context(), s.st, s.ix, rec(id, 1))
				}
				switch {
				case c.want == nil && err != nil:
					t.Fatalf("%s = %v, want success", op, err)
				case c.want != nil && !errors.Is(err, c.want):
					t.Fatalf("%s = %v, want %v", op, err, c.want)
				}
				if blockread.IsDamage(err) != c.damage {
					t.Errorf("IsDamage(%v) = %v, want %v", err, !c.damage, c.damage)
				}
				if c.want == nil && op == "Get" && string(data) != "hello" {
					t.Errorf("Get read %q", data)
				}
				if c.want != nil && data != nil {
					t.Errorf("%s failed and returned data %q", op, data)
				}
				if got.Name != c.from || got.ID != id {
					t.Errorf("%s returned the record of object %v, want %v", op, got.Name[:1], c.from[:1])
				}
				if fmt.Sprint(s.st.reads) != fmt.Sprint(c.reads) {
					t.Errorf("read objects %v, want %v", s.st.reads, c.reads)
				}
				if s.ix.lookups != c.lookups {
					t.Errorf("%d lookups, want %d", s.ix.lookups, c.lookups)
				}
			})
		}
	}
}

// TestDamageStaysDistinct: missing and corrupt stay apart through the
// reader (scrub reports them as different kinds), also for a removed
// record.
func TestDamageStaysDistinct(t *testing.T) {
	id := block.Sum([]byte("x"))
	st := &fakeStore{objects: map[block.Name][]byte{name(1): []byte("x")}, corrupt: map[block.Name]bool{name(1): true}, fail: map[block.Name]error{}}
	ix := &fakeIndex{recs: map[block.ID]block.Record{}}
	_, _, err := blockread.Get(t.Context(), st, ix, rec(id, 1), nil)
	if !errors.Is(err, blockstore.ErrCorrupt) || errors.Is(err, blockstore.ErrMissing) || !errors.Is(err, blockread.ErrRemoved) {
		t.Errorf("a corrupt object whose record is gone: %v", err)
	}
}
