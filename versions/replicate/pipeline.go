package replicate

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/blockstore/backend"
	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/metastore/blockmap"
)

// engine copies one version.
type engine struct {
	// workerErr: the first error of a worker, recorded before it counts
	// as done (see backup's engine for why).
	workerErr atomic.Pointer[error]
	r         *run
	v         *metastore.Version // in the source, share-locked
	tv        *metastore.Version // in the target, locked; updated by each commit
	res       *Result
	srcPages  []blockmap.PageID
	n         int64 // map entries to copy

	mu        sync.Mutex
	inflight  map[block.ID]*upload
	damaged   []block.ID // source blocks found damaged
	damageErr error      // the first damage found
}

// upload is a block being stored by one worker, which others meeting the
// same block wait for.
type upload struct {
	done  chan struct{}
	rec   block.Record
	err   error
	found bool // the target held the block already
}

// job is one position of the map.
type job struct {
	idx      int64
	n        int64        // the block's length at this position
	id       block.ID     // block.Sparse for a sparse block
	rec      block.Record // the source's record
	srcFound bool         // the source has a record (or the block is sparse)
	have     bool         // the target had a valid record when the reader looked
}

type result struct {
	job
	rec   *block.Record // target record to commit (stored by this run)
	sent  bool          // this result's worker read and stored the block
	dedup bool          // the target held it, or another worker stored it
}

func (e *engine) blockLen(idx int64) int64 { return min(e.v.BlockSize, e.v.Size-idx*e.v.BlockSize) }

