package scrub

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/internal/clock"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/metastore/blockmap"
	"github.com/backy/backy/versions"
	"github.com/backy/backy/versions/blockread"
)

// Kinds of scrub, as recorded in metastore.ScrubRecord.Kind.
const (
	KindScrub = "scrub"
	KindDeep  = "deep-scrub"
)

// Kinds of failure.
const (
	// FailMissing: the object a record names does not exist.
	FailMissing = "missing"
	// FailCorrupt: the object has the wrong size, or (deep) does not open
	// or verify.
	FailCorrupt = "corrupt"
	// FailMetadata: the version's map or a block record is inconsistent.
	FailMetadata = "metadata"
	// FailSource: the block differs from the source image (listed in
	// Result.Differences, not a failure: it marks nothing).
	FailSource = "source"
	// FailSnapshot: the version's metadata snapshot in the data backend is
	// missing or damaged (Options.Snapshot).
	FailSnapshot = "snapshot"
)

// States of a version's metadata snapshot (VersionResult.Snapshot), as
// package catalog's Check reports them.
const (
	SnapshotOK      = "ok"
	SnapshotPending = "pending"
	SnapshotMissing = "missing"
	SnapshotDamaged = "damaged"
)

// Results of a version (VersionResult.Result), the worst first.
const (
	// ResultDamaged: a checked block, or the map, is damaged or missing.
	ResultDamaged = "damaged"
	// ResultDiffers: the stored version is intact as far as checked, and
	// differs from the source it was compared with.
	ResultDiffers = "differs"
	// ResultNoneSampled: the sample held none of the version's blocks;
	// only its map was checked.
	ResultNoneSampled = "none sampled"
	// ResultOK: every checked block is intact (and matches the source).
	ResultOK = "ok"
)

// Errors of Run.
var (
	// ErrDamage: the scrub ran to its end and found damage (listed in the
	// Result and recorded in the metastore).
	ErrDamage = errors.New("scrub found damage")
	// ErrDiffers: the deep-scrub ran to its end, found no damage, and the
	// version differs from the source (listed in Result.Differences;
	// nothing is marked).
	ErrDiffers = errors.New("the version differs from the source")
	// ErrNoVersions: the selection names no version (an unknown volume).
	ErrNoVersions = errors.New("no versions to scrub")
	// ErrSourceSize: the source image has another size than the version.
	ErrSourceSize = errors.New("the source's size differs from the version's")
	// ErrOptions: the options contradict each other.
	ErrOptions = errors.New("invalid scrub options")
)

// BlockStore is what the engine needs of a blockstore.Store.
type BlockStore interface {
	// Get reads and verifies a block (deep-scrub).
	Get(ctx context.Context, rec block.Record, buf []byte) ([]byte, error)
	// Check verifies that the object exists with its stored size (scrub).
	Check(ctx context.Context, rec block.Record) error
}

// KeyChecker is implemented by block stores that can tell up front
// whether they hold the key of an encryption version (blockstore.Store
// does); a deep-scrub uses it to refuse, before it reads anything, a
// version whose blocks need a key that is not configured.
type KeyChecker interface {
	CanOpen(encVersion uint16) error
}

// Source is the image a deep-scrub compares a version with.
type Source interface {
	ReadAt(p []byte, off int64) (int, error)
	Size() int64
}

