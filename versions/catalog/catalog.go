// Package catalog keeps a copy of every complete version's metadata in the
// data backend, beside its blocks, so that the backend alone is enough to
// get every version back (backy rebuild-metastore, restore --from-backend)
// and so that cleanup knows the blocks of versions the metastore does not.
//
// # Snapshots
//
// A version's metadata is one stream in the format of package manifest
// (the version object, its block map and the records of its blocks, the
// store's key registrations), cut into chunks of at most ChunkSize bytes,
// each sealed as a metadata object (blockstore.Store.PutMeta: compressed,
// and encrypted and authenticated when encryption is on) under
//
//	versions/<uid>/<gen>-<tag>/<seq>
//
// uid in lower case, gen the metastore generation the snapshot was made
// at (16 hex digits), tag 8 random hex digits, seq the chunk number (8 hex
// digits, from 0). A snapshot is complete when its chunks, read in order,
// form a stream whose trailer verifies; a writer killed mid-way leaves an
// incomplete one, which readers skip. For each version the metastore
// records the snapshot it wrote last (metastore.SetSnapshot) and which
// versions changed since (metastore.PendingSnapshots); Sync writes those.
// Older snapshots of a version are deleted after a newer one is recorded.
package catalog

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sync/errgroup"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/blockstore/backend"
	"github.com/backy/backy/blockstore/object"
	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/versions/manifest"
)

// Prefix is the prefix of every snapshot object's name.
const Prefix = "versions/"

// ChunkSize is the largest plaintext of one snapshot object.
const ChunkSize = 4 << 20

// ErrNoSnapshot: the backend holds no complete snapshot of a version.
var ErrNoSnapshot = errors.New("no metadata of the version in the backend")

// Catalog reads and writes version snapshots through a block store.
type Catalog struct {
	st        *blockstore.Store
	be        backend.Backend
	log       *slog.Logger
	writtenBy string
}

// New returns a catalog over st. writtenBy names the writing program in
// the snapshots ("backy 1.2.3").
func New(st *blockstore.Store, writtenBy string, log *slog.Logger) *Catalog {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Catalog{st: st, be: st.Backend(), log: log, writtenBy: writtenBy}
}

// Ref names one snapshot in the backend.
type Ref struct {
	UID string
	Gen uint64
	Tag uint32
	// Chunks counts the chunk objects listed, Size their stored bytes.
	Chunks int
	Size   int64
	// Contiguous reports that the chunks are numbered 0..Chunks-1.
	Contiguous bool
}

// Dir is the name prefix of the snapshot's objects.
func (r Ref) Dir() string { return snapshotDir(r.UID, r.Gen, r.Tag) }

func uidDir(uid string) string { return Prefix + strings.ToLower(uid) + "/" }

func snapshotDir(uid string, gen uint64, tag uint32) string {
	return fmt.Sprintf("%s%016x-%08x/", uidDir(uid), gen, tag)
}

func chunkName(dir string, seq int) string { return fmt.Sprintf("%s%08x", dir, seq) }

