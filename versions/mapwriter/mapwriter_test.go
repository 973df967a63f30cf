package mapwriter_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/metastore/blockmap"
	"github.com/backy/backy/versions/mapwriter"
)

// cleanup does what 'backy cleanup' does to the unreferenced blocks for
// which remove returns true: records go, objects are deleted.
func (h *harness) cleanup(remove func(block.ID) bool) []block.ID {
	h.t.Helper()
	col, err := h.db.CollectGarbageKeeping(block.Sparse, 0, func(r block.Record) bool { return !remove(r.ID) })
	if err != nil {
		h.t.Fatal(err)
	}
	var names []block.Name
	var ids []block.ID
	for _, r := range col.Records {
		if err := h.st.Delete(context.Background(), r.Name); err != nil {
			h.t.Fatal(err)
		}
		names = append(names, r.Name)
		ids = append(ids, r.ID)
	}
	if err := h.db.ForgetTrash(names); err != nil {
		h.t.Fatal(err)
	}
	return ids
}

// TestOrder: results arrive out of order (the worker of every even
// position waits for the next position's to finish); the map is in
// order, Count sees the positions in order, every distinct block is
// stored once, and blocks_done and the status are set.
func TestOrder(t *testing.T) {
	for _, c := range []struct {
		name     string
		n        int
		interval time.Duration
		fetch    bool
	}{
		{"one-commit", 2*blockmap.PageEntries + 77, time.Hour, false},
		{"many-commits", 2*blockmap.PageEntries + 77, time.Millisecond, false},
		{"fetch", 1500, 0, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t)
			data := blocks(c.name, 61)
			jobs := make([]tjob, c.n)
			for i := range jobs {
				if i%7 != 3 { // every seventh sparse
					jobs[i].data = data[(i*13)%len(data)]
				}
				jobs[i].fetch = c.fetch
			}
			uid := h.newVersion(int64(c.n))
			r := h.newRun(uid, jobs)
			r.cfg.CommitInterval = c.interval
			r.cfg.Workers = 3
			finished := make([]chan struct{}, c.n)
			for i := range finished {
				finished[i] = make(chan struct{})
			}
			var order []int64
			var mu sync.Mutex
			r.work = func(ctx context.Context, j tjob) (mapwriter.Result, bool, error) {
				if j.idx%2 == 0 && j.idx+1 < int64(c.n) {
					select {
					case <-finished[j.idx+1]:
					case <-ctx.Done():
						return mapwriter.Result{}, true, ctx.Err()
					}
				}
				res, err := r.defaultWork(ctx, j, make([]byte, 0, 64))
				mu.Lock()
				order = append(order, j.idx)
				mu.Unlock()
				close(finished[j.idx])
				return res, true, err
			}
			var progress []int64
			r.cfg.Progress = func(next int64) { progress = append(progress, next) }
			r.mustDo()
			if order[0] == 0 {
				t.Fatalf("results came in order: the test tests nothing")
			}
			h.wantMap(uid, jobs, c.n)
			v := h.version(uid)
			if v.BlocksDone != int64(c.n) || v.Status != metastore.StatusValid {
				t.Errorf("version: %d blocks done, %s; want %d, valid", v.BlocksDone, v.Status, c.n)
			}
			for i, cn := range r.counts {
				if cn.idx != int64(i) {
					t.Fatalf("Count call %d is for position %d", i, cn.idx)
				}
				if want := jobs[i].id(); cn.id != want && cn.kind != mapwriter.Sparse {
					t.Fatalf("Count of position %d: block %s, want %s", i, cn.id.Short(), want.Short())
				}
			}
			if len(r.counts) != c.n || len(progress) != c.n || progress[c.n-1] != int64(c.n) {
				t.Errorf("%d Count and %d Progress calls (last %v) for %d positions", len(r.counts), len(progress), progress[len(progress)-1], c.n)
			}
			for _, d := range data {
				if n := h.st.putsOf(block.Sum(d)); n != 1 {
					t.Errorf("block stored %d times, want once", n)
				}
			}
			k := r.kinds()
			if k[mapwriter.Stored] != len(data) {
				t.Errorf("%d positions stored, want %d: %v", k[mapwriter.Stored], len(data), k)
			}
		})
	}
}