// Options describes a scrub.
type Options struct {
	// Deep reads and verifies every sampled block.
	Deep bool
	// The selection: the versions named by UIDs, or every version (All),
	// or those of Volume. Incomplete versions (a backup running or
	// killed, a removal) are skipped and listed in Result.Skipped.
	UIDs   []string
	All    bool
	Volume string
	// Percent is the share of blocks checked, in (0, 100]; 0 means 100.
	// Below 100 the sample is the next Percent of a rotation kept in the
	// metastore per kind and selection (RotationName): a block is sampled
	// when a hash of its identity, keyed by the store, falls in the window
	// of the rotation that follows the last run's, so N runs at P percent
	// with N x P >= 100 check every block of the selection at least once
	// (and, at P = 100/N, almost always exactly once), and a block shared
	// by versions is sampled for all or none of them. A run that stops
	// early (an error, cancellation) does not move the rotation on.
	Percent float64
	// Source (deep only, one version only) is compared with the version.
	Source Source
	// Workers check blocks in parallel; 0 = 2 x GOMAXPROCS + 4 (deep) or
	// 16 (scrub: stat calls wait on the backend).
	Workers int
	// Snapshot, if set, checks the version's metadata snapshot in the
	// data backend (catalog.Check, deep or not as the scrub) while the
	// version is locked, and returns one of the Snapshot* states with a
	// reason. A missing or damaged snapshot is a failure (FailSnapshot):
	// the version's snapshot is marked stale in the metastore
	// (MarkSnapshotStale), so the next sync writes it again, and listed in
	// Result.SnapshotsBad. It marks nothing invalid: the metastore holds
	// the version whole.
	Snapshot func(ctx context.Context, uid string) (state, reason string, err error)
	Progress func(Progress)
	Logger   *slog.Logger
	// Clock stamps the scrub records (metastore.ScrubRecord.At) and times
	// the run; clock.System when nil.
	Clock clock.Clock
}

// Progress reports a running scrub: block positions of the selected
// versions looked at, and in all.
type Progress struct {
	Done, Total int64
}

// Failure is one problem found.
type Failure struct {
	// Version is the version in which it was found first (a shared block
	// is checked, and listed, once).
	Version string `json:"version"`
	// Index is the block's position in that version (-1 for the map as a
	// whole).
	Index  int64  `json:"index"`
	ID     string `json:"id,omitempty"`
	Kind   string `json:"kind"`
	Reason string `json:"reason"`
}

// VersionResult is the outcome for one scrubbed version, as recorded in
// its LastScrub.
type VersionResult struct {
	UID    string           `json:"uid"`
	Volume string           `json:"volume"`
	Status metastore.Status `json:"status"` // after the scrub
	// OK reports that nothing checked was damaged (a difference from the
	// source is no damage); Result says more (ResultOK, ...).
	OK     bool   `json:"ok"`
	Result string `json:"result"`
	// BlocksChecked counts the sampled non-sparse block positions (and,
	// with a source, the sparse ones) of the version; BlocksBad those
	// found bad (here or, for a shared block, in another version of the
	// run) plus positions with broken metadata; BlocksDiffering the
	// positions that differ from the source.
	BlocksChecked   int64 `json:"blocks_checked"`
	BlocksBad       int64 `json:"blocks_bad"`
	BlocksDiffering int64 `json:"blocks_differing"`
	// Snapshot is the state of the version's metadata snapshot in the
	// data backend (SnapshotOK, ...; "" when not checked).
	Snapshot string `json:"snapshot,omitempty"`
}

// Window is the part of the sampling rotation a run checked, in percent
// of the rotation: from From up to To (To < From when it wrapped round).
type Window struct {
	From float64 `json:"from"`
	To   float64 `json:"to"`
}

// Skipped is a selected version that was not scrubbed.
type Skipped struct {
	UID    string `json:"uid"`
	Reason string `json:"reason"`
}

// Result summarises a scrub.
type Result struct {
	Kind    string  `json:"kind"`
	Percent float64 `json:"percent"`
	// Window is the part of the rotation sampled (Percent below 100).
	Window *Window `json:"window,omitempty"`
	// Versions and Skipped are sorted by uid (oldest first).
	Versions []VersionResult `json:"versions"`
	Skipped  []Skipped       `json:"skipped,omitempty"`
	// BlocksChecked counts distinct blocks checked (stat or read);
	// BytesVerified the plaintext bytes a deep-scrub read and verified.
	BlocksChecked int64 `json:"blocks_checked"`
	BytesVerified int64 `json:"bytes_verified"`
	// Failures lists the problems found (at most 10,000);
	// FailuresTotal counts them all.
	Failures      []Failure `json:"failures"`
	FailuresTotal int64     `json:"failures_total"`
	// Differences lists the positions that differ from the source (at
	// most 10,000, kind FailSource); DifferencesTotal counts them all.
	Differences      []Failure `json:"differences,omitempty"`
	DifferencesTotal int64     `json:"differences_total,omitempty"`
	// InvalidVersions are the versions using a block this run found bad,
	// or whose map is damaged: all of them are invalid now.
	InvalidVersions []string `json:"invalid_versions,omitempty"`
	// BlocksHealed counts blocks marked invalid that a deep-scrub found
	// intact (now valid); ValidVersions the versions made valid again.
	BlocksHealed  int64    `json:"blocks_healed"`
	ValidVersions []string `json:"valid_versions,omitempty"`
	// SnapshotsBad are the versions whose metadata snapshot in the data
	// backend was found missing or damaged (marked stale: the next sync
	// writes them from the metastore).
	SnapshotsBad    []string `json:"snapshots_bad,omitempty"`
	DurationSeconds float64  `json:"duration_seconds"`
}