// parseName splits a snapshot object name.
func parseName(name string) (uid string, gen uint64, tag uint32, seq int, ok bool) {
	rest, found := strings.CutPrefix(name, Prefix)
	if !found {
		return
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 3 || len(parts[1]) != 25 || parts[1][16] != '-' || len(parts[2]) != 8 {
		return
	}
	uid = "V" + strings.TrimPrefix(parts[0], "v")
	if !metastore.ValidUID(uid) || strings.ToLower(uid) != parts[0] {
		return "", 0, 0, 0, false
	}
	g, err1 := strconv.ParseUint(parts[1][:16], 16, 64)
	t, err2 := strconv.ParseUint(parts[1][17:], 16, 32)
	s, err3 := strconv.ParseUint(parts[2], 16, 31)
	if err1 != nil || err2 != nil || err3 != nil || g == 0 {
		return "", 0, 0, 0, false
	}
	return uid, g, uint32(t), int(s), true
}

// List returns the snapshots in the backend by version uid, newest first.
func (c *Catalog) List(ctx context.Context) (map[string][]Ref, error) {
	return c.list(ctx, Prefix)
}

// ListVersion returns the snapshots of one version, newest first.
func (c *Catalog) ListVersion(ctx context.Context, uid string) ([]Ref, error) {
	m, err := c.list(ctx, uidDir(uid))
	return m[uid], err
}

func (c *Catalog) list(ctx context.Context, prefix string) (map[string][]Ref, error) {
	type key struct {
		uid string
		gen uint64
		tag uint32
	}
	found := map[key]*Ref{}
	maxSeq := map[key]int{}
	err := c.be.List(ctx, prefix, func(info backend.Info) error {
		uid, gen, tag, seq, ok := parseName(info.Name)
		if !ok {
			c.log.Debug("ignoring an object under versions/ that backy does not write", "object", info.Name)
			return nil
		}
		k := key{uid, gen, tag}
		r := found[k]
		if r == nil {
			r = &Ref{UID: uid, Gen: gen, Tag: tag}
			found[k] = r
			maxSeq[k] = -1
		}
		r.Chunks++
		r.Size += info.Size
		maxSeq[k] = max(maxSeq[k], seq)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing version metadata in the backend: %w", err)
	}
	out := map[string][]Ref{}
	for k, r := range found {
		r.Contiguous = maxSeq[k] == r.Chunks-1
		out[k.uid] = append(out[k.uid], *r)
	}
	for _, refs := range out {
		sort.Slice(refs, func(i, j int) bool {
			if refs[i].Gen != refs[j].Gen {
				return refs[i].Gen > refs[j].Gen
			}
			return refs[i].Tag > refs[j].Tag
		})
	}
	return out, nil
}

// Open returns the stream of snapshot r: its chunks' plaintexts in order.
// Damage shows as a read error or as a stream manifest refuses.
func (c *Catalog) Open(ctx context.Context, r Ref) io.Reader {
	return &chunkReader{ctx: ctx, c: c, dir: r.Dir(), n: r.Chunks}
}

type chunkReader struct {
	ctx  context.Context
	c    *Catalog
	dir  string
	n    int // chunks listed
	next int
	buf  []byte
	rest []byte
	err  error
}

func (r *chunkReader) Read(p []byte) (int, error) {
	for len(r.rest) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		if r.next >= r.n {
			r.err = io.EOF
			return 0, io.EOF
		}
		plain, err := r.c.st.GetMeta(r.ctx, chunkName(r.dir, r.next), r.buf[:0])
		if err != nil {
			r.err = err
			return 0, err
		}
		r.buf, r.rest = plain, plain
		r.next++
	}
	n := copy(p, r.rest)
	r.rest = r.rest[n:]
	return n, nil
}

// chunkWriter cuts a stream into sealed chunk objects.
type chunkWriter struct {
	ctx   context.Context
	c     *Catalog
	dir   string
	buf   []byte
	seq   int
	bytes int64 // stored bytes written
}

func (w *chunkWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		take := min(len(p), ChunkSize-len(w.buf))
		w.buf = append(w.buf, p[:take]...)
		p = p[take:]
		if len(w.buf) == ChunkSize {
			if err := w.flush(); err != nil {
				return 0, err
			}
		}
	}
	return n, nil
}

func (w *chunkWriter) flush() error {
	if len(w.buf) == 0 {
		return nil
	}
	if err := w.c.st.PutMeta(w.ctx, chunkName(w.dir, w.seq), w.buf); err != nil {
		return err
	}
	w.seq++
	w.bytes += int64(len(w.buf))
	w.buf = w.buf[:0]
	return nil
}