// TestInflightShared: workers meeting the same new block while its first
// worker stores it wait and share that one upload, and share its failure.
func TestInflightShared(t *testing.T) {
	t.Run("shared", func(t *testing.T) {
		h := newHarness(t)
		x := []byte("the block everyone meets")
		jobs := make([]tjob, 40)
		for i := range jobs {
			jobs[i].data = x
		}
		jobs[17].data = []byte("another")
		var started atomic.Int32
		h.st.hook = func(ctx context.Context, id block.ID) error {
			if id == block.Sum(x) {
				started.Add(1)
				time.Sleep(20 * time.Millisecond) // the others meet it meanwhile
			}
			return nil
		}
		uid := h.newVersion(int64(len(jobs)))
		r := h.newRun(uid, jobs)
		r.cfg.Workers = 8
		r.mustDo()
		if n := h.st.putsOf(block.Sum(x)); n != 1 {
			t.Errorf("the shared block was stored %d times, want once", n)
		}
		k := r.kinds()
		if k[mapwriter.Stored] != 2 || k[mapwriter.Shared] == 0 || k[mapwriter.Stored]+k[mapwriter.Shared]+k[mapwriter.Found] != len(jobs) {
			t.Errorf("kinds %v: want 2 stored, the rest shared (or found once committed)", k)
		}
		h.wantMap(uid, jobs, len(jobs))
		if trash, _ := h.db.Trash(10); len(trash) != 0 {
			t.Errorf("trash holds %d objects", len(trash))
		}
	})
	t.Run("failure", func(t *testing.T) {
		h := newHarness(t)
		x := []byte("the block that fails")
		jobs := make([]tjob, 20)
		for i := range jobs {
			jobs[i].data = x
		}
		var puts atomic.Int32
		h.st.hook = func(ctx context.Context, id block.ID) error {
			puts.Add(1)
			time.Sleep(100 * time.Millisecond) // the others meet it meanwhile
			return errBoom
		}
		uid := h.newVersion(int64(len(jobs)))
		r := h.newRun(uid, jobs)
		r.cfg.Workers = 8
		var failed atomic.Int32
		r.work = func(ctx context.Context, j tjob) (mapwriter.Result, bool, error) {
			res, err := r.defaultWork(ctx, j, nil)
			if errors.Is(err, errBoom) {
				failed.Add(1)
			}
			return res, true, err
		}
		err := r.do(t.Context())
		if !errors.Is(err, errBoom) {
			t.Fatalf("writer = %v, want the Put's error", err)
		}
		if n := puts.Load(); n != 1 {
			t.Errorf("%d Puts, want 1 (the waiters share its failure)", n)
		}
		if n := failed.Load(); n < 2 {
			t.Errorf("%d workers returned the Put's error, want the waiters too", n)
		}
		if v := h.version(uid); v.BlocksDone != 0 || v.Status != metastore.StatusIncomplete {
			t.Errorf("version %d blocks done, %s", v.BlocksDone, v.Status)
		}
	})
}