// maxListed bounds the failures listed one by one; the rest are counted.
const maxListed = 10000

// block states in the run's set of checked blocks.
const (
	statePending uint8 = iota
	stateGood
	stateBad
)

type pageKey struct {
	id blockmap.PageID
	// lastLen is the expected length of the page's last entry's block:
	// the block size except for the last page of a version whose size is
	// not a multiple of it.
	lastLen int64
}

type pageInfo struct {
	sampled  int64 // sampled positions (BlocksChecked)
	metaBad  int64 // positions with broken metadata
	problems bool
}

type run struct {
	st  BlockStore
	db  *metastore.DB
	o   Options
	log *slog.Logger
	// A block is sampled when its keyed hash h has h - start < width
	// (mod 2^64); all is set at 100 percent.
	all          bool
	key          uint64
	start, width uint64

	// damage records the blocks found bad (MarkInvalid), in batches and
	// at the end of each version.
	damage *blockread.Recorder

	mu       sync.Mutex // guards what follows
	res      *Result
	seen     map[block.ID]uint8
	bad      map[block.ID]bool // blocks found bad in this run
	done     int64
	total    int64
	pages    map[pageKey]pageInfo
	listed   map[string]bool // invalid versions listed
	validSet map[string]bool
}

// Run scrubs the selected versions. Damage found is recorded in the
// metastore and listed in the Result, and Run returns an error wrapping
// ErrDamage. A version named in UIDs that is locked by another process
// (being written or removed) is skipped, and, if nothing was damaged, Run
// returns an error wrapping metastore.ErrLocked. Errors that stop the
// scrub (I/O errors of the backend, a missing key, cancellation) return
// with the Result so far.
func Run(ctx context.Context, st BlockStore, db *metastore.DB, o Options) (*Result, error) {
	o.Clock = clock.Or(o.Clock)
	start := o.Clock.Now()
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Percent == 0 {
		o.Percent = 100
	}
	if !(o.Percent > 0 && o.Percent <= 100) {
		return nil, fmt.Errorf("%w: percent %v is not in (0, 100]", ErrOptions, o.Percent)
	}
	if o.Source != nil && !o.Deep {
		return nil, fmt.Errorf("%w: a source is compared by a deep-scrub only", ErrOptions)
	}
	if o.Workers <= 0 {
		o.Workers = 16
		if o.Deep {
			o.Workers = 2*runtime.GOMAXPROCS(0) + 4
		}
	}
	kind := KindScrub
	if o.Deep {
		kind = KindDeep
	}
	vs, err := selectVersions(db, o)
	if err != nil {
		return nil, err
	}
	if o.Source != nil && len(vs) != 1 {
		return nil, fmt.Errorf("%w: a source is compared with one version, %d are selected", ErrOptions, len(vs))
	}
	if o.Source != nil && o.Source.Size() != vs[0].Size {
		return nil, fmt.Errorf("%w: the source has %d bytes, version %s %d", ErrSourceSize, o.Source.Size(), vs[0].UID, vs[0].Size)
	}
	r := &run{
		st: st, db: db, o: o, log: o.Logger,
		damage: blockread.NewRecorder(db, 0),
		res:    &Result{Kind: kind, Percent: o.Percent, Versions: []VersionResult{}, Failures: []Failure{}},
		seen:   map[block.ID]uint8{},
		bad:    map[block.ID]bool{},
		pages:  map[pageKey]pageInfo{}, listed: map[string]bool{}, validSet: map[string]bool{},
	}
	sid := db.StoreID()
	r.key = binary.LittleEndian.Uint64(sid[:8]) ^ binary.LittleEndian.Uint64(sid[8:])
	r.width, r.all = windowWidth(o.Percent)
	rotation := RotationName(o)
	if !r.all {
		if r.start, err = db.ScrubRotation(rotation); err != nil {
			return nil, err
		}
		r.res.Window = &Window{From: rotationPercent(r.start), To: rotationPercent(r.start + r.width)}
	}
	if kc, ok := st.(KeyChecker); ok && o.Deep {
		for _, v := range vs {
			err := versions.CheckKeys(db, v.UID, kc.CanOpen)
			if errors.Is(err, metastore.ErrVersionNotFound) || errors.Is(err, metastore.ErrCorrupt) {
				// Removed since the selection (skipped below), or a
				// damaged map (the scrub reports it).
				continue
			}
			if err != nil {
				return nil, err
			}
		}
	}
	for _, v := range vs {
		r.total += v.Blocks()
	}
	var lockErr error
	for _, v := range vs {
		if err := ctx.Err(); err != nil {
			return r.finish(start), err
		}
		if err := r.version(ctx, v.UID); err != nil {
			if errors.Is(err, metastore.ErrVersionNotFound) {
				// Removed (rm, enforce) since the selection: nothing to check.
				r.res.Skipped = append(r.res.Skipped, Skipped{UID: v.UID, Reason: "removed while the scrub ran"})
				r.log.Info("version skipped: removed meanwhile", "version", v.UID)
				r.mu.Lock()
				r.total -= v.Blocks()
				r.mu.Unlock()
				continue
			}
			if errors.Is(err, metastore.ErrLocked) {
				r.res.Skipped = append(r.res.Skipped, Skipped{UID: v.UID, Reason: err.Error()})
				r.log.Info("version skipped: locked by another process", "version", v.UID)
				if len(o.UIDs) > 0 && lockErr == nil {
					lockErr = err
				}
				continue
			}
			return r.finish(start), err
		}
	}
	res := r.finish(start)
	if !r.all {
		// The run went through its window: the next one starts after it.
		if _, err := db.AdvanceScrubRotation(rotation, r.start, r.start+r.width); err != nil {
			return res, err
		}
	}
	if res.FailuresTotal > 0 {
		return res, fmt.Errorf("%w: %d problem(s) listed; %d version(s) invalid", ErrDamage, res.FailuresTotal, len(res.InvalidVersions))
	}
	if lockErr == nil && res.DifferencesTotal > 0 {
		return res, fmt.Errorf("%w: %s differs from it in %d block(s) (listed); its stored blocks are intact as far as checked and nothing was marked invalid: the source changed since the backup, or is another image",
			ErrDiffers, res.Versions[0].UID, res.DifferencesTotal)
	}
	return res, lockErr
}