// StoreInfo returns the manifest store description and key registrations
// of db.
func StoreInfo(db *metastore.DB, writtenBy string) (manifest.StoreInfo, []manifest.KeyReg, error) {
	regs, err := db.EncVersions()
	if err != nil {
		return manifest.StoreInfo{}, nil, err
	}
	var keys []manifest.KeyReg
	for v, reg := range regs {
		keys = append(keys, manifest.KeyReg{EncVersion: v, Registration: reg})
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].EncVersion < keys[j].EncVersion })
	return manifest.StoreInfo{StoreID: db.StoreID(), BlockSize: db.BlockSize(), WrittenBy: writtenBy}, keys, nil
}

// WriteVersion writes version v (read from db) as one manifest stream to
// w. The caller holds the version's lock, so its map does not change.
func WriteVersion(mw *manifest.Writer, db *metastore.DB, v *metastore.Version) error {
	if v.BlocksDone > v.Blocks() {
		// Backups before 2026-11-22 counted a reused short last page as
		// full; the map holds the right number of entries.
		c := *v
		c.BlocksDone = v.Blocks()
		v = &c
	}
	if err := mw.BeginVersion(v); err != nil {
		return err
	}
	err := db.WalkMap(v.UID, func(ch metastore.MapChunk) error {
		for i, ok := range ch.Found {
			if !ok {
				return fmt.Errorf("%w: block %d of version %s (%s) has no record; run 'backy scrub %s'",
					metastore.ErrCorrupt, ch.First+int64(i), v.UID, ch.IDs[i].Short(), v.UID)
			}
		}
		return mw.Page(ch.IDs, ch.Records)
	})
	if err != nil {
		return err
	}
	return mw.EndVersion()
}

// Written describes one snapshot written.
type Written struct {
	Ref
	// StreamBytes is the plaintext size of the metadata stream.
	StreamBytes int64
}

// Write writes a snapshot of version uid, records it in db and deletes
// the version's older snapshots. It locks the version shared, so it
// fails with metastore.ErrLocked while the version is written or removed.
// An incomplete version, or one being removed, is skipped (nil, nil), and
// so is a snapshot that another writer overtook (it recorded one at least
// as new meanwhile; this one is deleted again).
func (c *Catalog) Write(ctx context.Context, db *metastore.DB, uid string) (*Written, error) {
	lk, err := db.LockVersion(uid, metastore.Shared)
	if err != nil {
		return nil, err
	}
	defer lk.Unlock()
	v, gen, err := db.SnapshotVersion(uid)
	if err != nil {
		return nil, err
	}
	if v.Status == metastore.StatusIncomplete || v.Removing {
		return nil, nil
	}
	if gen == 0 {
		gen = 1
	}
	var tb [4]byte
	if _, err := rand.Read(tb[:]); err != nil {
		return nil, err
	}
	tag := binary.BigEndian.Uint32(tb[:])
	info, keys, err := StoreInfo(db, c.writtenBy)
	if err != nil {
		return nil, err
	}
	dir := snapshotDir(uid, gen, tag)
	cw := &chunkWriter{ctx: ctx, c: c, dir: dir, buf: make([]byte, 0, ChunkSize)}
	mw, err := manifest.NewWriter(cw, info, keys)
	if err == nil {
		err = WriteVersion(mw, db, v)
	}
	if err == nil {
		err = mw.Close()
	}
	if err == nil {
		err = cw.flush()
	}
	if err == nil {
		err = backend.Sync(ctx, c.be)
	}
	if err != nil {
		c.deleteDir(ctx, dir, cw.seq+1)
		return nil, fmt.Errorf("writing the metadata of version %s to the backend: %w", uid, err)
	}
	recorded, err := db.SetSnapshot(uid, gen, tag)
	if err != nil {
		return nil, err
	}
	if !recorded {
		// Another writer (a concurrent Sync, holding the version shared
		// too) recorded a snapshot at least as new meanwhile: this one
		// is redundant, and must not delete that one.
		c.deleteDir(ctx, dir, cw.seq)
		c.log.Debug("a newer snapshot of the version was recorded meanwhile; dropped this one", "version", uid, "gen", gen)
		return nil, nil
	}
	c.log.Debug("wrote version metadata", "version", uid, "gen", gen, "chunks", cw.seq, "bytes", mw.Written())
	w := &Written{Ref: Ref{UID: uid, Gen: gen, Tag: tag, Chunks: cw.seq, Contiguous: true}, StreamBytes: mw.Written()}
	refs, err := c.ListVersion(ctx, uid)
	if err != nil {
		return w, err
	}
	var first error
	for _, r := range refs {
		switch {
		case r.Gen == gen && r.Tag == tag:
			w.Size = r.Size
		case r.Gen <= gen:
			if err := c.deleteRef(ctx, r); err != nil && first == nil {
				first = err
			}
		}
	}
	return w, first
}