// pipeline runs reader, workers and committer from page firstPage on.
func (e *engine) pipeline(ctx context.Context, firstPage int64) error {
	start := e.r.o.Clock.Now()
	prevDuration := e.tv.DurationSeconds
	g, ctx := errgroup.WithContext(ctx)
	w := e.r.o.Workers
	// window bounds how far the reader runs ahead of the committer, so
	// the reorder buffer stays small.
	window := make(chan struct{}, 4*(w+2))
	jobs := make(chan job, w)
	results := make(chan result, w)
	g.Go(func() error {
		defer close(jobs)
		return e.reader(ctx, firstPage, window, jobs)
	})
	var workers sync.WaitGroup
	for range w {
		workers.Add(1)
		g.Go(func() error {
			defer workers.Done()
			buf := make([]byte, 0, e.v.BlockSize)
			for j := range jobs {
				r, err := e.work(ctx, j, buf)
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
		return e.committer(ctx, firstPage, start, prevDuration, window, results)
	})
	return g.Wait()
}

// reader emits one job per map entry from page firstPage on, in order,
// with the blocks' records in the source and whether the target holds
// them (one read transaction per page and store).
func (e *engine) reader(ctx context.Context, firstPage int64, window chan struct{}, jobs chan<- job) error {
	var slook, tlook []metastore.Lookup
	next := firstPage * blockmap.PageEntries
	for p := firstPage; p < int64(len(e.srcPages)) && next < e.n; p++ {
		ids, err := e.r.src.DB.Page(e.srcPages[p])
		if err != nil {
			return perVersion(fmt.Errorf("source store: version %s: %w", e.v.UID, err))
		}
		slook = slices.Grow(slook[:0], len(ids))[:len(ids)]
		tlook = slices.Grow(tlook[:0], len(ids))[:len(ids)]
		if err := e.r.src.DB.LookupBlocks(ids, slook); err != nil {
			return fmt.Errorf("source store: %w", err)
		}
		if err := e.r.dst.DB.LookupBlocks(ids, tlook); err != nil {
			return fmt.Errorf("target store: %w", err)
		}
		if p < int64(len(e.srcPages))-1 && len(ids) != blockmap.PageEntries {
			return perVersion(fmt.Errorf("%w: page %d of version %s in the source holds %d entries, not %d", metastore.ErrCorrupt, p, e.v.UID, len(ids), blockmap.PageEntries))
		}
		for k, id := range ids {
			if next >= e.n {
				if e.v.Status == metastore.StatusIncomplete {
					break // entries past the committed ones: not final
				}
				return perVersion(fmt.Errorf("%w: the map of version %s in the source has more entries than its %d blocks", metastore.ErrCorrupt, e.v.UID, e.n))
			}
			select {
			case window <- struct{}{}:
			case <-ctx.Done():
				return ctx.Err()
			}
			j := job{idx: next, n: e.blockLen(next), id: id, rec: slook[k].Record,
				srcFound: id.IsSparse() || slook[k].Found, have: tlook[k].Found && !tlook[k].Record.Invalid}
			select {
			case jobs <- j:
			case <-ctx.Done():
				return ctx.Err()
			}
			next++
		}
	}
	if next != e.n {
		return perVersion(fmt.Errorf("%w: the map of version %s in the source ends at block %d of %d", metastore.ErrCorrupt, e.v.UID, next, e.n))
	}
	return nil
}

// work handles one job in a worker.
func (e *engine) work(ctx context.Context, j job, buf []byte) (result, error) {
	r := result{job: j}
	if j.id.IsSparse() {
		return r, nil
	}
	if !j.srcFound {
		err := fmt.Errorf("%w: block %d (%s) of version %s has no record in the source metastore", metastore.ErrCorrupt, j.idx, j.id.Short(), e.v.UID)
		e.damage(j.id, err)
		return r, perVersion(err)
	}
	rec, sent, dedup, err := e.store(ctx, j, buf)
	if err != nil {
		return r, err
	}
	r.rec, r.sent, r.dedup = rec, sent, dedup
	return r, nil
}

// store makes sure the target holds block j.id: found valid in the target
// (dedup), being stored by another worker of this run (wait and share its
// record), or read from the source and stored now.
func (e *engine) store(ctx context.Context, j job, buf []byte) (*block.Record, bool, bool, error) {
	id := j.id
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
			return nil, false, true, nil
		}
		rec := u.rec
		return &rec, false, true, nil
	}
	u := &upload{done: make(chan struct{})}
	e.inflight[id] = u
	e.mu.Unlock()
	fail := func(err error) (*block.Record, bool, bool, error) {
		u.err = err
		close(u.done)
		e.forget(id)
		return nil, false, false, err
	}
	have := j.have
	if !have {
		// The reader looked a while ago: this run (or another writer) may
		// have committed the block since.
		rec, found, err := e.r.dst.DB.LookupBlock(id)
		if err != nil {
			return fail(fmt.Errorf("target store: %w", err))
		}
		have = found && !rec.Invalid
	}
	if have {
		// Set found before close: waiters read it once done is closed.
		u.found = true
		close(u.done)
		e.forget(id)
		return nil, false, true, nil
	}
	data, err := e.read(ctx, j, buf)
	if err != nil {
		return fail(err)
	}
	rec, err := e.r.dst.Blocks.Put(ctx, id, data)
	if err != nil {
		return fail(fmt.Errorf("target store: %w", err))
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

// read reads and verifies block j from the source. A concurrent
// migrate-encryption in the source may have moved the block to a new
// object since the map was read: the record is followed, as restore does.
// A damaged block is recorded for MarkInvalid.
func (e *engine) read(ctx context.Context, j job, buf []byte) ([]byte, error) {
	rec := j.rec
	data, err := e.r.src.Blocks.Get(ctx, rec, buf[:0])
	for try := 0; try < 3 && (errors.Is(err, blockstore.ErrMissing) || errors.Is(err, blockstore.ErrCorrupt)); try++ {
		cur, found, lerr := e.r.src.DB.LookupBlock(j.id)
		if lerr != nil {
			return nil, fmt.Errorf("source store: %w", lerr)
		}
		if !found || cur.Name == rec.Name {
			break
		}
		rec = cur
		data, err = e.r.src.Blocks.Get(ctx, rec, buf[:0])
	}
	if err == nil && int64(len(data)) != j.n {
		err = fmt.Errorf("%w: block %s has %d bytes, position %d of the version needs %d", blockstore.ErrCorrupt, j.id.Short(), len(data), j.idx, j.n)
	}
	if err != nil {
		if errors.Is(err, blockstore.ErrCorrupt) || errors.Is(err, blockstore.ErrMissing) {
			err = fmt.Errorf("source store: version %s, block %d at byte %d: %w", e.v.UID, j.idx, j.idx*e.v.BlockSize, err)
			e.damage(j.id, err)
			return nil, perVersion(err)
		}
		return nil, fmt.Errorf("source store: %w", err)
	}
	return data, nil
}

func (e *engine) damage(id block.ID, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !slices.Contains(e.damaged, id) {
		e.damaged = append(e.damaged, id)
	}
	if e.damageErr == nil {
		e.damageErr = err
	}
}

// committer puts results in order into pages and commits them to the
// target.
func (e *engine) committer(ctx context.Context, firstPage int64, start time.Time, prevDuration float64, window chan struct{}, results <-chan result) error {
	c := &commitState{e: e, start: start, prevDuration: prevDuration, committedPages: int(firstPage),
		seen: map[block.ID]bool{}, dedup: map[block.ID]job{}, lastCommit: e.r.o.Clock.Now()}
	pending := map[int64]result{}
	next := firstPage * blockmap.PageEntries
	// A continued copy starts at the page holding its first block not yet
	// done, so it sees again blocks an earlier run committed and counted:
	// count only the blocks from counted on.
	c.counted = e.tv.BlocksDone
	for r := range results {
		pending[r.idx] = r
		for {
			r, ok := pending[next]
			if !ok {
				break
			}
			delete(pending, next)
			<-window
			c.stats(r)
			c.add(r)
			next++
			e.r.progress(r.n)
			if len(c.full) >= 8 || e.r.o.Clock.Since(c.lastCommit) >= e.r.o.CommitInterval {
				if err := c.commit(ctx, false); err != nil {
					return err
				}
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if next != e.n {
		if werr := e.workerErr.Load(); werr != nil {
			return *werr
		}
		return fmt.Errorf("internal error: copy of %s ended at block %d of %d", e.v.UID, next, e.n)
	}
	return c.commit(ctx, true)
}

// commitState is the committer's view of the map being built.
type commitState struct {
	e              *engine
	start          time.Time
	prevDuration   float64
	counted        int64                 // positions before it were counted by an earlier run
	committedPages int                   // full pages committed: positions [0, committedPages)
	full           []metastore.PageWrite // complete pages since the last commit
	tail           []block.ID            // entries of the page being filled
	newRecs        []block.Record        // objects stored since the last commit
	seen           map[block.ID]bool     // ids in newRecs
	dedup          map[block.ID]job      // blocks deduplicated since the last commit
	lastCommit     time.Time
}

// stats counts a result in the target version and the Result.
func (c *commitState) stats(r result) {
	if r.idx < c.counted {
		return
	}
	v, res := c.e.tv, c.e.res
	switch {
	case r.id.IsSparse():
		v.BytesSparse += r.n
		res.BlocksSparse++
	case r.sent:
		c.countSent(r.n, int64(r.rec.StoredSize))
	default:
		v.BytesDeduplicated += r.n
		res.BlocksDeduplicated++
		res.BytesDeduplicated += r.n
	}
}

func (c *commitState) countSent(n, stored int64) {
	v, res := c.e.tv, c.e.res
	v.BytesRead += n
	v.BytesWritten += stored
	res.BlocksSent++
	res.BytesSent += n
	res.BytesWritten += stored
	c.e.r.mu.Lock()
	c.e.r.sent += n
	c.e.r.mu.Unlock()
}

func (c *commitState) add(r result) {
	if r.rec != nil && !c.seen[r.id] {
		c.seen[r.id] = true
		c.newRecs = append(c.newRecs, *r.rec)
	}
	if r.dedup && r.rec == nil {
		if _, ok := c.dedup[r.id]; !ok {
			c.dedup[r.id] = r.job
		}
	}
	c.tail = append(c.tail, r.id)
	if len(c.tail) == blockmap.PageEntries {
		c.full = append(c.full, metastore.NewPage(c.tail))
		c.tail = nil
	}
}

// commit writes the pending pages (and the partial tail) to the target's
// metastore; final completes the version in the same transaction.
func (c *commitState) commit(ctx context.Context, final bool) error {
	e := c.e
	pages := append([]metastore.PageWrite(nil), c.full...)
	if len(c.tail) > 0 {
		pages = append(pages, metastore.NewPage(append([]block.ID(nil), c.tail...)))
	}
	done := int64(c.committedPages+len(c.full))*blockmap.PageEntries + int64(len(c.tail))
	for attempt := 0; ; attempt++ {
		snapshot := *e.tv // statistics, including blocks stored again below
		// Records may only point to durable objects.
		if err := e.r.dst.Blocks.Flush(ctx); err != nil {
			return fmt.Errorf("target store: %w", err)
		}
		res, err := e.r.dst.DB.Commit(metastore.Commit{
			UID: e.tv.UID, At: c.committedPages, Pages: pages, New: c.newRecs,
			Update: func(v *metastore.Version) error {
				v.BlocksDone = done
				v.BytesRead, v.BytesWritten = snapshot.BytesRead, snapshot.BytesWritten
				v.BytesDeduplicated, v.BytesSparse = snapshot.BytesDeduplicated, snapshot.BytesSparse
				v.DurationSeconds = c.prevDuration + e.r.o.Clock.Since(c.start).Seconds()
				if final {
					if e.v.Status != metastore.StatusIncomplete {
						// Every block was read and verified, or found valid
						// in the target.
						v.Status = metastore.StatusValid
					}
					v.Protected = e.v.Protected
					v.Expire = nil
					if e.v.Expire != nil {
						t := *e.v.Expire
						v.Expire = &t
					}
				}
				*e.tv = *v
				return nil
			},
		})
		var missing *metastore.MissingBlocksError
		if errors.As(err, &missing) && attempt <= len(c.dedup) {
			// A cleanup of the target removed blocks we deduplicated
			// against: send them again from the source. A block sent again
			// has its record in the commit, so each attempt fixes at least
			// one (see backup).
			e.r.log.Warn("target store: deduplicated blocks were removed meanwhile; sending them again", "version", e.v.UID, "blocks", len(missing.IDs))
			if err := c.resend(ctx, missing.IDs); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("target store: committing version %s: %w", e.tv.UID, err)
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
	clear(c.dedup)
	c.lastCommit = c.e.r.o.Clock.Now()
	return nil
}

// resend reads the given blocks from the source again and stores them in
// the target, adding their records to the pending commit.
func (c *commitState) resend(ctx context.Context, ids []block.ID) error {
	e := c.e
	buf := make([]byte, 0, e.v.BlockSize)
	for _, id := range ids {
		j, ok := c.dedup[id]
		if !ok {
			return fmt.Errorf("%w: block %s used by this copy is no longer stored in the target", metastore.ErrCorrupt, id.Short())
		}
		// The record may have moved (migrate-encryption in the source).
		if cur, found, err := e.r.src.DB.LookupBlock(id); err != nil {
			return fmt.Errorf("source store: %w", err)
		} else if found {
			j.rec = cur
		}
		data, err := e.read(ctx, j, buf)
		if err != nil {
			return err
		}
		rec, err := e.r.dst.Blocks.Put(ctx, id, data)
		if err != nil {
			return fmt.Errorf("target store: %w", err)
		}
		c.newRecs = append(c.newRecs, rec)
		c.seen[id] = true
		// Counted as deduplicated; it was sent after all.
		if j.idx >= c.counted {
			e.tv.BytesDeduplicated -= j.n
			e.res.BlocksDeduplicated--
			e.res.BytesDeduplicated -= j.n
		}
		c.countSent(j.n, int64(rec.StoredSize))
	}
	return nil
}

// dropRedundant deletes objects this run stored that another writer had
// stored first. They are in the target's trash, so one that cannot be
// deleted now is left to cleanup.
func (c *commitState) dropRedundant(ctx context.Context, names []block.Name) {
	if len(names) == 0 {
		return
	}
	var gone []block.Name
	for _, n := range names {
		if err := c.e.r.dst.Blocks.Delete(ctx, n); err != nil && !errors.Is(err, backend.ErrNotFound) {
			c.e.r.log.Warn("target store: redundant object not deleted; cleanup will", "object", n.String(), "err", err)
			continue
		}
		gone = append(gone, n)
	}
	if err := c.e.r.dst.DB.ForgetTrash(gone); err != nil {
		c.e.r.log.Warn("target store: trash not updated; cleanup will", "err", err)
	}
}
