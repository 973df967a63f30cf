// Package cleanup is the engine of 'backy cleanup': it deletes the stored
// blocks that no version references, empties the metastore's trash, and
// (on request) sweeps the backend for objects the metastore does not know.
//
// # Garbage collection
//
// A block whose reference count reaches zero enters the metastore's gc
// bucket in that same transaction. Run takes gc entries in bounded
// batches; for each batch one transaction re-checks that the count is
// still zero, deletes the record and its gc entry, lowers the store
// counters and puts the object's name in the trash. Only then are the
// objects deleted from the backend, and their names forgotten. A backup
// that deduplicated against one of these blocks before its record went
// finds it missing in its own commit transaction (MissingBlocksError) and
// stores the block again; one that committed first raised the count, and
// the block stays. Restores, scrubs and migrations by version hold the
// version's lock, so its blocks keep a count above zero; a migration of
// the whole store that reads an unreferenced block re-checks the record
// when the object is gone and skips it. No grace period, no clock.
//
// # Orphans
//
// Objects under blocks/ that no record names and that the trash does not
// list are the debris of writers killed between storing an object and
// committing its record. Every writer (backup, migrate-encryption) holds
// the metastore's writers lock shared for its whole run; the sweep holds
// it exclusively, so no object is being written while it looks, and no
// record can appear (records come only from those writers). It builds the
// set of recorded names shard range by shard range (see Options.NamesPerPass
// for the memory bound), lists each shard of the backend, and deletes the
// objects neither recorded nor in the trash.
package cleanup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/blockstore/backend"
	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/internal/clock"
	"github.com/backy/backy/metastore"
)

// Options configures a cleanup.
type Options struct {
	// Orphans also sweeps the backend for objects the metastore does not
	// know (and the stale temporary files of a backend that has them,
	// backend.TempCleaner: the file backend's).
	Orphans bool
	// NoWait makes the orphan sweep fail with metastore.ErrLocked instead
	// of waiting when a backup or migration is running.
	NoWait bool
	// Batch is the number of gc entries handled per metastore transaction
	// (and objects deleted per step); 0 = 1024.
	Batch int
	// Workers delete objects in parallel; 0 = 16.
	Workers int
	// NamesPerPass bounds the object names of the metastore held in memory
	// by the orphan sweep (16 bytes each): the 256 shards are split into
	// as many passes as it takes, one scan of the block records each.
	// 0 = 2^21 (32 MiB).
	NamesPerPass int
	// Keep, when set, names objects that must stay whatever the metastore
	// says: those of versions whose metadata only the data backend holds
	// (catalog.Protection.Keep). Their unreferenced records stay, their
	// trash entries stay, and the orphan sweep leaves them.
	Keep   func(block.Name) bool
	Logger *slog.Logger
	// Clock times the run; clock.System when nil.
	Clock clock.Clock
}

// Result summarises a cleanup.
type Result struct {
	// BlocksDeleted counts unreferenced blocks whose records were removed.
	BlocksDeleted int64 `json:"blocks_deleted"`
	// BytesFreed is the stored size of those blocks.
	BytesFreed int64 `json:"bytes_freed"`
	// PlainBytesFreed is their plaintext size.
	PlainBytesFreed int64 `json:"plain_bytes_freed"`
	// TrashDeleted counts other objects deleted from the trash (left by
	// migrations, redundant uploads or an interrupted cleanup).
	TrashDeleted int64 `json:"trash_objects_deleted"`
	// Kept counts unreferenced blocks and trash objects left because a
	// version known only to the backend uses them (Options.Keep).
	Kept int64 `json:"kept_for_backend_versions"`
	// Orphans is the orphan sweep's result (with Options.Orphans).
	Orphans         *OrphanResult `json:"orphans,omitempty"`
	DurationSeconds float64       `json:"duration_seconds"`
}

// OrphanResult summarises an orphan sweep.
type OrphanResult struct {
	// Objects and Bytes count the orphans deleted.
	Objects int64 `json:"objects_deleted"`
	Bytes   int64 `json:"bytes_freed"`
	// Listed counts the objects listed under blocks/.
	Listed int64 `json:"objects_listed"`
	// Foreign counts objects under blocks/ whose names backy never writes;
	// they are left alone.
	Foreign int64 `json:"foreign_objects"`
	// Kept counts unrecorded objects left because a version known only
	// to the backend uses them (Options.Keep).
	Kept int64 `json:"kept_for_backend_versions"`
	// TempFiles counts the stale temporary files removed (backend.TempCleaner).
	TempFiles int `json:"temp_files_removed"`
	// Passes is the number of scans of the block records.
	Passes int `json:"passes"`
}

