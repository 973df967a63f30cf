// Package reencrypt upgrades stored blocks in place to a newer encryption
// version (the engine of 'backy migrate-encryption').
//
// For every block below the target version it reads the object, verifies
// it (authentication tag, BLAKE3), seals the plaintext into a new object at
// the target version (with the store's current compression), makes the new
// object durable, switches the block's record to it in the metastore, and
// only then deletes the old object. Each step is safe to interrupt:
//
//   - killed before the switch: the record still points to the old object,
//     which is intact; the new object is debris that no record names (a
//     'cleanup --orphans' removes it); the next run migrates the block again.
//   - killed after the switch: the old object is listed in the metastore's
//     trash; the next run (and cleanup) deletes it before anything else.
//
// The switch is conditional: it applies only if the record still points to
// the object that was read, so a concurrent migration, backup, cleanup or
// scrub never loses a block to it. Restores, copies, scrubs and NBD reads
// that looked up the old record follow the record to the new object
// (package versions/blockread, which this engine reads through too: a
// block another migration moved meanwhile, or a cleanup removed, is
// skipped, not damage). Deduplication matches blocks by plaintext identity
// whatever their encryption version, so backups running meanwhile keep
// deduplicating against both.
package reencrypt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"runtime"
	"slices"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/backy/backy/blockstore/backend"
	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/internal/clock"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/versions/blockread"
)

// ErrNoTarget: the target encryption version is 0 (no encryption).
var ErrNoTarget = errors.New("no target encryption version")

// BlockStore is what the engine needs of a blockstore.Store.
type BlockStore interface {
	Get(ctx context.Context, rec block.Record, buf []byte) ([]byte, error)
	Put(ctx context.Context, id block.ID, plain []byte) (block.Record, error)
	Delete(ctx context.Context, name block.Name) error
	Flush(ctx context.Context) error
	// EncVersion is the version new objects are sealed at: the target.
	EncVersion() uint16
	// CanOpen tells whether objects of a version can be read.
	CanOpen(encVersion uint16) error
}

// Options describes a migration.
type Options struct {
	// UIDs selects the versions whose blocks are migrated; empty means
	// every block record of the store (referenced or not), so that no
	// object below the target remains.
	UIDs []string
	// Workers read, re-seal and write blocks in parallel; 0 = 2 x GOMAXPROCS.
	Workers int
	// Batch is the number of blocks switched per metastore transaction;
	// 0 = 64.
	Batch    int
	Progress func(Progress)
	Logger   *slog.Logger
	// Clock times the run; clock.System when nil.
	Clock clock.Clock
	// BeforeDelete, when set, runs before the objects that switched
	// records replaced are deleted from the backend (at the start, for
	// those an interrupted run left, and at the end): the CLI writes the
	// stale metadata snapshots of the versions in the backend there, so
	// that no snapshot still names an object once it is gone.
	BeforeDelete func(ctx context.Context) error
}

// Progress reports a running migration.
type Progress struct {
	// Done counts blocks looked at; Total is an estimate (block references
	// of the selected versions, or block records of the store).
	Done, Total int64
	// Migrated counts blocks rewritten so far.
	Migrated     int64
	BytesWritten int64
}

// Failure is a block that could not be migrated because it is damaged or
// missing; it is marked invalid (with every version using it).
type Failure struct {
	ID     string `json:"id"`
	Reason string `json:"reason"`
}

// Result summarises a migration.
type Result struct {
	Target uint16 `json:"target_encryption_version"`
	// Examined counts the candidate blocks looked at.
	Examined int64 `json:"blocks_examined"`
	// Migrated counts blocks rewritten at the target version.
	Migrated int64 `json:"blocks_migrated"`
	// Skipped counts blocks another process changed meanwhile (migrated,
	// removed or marked invalid); their new objects were deleted again.
	Skipped int64 `json:"blocks_skipped"`
	// BytesRead and BytesWritten are stored (object) sizes.
	BytesRead    int64 `json:"bytes_read"`
	BytesWritten int64 `json:"bytes_written"`
	// ObjectsDeleted counts old and redundant objects deleted, including
	// those a previous, interrupted run left in the trash.
	ObjectsDeleted  int64     `json:"objects_deleted"`
	Failures        []Failure `json:"failures,omitempty"`
	InvalidVersions []string  `json:"invalid_versions,omitempty"`
	// Remaining counts block records of the store still below the target
	// afterwards (with UIDs set, those of other versions).
	Remaining       int64   `json:"blocks_below_target"`
	DurationSeconds float64 `json:"duration_seconds"`
}