// deleteDir deletes chunks 0..n-1 of a snapshot that failed to be written
// (best effort: what stays is an incomplete snapshot, which readers skip
// and the next snapshot of the version deletes).
func (c *Catalog) deleteDir(ctx context.Context, dir string, n int) {
	for i := range n {
		if err := c.be.Delete(context.WithoutCancel(ctx), chunkName(dir, i)); err != nil && !errors.Is(err, backend.ErrNotFound) {
			c.log.Debug("could not delete a chunk of an incomplete snapshot", "object", chunkName(dir, i), "err", err)
		}
	}
}

// deleteRef deletes every object of snapshot r.
func (c *Catalog) deleteRef(ctx context.Context, r Ref) error {
	var names []string
	err := c.be.List(ctx, r.Dir(), func(info backend.Info) error {
		names = append(names, info.Name)
		return nil
	})
	if err != nil {
		return err
	}
	for _, n := range names {
		if err := c.be.Delete(ctx, n); err != nil && !errors.Is(err, backend.ErrNotFound) {
			return fmt.Errorf("deleting old version metadata %s: %w", n, err)
		}
	}
	return nil
}

// Delete deletes every snapshot of version uid (backy rm, before the
// metastore forgets the version).
func (c *Catalog) Delete(ctx context.Context, uid string) error {
	refs, err := c.ListVersion(ctx, uid)
	if err != nil {
		return err
	}
	for _, r := range refs {
		if err := c.deleteRef(ctx, r); err != nil {
			return fmt.Errorf("deleting the metadata of version %s from the backend: %w", uid, err)
		}
	}
	return nil
}

// SyncResult counts what Sync did.
type SyncResult struct {
	Written int   `json:"written"`
	Bytes   int64 `json:"bytes"`
	// Busy counts versions skipped because another process held them.
	Busy int `json:"busy"`
	// WrittenUIDs are the versions whose snapshot was written.
	WrittenUIDs []string `json:"-"`
	// Failed are the versions whose snapshot could not be written; they
	// stay pending for the next Sync.
	Failed []SyncFailure `json:"-"`
}

// SyncFailure is a version whose snapshot Sync could not write.
type SyncFailure struct {
	UID string
	Err error
}

// ErrSync: Sync could not write the snapshot of some versions.
var ErrSync = errors.New("writing version metadata to the data backend failed")

