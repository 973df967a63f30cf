package mapwriter_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/backy/backy/blockstore/backend"
	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/metastore/blockmap"
	"github.com/backy/backy/metastore/metastoretest"
	"github.com/backy/backy/versions/mapwriter"
)

// bs is the block size of the test stores. The writer never looks at
// the data's length; blocks here are short.
const bs = 4096

// memStore is a block store in memory that knows which objects are
// durable (flushed).
type memStore struct {
	mu      sync.Mutex
	objs    map[block.Name]block.ID
	durable map[block.Name]bool
	puts    map[block.ID]int
	deleted []block.Name
	// hook, when set, runs at the start of every Put; an error fails it.
	hook     func(ctx context.Context, id block.ID) error
	flushErr error
}

func newMemStore() *memStore {
	return &memStore{objs: map[block.Name]block.ID{}, durable: map[block.Name]bool{}, puts: map[block.ID]int{}}
}

func (s *memStore) Put(ctx context.Context, id block.ID, plain []byte) (block.Record, error) {
	if s.hook != nil {
		if err := s.hook(ctx, id); err != nil {
			return block.Record{}, err
		}
	}
	if block.Sum(plain) != id {
		return block.Record{}, fmt.Errorf("put of %s with other content", id.Short())
	}
	var name block.Name
	_, _ = rand.Read(name[:])
	s.mu.Lock()
	defer s.mu.Unlock()
	s.objs[name] = id
	s.puts[id]++
	return block.Record{ID: id, Name: name, Size: uint32(len(plain)), StoredSize: uint32(len(plain)) + 40}, nil
}

func (s *memStore) Delete(_ context.Context, name block.Name) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.objs[name]; !ok {
		return backend.ErrNotFound
	}
	delete(s.objs, name)
	delete(s.durable, name)
	s.deleted = append(s.deleted, name)
	return nil
}

func (s *memStore) Flush(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.flushErr != nil {
		return s.flushErr
	}
	for n := range s.objs {
		s.durable[n] = true
	}
	return nil
}

func (s *memStore) putsOf(id block.ID) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.puts[id]
}

func (s *memStore) has(name block.Name) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.objs[name]
	return ok
}

// checkDB is the metastore as the writer sees it, checking that every
// record committed names a durable object; before, when set, runs before
// each commit (attempt is the commit's number).
type checkDB struct {
	*metastore.DB
	t       *testing.T
	st      *memStore
	mu      sync.Mutex
	commits int
	before  func(attempt int, c metastore.Commit)
}

func (d *checkDB) Commit(c metastore.Commit) (metastore.CommitResult, error) {
	d.mu.Lock()
	n := d.commits
	d.commits++
	before := d.before
	d.mu.Unlock()
	if before != nil {
		before(n, c)
	}
	d.st.mu.Lock()
	for _, r := range c.New {
		if !d.st.durable[r.Name] {
			d.t.Errorf("commit %d records block %s whose object is not durable", n, r.ID.Short())
		}
	}
	d.st.mu.Unlock()
	return d.DB.Commit(c)
}

type harness struct {
	t   *testing.T
	db  *metastore.DB
	st  *memStore
	mdb *checkDB
}

func newHarness(t *testing.T) *harness {
	db := metastoretest.Create(t, "", bs)
	st := newMemStore()
	return &harness{t: t, db: db, st: st, mdb: &checkDB{DB: db, t: t, st: st}}
}

// newVersion creates an incomplete version of n blocks.
func (h *harness) newVersion(n int64) string {
	h.t.Helper()
	uid, err := metastore.NewUID(time.Now())
	if err != nil {
		h.t.Fatal(err)
	}
	v := &metastore.Version{UID: uid, Volume: "vol", Date: time.Now().UTC().Truncate(time.Second), Size: n * bs, BlockSize: bs,
		Status: metastore.StatusIncomplete, Labels: map[string]string{}}
	if err := h.db.CreateVersion(v); err != nil {
		h.t.Fatal(err)
	}
	return uid
}

// tjob is a test position: data to store (nil: sparse), a block held
// (held), or a page reused (ents).
type tjob struct {
	idx  int64
	data []byte
	held block.ID
	page blockmap.PageID
	ents []block.ID
	// fetch: give Store no data, so that it calls Fetch.
	fetch bool
}

func (j tjob) id() block.ID {
	switch {
	case j.ents != nil:
		return block.Sparse
	case !j.held.IsSparse():
		return j.held
	case j.data == nil:
		return block.Sparse
	}
	return block.Sum(j.data)
}

// counted is one call of Count.
type counted struct {
	idx  int64
	kind mapwriter.Kind
	id   block.ID
	ents int
	rec  block.Record
	cnt  bool
}

// run is one writer's run over a version, with what it reported.
type run struct {
	h      *harness
	uid    string
	jobs   []tjob
	cfg    mapwriter.Config[tjob]
	w      *mapwriter.Writer[tjob]
	mu     sync.Mutex
	counts []counted
	// work, when set, runs in Work before the default handling; done
	// says it handled the job.
	work func(ctx context.Context, j tjob) (r mapwriter.Result, done bool, err error)
}