// TestMissingBlocksRetry: blocks deduplicated against are removed by a
// cleanup before the commit; the writer fetches them again, stores them
// and commits, as many times as it takes while each retry fixes one.
func TestMissingBlocksRetry(t *testing.T) {
	data := blocks("old", 4)
	for _, c := range []struct {
		name string
		// removed[k]: the blocks removed before commit attempt k.
		removed    [][]int
		refetchErr error
		held       bool // the block removed is held (a base's), not found
		want       error
	}{
		{"one", [][]int{{1}}, nil, false, nil},
		{"all-at-once", [][]int{{0, 1, 2, 3}}, nil, false, nil},
		// A cleanup deleting in batches while the writer retries: each
		// attempt finds other blocks gone.
		{"one-per-attempt", [][]int{{0}, {1}, {2}, {3}}, nil, false, nil},
		{"refetch-fails", [][]int{{2}}, errBoom, false, errBoom},
		{"held", [][]int{{1}}, nil, true, metastore.ErrCorrupt},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t)
			// Version A holds the old blocks, then goes: they are
			// unreferenced, a cleanup may remove them.
			oldJobs := make([]tjob, len(data))
			for i := range oldJobs {
				oldJobs[i].data = data[i]
			}
			a := h.newVersion(int64(len(oldJobs)))
			h.newRun(a, oldJobs).mustDo()
			if err := h.db.RemoveVersion(a); err != nil {
				t.Fatal(err)
			}
			// B holds them again, among new ones.
			jobs := make([]tjob, 12)
			for i := range jobs {
				jobs[i].data = []byte{byte(i)}
			}
			pos := []int{2, 5, 6, 9}
			for k, i := range pos {
				jobs[i].data = data[k]
				if c.held {
					jobs[i] = tjob{held: block.Sum(data[k])}
				}
			}
			b := h.newVersion(int64(len(jobs)))
			r := h.newRun(b, jobs)
			h.mdb.commits = 0
			var refetched []block.ID
			r.cfg.Refetch = func(_ context.Context, id block.ID, j tjob) ([]byte, error) {
				refetched = append(refetched, id)
				if c.refetchErr != nil {
					return nil, c.refetchErr
				}
				return j.data, nil
			}
			removed := map[block.ID]bool{}
			h.mdb.before = func(attempt int, _ metastore.Commit) {
				if attempt >= len(c.removed) {
					return
				}
				ids := map[block.ID]bool{}
				for _, k := range c.removed[attempt] {
					ids[block.Sum(data[k])] = true
				}
				for _, id := range h.cleanup(func(id block.ID) bool { return ids[id] }) {
					removed[id] = true
				}
			}
			err := r.do(t.Context())
			if c.want != nil {
				if !errors.Is(err, c.want) {
					t.Fatalf("writer = %v, want %v", err, c.want)
				}
				return
			}
			if err != nil {
				t.Fatalf("writer: %v", err)
			}
			var nremoved int
			for _, ks := range c.removed {
				nremoved += len(ks)
			}
			if len(removed) != nremoved || len(refetched) != nremoved {
				t.Fatalf("%d blocks removed, %d refetched, want %d", len(removed), len(refetched), nremoved)
			}
			for id := range removed {
				if n := h.st.putsOf(id); n != 2 {
					t.Errorf("removed block %s stored %d times, want twice", id.Short(), n)
				}
			}
			var again int
			for _, cn := range r.counts {
				if cn.kind == mapwriter.Refetched {
					again++
					if !cn.cnt || !removed[cn.id] || cn.rec.ID != cn.id || jobs[cn.idx].id() != cn.id {
						t.Errorf("Count of a refetched block: %+v", cn)
					}
				}
			}
			if again != nremoved {
				t.Errorf("%d refetched blocks counted, want %d", again, nremoved)
			}
			h.wantMap(b, jobs, len(jobs))
			if v := h.version(b); v.Status != metastore.StatusValid || v.BlocksDone != int64(len(jobs)) {
				t.Errorf("version %s, %d blocks done", v.Status, v.BlocksDone)
			}
		})
	}
}

