package backup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"time"

	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/internal/clock"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/metastore/blockmap"
	"github.com/backy/backy/versions"
	"github.com/backy/backy/versions/hints"
	"github.com/backy/backy/versions/mapwriter"
	"github.com/backy/backy/versions/source"
)

// Errors of Run, tested with errors.Is.
var (
	// ErrSanity: blocks outside the hints differ from the base version.
	ErrSanity = errors.New("source differs from the base version outside the hints")
	// ErrBadBase: the --from version cannot serve as a base.
	ErrBadBase = errors.New("unusable base version")
	// ErrBadResume: the version to resume cannot be resumed.
	ErrBadResume = errors.New("cannot resume version")
	// ErrSourceChanged: the source changed while it was being read.
	ErrSourceChanged = errors.New("source changed during the backup")
	// ErrInput: invalid arguments (empty volume name, ...).
	ErrInput = errors.New("invalid backup request")
	// ErrEmptyHints: hints without a base name no data at all, which would
	// make an all-zero version (see Options.AllowEmptyHints).
	ErrEmptyHints = errors.New("the hints name no data")
)

// BlockStore is what the engine needs of a blockstore.Store: what the
// map writer stores blocks through.
type BlockStore = mapwriter.Store

// Options describes one backup.
type Options struct {
	Volume   string
	Snapshot string
	Labels   map[string]string
	// Base is the --from version; with Hints, unhinted blocks are taken
	// from it without reading.
	Base *metastore.Version
	// Hints, when non-nil, are the changed extents since Base (or, without
	// Base, every allocated extent: unhinted regions are zero).
	Hints []hints.Extent
	// AllowEmptyHints accepts Hints without a Base that name no data (no
	// exists=true extent): the version is then all zeros. Without it Run
	// refuses them with ErrEmptyHints, as an empty or truncated hints file
	// would otherwise silently make a "valid" empty image. With a Base,
	// empty hints mean "nothing changed" and are always accepted.
	AllowEmptyHints bool
	// Resume names an incomplete version to finish instead of a new one.
	Resume string
	// Workers hash and store blocks in parallel; 0 = GOMAXPROCS + 4.
	Workers int
	// CommitInterval is the longest time between metastore commits; 0 = 2 s.
	CommitInterval time.Duration
	// SanityBlocks is the least number of unhinted blocks re-read and
	// compared with the base (at least 0.1% are); 0 = 10.
	SanityBlocks int
	// Progress, when set, is called from one goroutine after each block.
	Progress func(Progress)
	Logger   *slog.Logger
	// Clock dates the version and times its commits and duration;
	// clock.System when nil.
	Clock clock.Clock
	// Rand seeds the sanity sample; nil = random.
	Rand *rand.Rand
}

// Progress reports a running backup.
type Progress struct {
	Done, Total  int64 // bytes of the source covered so far, and in all
	BytesRead    int64
	BytesWritten int64
}

type jobKind uint8

const (
	kindRead   jobKind = iota // data in buf
	kindSparse                // known zero, not read
	kindBase                  // entry taken from the base version
	kindPage                  // a whole page taken from the base version
)

type job struct {
	idx  int64
	kind jobKind
	buf  *[]byte
	n    int
	id   block.ID        // kindBase
	page blockmap.PageID // kindPage
	ents []block.ID      // kindPage: the page's entries
}

type engine struct {
	st     BlockStore
	db     *metastore.DB
	src    source.Source
	watch  *watched // src, watched for changes while it is read
	o      Options
	bs     int64
	size   int64
	nBlk   int64
	hmap   *hints.Map
	base   *metastore.Version
	basePg []blockmap.PageID
	v      *metastore.Version
	log    *slog.Logger
	// start is when this run began; prevDuration the time earlier runs
	// spent on a resumed version.
	start        time.Time
	prevDuration float64
	w            *mapwriter.Writer[job]
	rbuf         []byte // refetch's buffer
}

func (o *Options) now() time.Time { return clock.Or(o.Clock).Now() }

func (o *Options) since(t time.Time) time.Duration { return clock.Or(o.Clock).Since(t) }

