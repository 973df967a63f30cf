package mapwriter

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/backy/backy/blockstore/backend"
	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/metastore"
)

// Commit writes the pages added since the last commit (and the partial
// tail page) to the metastore, with the records of the objects stored for
// them, after flushing the block store; final lets Config.Update complete
// the version in the same transaction. Run commits as it goes; the caller
// commits what is left once Run returned nil (and may check something
// between a last ordinary commit and the final one, as backup checks its
// source).
func (w *Writer[J]) Commit(ctx context.Context, final bool) error {
	pages := make([]metastore.PageWrite, len(w.full), len(w.full)+1)
	copy(pages, w.full)
	if len(w.tail) > 0 {
		pages = append(pages, metastore.NewPage(slices.Clone(w.tail)))
	}
	// Positions, not pages: a reused page may be the version's short
	// last page. take keeps them within End.
	done := w.committedPos + w.fullPos + int64(len(w.tail))
	for attempt := 0; ; attempt++ {
		// Records may only point to durable objects.
		if err := w.c.Store.Flush(ctx); err != nil {
			return w.wrap(err)
		}
		res, err := w.c.DB.Commit(metastore.Commit{
			UID: w.c.UID, At: w.committedPages, Pages: pages, New: w.newRecs,
			Update: func(v *metastore.Version) error {
				v.BlocksDone = done
				v.DurationSeconds = w.c.PrevDuration + w.c.Clock.Now().Sub(w.c.Start).Seconds()
				if w.c.Update != nil {
					w.c.Update(v, final)
				}
				return nil
			},
		})
		var missing *metastore.MissingBlocksError
		if errors.As(err, &missing) && attempt <= len(w.dedup) {
			// A cleanup removed blocks we deduplicated against: store them
			// again. A block stored again has its record in the commit, so
			// it cannot go missing again: each attempt fixes at least one
			// deduplicated block, and a cleanup deleting unreferenced
			// blocks in batches while we retry cannot make this fail (a
			// fixed bound of 3 could).
			w.log.Warn(w.msg("deduplicated blocks were removed meanwhile; storing them again"), "version", w.c.UID, "blocks", len(missing.IDs))
			if err := w.refetch(ctx, missing.IDs); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return w.wrap(fmt.Errorf("committing version %s: %w", w.c.UID, err))
		}
		w.dropRedundant(ctx, res.Redundant)
		break
	}
	// Records now committed: later workers find them in the metastore.
	w.mu.Lock()
	for _, r := range w.newRecs {
		if u, ok := w.inflight[r.ID]; ok && u.rec.Name == r.Name {
			delete(w.inflight, r.ID)
		}
	}
	w.mu.Unlock()
	w.committedPages += len(w.full)
	w.committedPos += w.fullPos
	w.fullPos = 0
	clear(w.full)
	w.full = w.full[:0]
	clear(w.newRecs)
	w.newRecs = w.newRecs[:0]
	clear(w.seen)
	clear(w.dedup)
	w.lastCommit = w.c.Clock.Now()
	return nil
}

var errNoRefetch = errors.New("internal error: a deduplicated block went missing and the writer has no Refetch")

// refetch fetches the blocks with the given ids again and stores them,
// adding their records to the pending commit.
func (w *Writer[J]) refetch(ctx context.Context, ids []block.ID) error {
	for _, id := range ids {
		d, ok := w.dedup[id]
		if !ok {
			return fmt.Errorf("%w: block %s that version %s uses is no longer stored and cannot be fetched again", metastore.ErrCorrupt, id.Short(), w.c.UID)
		}
		if w.c.Refetch == nil {
			return errNoRefetch
		}
		data, err := w.c.Refetch(ctx, id, d.j)
		if err != nil {
			return err
		}
		rec, err := w.c.Store.Put(ctx, id, data)
		if err != nil {
			return w.wrap(err)
		}
		w.newRecs = append(w.newRecs, rec)
		w.seen[id] = true
		if w.c.Count != nil {
			w.c.Count(d.idx, d.j, Result{Kind: Refetched, ID: id, Rec: rec, Counted: d.idx >= w.c.Counted})
		}
	}
	return nil
}

// dropRedundant deletes objects this run stored that another writer had
// stored first. They are in the metastore's trash, so one that cannot be
// deleted now is left to cleanup.
func (w *Writer[J]) dropRedundant(ctx context.Context, names []block.Name) {
	if len(names) == 0 {
		return
	}
	var gone []block.Name
	for _, n := range names {
		if err := w.c.Store.Delete(ctx, n); err != nil && !errors.Is(err, backend.ErrNotFound) {
			w.log.Warn(w.msg("redundant object not deleted; cleanup will"), "object", n.String(), "err", err)
			continue
		}
		gone = append(gone, n)
	}
	if err := w.c.DB.ForgetTrash(gone); err != nil {
		w.log.Warn(w.msg("trash not updated; cleanup will"), "err", err)
	}
}