// TestRedundantDropped: another writer stores and commits a block this
// writer stored but had not committed yet; this writer's object is then
// redundant: deleted, and forgotten from the trash.
func TestRedundantDropped(t *testing.T) {
	h := newHarness(t)
	x := []byte("stored by both")
	jobs := []tjob{{data: x}, {data: []byte("a's own")}}
	a := h.newVersion(int64(len(jobs)))
	ra := h.newRun(a, jobs)
	ra.cfg.Workers = 1
	var aRec block.Record
	ranB := false
	ra.cfg.Progress = func(next int64) {
		if next != 1 {
			return
		}
		aRec = ra.counts[0].rec
		// Before A commits: B stores the block (A's record is not
		// committed, so B finds none) and commits it.
		b := h.newVersion(1)
		rb := h.newRun(b, []tjob{{data: x}})
		rb.mustDo()
		ranB = true
	}
	ra.mustDo()
	if !ranB || ra.counts[0].kind != mapwriter.Stored {
		t.Fatalf("the race did not happen: %+v", ra.counts)
	}
	if n := h.st.putsOf(block.Sum(x)); n != 2 {
		t.Fatalf("block stored %d times, want twice (once by each writer)", n)
	}
	rec, _, _ := h.db.LookupBlock(block.Sum(x))
	if rec.Name == aRec.Name {
		t.Fatal("A's object is recorded: B's commit came first, so A's is the redundant one")
	}
	if h.st.has(aRec.Name) {
		t.Error("A's redundant object was not deleted")
	}
	if !h.st.has(rec.Name) {
		t.Error("the recorded object was deleted")
	}
	if trash, _ := h.db.Trash(10); len(trash) != 0 {
		t.Errorf("trash holds %d objects, want none", len(trash))
	}
	h.wantMap(a, jobs, len(jobs))
}

// TestWorkerError: a worker's error (of Work, of a Put) is what the
// writer returns, and the version keeps an exact committed prefix.
func TestWorkerError(t *testing.T) {
	for _, c := range []struct {
		name    string
		workers int
		at      int
		put     bool
	}{
		{"first-one-worker", 1, 0, false},
		{"later", 4, 150, false},
		{"put", 2, 70, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			for round := range 10 {
				h := newHarness(t)
				jobs := make([]tjob, 200)
				for i := range jobs {
					jobs[i].data = []byte{byte(i), byte(i >> 8), byte(round)}
				}
				uid := h.newVersion(int64(len(jobs)))
				r := h.newRun(uid, jobs)
				r.cfg.Workers = c.workers
				r.cfg.CommitInterval = time.Millisecond
				bad := block.Sum(jobs[c.at].data)
				if c.put {
					h.st.hook = func(_ context.Context, id block.ID) error {
						if id == bad {
							return errBoom
						}
						return nil
					}
				} else {
					r.work = func(_ context.Context, j tjob) (mapwriter.Result, bool, error) {
						if j.idx == int64(c.at) {
							return mapwriter.Result{}, true, errBoom
						}
						return mapwriter.Result{}, false, nil
					}
				}
				err := r.do(t.Context())
				if !errors.Is(err, errBoom) {
					t.Fatalf("round %d: writer = %v, want the worker's error", round, err)
				}
				v := h.version(uid)
				if v.BlocksDone > int64(c.at) || v.Status != metastore.StatusIncomplete {
					t.Fatalf("round %d: version %s with %d blocks done, the error was at %d", round, v.Status, v.BlocksDone, c.at)
				}
				h.wantMap(uid, jobs, int(v.BlocksDone))
			}
		})
	}
}