// Run backs up src into a new version (or finishes o.Resume) and returns
// the version, valid, once every block and the map are durable.
func Run(ctx context.Context, st BlockStore, db *metastore.DB, src source.Source, o Options) (*metastore.Version, error) {
	e := &engine{st: st, db: db, src: src, o: o, bs: db.BlockSize(), size: src.Size()}
	e.log = o.Logger
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	e.nBlk = (e.size + e.bs - 1) / e.bs
	if o.Workers <= 0 {
		e.o.Workers = runtime.GOMAXPROCS(0) + 4
	}
	if o.CommitInterval <= 0 {
		e.o.CommitInterval = 2 * time.Second
	}
	if o.SanityBlocks <= 0 {
		e.o.SanityBlocks = 10
	}
	if o.Resume == "" {
		// The names go into the version's metadata in the data backend:
		// one it cannot hold must not be committed.
		if err := versions.ValidateNames(o.Volume, o.Snapshot, o.Labels); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInput, err)
		}
	}
	if o.Hints != nil && o.Base == nil && !o.AllowEmptyHints && e.size > 0 && !hints.HasData(o.Hints) {
		return nil, fmt.Errorf("%w (no extent with exists=true): without a base version the backup of %s would be all zeros", ErrEmptyHints, src.Name())
	}
	if o.Hints != nil {
		e.hmap = hints.NewMap(o.Hints, e.bs, e.size)
	}
	// Objects stored but not committed are debris only once no writer
	// holds this lock ('cleanup --orphans' takes it exclusively).
	wlk, err := db.LockWriter(func(err error) { e.log.Warn("waiting for the writers lock", "reason", err) })
	if err != nil {
		return nil, err
	}
	defer wlk.Unlock()
	// From here on, every read is of the image being backed up: watch it
	// change (checked before the version becomes valid).
	w, err := watch(src)
	if err != nil {
		return nil, err
	}
	e.src, e.watch = w, w
	if o.Base != nil {
		lk, err := e.useBase(o.Base)
		if err != nil {
			return nil, err
		}
		defer lk.Unlock()
		if e.hmap != nil {
			if err := e.sanityCheck(ctx); err != nil {
				return nil, err
			}
		}
	}
	e.start = o.now()
	lk, firstPage, err := e.openVersion()
	if err != nil {
		return nil, err
	}
	defer lk.Unlock()
	e.prevDuration = e.v.DurationSeconds
	e.log.Info("backup started", "version", e.v.UID, "volume", e.v.Volume, "source", src.Name(), "size", e.size, "resume_page", firstPage)
	if err := e.pipeline(ctx, firstPage); err != nil {
		return e.v, err
	}
	return e.v, nil
}

// useBase validates and read-locks the base version.
func (e *engine) useBase(b *metastore.Version) (*metastore.Lock, error) {
	switch {
	case b.Removing:
		// Gone for every purpose: the removal may be finished any time.
		return nil, fmt.Errorf("%w: %w: %s is being removed", ErrBadBase, metastore.ErrVersionNotFound, b.UID)
	case e.o.Resume == "" && b.Volume != e.o.Volume:
		return nil, fmt.Errorf("%w: %s belongs to volume %q, not %q", ErrBadBase, b.UID, b.Volume, e.o.Volume)
	case b.Status != metastore.StatusValid:
		return nil, fmt.Errorf("%w: %s is %s; only a valid version can be a base", ErrBadBase, b.UID, b.Status)
	case b.BlockSize != e.bs:
		return nil, fmt.Errorf("%w: %s has block size %d, the store uses %d", ErrBadBase, b.UID, b.BlockSize, e.bs)
	}
	lk, err := e.db.LockVersion(b.UID, metastore.Shared)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadBase, err)
	}
	// Re-read under the lock: it may have changed or gone meanwhile.
	cur, err := e.db.Version(b.UID)
	if err == nil && cur.Removing {
		err = fmt.Errorf("%w: %w: %s is being removed", ErrBadBase, metastore.ErrVersionNotFound, b.UID)
	}
	if err == nil && cur.Status != metastore.StatusValid {
		err = fmt.Errorf("%w: %s is %s", ErrBadBase, b.UID, cur.Status)
	}
	if err == nil {
		e.basePg, err = e.db.PageList(b.UID)
	}
	if err != nil {
		lk.Unlock()
		return nil, err
	}
	e.base = cur
	return lk, nil
}

// blockLen is the length of block i of a source of size bytes.
func blockLen(i, bs, size int64) int64 { return min(bs, size-i*bs) }

// fromBase reports whether block i may be taken from the base version: the
// base has the block, with the same length.
func (e *engine) fromBase(i int64) bool {
	if e.base == nil {
		return false
	}
	nb := e.base.Blocks()
	return i < nb && blockLen(i, e.bs, e.base.Size) == blockLen(i, e.bs, e.size)
}

// pageFromBase reports whether page p may be taken from the base whole.
func (e *engine) pageFromBase(p int64) bool {
	if e.base == nil || e.hmap == nil || p >= int64(len(e.basePg)) {
		return false
	}
	first := p * blockmap.PageEntries
	last := min(first+blockmap.PageEntries, e.nBlk)
	if e.hmap.Touched(first, last) {
		return false
	}
	if e.base.Size == e.size {
		return true
	}
	end := (p + 1) * blockmap.PageEntries * e.bs
	return end <= e.base.Size && end <= e.size
}