func (o *Options) defaults() {
	if o.Batch <= 0 {
		o.Batch = 1024
	}
	if o.Workers <= 0 {
		o.Workers = 16
	}
	if o.NamesPerPass <= 0 {
		o.NamesPerPass = 1 << 21
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Run deletes the unreferenced blocks, empties the trash and, with
// o.Orphans, sweeps for orphans. An object that cannot be deleted stays in
// the trash for the next run; Run goes on and returns the first such error
// with the result.
func Run(ctx context.Context, be backend.Backend, db *metastore.DB, o Options) (*Result, error) {
	o.Clock = clock.Or(o.Clock)
	start := o.Clock.Now()
	o.defaults()
	res := &Result{}
	var wlk *metastore.Lock
	if o.Orphans {
		// First, so that --no-wait fails before doing anything.
		var err error
		if wlk, err = db.LockWritersExclusive(!o.NoWait); err != nil {
			return nil, err
		}
		defer wlk.Unlock()
	}
	c := &cleaner{be: be, db: db, o: o, log: o.Logger}
	err := c.collect(ctx, res)
	if err == nil || !isCtx(err) {
		err = errors.Join(err, c.drainTrash(ctx, res))
	}
	if o.Orphans && (err == nil || !isCtx(err)) {
		res.Orphans = &OrphanResult{}
		err = errors.Join(err, c.orphans(ctx, res.Orphans))
	}
	res.DurationSeconds = o.Clock.Since(start).Seconds()
	return res, err
}

func isCtx(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

type cleaner struct {
	be  backend.Backend
	db  *metastore.DB
	o   Options
	log *slog.Logger
}

// collect removes the unreferenced blocks, one batch per transaction.
func (c *cleaner) collect(ctx context.Context, res *Result) error {
	after := block.Sparse
	var first error
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		var keep func(block.Record) bool
		if c.o.Keep != nil {
			keep = func(r block.Record) bool { return c.o.Keep(r.Name) }
		}
		batch, err := c.db.CollectGarbageKeeping(after, c.o.Batch, keep)
		if err != nil {
			return err
		}
		res.Kept += int64(batch.Kept)
		if batch.Stale > 0 {
			c.log.Warn("dropped stale gc entries", "count", batch.Stale)
		}
		names := make([]block.Name, len(batch.Records))
		for i, r := range batch.Records {
			names[i] = r.Name
			res.BlocksDeleted++
			res.BytesFreed += int64(r.StoredSize)
			res.PlainBytesFreed += int64(r.Size)
		}
		// The records are gone (committed); the objects are in the trash
		// until deleted, so a crash here leaves nothing unaccounted.
		if _, err := c.deleteTrash(ctx, names); err != nil {
			if isCtx(err) {
				return err
			}
			if first == nil {
				first = err
			}
		}
		c.log.Debug("cleanup batch", "blocks", len(names))
		if batch.Done {
			return first
		}
		after = batch.Last
	}
}

// drainTrash deletes every other object waiting in the trash. It stops at
// the first batch with an object it could not delete (that stays), and at
// a batch of objects all kept (Options.Keep; they stay for a later run).
func (c *cleaner) drainTrash(ctx context.Context, res *Result) error {
	for {
		entries, err := c.db.Trash(c.o.Batch)
		if err != nil || len(entries) == 0 {
			return err
		}
		names := make([]block.Name, 0, len(entries))
		for _, e := range entries {
			if c.o.Keep != nil && c.o.Keep(e.Name) {
				res.Kept++
				continue
			}
			names = append(names, e.Name)
		}
		if len(names) == 0 {
			return nil
		}
		n, err := c.deleteTrash(ctx, names)
		res.TrashDeleted += n
		if err != nil {
			return err
		}
	}
}

// deleteTrash deletes the objects of names (listed in the trash) in
// parallel and forgets those now gone (deleted, or found missing). It
// returns how many it deleted.
func (c *cleaner) deleteTrash(ctx context.Context, names []block.Name) (int64, error) {
	gone, n, err := c.deleteObjects(ctx, names, nil)
	if ferr := c.db.ForgetTrash(gone); ferr != nil {
		return n, ferr
	}
	if err != nil {
		return n, fmt.Errorf("deleting objects (they stay in the trash for the next cleanup): %w", err)
	}
	return n, nil
}

// deleteObjects deletes the named block objects in parallel. gone lists
// the names no longer stored (deleted, or already missing); n counts the
// deletions; err is the first other failure. deleted, when non-nil, is
// called (serially) with the index of each name deleted.
//
// A backend with batch deletes (S3's DeleteObjects) gets the names in
// batches; it cannot tell deleted from already missing, so both count as
// deleted there.
func (c *cleaner) deleteObjects(ctx context.Context, names []block.Name, deleted func(i int)) (gone []block.Name, n int64, err error) {
	var mu sync.Mutex
	var first error
	g := new(errgroup.Group)
	g.SetLimit(c.o.Workers)
	if bd, ok := backend.As[backend.BatchDeleter](c.be); ok && len(names) > 1 {
		size := max(1, bd.MaxDeleteBatch())
		for lo := 0; lo < len(names); lo += size {
			if ctx.Err() != nil {
				break
			}
			batch := names[lo:min(lo+size, len(names))]
			g.Go(func() error {
				keys := make([]string, len(batch))
				for i, name := range batch {
					keys[i] = blockstore.ObjectName(name)
				}
				errs, err := bd.DeleteBatch(ctx, keys)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					if first == nil {
						first = err
					}
					return nil
				}
				for i, e := range errs {
					switch {
					case e == nil:
						n++
						gone = append(gone, batch[i])
						if deleted != nil {
							deleted(lo + i)
						}
					case first == nil:
						first = e
					}
				}
				return nil
			})
		}
		_ = g.Wait()
		if first == nil {
			first = ctx.Err()
		}
		return gone, n, first
	}
	for i, name := range names {
		if ctx.Err() != nil {
			break
		}
		g.Go(func() error {
			err := c.be.Delete(ctx, blockstore.ObjectName(name))
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				n++
				gone = append(gone, name)
				if deleted != nil {
					deleted(i)
				}
			case errors.Is(err, backend.ErrNotFound):
				gone = append(gone, name)
			case first == nil:
				first = err
			}
			return nil
		})
	}
	_ = g.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return gone, n, first
}

