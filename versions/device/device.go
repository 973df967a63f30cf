// Package device presents a stored version as a random-access block
// device, for 'backy nbd': reads verified block by block (as a restore
// verifies them), a block cache bounded in bytes with read-ahead for
// sequential access, and, unless read-only, a private copy-on-write
// overlay whose changes the caller can turn into a new version (Changes
// and Source feed the backup engine, with the served version as the base,
// so unchanged blocks are taken from it without being read). A durable
// overlay (Options.Durable, overlay.go) survives a crash as of its last
// Flush: Orphans finds it and OpenOrphan reopens it, so that flushed
// writes are never lost.
//
// The served version is share-locked while the device is open: it cannot
// be removed, so its blocks keep references and no cleanup deletes them.
// Blocks are read through package versions/blockread. A block that fails
// verification is never returned: the read fails (an I/O error to the
// client) and the block is marked invalid in the metastore at once, with
// every version using it, as a scrub does.
package device

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/internal/clock"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/metastore/blockmap"
	"github.com/backy/backy/versions/blockread"
	"github.com/backy/backy/versions/hints"
)

// Errors, tested with errors.Is.
var (
	// ErrReadOnly: a write to a read-only device.
	ErrReadOnly = errors.New("the device is read-only")
	// ErrRange: an access beyond the end of the device.
	ErrRange = errors.New("access beyond the end of the device")
	// ErrNotServable: the version is incomplete or being removed.
	ErrNotServable = errors.New("version cannot be served")
)

// BlockStore is what the device needs of a blockstore.Store.
type BlockStore interface {
	Get(ctx context.Context, rec block.Record, buf []byte) ([]byte, error)
}

// Options configures a device.
type Options struct {
	// ReadOnly refuses writes; otherwise they go to the overlay.
	ReadOnly bool
	// CacheBytes bounds the block cache (plaintext); 0 = 256 MiB.
	CacheBytes int64
	// ReadAhead is how many blocks are fetched ahead of a sequential
	// reader; 0 = 8, negative = none.
	ReadAhead int
	// OverlayDir holds the copy-on-write overlay; "" = os.TempDir().
	OverlayDir string
	// Durable makes the overlay survive a crash (overlay.go): named files
	// in OverlayDir with a journal of the changed blocks, made durable by
	// Flush, kept by Close unless Drop was called, found by Orphans.
	// Otherwise the overlay is an unlinked sparse temporary file, and a
	// crash loses it.
	Durable bool
	Logger  *slog.Logger
	// Clock stamps the durable overlay (OverlayInfo.Created, Saved);
	// clock.System when nil.
	Clock clock.Clock
}

// Device is one open version. It is safe for concurrent use.
type Device struct {
	db    *metastore.DB
	st    BlockStore
	v     *metastore.Version
	o     Options
	log   *slog.Logger
	lock  *metastore.Lock
	pages []blockmap.PageID
	bs    int64
	n     int64 // blocks

	pmu   sync.Mutex
	pageC map[int64]*pageData
	pLRU  *list.List // of int64 page index, most recent first

	cache *blockCache

	fmu      sync.Mutex
	inflight map[block.ID]*fetch
	ahead    chan struct{} // read-ahead slots
	lastRead int64         // last block index read (sequence detection)

	// Copy-on-write state, under wmu: the overlay file holds, at each
	// dirty block's offset, the block's current content.
	wmu     sync.RWMutex
	overlay *os.File
	dirty   []uint64 // bitset of blocks
	ndirty  int64
	gen     uint64 // counts blocks becoming dirty
	// dur is the durable overlay's state (nil if not durable); fl
	// serialises its flushes.
	dur *durable
	fl  sync.Mutex

	// damage records each damaged block at once (Batch 1): a server
	// runs for days, and the client has its I/O error now.
	damage *blockread.Recorder
	closed bool
}

type pageData struct {
	ids  []block.ID
	recs []block.Record
	elem *list.Element
}

type fetch struct {
	done chan struct{}
	data []byte
	err  error
}

