package replicate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/internal/clock"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/metastore/blockmap"
	"github.com/backy/backy/versions"
	"github.com/backy/backy/versions/blockread"
	"github.com/backy/backy/versions/mapwriter"
)

// Errors of Run, tested with errors.Is.
var (
	// ErrNotCopyable: the source version is incomplete, invalid or being
	// removed, and Force is off (or it is being removed).
	ErrNotCopyable = errors.New("version is not copyable")
	// ErrConflict: the target holds another version under the same uid, or
	// one that cannot be continued.
	ErrConflict = errors.New("the target holds a different version with the same uid")
	// ErrBlockSize: the version's block size is not the target store's.
	ErrBlockSize = errors.New("block size mismatch")
	// ErrOptions: an invalid request (selection, missing block stores).
	ErrOptions = errors.New("invalid copy request")
	// ErrNoVersions: the selection names no version (a volume without any).
	ErrNoVersions = errors.New("no versions to copy")
)

// Reader is what the engine needs of the source's blockstore.Store.
type Reader interface {
	// Get reads and verifies a block (authentication, BLAKE3).
	Get(ctx context.Context, rec block.Record, buf []byte) ([]byte, error)
	// CanOpen tells whether blocks of an encryption version can be read.
	CanOpen(encVersion uint16) error
}

// Writer is what the engine needs of the target's blockstore.Store (what
// the map writer stores through): its Put seals a block with the target's
// encryption and compression.
type Writer = mapwriter.Store

// Source is the store versions are copied from.
type Source struct {
	DB *metastore.DB
	// Blocks reads the source's blocks; it may be nil for a dry run.
	Blocks Reader
}

// Target is the store versions are copied to.
type Target struct {
	DB *metastore.DB
	// Blocks stores blocks in the target; it may be nil for a dry run.
	Blocks Writer
}

// Options describes a copy.
type Options struct {
	// The selection: uids, every complete version (All), or every
	// complete version of Volume. Exactly one must be given.
	UIDs   []string
	All    bool
	Volume string
	// Force copies incomplete and invalid source versions too (what they
	// hold: an incomplete version stays incomplete in the target).
	Force bool
	// DryRun changes nothing, reads no block and needs no keys: it reports
	// per version what a copy would send and reference.
	DryRun bool
	// Workers read and store blocks in parallel; 0 = 2 x GOMAXPROCS + 4.
	Workers int
	// CommitInterval is the longest time between target commits; 0 = 2 s.
	CommitInterval time.Duration
	// Progress, when set, is called from one goroutine at a time.
	Progress func(Progress)
	Logger   *slog.Logger
	// Clock times the commits and the durations; clock.System when nil.
	Clock clock.Clock
}

// Progress reports a running copy over all selected versions.
type Progress struct {
	Done, Total int64 // bytes of the selected versions covered, and in all
	BytesSent   int64 // plaintext bytes of the blocks sent so far
}

// State says what happened to a version (or, in a dry run, where it
// stands in the target).
type State string

// States of a Result.
const (
	// StateCopied: the version was copied by this run.
	StateCopied State = "copied"
	// StateResumed: an incomplete copy made by an earlier run was finished
	// (or continued, for a forced copy of an incomplete version).
	StateResumed State = "resumed"
	// StateAlready: the target already holds the version, complete (or,
	// for an incomplete source version, with all it holds).
	StateAlready State = "already there"
	// StateFailed: the copy of this version failed (Result.Error says why).
	StateFailed State = "failed"
	// StateMissing (dry run): the target lacks the version.
	StateMissing State = "missing"
	// StateIncomplete (dry run): the target holds an incomplete copy that
	// a copy would continue.
	StateIncomplete State = "incomplete"
)