// ErrIncomplete: a migration of the whole store finished without error, but
// blocks below the target remain (marked invalid, or written meanwhile).
var ErrIncomplete = errors.New("blocks below the target encryption version remain")

// ErrFailures: some blocks were damaged or missing and are now marked
// invalid; everything else was migrated.
var ErrFailures = errors.New("some blocks could not be migrated")

// Run migrates the selected blocks to st.EncVersion(). Before it reads or
// writes anything it checks that the key of every encryption version it
// will read is configured; such early failures return a nil Result. The caller holds no version locks: Run takes a
// shared lock on each selected version while it migrates its blocks.
func Run(ctx context.Context, st BlockStore, db *metastore.DB, o Options) (*Result, error) {
	o.Clock = clock.Or(o.Clock)
	start := o.Clock.Now()
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if o.Workers <= 0 {
		o.Workers = 2 * runtime.GOMAXPROCS(0)
	}
	if o.Batch <= 0 {
		o.Batch = 64
	}
	target := st.EncVersion()
	res := &Result{Target: target}
	if target == 0 {
		return nil, fmt.Errorf("%w: the configured encryption_version is 0; set encryption_version (with its key) in the configuration, or pass --to N", ErrNoTarget)
	}
	stats, err := db.EncStats()
	if err != nil {
		return nil, err
	}
	var total int64
	if len(o.UIDs) == 0 {
		for _, ev := range slices.Sorted(maps.Keys(stats)) {
			s := stats[ev]
			if ev < target {
				if err := st.CanOpen(ev); err != nil {
					return nil, fmt.Errorf("the store holds %d block(s) at encryption version %d: %w", s.Blocks, ev, err)
				}
				total += s.Blocks
			}
		}
	} else {
		for _, uid := range o.UIDs {
			used, err := db.EncVersionsOf(uid)
			if err != nil {
				return nil, err
			}
			for _, ev := range slices.Sorted(maps.Keys(used)) {
				n := used[ev]
				if ev < target {
					if err := st.CanOpen(ev); err != nil {
						return nil, fmt.Errorf("version %s has %d block(s) at encryption version %d: %w", uid, n, ev, err)
					}
					total += n
				}
			}
		}
	}

	// New objects are debris until their switch commits; 'cleanup
	// --orphans' takes this lock exclusively, so it never sees them early.
	wlk, err := db.LockWriter(func(err error) { log.Warn("waiting for the writers lock", "reason", err) })
	if err != nil {
		return nil, err
	}
	defer wlk.Unlock()
	m := &migration{st: st, db: db, o: o, log: log, res: res, target: target, total: total, damage: blockread.NewRecorder(db, 0)}
	// Finish what an interrupted run (or backup) left in the trash first.
	if err := m.drainTrash(ctx); err != nil {
		return res, err
	}
	if len(o.UIDs) == 0 {
		err = m.all(ctx)
	} else {
		for _, uid := range o.UIDs {
			if err = m.version(ctx, uid); err != nil {
				break
			}
		}
	}
	// The replaced objects go now (an interrupted run leaves them in the
	// trash for the next run or cleanup).
	if err == nil || !errors.Is(err, context.Canceled) {
		err = errors.Join(err, m.drainTrash(ctx))
	}
	// Damage found is recorded whatever else happened (the rest of it:
	// full batches are recorded as they fill).
	if merr := m.damage.Flush(); merr != nil {
		err = errors.Join(err, merr)
	}
	res.InvalidVersions = m.damage.Versions()
	if n := m.damage.Blocks(); n > 0 && err == nil {
		err = fmt.Errorf("%w: %d block(s) are damaged or missing and now marked invalid (versions: %v)", ErrFailures, n, res.InvalidVersions)
	}
	after, serr := db.EncStats()
	if serr != nil {
		// Without the count, "nothing below the target remains" is unknown.
		err = errors.Join(err, fmt.Errorf("counting the blocks left below the target: %w", serr))
	}
	for ev, s := range after {
		if ev < target {
			res.Remaining += s.Blocks
		}
	}
	if err == nil && len(o.UIDs) == 0 && res.Remaining > 0 {
		// --all promises that nothing below the target is left; say why
		// it is not so (blocks marked invalid earlier, or written at an
		// older version by a backup running meanwhile).
		err = fmt.Errorf("%w: %d block(s) are still stored below encryption version %d (blocks marked invalid by an earlier scrub, restore or migration are not rewritten, and backups running meanwhile may write at an older version): back up their sources again so that fresh copies are stored, then run migrate-encryption --all again",
			ErrIncomplete, res.Remaining, target)
	}
	res.DurationSeconds = o.Clock.Since(start).Seconds()
	return res, err
}