// Open opens version uid of db as a device. The caller closes it.
func Open(ctx context.Context, db *metastore.DB, st BlockStore, uid string, o Options) (*Device, error) {
	return open(ctx, db, st, uid, o, nil)
}

// OpenOrphan opens the version an orphaned durable overlay was made on,
// with the overlay's changes (as of its last flush): a device like the
// session's when it ended, whose Changes and Source make the new version
// the session would have made. It fails if the version is gone
// (metastore.ErrVersionNotFound), cannot be served, or does not match the
// journal (ErrOverlay); the orphan then stays the caller's. On success
// the device owns the overlay: Drop and Close it once its changes are
// saved.
func OpenOrphan(ctx context.Context, db *metastore.DB, st BlockStore, orphan *Orphan, o Options) (*Device, error) {
	if orphan.Err != nil {
		return nil, orphan.Err
	}
	if orphan.f == nil {
		return nil, fmt.Errorf("%w: %s is closed", ErrOverlay, orphan.Path)
	}
	o.ReadOnly, o.Durable, o.OverlayDir = false, true, orphan.dir
	return open(ctx, db, st, orphan.Info.Version, o, orphan)
}

func open(ctx context.Context, db *metastore.DB, st BlockStore, uid string, o Options, orphan *Orphan) (*Device, error) {
	if o.CacheBytes <= 0 {
		o.CacheBytes = 256 << 20
	}
	if o.ReadAhead == 0 {
		o.ReadAhead = 8
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	o.Clock = clock.Or(o.Clock)
	lk, err := db.LockVersion(uid, metastore.Shared)
	if err != nil {
		return nil, err
	}
	d := &Device{db: db, st: st, o: o, log: o.Logger, lock: lk, pageC: map[int64]*pageData{}, pLRU: list.New(),
		inflight: map[block.ID]*fetch{}, lastRead: -2, damage: blockread.NewRecorder(db, 1)}
	ok := false
	defer func() {
		if !ok {
			d.release()
		}
	}()
	if d.v, err = db.Version(uid); err != nil {
		return nil, err
	}
	if d.v.Status == metastore.StatusIncomplete || d.v.Removing {
		return nil, fmt.Errorf("%w: %s is incomplete or being removed", ErrNotServable, uid)
	}
	if d.v.Status == metastore.StatusInvalid {
		d.log.Warn("serving an invalid version: reads of its damaged blocks fail", "version", uid)
	}
	if d.pages, err = db.PageList(uid); err != nil {
		return nil, err
	}
	d.bs, d.n = d.v.BlockSize, d.v.Blocks()
	if want := (d.n + blockmap.PageEntries - 1) / blockmap.PageEntries; int64(len(d.pages)) != want {
		return nil, fmt.Errorf("%w: version %s has %d map pages for %d blocks", metastore.ErrCorrupt, uid, len(d.pages), d.n)
	}
	d.cache = newBlockCache(o.CacheBytes)
	if o.ReadAhead > 0 {
		d.ahead = make(chan struct{}, o.ReadAhead)
	}
	switch {
	case orphan != nil:
		in := orphan.Info
		if d.v.Volume != in.Volume || d.v.Size != in.Size || d.v.BlockSize != in.BlockSize {
			return nil, fmt.Errorf("%w: %s is of version %s of volume %q, %d bytes in blocks of %d; the version is of %q, %d bytes in blocks of %d",
				ErrOverlay, orphan.Path, uid, in.Volume, in.Size, in.BlockSize, d.v.Volume, d.v.Size, d.v.BlockSize)
		}
		d.dur = &durable{dir: orphan.dir, name: orphan.name, info: in, savedGen: 1}
		d.overlay, orphan.f = orphan.f, nil
		d.dirty, d.ndirty, d.gen = orphan.dirty, in.Changed, 1
	case o.ReadOnly:
	case o.Durable:
		if o.OverlayDir == "" {
			return nil, errors.New("device: a durable overlay needs OverlayDir")
		}
		if err := d.createDurable(o.OverlayDir); err != nil {
			return nil, err
		}
		d.dirty = make([]uint64, (d.n+63)/64)
	default:
		dir := o.OverlayDir
		if dir == "" {
			dir = os.TempDir()
		} else if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("creating the copy-on-write overlay directory: %w", err)
		}
		f, err := os.CreateTemp(dir, ".backy-nbd-scratch-*")
		if err != nil {
			return nil, fmt.Errorf("creating the copy-on-write overlay: %w", err)
		}
		// Unlinked at once: it lives as long as the device, and a crash
		// leaves nothing behind.
		_ = os.Remove(f.Name())
		d.overlay = f
		// As large as the device, all hole: a punched block past the
		// last write reads as zeros, not as the end of the file.
		if err := f.Truncate(d.v.Size); err != nil {
			return nil, fmt.Errorf("sizing the copy-on-write overlay: %w", err)
		}
		d.dirty = make([]uint64, (d.n+63)/64)
	}
	ok = true
	return d, nil
}