// orphans sweeps the backend; the caller holds the writers lock
// exclusively.
func (c *cleaner) orphans(ctx context.Context, res *OrphanResult) error {
	if tc, ok := backend.As[backend.TempCleaner](c.be); ok {
		// No writer runs, so every temporary file under blocks/ is debris
		// of one killed in mid-Put (other prefixes are left alone: key
		// registrations are written by writers before they lock).
		n, err := tc.CleanTemp(ctx, blockstore.BlockPrefix, 0)
		res.TempFiles = n
		if err != nil {
			return err
		}
	}
	st, err := c.db.Stats()
	if err != nil {
		return err
	}
	passes := int(min(256, max(1, (st.Blocks+int64(c.o.NamesPerPass)-1)/int64(c.o.NamesPerPass))))
	res.Passes = passes
	for p := range passes {
		lo, hi := 256*p/passes, 256*(p+1)/passes-1
		if err := c.orphanPass(ctx, byte(lo), byte(hi), res); err != nil {
			return err
		}
	}
	return nil
}

type candidate struct {
	name block.Name
	size int64
}

// orphanPass sweeps the shards lo to hi (inclusive).
func (c *cleaner) orphanPass(ctx context.Context, lo, hi byte, res *OrphanResult) error {
	var known []block.Name
	after := block.Sparse
	for {
		names, last, done, err := c.db.RecordedNames(lo, hi, after, 65536)
		if err != nil {
			return err
		}
		known = append(known, names...)
		if done {
			break
		}
		after = last
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	cmp := func(a, b block.Name) int { return strings.Compare(string(a[:]), string(b[:])) }
	slices.SortFunc(known, cmp)
	var pending []candidate
	flush := func() error {
		if len(pending) == 0 {
			return nil
		}
		err := c.deleteOrphans(ctx, pending, res)
		pending = pending[:0]
		return err
	}
	for shard := int(lo); shard <= int(hi); shard++ {
		prefix := fmt.Sprintf("%s%02x/", blockstore.BlockPrefix, shard)
		err := c.be.List(ctx, prefix, func(info backend.Info) error {
			res.Listed++
			name, ok := blockstore.ParseObjectName(info.Name)
			if !ok {
				res.Foreign++
				c.log.Warn("leaving an object whose name backy never writes", "object", info.Name)
				return nil
			}
			if _, found := slices.BinarySearchFunc(known, name, cmp); found {
				return nil
			}
			if c.o.Keep != nil && c.o.Keep(name) {
				res.Kept++
				return nil
			}
			pending = append(pending, candidate{name, info.Size})
			if len(pending) >= c.o.Batch {
				return flush()
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return flush()
}

// deleteOrphans deletes the candidates that the trash does not list (a
// concurrent cleanup deletes those itself).
func (c *cleaner) deleteOrphans(ctx context.Context, cands []candidate, res *OrphanResult) error {
	names := make([]block.Name, len(cands))
	for i, cd := range cands {
		names[i] = cd.name
	}
	trashed, err := c.db.InTrash(names)
	if err != nil {
		return err
	}
	var todo []block.Name
	var sizes []int64
	for i, cd := range cands {
		if !trashed[i] {
			todo = append(todo, cd.name)
			sizes = append(sizes, cd.size)
		}
	}
	_, n, err := c.deleteObjects(ctx, todo, func(i int) {
		res.Bytes += sizes[i]
		c.log.Info("deleted orphan", "object", todo[i])
	})
	res.Objects += n
	return err
}