func (r *run) finish(start time.Time) *Result {
	slices.Sort(r.res.InvalidVersions)
	slices.Sort(r.res.ValidVersions)
	slices.SortFunc(r.res.Versions, func(a, b VersionResult) int { return cmp.Compare(a.UID, b.UID) })
	slices.SortFunc(r.res.Skipped, func(a, b Skipped) int { return cmp.Compare(a.UID, b.UID) })
	slices.Sort(r.res.SnapshotsBad)
	r.res.DurationSeconds = r.o.Clock.Since(start).Seconds()
	return r.res
}

// RotationName names the sampling rotation of a scrub: its kind and its
// selection (every version, a volume, or a set of versions), so that
// sampled runs of one selection cover it whatever other selections ran.
func RotationName(o Options) string {
	kind := KindScrub
	if o.Deep {
		kind = KindDeep
	}
	switch {
	case o.All:
		return kind + " all"
	case o.Volume != "":
		return kind + " volume=" + o.Volume
	}
	uids := slices.Clone(o.UIDs)
	slices.Sort(uids)
	return kind + " versions=" + strings.Join(slices.Compact(uids), ",")
}

// windowWidth returns the share pct percent of the hash space 2^64,
// rounded up (so that N windows of 100/N percent cover it all), and
// whether that is all of it.
func windowWidth(pct float64) (uint64, bool) {
	if pct >= 100 {
		return 0, true
	}
	q := new(big.Rat).SetFloat64(pct)
	q.Mul(q, new(big.Rat).SetInt(new(big.Int).Lsh(big.NewInt(1), 64)))
	q.Quo(q, big.NewRat(100, 1))
	n, rem := new(big.Int).QuoRem(q.Num(), q.Denom(), new(big.Int))
	if rem.Sign() != 0 {
		n.Add(n, big.NewInt(1))
	}
	if n.BitLen() > 64 {
		return 0, true
	}
	return n.Uint64(), false
}

