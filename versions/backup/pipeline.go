package backup

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/backy/backy/blockstore/backend"
	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/metastore/blockmap"
	"github.com/backy/backy/versions/hints"
	"github.com/backy/backy/versions/source"
)

// pipeline runs reader, workers and committer from page firstPage on.
func (e *engine) pipeline(ctx context.Context, firstPage int64, start time.Time) error {
	g, ctx := errgroup.WithContext(ctx)
	nbuf := e.o.Workers + 2
	pool := make(chan *[]byte, nbuf)
	for range nbuf {
		b := make([]byte, e.bs)
		pool <- &b
	}
	// window bounds how far the reader runs ahead of the committer, so
	// the reorder buffer stays small.
	window := make(chan struct{}, 4*nbuf)
	jobs := make(chan job, nbuf)
	results := make(chan result, nbuf)

	g.Go(func() error {
		defer close(jobs)
		return e.reader(ctx, firstPage, pool, window, jobs)
	})
	// Workers run in g, so that a worker's error cancels ctx at once: the
	// committer would otherwise wait forever for the failed block, and the
	// reader for room in the window.
	var workers sync.WaitGroup
	for range e.o.Workers {
		workers.Add(1)
		g.Go(func() error {
			defer workers.Done()
			for j := range jobs {
				r, err := e.work(ctx, j)
				if j.buf != nil {
					pool <- j.buf
				}
				if err != nil {
					e.workerErr.CompareAndSwap(nil, &err)
					return err
				}
				select {
				case results <- r:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			return nil
		})
	}
	g.Go(func() error {
		workers.Wait()
		close(results)
		return nil
	})
	g.Go(func() error {
		return e.committer(ctx, firstPage, start, window, results)
	})
	err := g.Wait()
	if err != nil && ctx.Err() != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return err
}

// prefetchBlocks is how far ahead of the reader the source is prefetched.
const prefetchBlocks = 4

// reader emits one job per block (or per reused page), in order.
func (e *engine) reader(ctx context.Context, firstPage int64, pool chan *[]byte, window chan struct{}, jobs chan<- job) error {
	holes, _ := e.src.(source.HoleFinder)
	pf, _ := e.src.(source.Prefetcher)
	var prefetched int64 // source bytes [0, prefetched) already asked for
	var basePage []block.ID
	basePageIdx := int64(-1)
	send := func(j job) error {
		select {
		case jobs <- j:
			return nil
		case <-ctx.Done():
			if j.buf != nil {
				pool <- j.buf
			}
			return ctx.Err()
		}
	}
	acquire := func() error {
		select {
		case window <- struct{}{}:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for p := firstPage; p*blockmap.PageEntries < e.nBlk; p++ {
		first := p * blockmap.PageEntries
		last := min(first+blockmap.PageEntries, e.nBlk)
		needBase := e.base != nil && e.hmap != nil && p < int64(len(e.basePg))
		if needBase {
			var err error
			if basePage, err = e.db.Page(e.basePg[p]); err != nil {
				return err
			}
			basePageIdx = p
		}
		if e.pageFromBase(p) && int64(len(basePage)) == last-first {
			if err := acquire(); err != nil {
				return err
			}
			if err := send(job{idx: first, kind: kindPage, page: e.basePg[p], ents: basePage}); err != nil {
				return err
			}
			continue
		}
		for i := first; i < last; i++ {
			if err := acquire(); err != nil {
				return err
			}
			n := blockLen(i, e.bs, e.size)
			class := hints.Read
			if e.hmap != nil {
				class = e.hmap.Class(i)
			}
			switch {
			case class == hints.Sparse, class == hints.Untouched && e.base == nil:
				if err := send(job{idx: i, kind: kindSparse, n: int(n)}); err != nil {
					return err
				}
				continue
			case class == hints.Untouched && e.fromBase(i) && basePageIdx == p:
				if err := send(job{idx: i, kind: kindBase, n: int(n), id: basePage[i-first]}); err != nil {
					return err
				}
				continue
			}
			if holes != nil && holes.IsHole(i*e.bs, n) {
				if err := send(job{idx: i, kind: kindSparse, n: int(n)}); err != nil {
					return err
				}
				continue
			}
			var buf *[]byte
			select {
			case buf = <-pool:
			case <-ctx.Done():
				return ctx.Err()
			}
			if pf != nil && i*e.bs+n > prefetched {
				// Keep the device busy a few blocks ahead of the reader.
				ahead := prefetchBlocks * e.bs
				pf.Prefetch(max(prefetched, i*e.bs), i*e.bs+ahead-max(prefetched, i*e.bs))
				prefetched = i*e.bs + ahead
			}
			data, err := e.readBlock(i, *buf)
			if err != nil {
				pool <- buf
				return err
			}
			if err := send(job{idx: i, kind: kindRead, buf: buf, n: len(data)}); err != nil {
				return err
			}
		}
	}
	return nil
}

// work handles one job in a worker: zero test, hash, lookup, store.
func (e *engine) work(ctx context.Context, j job) (result, error) {
	r := result{job: j, wasRead: j.kind == kindRead}
	r.buf = nil
	if j.kind != kindRead {
		return r, nil
	}
	data := (*j.buf)[:j.n]
	if block.IsZero(data) {
		r.kind = kindSparse
		return r, nil
	}
	r.id = block.Sum(data)
	rec, uploaded, dedup, err := e.store(ctx, r.id, data)
	if err != nil {
		return r, err
	}
	r.rec, r.uploaded, r.dedup = rec, uploaded, dedup
	return r, nil
}

// store makes sure block id is stored: found valid in the metastore
// (dedup), being stored by another worker of this run (wait and share its
// record), or stored now.
func (e *engine) store(ctx context.Context, id block.ID, data []byte) (*block.Record, bool, bool, error) {
	e.mu.Lock()
	if u, ok := e.inflight[id]; ok {
		e.mu.Unlock()
		select {
		case <-u.done:
		case <-ctx.Done():
			return nil, false, false, ctx.Err()
		}
		if u.err != nil {
			return nil, false, false, u.err
		}
		if u.found {
			// Committed before this run: deduplicate against it as the
			// first worker did, with nothing to commit.
			return nil, false, true, nil
		}
		rec := u.rec
		return &rec, false, true, nil
	}
	u := &upload{done: make(chan struct{})}
	e.inflight[id] = u
	e.mu.Unlock()

	look := make([]metastore.Lookup, 1)
	if err := e.db.LookupBlocks([]block.ID{id}, look); err != nil {
		u.err = err
		close(u.done)
		e.forget(id)
		return nil, false, false, err
	}
	if look[0].Found && !look[0].Record.Invalid {
		// Stored and committed: nothing to share with other workers.
		// (Set found before close: waiters read it once done is closed.)
		u.found = true
		close(u.done)
		e.forget(id)
		return nil, false, true, nil
	}
	rec, err := e.st.Put(ctx, id, data)
	if err != nil {
		u.err = err
		close(u.done)
		e.forget(id)
		return nil, false, false, err
	}
	u.rec = rec
	close(u.done) // stays in inflight until committed
	return &rec, true, false, nil
}

func (e *engine) forget(id block.ID) {
	e.mu.Lock()
	delete(e.inflight, id)
	e.mu.Unlock()
}

// committer puts results in order into pages and commits them.
func (e *engine) committer(ctx context.Context, firstPage int64, start time.Time, window chan struct{}, results <-chan result) error {
	c := &commitState{e: e, committedPages: int(firstPage), seen: map[block.ID]bool{}, dedupIdx: map[block.ID]int64{}}
	c.lastCommit = e.o.now()
	pending := map[int64]result{}
	next := firstPage * blockmap.PageEntries
	v := e.v
	// A resumed run starts at the page holding the first block not yet
	// done, so it sees again blocks that the version's counters already
	// count: count only the blocks from counted on.
	counted := v.BlocksDone
	stats := func(r result) {
		if r.kind != kindPage && r.idx < counted {
			return
		}
		if r.wasRead {
			v.BytesRead += int64(r.n)
		}
		switch r.kind {
		case kindRead:
			if r.uploaded {
				v.BytesWritten += int64(r.rec.StoredSize)
			} else {
				v.BytesDeduplicated += int64(r.n)
			}
		case kindSparse:
			v.BytesSparse += int64(r.n)
		case kindBase:
			if r.id.IsSparse() {
				v.BytesSparse += int64(r.n)
			} else {
				v.BytesDeduplicated += int64(r.n)
			}
		case kindPage:
			for k, id := range r.ents {
				if r.idx+int64(k) < counted {
					continue
				}
				n := blockLen(r.idx+int64(k), e.bs, e.size)
				if id.IsSparse() {
					v.BytesSparse += n
				} else {
					v.BytesDeduplicated += n
				}
			}
		}
	}
	for r := range results {
		pending[r.idx] = r
		for {
			r, ok := pending[next]
			if !ok {
				break
			}
			delete(pending, next)
			<-window
			stats(r)
			if err := c.add(ctx, r); err != nil {
				return err
			}
			if r.kind == kindPage {
				next += int64(len(r.ents))
			} else {
				next++
			}
			if e.o.Progress != nil {
				e.o.Progress(Progress{Done: min(next*e.bs, e.size), Total: e.size, BytesRead: v.BytesRead, BytesWritten: v.BytesWritten})
			}
			if len(c.full) >= 8 || e.o.since(c.lastCommit) >= e.o.CommitInterval {
				if err := c.commit(ctx, false, start); err != nil {
					return err
				}
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if next != e.nBlk {
		if werr := e.workerErr.Load(); werr != nil {
			return *werr
		}
		return fmt.Errorf("internal error: backup ended at block %d of %d", next, e.nBlk)
	}
	// Everything read is recorded; the version becomes valid only if the
	// source did not visibly change meanwhile (changed.go).
	if err := c.commit(ctx, false, start); err != nil {
		return err
	}
	if err := e.watch.check(ctx); err != nil {
		return e.sourceChanged(err)
	}
	return c.commit(ctx, true, start)
}

// commitState is the committer's view of the map being built.
type commitState struct {
	e              *engine
	committedPages int                   // full pages committed: positions [0, committedPages)
	full           []metastore.PageWrite // complete pages since the last commit
	tail           []block.ID            // entries of the page being filled
	newRecs        []block.Record        // objects stored since the last commit
	seen           map[block.ID]bool     // ids in newRecs
	dedupIdx       map[block.ID]int64    // deduplicated ids since the last commit -> a block index holding it
	lastCommit     time.Time
}

func (c *commitState) add(ctx context.Context, r result) error {
	if r.kind == kindPage {
		if len(c.tail) != 0 {
			return fmt.Errorf("internal error: reused page at block %d follows a partial page", r.idx)
		}
		c.full = append(c.full, metastore.ReusePage(r.page))
		return nil
	}
	id := block.Sparse
	if r.kind == kindRead || r.kind == kindBase {
		id = r.id
	}
	if r.rec != nil && !c.seen[id] {
		c.seen[id] = true
		c.newRecs = append(c.newRecs, *r.rec)
	}
	if r.kind == kindRead && r.dedup && r.rec == nil {
		if _, ok := c.dedupIdx[id]; !ok {
			c.dedupIdx[id] = r.idx
		}
	}
	c.tail = append(c.tail, id)
	if len(c.tail) == blockmap.PageEntries {
		c.full = append(c.full, metastore.NewPage(c.tail))
		c.tail = nil
	}
	return nil
}

// commit writes the pending pages (and the partial tail) to the metastore.
// final marks the version valid in the same transaction.
func (c *commitState) commit(ctx context.Context, final bool, start time.Time) error {
	e := c.e
	pages := append([]metastore.PageWrite(nil), c.full...)
	if len(c.tail) > 0 {
		pages = append(pages, metastore.NewPage(append([]block.ID(nil), c.tail...)))
	}
	// A reused base page may be the version's short last page: count
	// entries, not page capacity.
	done := min(int64(c.committedPages+len(c.full))*blockmap.PageEntries+int64(len(c.tail)), e.v.Blocks())
	for attempt := 0; ; attempt++ {
		snapshot := *e.v // statistics, including blocks stored again below
		// Records may only point to durable objects.
		if err := e.st.Flush(ctx); err != nil {
			return err
		}
		res, err := e.db.Commit(metastore.Commit{
			UID: e.v.UID, At: c.committedPages, Pages: pages, New: c.newRecs,
			Update: func(v *metastore.Version) error {
				v.BlocksDone = done
				v.BytesRead, v.BytesWritten = snapshot.BytesRead, snapshot.BytesWritten
				v.BytesDeduplicated, v.BytesSparse = snapshot.BytesDeduplicated, snapshot.BytesSparse
				v.DurationSeconds = e.prevDuration + e.o.since(start).Seconds()
				if final {
					v.Status = metastore.StatusValid
				}
				*e.v = *v
				return nil
			},
		})
		var missing *metastore.MissingBlocksError
		if errors.As(err, &missing) && attempt <= len(c.dedupIdx) {
			// A cleanup removed blocks we deduplicated against: store
			// them again from the source. A block stored again has its
			// record in the commit, so it cannot go missing again: each
			// attempt fixes at least one deduplicated block, and a
			// cleanup deleting unreferenced blocks in batches while we
			// retry cannot make this fail (a fixed bound of 3 could).
			e.log.Warn("deduplicated blocks were removed meanwhile; storing them again", "blocks", len(missing.IDs))
			if err := c.restore(ctx, missing.IDs); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("committing version %s: %w", e.v.UID, err)
		}
		c.dropRedundant(ctx, res.Redundant)
		break
	}
	// Records now committed: later workers find them in the metastore.
	e.mu.Lock()
	for _, r := range c.newRecs {
		if u, ok := e.inflight[r.ID]; ok && u.rec.Name == r.Name {
			delete(e.inflight, r.ID)
		}
	}
	e.mu.Unlock()
	c.committedPages += len(c.full)
	c.full = nil
	c.newRecs = nil
	clear(c.seen)
	clear(c.dedupIdx)
	c.lastCommit = e.o.now()
	return nil
}

// restore reads the blocks with the given ids from the source again and
// stores them, adding their records to the pending commit.
func (c *commitState) restore(ctx context.Context, ids []block.ID) error {
	e := c.e
	buf := make([]byte, e.bs)
	for _, id := range ids {
		idx, ok := c.dedupIdx[id]
		if !ok {
			return fmt.Errorf("%w: block %s used by this backup is no longer stored and cannot be read again", metastore.ErrCorrupt, id.Short())
		}
		data, err := e.readBlock(idx, buf)
		if err != nil {
			return err
		}
		if block.Sum(data) != id {
			return fmt.Errorf("%w: block %d no longer has the content read a moment ago", ErrSourceChanged, idx)
		}
		rec, err := e.st.Put(ctx, id, data)
		if err != nil {
			return err
		}
		c.newRecs = append(c.newRecs, rec)
		c.seen[id] = true
		// Counted as deduplicated when read; it was written after all.
		e.v.BytesWritten += int64(rec.StoredSize)
		e.v.BytesDeduplicated -= int64(len(data))
	}
	return nil
}

// dropRedundant deletes objects this run stored that another writer had
// stored first. They are in the metastore's trash, so one that cannot be
// deleted now is left to cleanup.
func (c *commitState) dropRedundant(ctx context.Context, names []block.Name) {
	if len(names) == 0 {
		return
	}
	var gone []block.Name
	for _, n := range names {
		if err := c.e.st.Delete(ctx, n); err != nil && !errors.Is(err, backend.ErrNotFound) {
			c.e.log.Warn("redundant object not deleted; cleanup will", "object", n.String(), "err", err)
			continue
		}
		gone = append(gone, n)
	}
	if err := c.e.db.ForgetTrash(gone); err != nil {
		c.e.log.Warn("trash not updated; cleanup will", "err", err)
	}
}