// Sync writes the snapshot of every version whose snapshot is missing or
// stale, oldest first. Versions another process holds (a backup, a
// removal) are left for a later Sync. A version whose snapshot cannot be
// written (its metadata breaks a rule of the format, a damaged map, an
// object the backend refuses) is listed in SyncResult.Failed and the
// others are written all the same, so one bad version never keeps the
// others' metadata out of the backend. A failure that would fail every
// other version too (the backend unreachable, access denied, a missing
// key) or cancellation stops it; the versions not reached stay pending.
// The error, if any, wraps ErrSync and names every failed version (and
// wraps each cause).
func (c *Catalog) Sync(ctx context.Context, db *metastore.DB) (SyncResult, error) {
	var res SyncResult
	uids, err := db.PendingSnapshots()
	if err != nil {
		return res, err
	}
	for _, uid := range uids {
		if err := ctx.Err(); err != nil {
			res.Failed = append(res.Failed, SyncFailure{UID: uid, Err: err})
			break
		}
		w, err := c.Write(ctx, db, uid)
		switch {
		case errors.Is(err, metastore.ErrLocked) || errors.Is(err, metastore.ErrVersionNotFound):
			res.Busy++
			continue
		case err != nil && w == nil:
			res.Failed = append(res.Failed, SyncFailure{UID: uid, Err: err})
			if stopsSync(ctx, err) {
				return res, syncError(res.Failed)
			}
			c.log.Debug("could not write the metadata of a version; going on with the others", "version", uid, "err", err)
			continue
		}
		if w != nil {
			res.Written++
			res.Bytes += w.Size
			res.WrittenUIDs = append(res.WrittenUIDs, uid)
		}
		if err != nil {
			c.log.Warn("could not delete an old snapshot of version metadata (the next one retries)", "version", uid, "err", err)
		}
	}
	if len(res.Failed) > 0 {
		return res, syncError(res.Failed)
	}
	return res, nil
}

// stopsSync reports whether a failed write of one version's snapshot
// would fail the other versions' too.
func stopsSync(ctx context.Context, err error) bool {
	return ctx.Err() != nil || errors.Is(err, backend.ErrUnavailable) || errors.Is(err, fs.ErrPermission) ||
		errors.Is(err, object.ErrNoKey) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

func syncError(failed []SyncFailure) error { return &SyncError{Failed: failed} }

// SyncError is Sync's error: the versions whose snapshot could not be
// written. It wraps ErrSync and each cause.
type SyncError struct{ Failed []SyncFailure }

func (e *SyncError) Error() string {
	parts := make([]string, 0, len(e.Failed))
	for _, f := range e.Failed {
		parts = append(parts, fmt.Sprintf("version %s: %v", f.UID, f.Err))
	}
	return fmt.Sprintf("%v for %d version(s): %s", ErrSync, len(e.Failed), strings.Join(parts, "; "))
}

func (e *SyncError) Unwrap() []error {
	out := []error{ErrSync}
	for _, f := range e.Failed {
		out = append(out, f.Err)
	}
	return out
}

// Read parses snapshot r completely and calls fn for each page of its one
// version. It returns the version only once the whole stream verified;
// fn must not commit anything before Read returns nil.
func (c *Catalog) Read(ctx context.Context, r Ref, fn func(*metastore.Version, manifest.Page) error) (*metastore.Version, *manifest.Reader, error) {
	if !r.Contiguous {
		return nil, nil, fmt.Errorf("%w: snapshot %s lacks chunks", manifest.ErrInvalid, r.Dir())
	}
	mr, err := manifest.NewReader(c.Open(ctx, r))
	if err != nil {
		return nil, nil, err
	}
	var got *metastore.Version
	for {
		v, err := mr.NextVersion()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, nil, err
		}
		if got != nil || v.UID != r.UID {
			return nil, nil, fmt.Errorf("%w: snapshot %s holds version %s", manifest.ErrInvalid, r.Dir(), v.UID)
		}
		got = v
		for {
			p, err := mr.NextPage()
			if err == io.EOF {
				break
			}
			if err != nil {
				return nil, nil, err
			}
			if fn != nil {
				if err := fn(v, p); err != nil {
					return nil, nil, err
				}
			}
		}
	}
	if got == nil {
		return nil, nil, fmt.Errorf("%w: snapshot %s holds no version", manifest.ErrInvalid, r.Dir())
	}
	return got, mr, nil
}