type migration struct {
	st     BlockStore
	db     *metastore.DB
	o      Options
	log    *slog.Logger
	res    *Result
	target uint16
	total  int64
	// damage records the damaged blocks (MarkInvalid, in batches). A
	// block not recorded yet still looks valid in the metastore, so a
	// later batch (another selected version, or a repeat within one)
	// asks damage.Has before it reads and reports the block again.
	damage *blockread.Recorder
}

func (m *migration) progress() {
	if m.o.Progress != nil {
		m.o.Progress(Progress{Done: m.res.Examined, Total: max(m.total, m.res.Examined), Migrated: m.res.Migrated, BytesWritten: m.res.BytesWritten})
	}
}

// drainTrash deletes the objects waiting in the trash, after
// Options.BeforeDelete.
func (m *migration) drainTrash(ctx context.Context) error {
	if n, err := m.db.Trash(1); err != nil || len(n) == 0 {
		return err
	}
	if m.o.BeforeDelete != nil {
		if err := m.o.BeforeDelete(ctx); err != nil {
			return fmt.Errorf("writing version metadata to the backend before deleting replaced objects (they stay in the trash): %w", err)
		}
	}
	for {
		entries, err := m.db.Trash(1024)
		if err != nil || len(entries) == 0 {
			return err
		}
		names := make([]block.Name, len(entries))
		for i, e := range entries {
			names[i] = e.Name
		}
		if err := m.deleteObjects(ctx, names); err != nil {
			return err
		}
	}
}

// deleteObjects deletes objects listed in the trash and forgets them.
func (m *migration) deleteObjects(ctx context.Context, names []block.Name) error {
	gone := names[:0:0]
	var first error
	for _, n := range names {
		err := m.st.Delete(ctx, n)
		if err != nil && !errors.Is(err, backend.ErrNotFound) {
			if first == nil {
				first = err
			}
			continue
		}
		gone = append(gone, n)
		if err == nil {
			m.res.ObjectsDeleted++
		}
	}
	if err := m.db.ForgetTrash(gone); err != nil {
		return err
	}
	if first != nil {
		return fmt.Errorf("deleting replaced objects (they stay in the trash for the next run or cleanup): %w", first)
	}
	return nil
}

// all migrates every block record below the target.
func (m *migration) all(ctx context.Context) error {
	after := block.Sparse
	for {
		recs, last, done, err := m.db.BlocksBelow(m.target, after, 16*m.o.Batch)
		if err != nil {
			return err
		}
		for len(recs) > 0 {
			n := min(len(recs), m.o.Batch)
			ids := make([]block.ID, n)
			for i := range n {
				ids[i] = recs[i].ID
			}
			if err := m.batch(ctx, ids); err != nil {
				return err
			}
			recs = recs[n:]
		}
		if done {
			return nil
		}
		after = last
	}
}