// rotationPercent converts a position of the rotation to percent.
func rotationPercent(pos uint64) float64 {
	f, _ := new(big.Rat).SetFrac(new(big.Int).SetUint64(pos), new(big.Int).Lsh(big.NewInt(1), 64)).Float64()
	return f * 100
}

// selectVersions resolves the selection.
func selectVersions(db *metastore.DB, o Options) ([]*metastore.Version, error) {
	n := 0
	if len(o.UIDs) > 0 {
		n++
	}
	if o.All {
		n++
	}
	if o.Volume != "" {
		n++
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
			v, err := db.Version(uid)
			if err != nil {
				return nil, err
			}
			out = append(out, v)
		}
		return out, nil
	}
	vs, err := db.Versions(func(v *metastore.Version) bool { return o.All || v.Volume == o.Volume })
	if err != nil {
		return nil, err
	}
	if len(vs) == 0 && !o.All {
		return nil, fmt.Errorf("%w: volume %q has no versions", ErrNoVersions, o.Volume)
	}
	return vs, nil
}

// splitmix64 is a bijective 64-bit mixer.
func splitmix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// sampled reports whether the block id (at position idx, for sparse
// blocks) is in the sample: whether its hash, keyed by the store, falls
// in the run's window of the rotation.
func (r *run) sampled(id block.ID, idx int64) bool {
	if r.all {
		return true
	}
	var x uint64
	if id.IsSparse() {
		x = splitmix64(uint64(idx) ^ 0x5a5a5a5a5a5a5a5a)
	} else {
		x = binary.LittleEndian.Uint64(id[:8]) ^ binary.LittleEndian.Uint64(id[8:16])
	}
	return splitmix64(x^r.key)-r.start < r.width
}

func (r *run) fail(f Failure) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.res.FailuresTotal++
	if len(r.res.Failures) < maxListed {
		r.res.Failures = append(r.res.Failures, f)
	}
	r.log.Info("scrub: damage found", "version", f.Version, "block", f.Index, "kind", f.Kind, "reason", f.Reason)
}

// differ records a difference from the source.
func (r *run) differ(f Failure) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.res.DifferencesTotal++
	if len(r.res.Differences) < maxListed {
		r.res.Differences = append(r.res.Differences, f)
	}
	r.log.Info("deep-scrub: the version differs from the source", "version", f.Version, "block", f.Index, "reason", f.Reason)
}

func (r *run) progress(n int64) {
	if r.o.Progress == nil {
		return
	}
	r.mu.Lock()
	r.done += n
	p := Progress{Done: r.done, Total: r.total}
	r.mu.Unlock()
	r.o.Progress(p)
}

// job is one block position to check.
type job struct {
	idx     int64
	off     int64 // the block's offset in the version
	n       int64 // the block's length at this position
	id      block.ID
	rec     block.Record
	check   bool // check the object (first time the block is seen)
	compare bool // compare with the source
}

// vstate is the state of the scrub of one version.
type vstate struct {
	mu      sync.Mutex
	srcBad  int64
	metaBad int64
	broken  bool           // the map itself is damaged
	healed  []block.Record // invalid blocks found intact
}

