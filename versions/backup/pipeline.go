package backup

import (
	"context"
	"fmt"

	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/internal/clock"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/metastore/blockmap"
	"github.com/backy/backy/versions/hints"
	"github.com/backy/backy/versions/mapwriter"
	"github.com/backy/backy/versions/source"
)

// pipeline writes the version's map from page firstPage on through the
// map writer: the reader here, workers and committer there.
func (e *engine) pipeline(ctx context.Context, firstPage int64) error {
	nbuf := e.o.Workers + 2
	pool := make(chan *[]byte, nbuf)
	for range nbuf {
		b := make([]byte, e.bs)
		pool <- &b
	}
	e.w = mapwriter.New(mapwriter.Config[job]{
		Store: e.st, DB: e.db, UID: e.v.UID, Logger: e.log,
		FirstPage: firstPage, End: e.nBlk,
		// A resumed run starts at the page holding the first block not
		// yet done, so it sees again blocks that the version's counters
		// already count.
		Counted: e.v.BlocksDone,
		Workers: e.o.Workers, CommitInterval: e.o.CommitInterval,
		Start: e.start, PrevDuration: e.prevDuration, Clock: clock.Or(e.o.Clock),
		Read: func(ctx context.Context, emit func(job) error) error {
			return e.reader(ctx, firstPage, pool, emit)
		},
		Work: func(ctx context.Context, j job, _ []byte) (mapwriter.Result, error) {
			r, err := e.work(ctx, j)
			if j.buf != nil {
				pool <- j.buf
			}
			return r, err
		},
		Refetch:  e.refetch,
		Count:    e.count,
		Progress: e.progress,
		Update:   e.update,
	})
	if err := e.w.Run(ctx); err != nil {
		return err
	}
	// Everything read is recorded; the version becomes valid only if the
	// source did not visibly change meanwhile (changed.go).
	if err := e.w.Commit(ctx, false); err != nil {
		return err
	}
	if err := e.watch.check(ctx); err != nil {
		return e.sourceChanged(err)
	}
	return e.w.Commit(ctx, true)
}

// prefetchBlocks is how far ahead of the reader the source is prefetched.
const prefetchBlocks = 4

// reader emits one job per block (or per reused page), in order.
func (e *engine) reader(ctx context.Context, firstPage int64, pool chan *[]byte, emit func(job) error) error {
	holes, _ := e.src.(source.HoleFinder)
	pf, _ := e.src.(source.Prefetcher)
	var prefetched int64 // source bytes [0, prefetched) already asked for
	var basePage []block.ID
	basePageIdx := int64(-1)
	send := func(j job) error {
		if err := emit(j); err != nil {
			if j.buf != nil {
				pool <- j.buf
			}
			return err
		}
		return nil
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
			if err := send(job{idx: first, kind: kindPage, page: e.basePg[p], ents: basePage}); err != nil {
				return err
			}
			continue
		}
		for i := first; i < last; i++ {
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

// work handles one job in a worker: zero test, hash, and (through the map
// writer) lookup and store.
func (e *engine) work(ctx context.Context, j job) (mapwriter.Result, error) {
	switch j.kind {
	case kindPage:
		return mapwriter.Result{Kind: mapwriter.Page, Page: j.page, Entries: j.ents}, nil
	case kindBase:
		if j.id.IsSparse() {
			return mapwriter.Result{Kind: mapwriter.Sparse}, nil
		}
		// The base is read-locked: its blocks stay recorded.
		return mapwriter.Result{Kind: mapwriter.Held, ID: j.id}, nil
	case kindSparse:
		return mapwriter.Result{Kind: mapwriter.Sparse}, nil
	case kindRead:
	default:
		return mapwriter.Result{}, fmt.Errorf("internal error: job of kind %d at block %d", j.kind, j.idx)
	}
	data := (*j.buf)[:j.n]
	if block.IsZero(data) {
		return mapwriter.Result{Kind: mapwriter.Sparse}, nil
	}
	return e.w.Store(ctx, j, block.Sum(data), false, data, nil)
}

// count folds a result into the version's statistics.
func (e *engine) count(idx int64, j job, r mapwriter.Result) {
	v := e.v
	if j.kind == kindRead && r.Kind != mapwriter.Refetched {
		v.BytesRead += int64(j.n)
	}
	switch r.Kind {
	case mapwriter.Stored:
		v.BytesWritten += int64(r.Rec.StoredSize)
	case mapwriter.Found, mapwriter.Shared, mapwriter.Held:
		v.BytesDeduplicated += int64(j.n)
	case mapwriter.Sparse:
		v.BytesSparse += int64(j.n)
	case mapwriter.Page:
		for k, id := range r.Entries {
			n := blockLen(idx+int64(k), e.bs, e.size)
			if id.IsSparse() {
				v.BytesSparse += n
			} else {
				v.BytesDeduplicated += n
			}
		}
	case mapwriter.Refetched:
		// Counted as deduplicated when read; it was written after all.
		v.BytesWritten += int64(r.Rec.StoredSize)
		if r.Counted {
			v.BytesDeduplicated -= int64(j.n)
		}
	}
}

func (e *engine) progress(next int64) {
	if e.o.Progress != nil {
		v := e.v
		e.o.Progress(Progress{Done: min(next*e.bs, e.size), Total: e.size, BytesRead: v.BytesRead, BytesWritten: v.BytesWritten})
	}
}

// update sets the version's statistics in a commit; the final commit
// makes it valid.
func (e *engine) update(v *metastore.Version, final bool) {
	v.BytesRead, v.BytesWritten = e.v.BytesRead, e.v.BytesWritten
	v.BytesDeduplicated, v.BytesSparse = e.v.BytesDeduplicated, e.v.BytesSparse
	if final {
		v.Status = metastore.StatusValid
	}
	*e.v = *v
}

// refetch reads block j from the source again, after a cleanup removed
// the block the backup deduplicated it against, and checks that it still
// has the content read before.
func (e *engine) refetch(_ context.Context, id block.ID, j job) ([]byte, error) {
	if e.rbuf == nil {
		e.rbuf = make([]byte, e.bs)
	}
	data, err := e.readBlock(j.idx, e.rbuf)
	if err != nil {
		return nil, err
	}
	if block.Sum(data) != id {
		return nil, fmt.Errorf("%w: block %d no longer has the content read a moment ago", ErrSourceChanged, j.idx)
	}
	return data, nil
}