// Version is the served version (as it was when opened).
func (d *Device) Version() *metastore.Version { return d.v }

// Size is the device's size in bytes.
func (d *Device) Size() int64 { return d.v.Size }

// BlockSize is the version's block size.
func (d *Device) BlockSize() int64 { return d.bs }

// ReadOnly reports whether writes are refused.
func (d *Device) ReadOnly() bool { return d.overlay == nil }

func (d *Device) blockLen(i int64) int64 { return min(d.bs, d.v.Size-i*d.bs) }

func (d *Device) check(off, n int64) error {
	if off < 0 || n < 0 || off > d.v.Size || n > d.v.Size-off {
		return fmt.Errorf("%w: %d bytes at %d of %d", ErrRange, n, off, d.v.Size)
	}
	return nil
}

// page returns the entries and records of map page p.
func (d *Device) page(p int64) (*pageData, error) {
	d.pmu.Lock()
	if pd, ok := d.pageC[p]; ok {
		d.pLRU.MoveToFront(pd.elem)
		d.pmu.Unlock()
		return pd, nil
	}
	d.pmu.Unlock()
	ids, err := d.db.Page(d.pages[p])
	if err != nil {
		return nil, err
	}
	look := make([]metastore.Lookup, len(ids))
	if err := d.db.LookupBlocks(ids, look); err != nil {
		return nil, err
	}
	pd := &pageData{ids: ids, recs: make([]block.Record, len(ids))}
	for i, l := range look {
		if !ids[i].IsSparse() && !l.Found {
			return nil, fmt.Errorf("%w: block %d of version %s (%s) has no record", metastore.ErrCorrupt, p*blockmap.PageEntries+int64(i), d.v.UID, ids[i].Short())
		}
		pd.recs[i] = l.Record
	}
	d.pmu.Lock()
	defer d.pmu.Unlock()
	if old, ok := d.pageC[p]; ok {
		return old, nil
	}
	pd.elem = d.pLRU.PushFront(p)
	d.pageC[p] = pd
	for d.pLRU.Len() > 64 {
		e := d.pLRU.Back()
		d.pLRU.Remove(e)
		delete(d.pageC, e.Value.(int64))
	}
	return pd, nil
}

// entry returns block i's identity and record.
func (d *Device) entry(i int64) (block.ID, block.Record, error) {
	pd, err := d.page(i / blockmap.PageEntries)
	if err != nil {
		return block.ID{}, block.Record{}, err
	}
	k := i % blockmap.PageEntries
	if k >= int64(len(pd.ids)) {
		return block.ID{}, block.Record{}, fmt.Errorf("%w: block %d of version %s is beyond its map", metastore.ErrCorrupt, i, d.v.UID)
	}
	return pd.ids[k], pd.recs[k], nil
}

// stored returns the verified plaintext of block i of the version (nil
// for a sparse block), through the cache.
func (d *Device) stored(ctx context.Context, i int64) ([]byte, error) {
	id, rec, err := d.entry(i)
	if err != nil || id.IsSparse() {
		return nil, err
	}
	if b, ok := d.cache.get(id); ok {
		return b, nil
	}
	return d.fetch(ctx, i, id, rec)
}