// TestCancel: cancelling the context (or a commit failing) stops reader,
// workers (also those waiting for another's upload, and a Put under way)
// and committer; the version keeps an exact committed prefix.
func TestCancel(t *testing.T) {
	for _, c := range []struct {
		name  string
		where string
		want  error
	}{
		{"in-put", "put", context.Canceled},         // a Put under way, others wait for it
		{"in-reader", "reader", context.Canceled},   // the window is full
		{"in-committer", "count", context.Canceled}, // between commits
		// The committer fails while it stalls: the workers waiting to hand
		// in results and the reader stop too.
		{"commit-fails", "flush", errBoom},
		// A worker fails late while the others fill the window: the
		// reader waiting for room stops too.
		{"worker-fails", "work", errBoom},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t)
			x := []byte("slow")
			jobs := make([]tjob, 3000)
			for i := range jobs {
				jobs[i].data = []byte{byte(i), byte(i >> 8)}
				if i >= 1500 && i%3 == 0 {
					jobs[i].data = x
				}
			}
			uid := h.newVersion(int64(len(jobs)))
			r := h.newRun(uid, jobs)
			r.cfg.CommitInterval = time.Millisecond
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			switch c.where {
			case "put":
				h.st.hook = func(pctx context.Context, id block.ID) error {
					if id == block.Sum(x) {
						cancel()
						<-pctx.Done()
						return pctx.Err()
					}
					return nil
				}
			case "reader", "flush":
				// The committer stalls at position 1500 (its Count waits),
				// so the reader fills the window and waits for room.
				r.cfg.Count = func(idx int64, _ tjob, _ mapwriter.Result) {
					if idx != 1500 {
						return
					}
					if c.where == "flush" {
						time.Sleep(50 * time.Millisecond)
						h.st.mu.Lock()
						h.st.flushErr = errBoom
						h.st.mu.Unlock()
						return
					}
					time.AfterFunc(50*time.Millisecond, cancel)
					<-ctx.Done()
				}
			case "work":
				r.work = func(_ context.Context, j tjob) (mapwriter.Result, bool, error) {
					if j.idx == 1500 {
						time.Sleep(100 * time.Millisecond)
						return mapwriter.Result{}, true, errBoom
					}
					return mapwriter.Result{}, false, nil
				}
			case "count":
				r.cfg.Progress = func(next int64) {
					if next == 1500 {
						cancel()
					}
				}
			}
			done := make(chan error, 1)
			go func() { done <- r.do(ctx) }()
			var err error
			select {
			case err = <-done:
			case <-time.After(20 * time.Second):
				t.Fatal("the writer did not return after its context was cancelled")
			}
			if !errors.Is(err, c.want) {
				t.Fatalf("writer = %v, want %v", err, c.want)
			}
			// (A commit after the cancellation may still succeed: the
			// prefix is exact either way.)
			v := h.version(uid)
			if v.BlocksDone >= int64(len(jobs)) || v.BlocksDone == 0 || v.Status != metastore.StatusIncomplete {
				t.Fatalf("version %s with %d blocks done", v.Status, v.BlocksDone)
			}
			h.wantMap(uid, jobs, int(v.BlocksDone))
		})
	}
}

// TestShortLastPage: a version whose last page is reused whole from
// another version with the same short last page counts the page's
// entries, not its capacity: blocks_done is the version's block count.
// (Computed from page capacity, as replicate's committer did, it was
// 2048 here.)
func TestShortLastPage(t *testing.T) {
	h := newHarness(t)
	n := blockmap.PageEntries + 5
	data := blocks("page", 10)
	jobs := make([]tjob, n)
	for i := range jobs {
		jobs[i].data = data[i%len(data)]
	}
	a := h.newVersion(int64(n))
	h.newRun(a, jobs).mustDo()
	pages, err := h.db.PageList(a)
	if err != nil || len(pages) != 2 {
		t.Fatalf("page list %v, %v", pages, err)
	}
	// B reuses both of A's pages.
	var reuse []tjob
	for p, id := range pages {
		ents, err := h.db.Page(id)
		if err != nil {
			t.Fatal(err)
		}
		reuse = append(reuse, tjob{page: id, ents: ents})
		if p == 0 {
			reuse = append(reuse, make([]tjob, blockmap.PageEntries-1)...)
		}
	}
	reuse = append(reuse, make([]tjob, len(jobs)-len(reuse))...)
	for _, commits := range []string{"final", "intermediate"} {
		b := h.newVersion(int64(n))
		r := h.newRun(b, reuse)
		if commits == "intermediate" {
			r.cfg.CommitInterval = 0
		}
		r.mustDo()
		v := h.version(b)
		if v.BlocksDone != v.Blocks() || v.BlocksDone != int64(n) {
			t.Errorf("%s: blocks_done %d, the version has %d blocks", commits, v.BlocksDone, v.Blocks())
		}
		if got, _ := h.db.PageList(b); len(got) != 2 || got[0] != pages[0] || got[1] != pages[1] {
			t.Errorf("%s: pages %v, want A's %v", commits, got, pages)
		}
		k := r.kinds()
		if k[mapwriter.Page] != 2 || len(r.counts) != 2 || r.counts[1].idx != blockmap.PageEntries || r.counts[1].ents != 5 {
			t.Errorf("%s: counted %+v", commits, r.counts)
		}
		if h.st.putsOf(block.Sum(data[0])) != 1 {
			t.Errorf("%s: reused blocks stored again", commits)
		}
	}
}