// Latest finds the newest snapshot of refs (newest first) that reads
// completely, calling fn for its pages; a broken one is logged and the
// next older tried. fn is called again from the start for each snapshot
// tried; reset (if set) is called before each.
func (c *Catalog) Latest(ctx context.Context, refs []Ref, reset func(), fn func(*metastore.Version, manifest.Page) error) (*metastore.Version, *manifest.Reader, Ref, error) {
	var errs []error
	for _, r := range refs {
		if reset != nil {
			reset()
		}
		v, mr, err := c.Read(ctx, r, fn)
		if err == nil {
			return v, mr, r, nil
		}
		if ctx.Err() != nil || !Skippable(err) {
			return nil, nil, r, err
		}
		c.log.Warn("skipping an unreadable snapshot of version metadata", "snapshot", r.Dir(), "err", err)
		errs = append(errs, err)
	}
	if len(refs) == 0 {
		return nil, nil, Ref{}, ErrNoSnapshot
	}
	return nil, nil, Ref{}, fmt.Errorf("%w: %s: %w", ErrNoSnapshot, refs[0].UID, errors.Join(errs...))
}

// Skippable reports whether a failed read of a snapshot may be skipped
// for an older one: damage or an incomplete snapshot, but not a missing
// key or an unreachable backend, which would fail the older ones too.
func Skippable(err error) bool {
	return errors.Is(err, manifest.ErrInvalid) || errors.Is(err, blockstore.ErrCorrupt) || errors.Is(err, blockstore.ErrMissing)
}

// Protection is the outcome of Protected.
type Protection struct {
	// Names are the objects that versions known only to the backend use.
	Names map[block.Name]struct{}
	// Versions are those versions' uids (or versions whose snapshot in the
	// backend is newer than the metastore's).
	Versions []string
	// Unreadable lists versions known only to the backend whose metadata
	// could not be read: their blocks are unknown, so nothing may be
	// deleted (cleanup refuses).
	Unreadable []string
	// Stale lists versions of the metastore whose snapshot in the backend
	// is still stale (a sync failed or found them busy): the objects their
	// snapshots in the backend name are kept too, since a rebuild would
	// take the version from one of them.
	Stale []string
	// Missing lists complete versions whose snapshot the metastore
	// recorded as current but the listing does not hold whole (deleted,
	// chunks lost): the caller marks them stale so that the next sync
	// writes them again (metastore.MarkSnapshotStale).
	Missing []string
}

// Keep reports whether name must be kept.
func (p *Protection) Keep(name block.Name) bool {
	if p == nil {
		return false
	}
	_, ok := p.Names[name]
	return ok
}

// Protected finds the versions whose metadata the backend holds but the
// metastore db does not (or holds an older state of), reads their newest
// snapshots and returns the objects they use, which cleanup must not
// delete, and the objects that the snapshots of versions whose snapshot
// is stale (pending) name. In the usual case (every snapshot in the
// backend is the one the metastore recorded) it costs one listing of
// versions/.
func (c *Catalog) Protected(ctx context.Context, db *metastore.DB) (*Protection, error) {
	all, err := c.List(ctx)
	if err != nil {
		return nil, err
	}
	pending, err := db.PendingSnapshots()
	if err != nil {
		return nil, err
	}
	stale := map[string]bool{}
	for _, uid := range pending {
		stale[uid] = true
	}
	known, err := db.Snapshots()
	if err != nil {
		return nil, err
	}
	vs, err := db.Versions(nil)
	if err != nil {
		return nil, err
	}
	inDB := map[string]bool{}
	p := &Protection{Names: map[block.Name]struct{}{}}
	for _, v := range vs {
		inDB[v.UID] = true
		if st := known[v.UID]; v.Status != metastore.StatusIncomplete && !v.Removing && !stale[v.UID] && st.Gen > 0 {
			whole := false
			for _, r := range all[v.UID] {
				if r.Gen == st.Gen && r.Tag == st.Tag && r.Contiguous {
					whole = true
				}
			}
			if !whole {
				p.Missing = append(p.Missing, v.UID)
			}
		}
	}
	uids := make([]string, 0, len(all))
	for uid := range all {
		uids = append(uids, uid)
	}
	sort.Strings(uids)
	for _, uid := range uids {
		refs := all[uid]
		if inDB[uid] && !stale[uid] {
			// Only snapshots newer than the one this metastore recorded
			// can know blocks it does not.
			st := known[uid]
			var newer []Ref
			for _, r := range refs {
				if r.Gen > st.Gen && !(r.Gen == st.Gen && r.Tag == st.Tag) {
					newer = append(newer, r)
				}
			}
			if len(newer) == 0 {
				continue
			}
			refs = newer
		}
		// The names of this version's snapshots are kept apart until it
		// is known whether any reads: an unreadable one is read in part
		// before it fails.
		names := map[block.Name]struct{}{}
		collect := func(_ *metastore.Version, pg manifest.Page) error {
			for _, r := range pg.Records {
				names[r.Name] = struct{}{}
			}
			return nil
		}
		_, _, _, err := c.Latest(ctx, refs, nil, collect)
		switch {
		case err == nil:
			if stale[uid] && inDB[uid] {
				p.Stale = append(p.Stale, uid)
			} else {
				p.Versions = append(p.Versions, uid)
			}
			for n := range names {
				p.Names[n] = struct{}{}
			}
		case errors.Is(err, ErrNoSnapshot) && inDB[uid]:
			// Incomplete leftovers of a killed writer of a version this
			// metastore knows: nothing to protect.
		case errors.Is(err, ErrNoSnapshot):
			p.Unreadable = append(p.Unreadable, uid)
		default:
			return nil, err
		}
	}
	return p, nil
}