// fetch reads a block from the store, once however many readers want it.
func (d *Device) fetch(ctx context.Context, i int64, id block.ID, rec block.Record) ([]byte, error) {
	d.fmu.Lock()
	if f, ok := d.inflight[id]; ok {
		d.fmu.Unlock()
		select {
		case <-f.done:
			return f.data, f.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	f := &fetch{done: make(chan struct{})}
	d.inflight[id] = f
	d.fmu.Unlock()
	f.data, f.err = d.get(context.WithoutCancel(ctx), i, id, rec)
	if f.err == nil {
		d.cache.put(id, f.data)
	}
	d.fmu.Lock()
	delete(d.inflight, id)
	d.fmu.Unlock()
	close(f.done)
	return f.data, f.err
}

// get reads and verifies one block through the verified reader, which
// follows the record if a migration switched it to a new object since the
// page was read; damage is recorded.
func (d *Device) get(ctx context.Context, i int64, id block.ID, rec block.Record) ([]byte, error) {
	data, cur, err := blockread.Get(ctx, d.st, d.db, rec, make([]byte, 0, rec.Size))
	if cur.Name != rec.Name {
		d.forgetPage(i / blockmap.PageEntries) // it holds the old record
	}
	if blockread.IsDamage(err) {
		d.damage.Add(id)
		merr := d.damage.Flush()
		d.log.Error("a block of the served version is damaged; the client gets an I/O error, and the block is marked invalid",
			"version", d.v.UID, "block", i, "err", err, "invalid_versions", d.damage.Versions(), "mark_err", merr)
	}
	if err != nil {
		return nil, fmt.Errorf("block %d of version %s: %w", i, d.v.UID, err)
	}
	return data, nil
}

func (d *Device) forgetPage(p int64) {
	d.pmu.Lock()
	defer d.pmu.Unlock()
	if pd, ok := d.pageC[p]; ok {
		d.pLRU.Remove(pd.elem)
		delete(d.pageC, p)
	}
}

// Bad returns the blocks found damaged so far (each once, sorted).
func (d *Device) Bad() []block.ID {
	return d.damage.IDs()
}

// readAhead starts fetching the blocks after i when reads are sequential.
func (d *Device) readAhead(ctx context.Context, i int64) {
	if d.ahead == nil {
		return
	}
	d.fmu.Lock()
	seq := i == d.lastRead+1 || i == d.lastRead
	d.lastRead = i
	d.fmu.Unlock()
	if !seq {
		return
	}
	for j := i + 1; j <= min(i+int64(cap(d.ahead)), d.n-1); j++ {
		if d.isDirty(j) {
			continue
		}
		id, rec, err := d.entry(j)
		if err != nil || id.IsSparse() || d.cache.has(id) {
			continue
		}
		d.fmu.Lock()
		_, busy := d.inflight[id]
		d.fmu.Unlock()
		if busy {
			continue
		}
		select {
		case d.ahead <- struct{}{}:
		default:
			return // enough in flight
		}
		go func() {
			defer func() { <-d.ahead }()
			_, _ = d.fetch(context.WithoutCancel(ctx), j, id, rec)
		}()
	}
}

func (d *Device) isDirty(i int64) bool {
	if d.dirty == nil {
		return false
	}
	return d.dirty[i/64]&(1<<(i%64)) != 0
}

// ReadAt fills p with the device's content at off.
func (d *Device) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := d.check(off, int64(len(p))); err != nil {
		return err
	}
	d.wmu.RLock()
	defer d.wmu.RUnlock()
	for len(p) > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		i := off / d.bs
		in := off - i*d.bs
		n := min(int64(len(p)), d.blockLen(i)-in)
		if d.isDirty(i) {
			if _, err := d.overlay.ReadAt(p[:n], off); err != nil {
				return fmt.Errorf("reading the overlay: %w", err)
			}
		} else {
			data, err := d.stored(ctx, i)
			if err != nil {
				return err
			}
			if data == nil {
				clear(p[:n])
			} else {
				copy(p[:n], data[in:in+n])
			}
			d.readAhead(ctx, i)
		}
		p, off = p[n:], off+n
	}
	return nil
}