// Result is the outcome of the copy of one version. The block and byte
// counts are those of this run (in a dry run, what a copy would do); the
// blocks a continued copy had committed before count in BlocksBefore only.
type Result struct {
	UID    string `json:"uid"`
	Volume string `json:"volume"`
	State  State  `json:"state"`
	// SourceStatus is the version's status in the source when the copy
	// began; TargetStatus its status in the target afterwards ("" when
	// the target does not hold it).
	SourceStatus metastore.Status `json:"source_status"`
	TargetStatus metastore.Status `json:"target_status,omitempty"`
	// Blocks is the number of map entries to copy (all blocks of a
	// complete version, the committed ones of an incomplete one).
	Blocks int64 `json:"blocks"`
	// BlocksBefore counts entries an earlier, interrupted run committed.
	BlocksBefore int64 `json:"blocks_before,omitempty"`
	// BlocksDone is the number of entries the target holds afterwards.
	BlocksDone int64 `json:"blocks_done"`
	// BlocksSent counts blocks read from the source and stored in the
	// target; BlocksDeduplicated blocks the target held already (or that
	// this run had sent for an earlier position); BlocksSparse empty ones.
	BlocksSent         int64 `json:"blocks_sent"`
	BlocksDeduplicated int64 `json:"blocks_deduplicated"`
	BlocksSparse       int64 `json:"blocks_sparse"`
	// BytesSent is the plaintext of the blocks sent; BytesWritten what
	// storing them took in the target (objects, after the target's
	// compression and encryption; 0 in a dry run); BytesDeduplicated the
	// plaintext of the blocks deduplicated.
	BytesSent         int64   `json:"bytes_sent"`
	BytesWritten      int64   `json:"bytes_written"`
	BytesDeduplicated int64   `json:"bytes_deduplicated"`
	DurationSeconds   float64 `json:"duration_seconds"`
	// Note explains an unusual outcome (a forced copy, ...).
	Note  string `json:"note,omitempty"`
	Error string `json:"error,omitempty"`
}

// Skipped is a selected version that was not looked at (--all, --volume).
type Skipped struct {
	UID    string `json:"uid"`
	Volume string `json:"volume"`
	Reason string `json:"reason"`
}

// Report is the outcome of a Run.
type Report struct {
	DryRun   bool      `json:"dry_run"`
	Versions []Result  `json:"versions"`
	Skipped  []Skipped `json:"skipped,omitempty"`
	// Totals over Versions.
	BlocksSent         int64 `json:"blocks_sent"`
	BlocksDeduplicated int64 `json:"blocks_deduplicated"`
	BytesSent          int64 `json:"bytes_sent"`
	BytesWritten       int64 `json:"bytes_written"`
	BytesDeduplicated  int64 `json:"bytes_deduplicated"`
	// InvalidVersions lists the source versions found to use a damaged
	// block (now marked invalid in the source).
	InvalidVersions []string `json:"invalid_versions,omitempty"`
	DurationSeconds float64  `json:"duration_seconds"`
}

// versionError marks an error that concerns one version only: the run
// goes on with the others.
type versionError struct{ err error }

func (e versionError) Error() string { return e.err.Error() }
func (e versionError) Unwrap() error { return e.err }

func perVersion(err error) error { return versionError{err} }

// run is the state of one Run.
type run struct {
	src Source
	dst Target
	o   Options
	log *slog.Logger
	rep *Report

	mu      sync.Mutex // guards done, total, sent and rep.InvalidVersions
	done    int64
	total   int64
	sent    int64
	dryOnce map[block.ID]bool // dry run: blocks counted as sent
}