// version migrates the blocks of one version, holding its shared lock so
// that it is not removed meanwhile.
func (m *migration) version(ctx context.Context, uid string) error {
	lk, err := m.db.LockVersion(uid, metastore.Shared)
	if err != nil {
		return err
	}
	defer lk.Unlock()
	var pending []block.ID
	err = m.db.WalkMap(uid, func(c metastore.MapChunk) error {
		for i, id := range c.IDs {
			if id.IsSparse() || !c.Found[i] || c.Records[i].EncVersion >= m.target || c.Records[i].Invalid {
				continue
			}
			pending = append(pending, id)
			if len(pending) == m.o.Batch {
				if err := m.batch(ctx, pending); err != nil {
					return err
				}
				pending = pending[:0]
			}
		}
		return nil
	})
	if err == nil && len(pending) > 0 {
		err = m.batch(ctx, pending)
	}
	if err != nil {
		return fmt.Errorf("version %s: %w", uid, err)
	}
	return nil
}

// batch migrates up to Batch blocks: it looks up their current records
// (an earlier batch or another process may have migrated them), rewrites
// those still below the target in parallel, flushes, switches the records
// in one transaction and deletes the old objects.
func (m *migration) batch(ctx context.Context, ids []block.ID) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	slices.SortFunc(ids, func(a, b block.ID) int { return bytes.Compare(a[:], b[:]) })
	ids = slices.Compact(ids)
	look := make([]metastore.Lookup, len(ids))
	if err := m.db.LookupBlocks(ids, look); err != nil {
		return err
	}
	var todo []block.Record
	for _, l := range look {
		if l.Found && l.Record.EncVersion < m.target && !l.Record.Invalid && !m.damage.Has(l.Record.ID) {
			todo = append(todo, l.Record)
		}
	}
	m.res.Examined += int64(len(ids))
	if len(todo) == 0 {
		m.progress()
		return nil
	}
	reps := make([]metastore.Replacement, len(todo))
	applied := make([]bool, len(todo))
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(m.o.Workers)
	for i, rec := range todo {
		g.Go(func() error {
			plain, cur, err := blockread.Get(gctx, m.st, m.db, rec, make([]byte, 0, rec.Size))
			switch {
			case err == nil && cur.Name == rec.Name:
			case err == nil || errors.Is(err, blockread.ErrRemoved) || errors.Is(err, blockread.ErrMoving):
				// Moved by another process meanwhile (a migration:
				// the reader followed it), or removed (a cleanup: --all
				// reads unreferenced blocks too): not this run's to do.
				mu.Lock()
				m.res.Skipped++
				mu.Unlock()
				return nil
			case blockread.IsDamage(err):
				if m.damage.Add(rec.ID) {
					mu.Lock()
					if len(m.res.Failures) < 1000 {
						m.res.Failures = append(m.res.Failures, Failure{ID: rec.ID.String(), Reason: err.Error()})
					}
					mu.Unlock()
					m.log.Info("damaged block not migrated", "block", rec.ID.Short(), "err", err)
				}
				return nil
			default:
				return err
			}
			nrec, err := m.st.Put(gctx, rec.ID, plain)
			if err != nil {
				return err
			}
			mu.Lock()
			reps[i] = metastore.Replacement{Old: rec.Name, New: nrec}
			applied[i] = true
			m.res.BytesRead += int64(rec.StoredSize)
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		// Objects written so far are debris no record names; a cleanup
		// of orphans removes them.
		return err
	}
	var ready []metastore.Replacement
	for i := range reps {
		if applied[i] {
			ready = append(ready, reps[i])
		}
	}
	if len(ready) == 0 {
		m.progress()
		return nil
	}
	// The new objects must be durable before a record names them.
	if err := m.st.Flush(ctx); err != nil {
		return err
	}
	r, err := m.db.ReplaceObjects(ready)
	if err != nil {
		return err
	}
	m.res.Migrated += int64(len(r.Replaced))
	m.res.Skipped += int64(len(r.Skipped))
	for _, rep := range ready {
		if !slices.Contains(r.Skipped, rep.New.Name) {
			m.res.BytesWritten += int64(rep.New.StoredSize)
		}
	}
	m.progress()
	// The replaced objects stay in the trash until the end of the run
	// (drainTrash), after the version snapshots naming them are rewritten;
	// the skipped new objects were never named by anything.
	return m.deleteObjects(ctx, r.Skipped)
}
