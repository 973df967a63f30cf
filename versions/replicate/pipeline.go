package replicate

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/metastore/blockmap"
	"github.com/backy/backy/versions/blockread"
	"github.com/backy/backy/versions/mapwriter"
)

// engine copies one version.
type engine struct {
	r        *run
	v        *metastore.Version // in the source, share-locked
	tv       *metastore.Version // in the target, locked; updated by each commit
	res      *Result
	srcPages []blockmap.PageID
	n        int64 // map entries to copy
	w        *mapwriter.Writer[job]
	rbuf     []byte // refetch's buffer

	mu        sync.Mutex
	damaged   *blockread.Recorder // source blocks found damaged
	damageErr error               // the first damage found
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

func (e *engine) blockLen(idx int64) int64 { return min(e.v.BlockSize, e.v.Size-idx*e.v.BlockSize) }

// pipeline copies the map from page firstPage on through the map writer:
// the reader and the source side here, workers and committer there.
func (e *engine) pipeline(ctx context.Context, firstPage int64) error {
	e.w = mapwriter.New(mapwriter.Config[job]{
		Store: e.r.dst.Blocks, DB: e.r.dst.DB, UID: e.tv.UID, Name: "target store", Logger: e.r.log,
		FirstPage: firstPage, End: e.n,
		// A continued copy starts at the page holding its first block not
		// yet done, so it sees again blocks an earlier run committed and
		// counted.
		Counted: e.tv.BlocksDone,
		Workers: e.r.o.Workers, CommitInterval: e.r.o.CommitInterval,
		Start: e.r.o.Clock.Now(), PrevDuration: e.tv.DurationSeconds, Clock: e.r.o.Clock,
		BufSize: int(e.v.BlockSize),
		Read: func(ctx context.Context, emit func(job) error) error {
			return e.reader(ctx, firstPage, emit)
		},
		Work:    e.work,
		Fetch:   e.read,
		Refetch: e.refetch,
		Count:   e.count,
		Progress: func(next int64) {
			e.r.progress(e.blockLen(next - 1))
		},
		Update: e.update,
	})
	if err := e.w.Run(ctx); err != nil {
		return err
	}
	return e.w.Commit(ctx, true)
}

// reader emits one job per map entry from page firstPage on, in order,
// with the blocks' records in the source and whether the target holds
// them (one read transaction per page and store).
func (e *engine) reader(ctx context.Context, firstPage int64, emit func(job) error) error {
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
			j := job{idx: next, n: e.blockLen(next), id: id, rec: slook[k].Record,
				srcFound: id.IsSparse() || slook[k].Found, have: tlook[k].Found && !tlook[k].Record.Invalid}
			if err := emit(j); err != nil {
				return err
			}
			next++
		}
	}
	if next != e.n {
		return perVersion(fmt.Errorf("%w: the map of version %s in the source ends at block %d of %d", metastore.ErrCorrupt, e.v.UID, next, e.n))
	}
	return nil
}

// work handles one job in a worker: the map writer stores the block in
// the target unless it holds it, reading it with e.read only then.
func (e *engine) work(ctx context.Context, j job, buf []byte) (mapwriter.Result, error) {
	if j.id.IsSparse() {
		return mapwriter.Result{Kind: mapwriter.Sparse}, nil
	}
	if !j.srcFound {
		err := fmt.Errorf("%w: block %d (%s) of version %s has no record in the source metastore", metastore.ErrCorrupt, j.idx, j.id.Short(), e.v.UID)
		e.damage(j.id, err)
		return mapwriter.Result{}, perVersion(err)
	}
	return e.w.Store(ctx, j, j.id, j.have, nil, buf)
}

// read reads and verifies block j from the source through the verified
// reader, which follows the record if a concurrent migrate-encryption in
// the source moved the block to a new object since the map was read. A
// damaged block is recorded for MarkInvalid.
func (e *engine) read(ctx context.Context, j job, buf []byte) ([]byte, error) {
	data, _, err := blockread.Get(ctx, e.r.src.Blocks, e.r.src.DB, j.rec, buf[:0])
	if err == nil && int64(len(data)) != j.n {
		err = fmt.Errorf("%w: block %s has %d bytes, position %d of the version needs %d", blockstore.ErrCorrupt, j.id.Short(), len(data), j.idx, j.n)
	}
	if err != nil {
		if blockread.IsDamage(err) {
			err = fmt.Errorf("source store: version %s, block %d at byte %d: %w", e.v.UID, j.idx, j.idx*e.v.BlockSize, err)
			e.damage(j.id, err)
			return nil, perVersion(err)
		}
		return nil, fmt.Errorf("source store: %w", err)
	}
	return data, nil
}

// refetch reads block j from the source again, after a cleanup of the
// target removed the block the copy deduplicated it against.
func (e *engine) refetch(ctx context.Context, _ block.ID, j job) ([]byte, error) {
	// The record may have moved (migrate-encryption in the source).
	if cur, found, err := e.r.src.DB.LookupBlock(j.id); err != nil {
		return nil, fmt.Errorf("source store: %w", err)
	} else if found {
		j.rec = cur
	}
	if e.rbuf == nil {
		e.rbuf = make([]byte, 0, e.v.BlockSize)
	}
	return e.read(ctx, j, e.rbuf)
}

// damage records a damaged source block (MarkInvalid, in batches) and
// keeps the first damage found for the version's error.
func (e *engine) damage(id block.ID, err error) {
	e.damaged.Add(id)
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.damageErr == nil {
		e.damageErr = err
	}
}

// count folds a result into the target version and the Result.
func (e *engine) count(_ int64, j job, r mapwriter.Result) {
	v, res := e.tv, e.res
	switch r.Kind {
	case mapwriter.Sparse:
		v.BytesSparse += j.n
		res.BlocksSparse++
	case mapwriter.Stored:
		e.countSent(j.n, int64(r.Rec.StoredSize))
	case mapwriter.Refetched:
		// Counted as deduplicated; it was sent after all.
		if r.Counted {
			v.BytesDeduplicated -= j.n
			res.BlocksDeduplicated--
			res.BytesDeduplicated -= j.n
		}
		e.countSent(j.n, int64(r.Rec.StoredSize))
	default:
		v.BytesDeduplicated += j.n
		res.BlocksDeduplicated++
		res.BytesDeduplicated += j.n
	}
}

func (e *engine) countSent(n, stored int64) {
	v, res := e.tv, e.res
	v.BytesRead += n
	v.BytesWritten += stored
	res.BlocksSent++
	res.BytesSent += n
	res.BytesWritten += stored
	e.r.mu.Lock()
	e.r.sent += n
	e.r.mu.Unlock()
}

// update sets the copy's statistics in a commit; the final commit
// completes it.
func (e *engine) update(v *metastore.Version, final bool) {
	v.BytesRead, v.BytesWritten = e.tv.BytesRead, e.tv.BytesWritten
	v.BytesDeduplicated, v.BytesSparse = e.tv.BytesDeduplicated, e.tv.BytesSparse
	if final {
		if e.v.Status != metastore.StatusIncomplete {
			// Every block was read and verified, or found valid in the
			// target.
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
}