// Run copies the selected versions from src to dst, one after the other.
// A problem of one version (not copyable, conflicting, locked, a damaged
// block) is recorded in its Result and the others are copied; Run then
// returns an error wrapping the first such problem (a damaged block
// before others). Problems of the whole run (a backend or metastore
// failing, a missing key, cancellation) stop it and are returned with the
// Report so far.
func Run(ctx context.Context, src Source, dst Target, o Options) (*Report, error) {
	o.Clock = clock.Or(o.Clock)
	start := o.Clock.Now()
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Workers <= 0 {
		o.Workers = 2*runtime.GOMAXPROCS(0) + 4
	}
	if o.CommitInterval <= 0 {
		o.CommitInterval = 2 * time.Second
	}
	if src.DB == nil || dst.DB == nil || (!o.DryRun && (src.Blocks == nil || dst.Blocks == nil)) {
		return nil, fmt.Errorf("%w: both stores and, unless a dry run, their block stores are needed", ErrOptions)
	}
	if src.DB.StoreID() == dst.DB.StoreID() {
		return nil, fmt.Errorf("%w: the source and the target are the same store", ErrOptions)
	}
	r := &run{src: src, dst: dst, o: o, log: o.Logger, rep: &Report{DryRun: o.DryRun, Versions: []Result{}}}
	if o.DryRun {
		r.dryOnce = map[block.ID]bool{}
	}
	vs, err := r.selectVersions()
	if err != nil {
		return nil, err
	}
	if !o.DryRun {
		// Before any block is read or written: every encryption version
		// the selected versions' blocks use must have its key.
		for _, v := range vs {
			err := versions.CheckKeys(src.DB, v.UID, src.Blocks.CanOpen)
			if errors.Is(err, metastore.ErrVersionNotFound) || errors.Is(err, metastore.ErrCorrupt) {
				continue // removed meanwhile, or a damaged map: reported below
			}
			if err != nil {
				return nil, fmt.Errorf("source store: %w", err)
			}
		}
		// Objects stored but not committed are debris only once no writer
		// holds this lock ('cleanup --orphans' takes it exclusively).
		wlk, err := dst.DB.LockWriter(func(err error) { r.log.Warn("target store: waiting for the writers lock", "reason", err) })
		if err != nil {
			return nil, fmt.Errorf("target store: %w", err)
		}
		defer wlk.Unlock()
	}
	for _, v := range vs {
		r.total += v.Size
	}
	named := len(o.UIDs) > 0
	var firstErr, damageErr error
	failed := 0
	for _, v := range vs {
		if err := ctx.Err(); err != nil {
			return r.finish(start), err
		}
		res, err := r.version(ctx, v.UID)
		if err == nil {
			r.add(res)
			continue
		}
		var ve versionError
		if !errors.As(err, &ve) {
			if res != nil {
				res.State, res.Error = StateFailed, err.Error()
				r.add(res)
			}
			return r.finish(start), err
		}
		if !named && (errors.Is(err, metastore.ErrVersionNotFound) || errors.Is(err, metastore.ErrLocked) && res == nil) {
			// --all / --volume: removed since the selection, or in use
			// (being removed): nothing to copy.
			reason := "removed while the copy ran"
			if errors.Is(err, metastore.ErrLocked) {
				reason = "in use by another backy process (being written or removed)"
			}
			r.rep.Skipped = append(r.rep.Skipped, Skipped{UID: v.UID, Volume: v.Volume, Reason: reason})
			r.log.Info("version skipped", "version", v.UID, "reason", reason)
			r.progress(v.Size)
			continue
		}
		if res == nil {
			res = &Result{UID: v.UID, Volume: v.Volume, SourceStatus: v.Status}
		}
		res.State, res.Error = StateFailed, err.Error()
		r.add(res)
		r.log.Info("version not copied", "version", v.UID, "err", err)
		failed++
		if firstErr == nil {
			firstErr = ve.err
		}
		if damageErr == nil && (errors.Is(err, blockstore.ErrCorrupt) || errors.Is(err, blockstore.ErrMissing)) {
			damageErr = ve.err
		}
	}
	rep := r.finish(start)
	if failed == 0 {
		return rep, nil
	}
	if damageErr != nil {
		firstErr = damageErr
	}
	if len(vs) == 1 {
		return rep, firstErr
	}
	return rep, fmt.Errorf("%d of %d version(s) not copied (listed); %w", failed, len(vs), firstErr)
}

func (r *run) add(res *Result) {
	r.rep.Versions = append(r.rep.Versions, *res)
	r.rep.BlocksSent += res.BlocksSent
	r.rep.BlocksDeduplicated += res.BlocksDeduplicated
	r.rep.BytesSent += res.BytesSent
	r.rep.BytesWritten += res.BytesWritten
	r.rep.BytesDeduplicated += res.BytesDeduplicated
}