// TestResumeCounted: a resumed run starts at the page holding the first
// position not done and gives Count only the positions from Counted on,
// trimming a reused page.
func TestResumeCounted(t *testing.T) {
	h := newHarness(t)
	n := 2*blockmap.PageEntries + 40
	data := blocks("resume", 30)
	full := make([]tjob, n)
	for i := range full {
		full[i].data = data[i%len(data)]
	}
	a := h.newVersion(int64(n))
	h.newRun(a, full).mustDo()
	aPages, _ := h.db.PageList(a)
	ents1, _ := h.db.Page(aPages[1])

	// B: an earlier run committed page 0 and 6 entries of page 1.
	b := h.newVersion(int64(n))
	if _, err := h.db.Commit(metastore.Commit{UID: b, Pages: []metastore.PageWrite{metastore.ReusePage(aPages[0]), metastore.NewPage(ents1[:6])},
		Update: func(v *metastore.Version) error { v.BlocksDone = blockmap.PageEntries + 6; return nil }}); err != nil {
		t.Fatal(err)
	}
	jobs := make([]tjob, n)
	copy(jobs, full)
	jobs[blockmap.PageEntries] = tjob{page: aPages[1], ents: ents1}
	r := h.newRun(b, jobs)
	r.cfg.FirstPage, r.cfg.Counted = 1, blockmap.PageEntries+6
	r.mustDo()
	if len(r.counts) != 1+40 || r.counts[0].idx != blockmap.PageEntries+6 || r.counts[0].ents != blockmap.PageEntries-6 || r.counts[1].idx != 2*blockmap.PageEntries {
		t.Errorf("counted %d results, first %+v", len(r.counts), r.counts[0])
	}
	v := h.version(b)
	if v.BlocksDone != int64(n) || v.Status != metastore.StatusValid {
		t.Errorf("version %s, %d blocks done", v.Status, v.BlocksDone)
	}
	h.wantMap(b, full, n)
}

// TestFlushFails: a commit whose Flush fails commits nothing (a record
// only names a durable object).
func TestFlushFails(t *testing.T) {
	h := newHarness(t)
	jobs := []tjob{{data: []byte("a")}, {data: []byte("b")}}
	uid := h.newVersion(2)
	r := h.newRun(uid, jobs)
	h.st.flushErr = errBoom
	if err := r.do(t.Context()); !errors.Is(err, errBoom) {
		t.Fatalf("writer = %v, want the Flush error", err)
	}
	if h.mdb.commits != 0 {
		t.Errorf("%d commits after a failed Flush", h.mdb.commits)
	}
	if v := h.version(uid); v.BlocksDone != 0 {
		t.Errorf("%d blocks done", v.BlocksDone)
	}
}

// TestTargetName: the target's errors are named.
func TestTargetName(t *testing.T) {
	h := newHarness(t)
	uid := h.newVersion(1)
	r := h.newRun(uid, []tjob{{data: []byte("a")}})
	r.cfg.Name = "target store"
	h.st.hook = func(context.Context, block.ID) error { return errBoom }
	err := r.do(t.Context())
	if !errors.Is(err, errBoom) || !strings.HasPrefix(err.Error(), "target store: ") {
		t.Errorf("writer = %v", err)
	}
}