// newRun prepares a writer for version uid, whose positions [0, len(jobs))
// jobs describe.
func (h *harness) newRun(uid string, jobs []tjob) *run {
	r := &run{h: h, uid: uid, jobs: jobs}
	for i := range jobs {
		jobs[i].idx = int64(i)
	}
	r.cfg = mapwriter.Config[tjob]{
		Store: h.st, DB: h.mdb, UID: uid, End: int64(len(jobs)),
		Workers: 4, CommitInterval: time.Hour, Start: time.Now(),
		Read: func(ctx context.Context, emit func(tjob) error) error {
			return r.read(ctx, emit)
		},
		Work: func(ctx context.Context, j tjob, buf []byte) (mapwriter.Result, error) {
			if r.work != nil {
				if res, done, err := r.work(ctx, j); done || err != nil {
					return res, err
				}
			}
			return r.defaultWork(ctx, j, buf)
		},
		Fetch: func(_ context.Context, j tjob, buf []byte) ([]byte, error) {
			return append(buf[:0], j.data...), nil
		},
		Refetch: func(_ context.Context, id block.ID, j tjob) ([]byte, error) {
			if block.Sum(j.data) != id {
				return nil, fmt.Errorf("refetch of %s for a job with other data", id.Short())
			}
			return j.data, nil
		},
		Count: func(idx int64, j tjob, res mapwriter.Result) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.counts = append(r.counts, counted{idx: idx, kind: res.Kind, id: res.ID, ents: len(res.Entries), rec: res.Rec, cnt: res.Counted})
		},
		Update: func(v *metastore.Version, final bool) {
			if final {
				v.Status = metastore.StatusValid
			}
		},
		BufSize: 64,
	}
	return r
}

func (r *run) read(ctx context.Context, emit func(tjob) error) error {
	first := r.cfg.FirstPage * blockmap.PageEntries
	for i := first; i < int64(len(r.jobs)); i++ {
		j := r.jobs[i]
		if err := emit(j); err != nil {
			return err
		}
		if j.ents != nil {
			i += int64(len(j.ents)) - 1
		}
	}
	return nil
}

func (r *run) defaultWork(ctx context.Context, j tjob, buf []byte) (mapwriter.Result, error) {
	switch {
	case j.ents != nil:
		return mapwriter.Result{Kind: mapwriter.Page, Page: j.page, Entries: j.ents}, nil
	case !j.held.IsSparse():
		return mapwriter.Result{Kind: mapwriter.Held, ID: j.held}, nil
	case j.data == nil:
		return mapwriter.Result{Kind: mapwriter.Sparse}, nil
	case j.fetch:
		return r.w.Store(ctx, j, block.Sum(j.data), false, nil, buf)
	}
	return r.w.Store(ctx, j, block.Sum(j.data), false, j.data, nil)
}

// start makes the writer (after the test changed cfg).
func (r *run) start() *mapwriter.Writer[tjob] {
	r.w = mapwriter.New(r.cfg)
	return r.w
}

// do runs the writer and the final commit.
func (r *run) do(ctx context.Context) error {
	if r.w == nil {
		r.start()
	}
	if err := r.w.Run(ctx); err != nil {
		return err
	}
	return r.w.Commit(ctx, true)
}

func (r *run) mustDo() {
	r.h.t.Helper()
	if err := r.do(r.h.t.Context()); err != nil {
		r.h.t.Fatalf("writer: %v", err)
	}
}

func (r *run) kinds() map[mapwriter.Kind]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[mapwriter.Kind]int{}
	for _, c := range r.counts {
		out[c.kind]++
	}
	return out
}

// mapOf returns the entries of version uid's map.
func (h *harness) mapOf(uid string) []block.ID {
	h.t.Helper()
	var out []block.ID
	if err := h.db.WalkMap(uid, func(c metastore.MapChunk) error {
		out = append(out, c.IDs...)
		return nil
	}); err != nil {
		h.t.Fatal(err)
	}
	return out
}

func (h *harness) version(uid string) *metastore.Version {
	h.t.Helper()
	v, err := h.db.Version(uid)
	if err != nil {
		h.t.Fatal(err)
	}
	return v
}

// wantMap checks that version uid's map holds the ids of jobs[:n] and
// that every block it names has a record and a durable object.
func (h *harness) wantMap(uid string, jobs []tjob, n int) {
	h.t.Helper()
	var want []block.ID
	for _, j := range jobs[:n] {
		if j.ents != nil {
			want = append(want, j.ents...)
			continue
		}
		want = append(want, j.id())
	}
	want = want[:n]
	got := h.mapOf(uid)
	if len(got) < n {
		h.t.Fatalf("map of %s has %d entries, want at least %d", uid, len(got), n)
	}
	if !slices.Equal(got[:n], want) {
		for i := range want {
			if got[i] != want[i] {
				h.t.Fatalf("map of %s: entry %d is %s, want %s", uid, i, got[i].Short(), want[i].Short())
			}
		}
	}
	for _, id := range want {
		if id.IsSparse() {
			continue
		}
		rec, ok, err := h.db.LookupBlock(id)
		if err != nil || !ok {
			h.t.Fatalf("block %s of the map: found %v, %v", id.Short(), ok, err)
		}
		h.st.mu.Lock()
		durable := h.st.durable[rec.Name]
		h.st.mu.Unlock()
		if !durable {
			h.t.Fatalf("block %s of the map names object %s, which is not durable", id.Short(), rec.Name)
		}
	}
}

// blocks returns n distinct blocks of data.
func blocks(seed string, n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = fmt.Appendf(nil, "%s block %d", seed, i)
	}
	return out
}

var errBoom = errors.New("boom")