func (r *run) finish(start time.Time) *Report {
	r.mu.Lock()
	slices.Sort(r.rep.InvalidVersions)
	r.rep.InvalidVersions = slices.Compact(r.rep.InvalidVersions)
	r.mu.Unlock()
	r.rep.DurationSeconds = r.o.Clock.Since(start).Seconds()
	return r.rep
}

func (r *run) progress(n int64) {
	if r.o.Progress == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.done += n
	r.o.Progress(Progress{Done: r.done, Total: r.total, BytesSent: r.sent})
}

// selectVersions resolves the selection in the source, oldest first.
// --all and --volume take complete versions only; incomplete ones (a
// backup running or killed) are listed as skipped.
func (r *run) selectVersions() ([]*metastore.Version, error) {
	o := r.o
	n := 0
	for _, set := range []bool{len(o.UIDs) > 0, o.All, o.Volume != ""} {
		if set {
			n++
		}
	}
	if n != 1 {
		return nil, fmt.Errorf("%w: select versions by uid, all, or volume (one of them)", ErrOptions)
	}
	if len(o.UIDs) > 0 {
		var out []*metastore.Version
		seen := map[string]bool{}
		for _, uid := range o.UIDs {
			if seen[uid] {
				continue
			}
			seen[uid] = true
			v, err := r.src.DB.Version(uid)
			if err != nil {
				return nil, err
			}
			out = append(out, v)
		}
		return out, nil
	}
	vs, err := r.src.DB.Versions(func(v *metastore.Version) bool { return o.All || v.Volume == o.Volume })
	if err != nil {
		return nil, err
	}
	if len(vs) == 0 && !o.All {
		return nil, fmt.Errorf("%w: volume %q has no versions", ErrNoVersions, o.Volume)
	}
	out := vs[:0]
	for _, v := range vs {
		if v.Status == metastore.StatusIncomplete || v.Removing {
			reason := "incomplete (a backup is running, or was killed: resume or remove it; name it with --force to copy what it holds)"
			if v.Removing {
				reason = "being removed"
			}
			r.rep.Skipped = append(r.rep.Skipped, Skipped{UID: v.UID, Volume: v.Volume, Reason: reason})
			continue
		}
		out = append(out, v)
	}
	return out, nil
}

// sameVersion reports why tv (in the target) is not a copy of v, or "".
func sameVersion(v, tv *metastore.Version) string {
	switch {
	case tv.Volume != v.Volume:
		return fmt.Sprintf("it belongs to volume %q, not %q", tv.Volume, v.Volume)
	case tv.Size != v.Size:
		return fmt.Sprintf("it has %d bytes, not %d", tv.Size, v.Size)
	case tv.BlockSize != v.BlockSize || tv.Blocks() != v.Blocks():
		return fmt.Sprintf("it has %d blocks of %d bytes, not %d of %d", tv.Blocks(), tv.BlockSize, v.Blocks(), v.BlockSize)
	}
	return ""
}

// entries returns the number of map entries of source version v that a
// copy takes: all of a complete version, the committed ones of an
// incomplete one.
func entries(v *metastore.Version) int64 {
	if v.Status == metastore.StatusIncomplete {
		return min(v.BlocksDone, v.Blocks())
	}
	return v.Blocks()
}