// version scrubs one version under its shared lock.
func (r *run) version(ctx context.Context, uid string) error {
	lk, err := r.db.LockVersion(uid, metastore.Shared)
	if err != nil {
		return err
	}
	defer lk.Unlock()
	v, err := r.db.Version(uid) // as it is now that we hold the lock
	if err != nil {
		return err
	}
	if v.Status == metastore.StatusIncomplete || v.Removing {
		reason := "incomplete (a backup is running, or was killed: resume or remove it)"
		if v.Removing {
			reason = "being removed"
		}
		r.mu.Lock()
		r.res.Skipped = append(r.res.Skipped, Skipped{UID: uid, Reason: reason})
		r.total -= v.Blocks()
		r.mu.Unlock()
		return nil
	}
	at := r.o.Clock.Now()
	bs, size, nBlk := v.BlockSize, v.Size, v.Blocks()
	vs := &vstate{}
	vr := VersionResult{UID: uid, Volume: v.Volume}
	if err := r.snapshot(ctx, uid, &vr); err != nil {
		return err
	}
	meta := func(idx int64, id block.ID, format string, args ...any) {
		f := Failure{Version: uid, Index: idx, Kind: FailMetadata, Reason: fmt.Sprintf(format, args...)}
		if !id.IsSparse() {
			f.ID = id.String()
		}
		r.fail(f)
	}

	g, gctx := errgroup.WithContext(ctx)
	jobs := make(chan job, 2*r.o.Workers)
	g.Go(func() error {
		defer close(jobs)
		var covered int64 // positions the map covers
		short := false    // a page before this one was not full
		err := r.db.ScrubMap(uid, func(c metastore.ScrubChunk) error {
			if short {
				meta(c.First, block.Sparse, "page %d of the map follows a page that is not full", c.Page)
				vs.broken = true
			}
			if c.Problem != "" {
				meta(c.First, block.Sparse, "%s", c.Problem)
				vs.broken = true
				// Every page but the last is full: count what it would cover.
				covered += max(0, min(blockmap.PageEntries, nBlk-c.First))
				return nil
			}
			covered += int64(len(c.IDs))
			short = len(c.IDs) != blockmap.PageEntries
			end := c.First + int64(len(c.IDs))
			key := pageKey{id: c.PageID, lastLen: bs}
			if end >= nBlk && nBlk > 0 {
				key.lastLen = size - (nBlk-1)*bs
			}
			if r.o.Source == nil {
				r.mu.Lock()
				info, ok := r.pages[key]
				r.mu.Unlock()
				if ok && end <= nBlk {
					// Walked already in this run: its blocks are in the
					// checked set; only count.
					vr.BlocksChecked += info.sampled
					vs.metaBad += info.metaBad
					if info.problems {
						vs.broken = true
					}
					r.progress(int64(len(c.IDs)))
					return nil
				}
			}
			unref := map[int]bool{}
			for _, k := range c.Unreferenced {
				unref[k] = true
			}
			var info pageInfo
			for k, id := range c.IDs {
				idx := c.First + int64(k)
				if idx >= nBlk {
					break // reported below: the map is longer than the version
				}
				n := min(bs, size-idx*bs)
				if !c.Found[k] {
					meta(idx, id, "block %s has no record in the metastore", id.Short())
					info.metaBad++
					continue
				}
				if unref[k] {
					meta(idx, id, "the record of block %s counts no reference", id.Short())
					info.metaBad++
				}
				rec := c.Records[k]
				if !id.IsSparse() && int64(rec.Size) != n {
					meta(idx, id, "the record of block %s holds %d bytes, the block at this position has %d", id.Short(), rec.Size, n)
					info.metaBad++
					continue
				}
				if !r.sampled(id, idx) {
					continue
				}
				j := job{idx: idx, off: idx * bs, n: n, id: id, rec: rec, compare: r.o.Source != nil}
				if !id.IsSparse() {
					info.sampled++
					r.mu.Lock()
					if _, ok := r.seen[id]; !ok {
						r.seen[id] = statePending
						j.check = true
					}
					r.mu.Unlock()
				} else if j.compare {
					info.sampled++
				}
				if !j.check && !j.compare {
					continue
				}
				select {
				case jobs <- j:
				case <-gctx.Done():
					return gctx.Err()
				}
			}
			if info.metaBad > 0 {
				info.problems = true
				vs.broken = true
			}
			vr.BlocksChecked += info.sampled
			vs.metaBad += info.metaBad
			if r.o.Source == nil {
				r.mu.Lock()
				r.pages[key] = info
				r.mu.Unlock()
			}
			r.progress(int64(len(c.IDs)))
			return nil
		})
		if err != nil {
			if errors.Is(err, metastore.ErrCorrupt) {
				meta(-1, block.Sparse, "%v", err)
				vs.broken = true
				return nil
			}
			return err
		}
		if covered != nBlk {
			meta(-1, block.Sparse, "the map covers %d blocks, the version has %d", covered, nBlk)
			vs.broken = true
		}
		return nil
	})
	for range r.o.Workers {
		g.Go(func() error { return r.worker(gctx, uid, vs, jobs) })
	}
	werr := g.Wait()
	// Record the damage found, whatever else happened.
	if err := r.damage.Flush(); err != nil {
		return errors.Join(werr, err)
	}
	r.addInvalid(r.damage.Versions()...)
	if werr != nil {
		return werr
	}
	if vs.broken {
		if _, err := r.db.MarkVersionInvalid(uid); err != nil {
			return fmt.Errorf("recording version %s as invalid: %w", uid, err)
		}
		r.addInvalid(uid)
	}
	// Positions of this version whose block was found bad in this run
	// (here, or earlier in another version) need a second look at the map.
	bad := vs.metaBad
	r.mu.Lock()
	nb := len(r.bad)
	r.mu.Unlock()
	if nb > 0 {
		err := r.db.ScrubMap(uid, func(c metastore.ScrubChunk) error {
			for k, id := range c.IDs {
				if c.First+int64(k) < nBlk && r.bad[id] && c.Found[k] && r.sampled(id, c.First+int64(k)) {
					bad++
				}
			}
			return nil
		})
		if err != nil && !errors.Is(err, metastore.ErrCorrupt) {
			return err
		}
	}
	if r.o.Deep {
		if len(vs.healed) > 0 {
			healed, uids, err := r.db.MarkValid(vs.healed)
			if err != nil {
				return fmt.Errorf("recording %d healed block(s) as valid: %w", len(vs.healed), err)
			}
			r.addValid(int64(len(healed)), uids...)
			if len(healed) > 0 {
				r.log.Info("invalid blocks found intact are valid again", "blocks", len(healed), "versions", uids)
			}
		}
		if bad == 0 && !vs.broken {
			changed, err := r.db.Revalidate(uid)
			if err != nil {
				return err
			}
			if changed {
				r.addValid(0, uid)
			}
		}
	}
	vr.BlocksBad, vr.BlocksDiffering = bad, vs.srcBad
	vr.OK = bad == 0 && !vs.broken
	switch {
	case !vr.OK:
		vr.Result = ResultDamaged
	case vr.BlocksDiffering > 0:
		vr.Result = ResultDiffers
	case vr.BlocksChecked == 0 && !r.all:
		vr.Result = ResultNoneSampled
	default:
		vr.Result = ResultOK
	}
	if err := r.db.SetLastScrub(uid, metastore.ScrubRecord{
		At: at.UTC(), Kind: r.res.Kind, Percent: r.o.Percent, OK: vr.OK,
		BlocksChecked: vr.BlocksChecked, BlocksBad: vr.BlocksBad, BlocksDiffering: vr.BlocksDiffering,
	}); err != nil {
		return err
	}
	now, err := r.db.Version(uid)
	if err != nil {
		return err
	}
	vr.Status = now.Status
	r.mu.Lock()
	r.res.Versions = append(r.res.Versions, vr)
	r.mu.Unlock()
	return nil
}