// Equal reports whether two refs name the same snapshot.
func (r Ref) Equal(o Ref) bool { return r.UID == o.UID && r.Gen == o.Gen && r.Tag == o.Tag }

// Peek reads the version object at the start of snapshot r, without
// reading (or verifying) the rest of the stream: for listing what the
// backend holds.
func (c *Catalog) Peek(ctx context.Context, r Ref) (*metastore.Version, error) {
	mr, err := manifest.NewReader(c.Open(ctx, r))
	if err != nil {
		return nil, err
	}
	v, err := mr.NextVersion()
	if err == io.EOF {
		return nil, fmt.Errorf("%w: snapshot %s holds no version", manifest.ErrInvalid, r.Dir())
	}
	if err != nil {
		return nil, err
	}
	if v.UID != r.UID {
		return nil, fmt.Errorf("%w: snapshot %s holds version %s", manifest.ErrInvalid, r.Dir(), v.UID)
	}
	return v, nil
}

// Versions returns the version object of every version the backend holds
// metadata of (from its newest snapshot whose start reads; workers
// fetch in parallel), sorted like metastore.Versions, and the uids whose
// snapshots could not be read.
func (c *Catalog) Versions(ctx context.Context, workers int) ([]*metastore.Version, []string, error) {
	all, err := c.List(ctx)
	if err != nil {
		return nil, nil, err
	}
	uids := make([]string, 0, len(all))
	for uid := range all {
		uids = append(uids, uid)
	}
	sort.Strings(uids)
	out := make([]*metastore.Version, len(uids))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(1, workers))
	for i, uid := range uids {
		g.Go(func() error {
			for _, r := range all[uid] {
				if !r.Contiguous {
					continue
				}
				v, err := c.Peek(gctx, r)
				if err == nil {
					out[i] = v
					return nil
				}
				if !Skippable(err) {
					return err
				}
				c.log.Warn("skipping an unreadable snapshot of version metadata", "snapshot", r.Dir(), "err", err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, nil, err
	}
	var vs []*metastore.Version
	var bad []string
	for i, v := range out {
		if v == nil {
			bad = append(bad, uids[i])
			continue
		}
		vs = append(vs, v)
	}
	sort.SliceStable(vs, func(i, j int) bool {
		if !vs[i].Date.Equal(vs[j].Date) {
			return vs[i].Date.Before(vs[j].Date)
		}
		return vs[i].UID < vs[j].UID
	})
	return vs, bad, nil
}