// version copies (or, in a dry run, assesses) one version. Errors that
// concern it alone are wrapped in versionError. The Result is nil when
// the version could not even be looked at.
func (r *run) version(ctx context.Context, uid string) (*Result, error) {
	start := r.o.Clock.Now()
	r.mu.Lock()
	doneBefore := r.done
	r.mu.Unlock()
	lk, err := r.src.DB.LockVersion(uid, metastore.Shared)
	if err != nil {
		return nil, perVersion(fmt.Errorf("source store: %w", err))
	}
	defer lk.Unlock()
	v, err := r.src.DB.Version(uid) // as it is now that we hold the lock
	if err != nil {
		return nil, perVersion(err)
	}
	res := &Result{UID: uid, Volume: v.Volume, SourceStatus: v.Status, Blocks: entries(v)}
	defer func() {
		res.DurationSeconds = r.o.Clock.Since(start).Seconds()
		// Progress covers each version's size once, however it ended.
		r.mu.Lock()
		left := v.Size - (r.done - doneBefore)
		r.mu.Unlock()
		if left > 0 {
			r.progress(left)
		}
	}()
	switch {
	case v.Removing:
		return res, perVersion(fmt.Errorf("%w: version %s is being removed in the source", ErrNotCopyable, uid))
	case v.Status != metastore.StatusValid && !r.o.Force:
		return res, perVersion(fmt.Errorf("%w: version %s is %s in the source; use --force to copy what it holds", ErrNotCopyable, uid, v.Status))
	case v.BlockSize != r.dst.DB.BlockSize():
		return res, perVersion(fmt.Errorf("%w: version %s has %d-byte blocks, the target store %d-byte blocks; copy it to a store created with 'backy init --block-size %d'",
			ErrBlockSize, uid, v.BlockSize, r.dst.DB.BlockSize(), v.BlockSize))
	}
	srcPages, err := r.src.DB.PageList(uid)
	if err != nil {
		return res, perVersion(fmt.Errorf("source store: %w", err))
	}
	if want := (res.Blocks + blockmap.PageEntries - 1) / blockmap.PageEntries; int64(len(srcPages)) != want {
		return res, perVersion(fmt.Errorf("%w: version %s has %d map pages in the source, %d entries need %d", metastore.ErrCorrupt, uid, len(srcPages), res.Blocks, want))
	}
	if !r.o.DryRun {
		tlk, err := r.dst.DB.LockVersion(uid, metastore.Exclusive)
		if err != nil {
			return res, perVersion(fmt.Errorf("target store: %w", err))
		}
		defer tlk.Unlock()
	}
	tv, err := r.dst.DB.Version(uid)
	if err != nil && !errors.Is(err, metastore.ErrVersionNotFound) {
		return res, fmt.Errorf("target store: %w", err)
	}
	if err != nil {
		tv = nil
	}
	firstPage := int64(0)
	if tv != nil {
		res.TargetStatus = tv.Status
		if why := sameVersion(v, tv); why != "" {
			return res, perVersion(fmt.Errorf("%w: version %s exists in the target, but %s", ErrConflict, uid, why))
		}
		if tv.Removing {
			return res, perVersion(fmt.Errorf("%w: version %s is being removed in the target: finish that with 'backy rm %s' on the target, then copy again", ErrConflict, uid, uid))
		}
		tPages, err := r.dst.DB.PageList(uid)
		if err != nil {
			return res, fmt.Errorf("target store: %w", err)
		}
		res.BlocksDone = tv.BlocksDone
		complete := tv.Status != metastore.StatusIncomplete
		if tv.BlocksDone > res.Blocks {
			return res, perVersion(fmt.Errorf("%w: version %s exists in the target with %d blocks, the source holds %d", ErrConflict, uid, tv.BlocksDone, res.Blocks))
		}
		// A complete copy, or an incomplete one of an incomplete source
		// version holding all that the source holds, is already there.
		if complete || v.Status == metastore.StatusIncomplete && tv.BlocksDone == res.Blocks {
			if !slices.Equal(tPages, srcPages) {
				return res, perVersion(fmt.Errorf("%w: version %s exists in the target with another block map", ErrConflict, uid))
			}
			res.State = StateAlready
			switch {
			case !complete:
				res.Note = "incomplete in the source, and the target holds all it holds"
			case tv.Status == metastore.StatusInvalid:
				res.Note = fmt.Sprintf("invalid in the target (a block of it is damaged there): to replace it, remove it there ('backy rm %s') and copy it again", uid)
			}
			return res, nil
		}
		firstPage = tv.BlocksDone / blockmap.PageEntries
		if int64(len(tPages)) < firstPage || !slices.Equal(tPages[:firstPage], srcPages[:firstPage]) {
			return res, perVersion(fmt.Errorf("%w: version %s exists in the target, incomplete, with another block map", ErrConflict, uid))
		}
		res.BlocksBefore = tv.BlocksDone
	}
	if r.o.DryRun {
		res.State = StateMissing
		if tv != nil {
			res.State = StateIncomplete
		}
		return res, r.assess(ctx, v, srcPages, firstPage, res)
	}
	if tv == nil {
		tv = &metastore.Version{
			UID: v.UID, Volume: v.Volume, Snapshot: v.Snapshot, Date: v.Date, Size: v.Size, BlockSize: v.BlockSize,
			Status: metastore.StatusIncomplete, Labels: maps.Clone(v.Labels), Base: v.Base,
		}
		if err := r.dst.DB.CreateVersion(tv); err != nil {
			return res, fmt.Errorf("target store: %w", err)
		}
		res.State = StateCopied
	} else {
		res.State = StateResumed
	}
	r.log.Info("copy started", "version", uid, "volume", v.Volume, "size", v.Size, "resume_page", firstPage)
	e := &engine{r: r, v: v, tv: tv, res: res, srcPages: srcPages, n: res.Blocks,
		damaged: blockread.NewRecorder(r.src.DB, 0)}
	err = e.pipeline(ctx, firstPage)
	res.TargetStatus, res.BlocksDone = tv.Status, tv.BlocksDone
	// Damage found is recorded whatever else happened, as restore does
	// (the rest of it: full batches are recorded as they fill).
	merr := e.damaged.Flush()
	if merr != nil {
		err = errors.Join(err, fmt.Errorf("source store: %w", merr))
	}
	if uids := e.damaged.Versions(); len(uids) > 0 {
		r.mu.Lock()
		r.rep.InvalidVersions = append(r.rep.InvalidVersions, uids...)
		r.mu.Unlock()
		if merr == nil {
			r.log.Warn("damaged blocks found in the source and recorded", "blocks", e.damaged.Blocks(), "versions", uids)
		}
	}
	if err != nil {
		if e.damageErr != nil && (errors.Is(err, blockstore.ErrCorrupt) || errors.Is(err, blockstore.ErrMissing) || errors.Is(err, metastore.ErrCorrupt)) {
			return res, perVersion(fmt.Errorf("%w; the block was not copied, and version %s is left incomplete in the target (%d of %d blocks)",
				e.damageErr, uid, tv.BlocksDone, res.Blocks))
		}
		return res, err
	}
	switch {
	case v.Status == metastore.StatusIncomplete:
		res.Note = fmt.Sprintf("incomplete in the source: its %d committed blocks were copied, and it is incomplete in the target too", res.Blocks)
	case v.Status == metastore.StatusInvalid:
		res.Note = "invalid in the source; every block was read back intact (or found valid in the target), so the copy is valid"
	}
	return res, nil
}