// snapshot checks the version's metadata snapshot in the data backend
// (Options.Snapshot) and marks a missing or damaged one stale.
func (r *run) snapshot(ctx context.Context, uid string, vr *VersionResult) error {
	if r.o.Snapshot == nil {
		return nil
	}
	state, reason, err := r.o.Snapshot(ctx, uid)
	if err != nil {
		return fmt.Errorf("checking the metadata of version %s in the data backend: %w", uid, err)
	}
	vr.Snapshot = state
	if state != SnapshotMissing && state != SnapshotDamaged {
		return nil
	}
	r.fail(Failure{Version: uid, Index: -1, Kind: FailSnapshot, Reason: reason})
	if err := r.db.MarkSnapshotStale(uid); err != nil {
		return fmt.Errorf("recording that the metadata of version %s must be written again: %w", uid, err)
	}
	r.mu.Lock()
	r.res.SnapshotsBad = append(r.res.SnapshotsBad, uid)
	r.mu.Unlock()
	return nil
}

func (r *run) addInvalid(uids ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, u := range uids {
		if !r.listed[u] {
			r.listed[u] = true
			r.res.InvalidVersions = append(r.res.InvalidVersions, u)
		}
	}
}

func (r *run) addValid(healed int64, uids ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.res.BlocksHealed += healed
	for _, u := range uids {
		if !r.validSet[u] {
			r.validSet[u] = true
			r.res.ValidVersions = append(r.res.ValidVersions, u)
		}
	}
}