// makeDirty copies block i into the overlay before its first change
// (unless whole says the change covers it all). The caller holds wmu.
func (d *Device) makeDirty(ctx context.Context, i int64, whole bool) error {
	if d.isDirty(i) {
		return nil
	}
	if !whole {
		data, err := d.stored(ctx, i)
		if err != nil {
			return err
		}
		if data != nil {
			if _, err := d.overlay.WriteAt(data, i*d.bs); err != nil {
				return fmt.Errorf("writing the overlay: %w", err)
			}
		} else if err := d.punch(i*d.bs, d.blockLen(i)); err != nil {
			return err
		}
	}
	d.dirty[i/64] |= 1 << (i % 64)
	d.ndirty++
	d.gen++
	return nil
}

func (d *Device) punch(off, n int64) error {
	err := unix.Fallocate(int(d.overlay.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	if err != nil {
		// Without hole punching, write zeros.
		zero := make([]byte, min(n, 1<<20))
		for n > 0 {
			k := min(n, int64(len(zero)))
			if _, werr := d.overlay.WriteAt(zero[:k], off); werr != nil {
				return fmt.Errorf("zeroing the overlay: %w", werr)
			}
			off, n = off+k, n-k
		}
	}
	return nil
}

// modify applies fn to each block piece of [off, off+n) after making the
// block dirty.
func (d *Device) modify(ctx context.Context, off, n int64, fn func(off, n int64) error) error {
	if d.overlay == nil {
		return ErrReadOnly
	}
	if err := d.check(off, n); err != nil {
		return err
	}
	d.wmu.Lock()
	defer d.wmu.Unlock()
	for n > 0 {
		i := off / d.bs
		in := off - i*d.bs
		k := min(n, d.blockLen(i)-in)
		if err := d.makeDirty(ctx, i, in == 0 && k == d.blockLen(i)); err != nil {
			return err
		}
		if err := fn(off, k); err != nil {
			return err
		}
		off, n = off+k, n-k
	}
	return nil
}

// WriteAt writes p at off into the overlay.
func (d *Device) WriteAt(ctx context.Context, p []byte, off int64) error {
	start := off
	return d.modify(ctx, off, int64(len(p)), func(o, k int64) error {
		if _, err := d.overlay.WriteAt(p[o-start:o-start+k], o); err != nil {
			return fmt.Errorf("writing the overlay: %w", err)
		}
		return nil
	})
}

// Zero makes [off, off+n) read as zeros (punched in the overlay).
func (d *Device) Zero(ctx context.Context, off, n int64) error {
	return d.modify(ctx, off, n, d.punch)
}

// Trim discards [off, off+n): it reads as zeros afterwards.
func (d *Device) Trim(ctx context.Context, off, n int64) error { return d.Zero(ctx, off, n) }

// Extent is a run of the device's blocks that are all holes (sparse in
// the version, never written) or all data.
type Extent struct {
	Length int64
	Hole   bool
}

// Extents describes [off, off+n) as holes and data, at block granularity.
func (d *Device) Extents(ctx context.Context, off, n int64) ([]Extent, error) {
	if err := d.check(off, n); err != nil {
		return nil, err
	}
	d.wmu.RLock()
	defer d.wmu.RUnlock()
	var out []Extent
	for n > 0 {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		i := off / d.bs
		k := min(n, d.blockLen(i)-(off-i*d.bs))
		hole := false
		if !d.isDirty(i) {
			id, _, err := d.entry(i)
			if err != nil {
				return nil, err
			}
			hole = id.IsSparse()
		}
		if len(out) > 0 && out[len(out)-1].Hole == hole {
			out[len(out)-1].Length += k
		} else {
			out = append(out, Extent{Length: k, Hole: hole})
		}
		off, n = off+k, n-k
	}
	return out, nil
}

// Changed reports whether anything was written.
func (d *Device) Changed() bool {
	d.wmu.RLock()
	defer d.wmu.RUnlock()
	return d.ndirty > 0
}

// Changes returns the changed blocks as extents, for a backup with the
// served version as its base.
func (d *Device) Changes() []hints.Extent {
	d.wmu.RLock()
	defer d.wmu.RUnlock()
	out := []hints.Extent{}
	for i := int64(0); i < d.n; i++ {
		if !d.isDirty(i) {
			continue
		}
		off, n := i*d.bs, d.blockLen(i)
		if k := len(out); k > 0 && out[k-1].Offset+out[k-1].Length == off {
			out[k-1].Length += n
			continue
		}
		out = append(out, hints.Extent{Offset: off, Length: n, Exists: true})
	}
	return out
}

// Source is the device's current content as a backup source.
func (d *Device) Source(ctx context.Context) *Source { return &Source{ctx: ctx, d: d} }

// Source reads the device for the backup engine (versions/source.Source).
type Source struct {
	ctx context.Context
	d   *Device
}

// ReadAt implements io.ReaderAt.
func (s *Source) ReadAt(p []byte, off int64) (int, error) {
	if err := s.d.ReadAt(s.ctx, p, off); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Size is the device's size.
func (s *Source) Size() int64 { return s.d.Size() }

// Name describes the source.
func (s *Source) Name() string { return "nbd session of " + s.d.v.UID }

// Close does nothing: the device is closed by its owner.
func (s *Source) Close() error { return nil }

// Close releases the version and the overlay. A durable overlay with
// changes is flushed and kept unless Drop was called (Orphans finds it);
// otherwise the overlay is removed.
func (d *Device) Close() error {
	d.fl.Lock() // no Flush meanwhile (it takes fl, then wmu)
	defer d.fl.Unlock()
	d.wmu.Lock()
	defer d.wmu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	var err error
	if u := d.dur; u != nil {
		if u.dropped || d.ndirty == 0 {
			err = u.remove()
		} else {
			err = d.flushDurable(d.dirty, d.gen)
		}
	}
	if d.overlay != nil {
		if cerr := d.overlay.Close(); err == nil {
			err = cerr
		}
	}
	d.lock.Unlock()
	return err
}

// release undoes a failed open: a new durable overlay is removed, an
// orphan's is left as it was (open takes it only once all checks passed).
func (d *Device) release() {
	d.closed = true
	if d.dur != nil && d.gen == 0 {
		_ = d.dur.remove()
	}
	if d.overlay != nil {
		_ = d.overlay.Close()
	}
	d.lock.Unlock()
}

// blockCache is an LRU of block plaintexts bounded in bytes.
type blockCache struct {
	mu    sync.Mutex
	max   int64
	size  int64
	lru   *list.List // of *cacheEntry, most recent first
	items map[block.ID]*list.Element
}

type cacheEntry struct {
	id   block.ID
	data []byte
}

func newBlockCache(max int64) *blockCache {
	return &blockCache{max: max, lru: list.New(), items: map[block.ID]*list.Element{}}
}

func (c *blockCache) get(id block.ID) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.items[id]
	if !ok {
		return nil, false
	}
	c.lru.MoveToFront(e)
	return e.Value.(*cacheEntry).data, true
}

func (c *blockCache) has(id block.ID) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.items[id]
	return ok
}

func (c *blockCache) put(id block.ID, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.items[id]; ok || int64(len(data)) > c.max {
		return
	}
	c.items[id] = c.lru.PushFront(&cacheEntry{id, data})
	c.size += int64(len(data))
	for c.size > c.max {
		e := c.lru.Back()
		ce := e.Value.(*cacheEntry)
		c.lru.Remove(e)
		delete(c.items, ce.id)
		c.size -= int64(len(ce.data))
	}
}