// assess counts, without changing anything, what copying v from page
// firstPage on would send and reference.
func (r *run) assess(ctx context.Context, v *metastore.Version, srcPages []blockmap.PageID, firstPage int64, res *Result) error {
	var look []metastore.Lookup
	for p := firstPage; p < int64(len(srcPages)); p++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		ids, err := r.src.DB.Page(srcPages[p])
		if err != nil {
			return perVersion(fmt.Errorf("source store: version %s: %w", v.UID, err))
		}
		look = slices.Grow(look[:0], len(ids))[:len(ids)]
		if err := r.dst.DB.LookupBlocks(ids, look); err != nil {
			return fmt.Errorf("target store: %w", err)
		}
		var covered int64
		for k, id := range ids {
			idx := p*blockmap.PageEntries + int64(k)
			if idx >= res.Blocks {
				break
			}
			n := min(v.BlockSize, v.Size-idx*v.BlockSize)
			covered += n
			if idx < res.BlocksBefore {
				continue
			}
			switch {
			case id.IsSparse():
				res.BlocksSparse++
			case look[k].Found && !look[k].Record.Invalid || r.dryOnce[id]:
				res.BlocksDeduplicated++
				res.BytesDeduplicated += n
			default:
				r.dryOnce[id] = true
				res.BlocksSent++
				res.BytesSent += n
			}
		}
		r.progress(covered)
	}
	return nil
}