// worker checks the blocks of jobs.
func (r *run) worker(ctx context.Context, uid string, vs *vstate, jobs <-chan job) error {
	var buf, src []byte
	if r.o.Deep {
		buf = make([]byte, 0, 64<<10)
	}
	for j := range jobs {
		if j.check {
			if err := r.checkBlock(ctx, uid, vs, j, &buf); err != nil {
				return err
			}
		}
		if j.compare {
			if int64(cap(src)) < j.n {
				src = make([]byte, j.n)
			}
			p := src[:j.n]
			if n, err := r.o.Source.ReadAt(p, j.off); int64(n) != j.n {
				if err == nil {
					err = io.ErrUnexpectedEOF
				}
				return fmt.Errorf("reading the source at byte %d (block %d): %w", j.off, j.idx, err)
			}
			if err := r.compare(p, j); err != "" {
				vs.mu.Lock()
				vs.srcBad++
				vs.mu.Unlock()
				f := Failure{Version: uid, Index: j.idx, Kind: FailSource, Reason: err}
				if !j.id.IsSparse() {
					f.ID = j.id.String()
				}
				r.differ(f)
			}
		}
	}
	return nil
}

// compare compares a block of the source with the version's entry.
func (r *run) compare(p []byte, j job) string {
	if j.id.IsSparse() {
		if !block.IsZero(p) {
			return "the block is sparse (zeros) in the version but holds data in the source"
		}
		return ""
	}
	if block.Sum(p) != j.id {
		return fmt.Sprintf("block %s differs from the source", j.id.Short())
	}
	return ""
}

// checkBlock checks one distinct block: its object's size (scrub) or its
// whole content (deep), through the verified reader, which follows the
// record if a concurrent migrate-encryption moved it (rec is the record
// checked: the one to heal).
func (r *run) checkBlock(ctx context.Context, uid string, vs *vstate, j job, buf *[]byte) error {
	var rec block.Record
	var err error
	if r.o.Deep {
		var data []byte
		data, rec, err = blockread.Get(ctx, r.st, r.db, j.rec, (*buf)[:0])
		if cap(data) > cap(*buf) {
			*buf = data[:0]
		}
		if err == nil {
			r.mu.Lock()
			r.res.BytesVerified += int64(len(data))
			r.mu.Unlock()
		}
	} else {
		rec, err = blockread.Check(ctx, r.st, r.db, j.rec)
	}
	state := stateGood
	switch {
	case err == nil:
		if r.o.Deep && rec.Invalid {
			vs.mu.Lock()
			vs.healed = append(vs.healed, rec)
			vs.mu.Unlock()
		}
	case blockread.IsDamage(err):
		state = stateBad
		kind := FailCorrupt
		if errors.Is(err, blockstore.ErrMissing) {
			kind = FailMissing
		}
		r.damage.Add(j.id)
		r.fail(Failure{Version: uid, Index: j.idx, ID: j.id.String(), Kind: kind, Reason: err.Error()})
	default:
		return fmt.Errorf("block %d of %s: %w", j.idx, uid, err)
	}
	r.mu.Lock()
	r.seen[j.id] = state
	if state == stateBad {
		r.bad[j.id] = true
	}
	r.res.BlocksChecked++
	r.mu.Unlock()
	return nil
}