// openVersion creates the new version, or checks and locks the one to
// resume. It returns the page to start from.
func (e *engine) openVersion() (*metastore.Lock, int64, error) {
	if e.o.Resume != "" {
		lk, err := e.db.LockVersion(e.o.Resume, metastore.Exclusive)
		if err != nil {
			return nil, 0, fmt.Errorf("%w %s: %w", ErrBadResume, e.o.Resume, err)
		}
		v, err := e.db.Version(e.o.Resume)
		switch {
		case err != nil:
		case v.Removing:
			err = fmt.Errorf("%w %s: it is being removed (a removal that was cut short), not an interrupted backup: 'backy rm %s', 'backy enforce' or 'backy cleanup' finishes the removal; back up again for a new version",
				ErrBadResume, v.UID, v.UID)
		case v.Status != metastore.StatusIncomplete:
			err = fmt.Errorf("%w %s: it is %s, only an incomplete version can be resumed", ErrBadResume, v.UID, v.Status)
		case v.Labels[LabelSourceChanged] != "":
			err = fmt.Errorf("%w %s: its source changed while it was read (label %s=%s), so what it holds is no consistent image; remove it with 'backy rm %s' and back up a snapshot of the source",
				ErrBadResume, v.UID, LabelSourceChanged, v.Labels[LabelSourceChanged], v.UID)
		case v.Size != e.size:
			err = fmt.Errorf("%w %s: it was a backup of %d bytes, the source has %d", ErrBadResume, v.UID, v.Size, e.size)
		case v.BlockSize != e.bs:
			err = fmt.Errorf("%w %s: block size %d differs from the store's %d", ErrBadResume, v.UID, v.BlockSize, e.bs)
		case e.o.Volume != "" && v.Volume != e.o.Volume:
			err = fmt.Errorf("%w %s: it belongs to volume %q, not %q", ErrBadResume, v.UID, v.Volume, e.o.Volume)
		case v.Base != "" && (e.base == nil || e.base.UID != v.Base):
			err = fmt.Errorf("%w %s: it was started with --from %s; give the same base", ErrBadResume, v.UID, v.Base)
		case v.Base == "" && e.base != nil:
			err = fmt.Errorf("%w %s: it was started without --from; resume it without one", ErrBadResume, v.UID)
		}
		if err != nil {
			lk.Unlock()
			return nil, 0, err
		}
		e.v = v
		return lk, v.BlocksDone / blockmap.PageEntries, nil
	}
	uid, err := metastore.NewUID(e.o.now())
	if err != nil {
		return nil, 0, err
	}
	lk, err := e.db.LockVersion(uid, metastore.Exclusive)
	if err != nil {
		return nil, 0, err
	}
	labels := map[string]string{}
	for k, v := range e.o.Labels {
		labels[k] = v
	}
	e.v = &metastore.Version{
		UID: uid, Volume: e.o.Volume, Snapshot: e.o.Snapshot, Date: e.o.now().UTC().Truncate(time.Second),
		Size: e.size, BlockSize: e.bs, Status: metastore.StatusIncomplete, Labels: labels,
	}
	if e.base != nil {
		e.v.Base = e.base.UID
	}
	if err := e.db.CreateVersion(e.v); err != nil {
		lk.Unlock()
		return nil, 0, err
	}
	return lk, 0, nil
}

// readBlock reads block i into buf, which has room for a whole block.
func (e *engine) readBlock(i int64, buf []byte) ([]byte, error) {
	n := blockLen(i, e.bs, e.size)
	got, err := e.src.ReadAt(buf[:n], i*e.bs)
	if int64(got) == n {
		return buf[:n], nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = fmt.Errorf("%w: %s ended at byte %d, expected %d", ErrSourceChanged, e.src.Name(), i*e.bs+int64(got), i*e.bs+n)
	}
	return nil, err
}

// sanityCheck re-reads a random sample of the blocks that the hints say
// are unchanged and compares them with the base version.
func (e *engine) sanityCheck(ctx context.Context) error {
	rng := e.o.Rand
	if rng == nil {
		rng = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	}
	var eligible int64
	var sample []int64
	want := e.o.SanityBlocks
	if k := int(e.nBlk / 1000); k > want {
		want = k
	}
	for i := int64(0); i < e.nBlk; i++ {
		if e.hmap.Class(i) != hints.Untouched || !e.fromBase(i) {
			continue
		}
		eligible++
		if len(sample) < want {
			sample = append(sample, i)
		} else if j := rng.Int64N(eligible); j < int64(want) {
			sample[j] = i
		}
	}
	if len(sample) == 0 {
		return nil
	}
	buf := make([]byte, e.bs)
	var pageIdx int64 = -1
	var entries []block.ID
	mismatches := 0
	var first int64 = -1
	// In block order, so each base page is read once.
	slicesSort(sample)
	for _, i := range sample {
		if err := ctx.Err(); err != nil {
			return err
		}
		if p := i / blockmap.PageEntries; p != pageIdx {
			var err error
			if entries, err = e.db.Page(e.basePg[p]); err != nil {
				return err
			}
			pageIdx = p
		}
		data, err := e.readBlock(i, buf)
		if err != nil {
			return err
		}
		id := block.Sparse
		if !block.IsZero(data) {
			id = block.Sum(data)
		}
		if id != entries[i%blockmap.PageEntries] {
			mismatches++
			if first < 0 {
				first = i
			}
		}
	}
	e.log.Info("hints sanity check", "sampled", len(sample), "mismatches", mismatches)
	if mismatches > 0 {
		return fmt.Errorf("%w: %d of %d sampled unhinted blocks differ from %s (first: block %d at byte %d); the hints do not describe the changes since the base",
			ErrSanity, mismatches, len(sample), e.base.UID, first, first*e.bs)
	}
	return nil
}

func slicesSort(s []int64) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}
