// Package restore is backy's restore engine: it reads a version's block map
// from the metastore, fetches and verifies every block from the store in
// parallel, and writes it at its offset in the target.
//
// Every block is read through package versions/blockread, verified
// (authentication tag, BLAKE3) before it is written; data that fails
// verification is never written, and every damaged block is marked invalid
// with every version using it. A valid version restores completely or the
// restore fails. An incomplete or invalid version is restored only when
// forced, and then every block that could not be restored is zeroed in the
// target and reported.
package restore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/internal/clock"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/versions"
	"github.com/backy/backy/versions/blockread"
)

// Errors of Run.
var (
	// ErrNotRestorable: the version is incomplete or invalid and Force is off.
	ErrNotRestorable = errors.New("version is not restorable without --force")
	// ErrBadBlocks: a forced restore finished, but some blocks could not be
	// restored (they are zeros in the target).
	ErrBadBlocks = errors.New("some blocks could not be restored")
)

// BlockStore is what the engine needs of a blockstore.Store.
type BlockStore interface {
	Get(ctx context.Context, rec block.Record, buf []byte) ([]byte, error)
}

// KeyChecker is implemented by block stores that can tell up front whether
// they hold the key of an encryption version (blockstore.Store does). Run
// uses it to refuse, before it reads or writes anything, a version whose
// blocks need a key that is not configured.
type KeyChecker interface {
	CanOpen(encVersion uint16) error
}

// Target is what the engine writes to (source.Target).
type Target interface {
	WriteAt(p []byte, off int64) (int, error)
	Zero(off, n int64, sparse bool, zeros []byte) error
}

// Options describes a restore.
type Options struct {
	// Sparse leaves holes for sparse blocks instead of writing zeros.
	Sparse bool
	// Force restores an incomplete or invalid version, zeroing what cannot
	// be restored.
	Force bool
	// Workers fetch and write blocks in parallel; 0 = GOMAXPROCS + 4.
	Workers  int
	Progress func(Progress)
	Logger   *slog.Logger
	// Clock times the run; clock.System when nil.
	Clock clock.Clock
}

// Progress reports a running restore.
type Progress struct {
	Done, Total int64
}

// BadBlock is a block the restore could not restore.
type BadBlock struct {
	Index  int64  `json:"index"`
	Offset int64  `json:"offset"`
	Length int64  `json:"length"`
	ID     string `json:"id,omitempty"`
	Reason string `json:"reason"`
}

// Result summarises a restore.
type Result struct {
	UID             string     `json:"uid"`
	Size            int64      `json:"size"`
	BytesWritten    int64      `json:"bytes_written"`
	BytesSparse     int64      `json:"bytes_sparse"`
	DurationSeconds float64    `json:"duration_seconds"`
	BadBlocks       []BadBlock `json:"bad_blocks,omitempty"`
	// InvalidVersions lists versions found to share a damaged block.
	InvalidVersions []string `json:"invalid_versions,omitempty"`
}

// maxListed bounds the bad blocks listed one by one; the rest are counted
// (and every damaged one is recorded).
const maxListed = 10000

// damageBatch is the damaged blocks recorded per MarkInvalid (tests make
// it small).
var damageBatch = blockread.DefaultBatch

type job struct {
	idx   int64
	id    block.ID
	rec   block.Record
	found bool
}

// Run restores version v (which the caller has read-locked) into tgt. If
// st is a KeyChecker, a version whose blocks need a key st lacks is
// refused before anything is read or written.
func Run(ctx context.Context, st BlockStore, db *metastore.DB, v *metastore.Version, tgt Target, o Options) (*Result, error) {
	if kc, ok := st.(KeyChecker); ok {
		if err := versions.CheckKeys(db, v.UID, kc.CanOpen); err != nil {
			return nil, err
		}
	}
	return run(ctx, st, db, v, tgt, o)
}

// run is Run after the key check.
func run(ctx context.Context, st BlockStore, db *metastore.DB, v *metastore.Version, tgt Target, o Options) (*Result, error) {
	o.Clock = clock.Or(o.Clock)
	start := o.Clock.Now()
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if v.Removing {
		return nil, fmt.Errorf("%w: version %s is being removed", ErrNotRestorable, v.UID)
	}
	if v.Status != metastore.StatusValid && !o.Force {
		return nil, fmt.Errorf("%w: version %s is %s", ErrNotRestorable, v.UID, v.Status)
	}
	if o.Workers <= 0 {
		// Reads of separate objects wait on the device one by one; more
		// of them in flight keep it busy.
		o.Workers = 4*runtime.GOMAXPROCS(0) + 8
	}
	bs, size := v.BlockSize, v.Size
	nBlk := v.Blocks()
	res := &Result{UID: v.UID, Size: size}
	var mu sync.Mutex // guards res
	nBad := 0
	// Every damaged block is recorded (MarkInvalid), however many.
	damage := blockread.NewRecorder(db, damageBatch)
	addBad := func(idx int64, id block.ID, reason string) {
		mu.Lock()
		nBad++
		if len(res.BadBlocks) < maxListed {
			b := BadBlock{Index: idx, Offset: idx * bs, Length: min(bs, size-idx*bs), Reason: reason}
			if !id.IsSparse() {
				b.ID = id.String()
			}
			res.BadBlocks = append(res.BadBlocks, b)
		}
		mu.Unlock()
		damage.Add(id) // a sparse id (nothing backed up) is none
	}
	zeros := make([]byte, min(bs, 1<<20))

	g, gctx := errgroup.WithContext(ctx)
	jobs := make(chan job, 2*o.Workers)
	var done int64
	var doneMu sync.Mutex
	progress := func(n int64) {
		if o.Progress == nil {
			return
		}
		doneMu.Lock()
		done += n
		o.Progress(Progress{Done: done, Total: size})
		doneMu.Unlock()
	}
	g.Go(func() error {
		defer close(jobs)
		var next int64
		err := db.WalkMap(v.UID, func(c metastore.MapChunk) error {
			for k := range c.IDs {
				idx := c.First + int64(k)
				if idx >= nBlk {
					return fmt.Errorf("%w: map of %s has more blocks than its size", metastore.ErrCorrupt, v.UID)
				}
				select {
				case jobs <- job{idx: idx, id: c.IDs[k], rec: c.Records[k], found: c.Found[k]}:
				case <-gctx.Done():
					return gctx.Err()
				}
			}
			next = c.First + int64(len(c.IDs))
			return nil
		})
		if err != nil {
			return err
		}
		// Blocks an incomplete version never reached.
		for idx := next; idx < nBlk; idx++ {
			select {
			case jobs <- job{idx: idx, found: false}:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		return nil
	})
	for range o.Workers {
		g.Go(func() error {
			buf := make([]byte, 0, bs)
			for j := range jobs {
				off := j.idx * bs
				n := min(bs, size-off)
				switch {
				case j.found && j.id.IsSparse():
					if err := tgt.Zero(off, n, o.Sparse, zeros); err != nil {
						return err
					}
					mu.Lock()
					res.BytesSparse += n
					mu.Unlock()
				case !j.found:
					reason := "not backed up (the version is incomplete)"
					if !j.id.IsSparse() {
						reason = "no record of the block in the metastore"
					}
					if !o.Force {
						return fmt.Errorf("block %d: %s", j.idx, reason)
					}
					addBad(j.idx, j.id, reason)
					if err := tgt.Zero(off, n, o.Sparse, zeros); err != nil {
						return err
					}
				default:
					// A concurrent migrate-encryption may have moved the
					// block to a new object (and deleted the old one)
					// since the map was read: the reader follows it.
					data, _, err := blockread.Get(gctx, st, db, j.rec, buf[:0])
					if err == nil && int64(len(data)) != n {
						err = fmt.Errorf("%w: block %d has %d bytes, the version needs %d", blockstore.ErrCorrupt, j.idx, len(data), n)
					}
					if err != nil {
						if !blockread.IsDamage(err) {
							return err
						}
						addBad(j.idx, j.id, err.Error())
						if !o.Force {
							return fmt.Errorf("block %d at byte %d: %w", j.idx, off, err)
						}
						if err := tgt.Zero(off, n, o.Sparse, zeros); err != nil {
							return err
						}
						break
					}
					if _, err := tgt.WriteAt(data, off); err != nil {
						return err
					}
					mu.Lock()
					res.BytesWritten += n
					mu.Unlock()
				}
				progress(n)
			}
			return nil
		})
	}
	err := g.Wait()
	if err == nil && nBad > 0 {
		err = fmt.Errorf("%w: %d block(s) of %s are zeros in the target", ErrBadBlocks, nBad, v.UID)
	}
	// Damage found is recorded whatever else happened (the rest of it:
	// full batches are recorded as they fill).
	if merr := damage.Flush(); merr != nil {
		// The operator must learn that the damage is not on record.
		err = errors.Join(err, merr)
	} else if n := damage.Blocks(); n > 0 {
		log.Info("damaged blocks found and recorded", "blocks", n, "versions", damage.Versions())
	}
	res.InvalidVersions = damage.Versions()
	res.DurationSeconds = o.Clock.Since(start).Seconds()
	return res, err
}
