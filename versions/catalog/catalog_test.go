package catalog_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/blockstore/backend"
	"github.com/backy/backy/blockstore/backend/faulty"
	"github.com/backy/backy/blockstore/backend/file"
	"github.com/backy/backy/blockstore/keyring"
	"github.com/backy/backy/blockstore/object"
	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/metastore/blockmap"
	"github.com/backy/backy/metastore/metastoretest"
	"github.com/backy/backy/versions/backup"
	"github.com/backy/backy/versions/catalog"
	"github.com/backy/backy/versions/manifest"
)

// bs is the block size of the test stores: the smallest the metadata
// stream allows, so that a few MiB of image make several map pages.
const bs = 4096

// keys is the object.Keys of a test store.
type keys map[uint16]*object.Key

func (k keys) Key(v uint16) (*object.Key, error) {
	if key := k[v]; key != nil {
		return key, nil
	}
	return nil, fmt.Errorf("%w: encryption version %d", object.ErrNoKey, v)
}

func newKey(t testing.TB, v uint16) *object.Key {
	t.Helper()
	material := make([]byte, 32)
	_, _ = rand.Read(material)
	k, err := object.NewKey(v, object.CipherAES256GCM, material)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// fixture is one store: a metastore (checked when the test ends), a file
// backend, a fault injector on it, a block store and a catalog on top.
type fixture struct {
	t     *testing.T
	dir   string
	db    *metastore.DB
	inner *file.Backend
	fb    *faulty.Backend
	opts  blockstore.Options
	st    *blockstore.Store // through fb
	cat   *catalog.Catalog  // over st
}

// newFixture makes an empty store; encrypted stores seal everything at
// encryption version 1 (AES-256-GCM) and compress with zstd.
func newFixture(t *testing.T, encrypted bool) *fixture {
	t.Helper()
	dir := t.TempDir()
	db := metastoretest.Create(t, dir, bs)
	inner, err := file.NewWithOptions(filepath.Join(dir, "data"), file.Options{DeferDirSync: true})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, dir: dir, db: db, inner: inner, fb: faulty.New(inner)}
	if encrypted {
		k := newKey(t, 1)
		reg, err := keyring.Registration{Format: 1, EncVersion: 1, Cipher: k.Cipher, KeyID: k.ID, Registered: time.Now()}.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := db.RegisterEncVersion(1, reg); err != nil {
			t.Fatal(err)
		}
		f.opts = blockstore.Options{Compression: block.CompressionZstd, Key: k, Keys: keys{1: k}}
	}
	f.st = f.store(f.fb, f.opts)
	f.cat = catalog.New(f.st, "catalog test", nil)
	return f
}

// store opens a block store over be, closed when the test ends.
func (f *fixture) store(be backend.Backend, o blockstore.Options) *blockstore.Store {
	f.t.Helper()
	st, err := blockstore.New(be, o)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(st.Close)
	return st
}

// memSource is an in-memory backup source.
type memSource struct{ b []byte }

func (m *memSource) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(m.b)) {
		return 0, errors.New("read beyond the end")
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, errors.New("short read")
	}
	return n, nil
}
func (m *memSource) Size() int64  { return int64(len(m.b)) }
func (m *memSource) Name() string { return "memory" }
func (m *memSource) Close() error { return nil }

// backup backs data up as a new version of volume.
func (f *fixture) backup(data []byte, volume string) *metastore.Version {
	f.t.Helper()
	v, err := backup.Run(context.Background(), f.st, f.db, &memSource{data}, backup.Options{Volume: volume, Workers: 4})
	if err != nil {
		f.t.Fatalf("backup: %v", err)
	}
	if v.Status != metastore.StatusValid {
		f.t.Fatalf("backup made a %s version", v.Status)
	}
	return v
}

// image makes n bytes of test image from seed: a mix of random blocks,
// zero blocks and blocks repeated from earlier in the image, so that maps
// hold sparse entries and duplicates.
func image(seed uint64, n int) []byte {
	r := mrand.New(mrand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for off := 0; off < n; off += bs {
		blk := b[off:min(off+bs, n)]
		switch i := off / bs; {
		case i%5 == 3:
			// zero
		case i%5 == 4 && off >= 4*bs:
			copy(blk, b[bs:2*bs])
		default:
			for j := range blk {
				blk[j] = byte(r.Uint32())
			}
		}
	}
	return b
}

// fakeVersion records a valid version of nblocks blocks whose records
// name objects that do not exist: metadata only, cheap in any number.
func (f *fixture) fakeVersion(volume string, nblocks int) *metastore.Version {
	f.t.Helper()
	uid, err := metastore.NewUID(time.Now())
	if err != nil {
		f.t.Fatal(err)
	}
	v := &metastore.Version{UID: uid, Volume: volume, Date: time.Now().UTC().Truncate(time.Second), Size: int64(nblocks) * bs,
		BlockSize: bs, Status: metastore.StatusIncomplete, Labels: map[string]string{"kind": "fake"}}
	if err := f.db.CreateVersion(v); err != nil {
		f.t.Fatal(err)
	}
	ids := make([]block.ID, nblocks)
	var recs []block.Record
	for i := range ids {
		if i%7 == 6 {
			continue // sparse
		}
		var r block.Record
		_, _ = rand.Read(r.ID[:])
		_, _ = rand.Read(r.Name[:])
		r.Size, r.StoredSize = bs, bs+40
		recs = append(recs, r)
	}
	next := 0
	for i := range ids {
		if i%7 != 6 {
			ids[i] = recs[next].ID
			next++
		}
	}
	// One page per commit: one huge transaction is quadratic in the
	// metastore's B+tree nodes.
	byID := map[block.ID]block.Record{}
	for _, r := range recs {
		byID[r.ID] = r
	}
	for at, lo := 0, 0; lo < nblocks || at == 0; at, lo = at+1, lo+blockmap.PageEntries {
		c := metastore.Commit{UID: uid, At: at}
		if lo < nblocks {
			page := ids[lo:min(lo+blockmap.PageEntries, nblocks)]
			c.Pages = []metastore.PageWrite{metastore.NewPage(page)}
			for _, id := range page {
				if !id.IsSparse() {
					c.New = append(c.New, byID[id])
				}
			}
		}
		if lo+blockmap.PageEntries >= nblocks {
			c.Update = func(v *metastore.Version) error {
				v.Status, v.BlocksDone = metastore.StatusValid, int64(nblocks)
				return nil
			}
		}
		if _, err := f.db.Commit(c); err != nil {
			f.t.Fatal(err)
		}
	}
	return f.version(uid)
}

func (f *fixture) version(uid string) *metastore.Version {
	f.t.Helper()
	v, err := f.db.Version(uid)
	if err != nil {
		f.t.Fatal(err)
	}
	return v
}

func (f *fixture) protect(uid string) {
	f.t.Helper()
	if _, err := f.db.UpdateVersion(uid, func(v *metastore.Version) error {
		v.Protected = true
		v.Labels["changed"] = "yes"
		return nil
	}); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) write(uid string) *catalog.Written {
	f.t.Helper()
	w, err := f.cat.Write(context.Background(), f.db, uid)
	if err != nil {
		f.t.Fatalf("Write(%s): %v", uid, err)
	}
	if w == nil {
		f.t.Fatalf("Write(%s) wrote nothing", uid)
	}
	return w
}

func (f *fixture) pending() []string {
	f.t.Helper()
	p, err := f.db.PendingSnapshots()
	if err != nil {
		f.t.Fatal(err)
	}
	return p
}

func (f *fixture) refs(uid string) []catalog.Ref {
	f.t.Helper()
	refs, err := f.cat.ListVersion(context.Background(), uid)
	if err != nil {
		f.t.Fatal(err)
	}
	return refs
}

// objects lists the names in the backend under prefix, sorted.
func (f *fixture) objects(prefix string) []string {
	f.t.Helper()
	var names []string
	if err := f.inner.List(context.Background(), prefix, func(i backend.Info) error {
		names = append(names, i.Name)
		return nil
	}); err != nil {
		f.t.Fatal(err)
	}
	slices.Sort(names)
	return names
}

// saveDir returns the raw objects of a snapshot, by name.
func (f *fixture) saveDir(r catalog.Ref) map[string][]byte {
	f.t.Helper()
	out := map[string][]byte{}
	for _, n := range f.objects(r.Dir()) {
		b, err := f.inner.Get(context.Background(), n, nil)
		if err != nil {
			f.t.Fatal(err)
		}
		out[n] = b
	}
	if len(out) == 0 {
		f.t.Fatalf("snapshot %s has no objects", r.Dir())
	}
	return out
}

func (f *fixture) putRaw(objs map[string][]byte) {
	f.t.Helper()
	for n, b := range objs {
		if err := f.inner.Put(context.Background(), n, b); err != nil {
			f.t.Fatal(err)
		}
	}
}

// twoSnapshots leaves two complete snapshots of uid in the backend, as a
// crash between writing the newer and deleting the older does: the older
// one of the version as it is, the newer one after it was protected.
func (f *fixture) twoSnapshots(uid string) (older, newer catalog.Ref) {
	f.t.Helper()
	w1 := f.write(uid)
	saved := f.saveDir(w1.Ref)
	f.protect(uid)
	w2 := f.write(uid)
	if got := f.refs(uid); len(got) != 1 || !got[0].Equal(w2.Ref) {
		f.t.Fatalf("after the second write the backend holds %+v, want only %+v", got, w2.Ref)
	}
	f.putRaw(saved)
	refs := f.refs(uid)
	if len(refs) != 2 || !refs[0].Equal(w2.Ref) || !refs[1].Equal(w1.Ref) {
		f.t.Fatalf("refs %+v, want %+v then %+v", refs, w2.Ref, w1.Ref)
	}
	return refs[1], refs[0]
}

// blockMap is a version's map and the records of its blocks.
type blockMap struct {
	ids  []block.ID
	recs map[block.ID]block.Record
}

func mapOf(t testing.TB, db *metastore.DB, uid string) blockMap {
	t.Helper()
	m := blockMap{recs: map[block.ID]block.Record{}}
	err := db.WalkMap(uid, func(c metastore.MapChunk) error {
		if c.First != int64(len(m.ids)) {
			return fmt.Errorf("chunk at %d after %d entries", c.First, len(m.ids))
		}
		m.ids = append(m.ids, c.IDs...)
		for i, id := range c.IDs {
			if !id.IsSparse() {
				if !c.Found[i] {
					return fmt.Errorf("block %d has no record", c.First+int64(i))
				}
				m.recs[id] = c.Records[i]
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// collector gathers the pages Read or Latest hands over.
type collector struct {
	m      blockMap
	resets int
}

func newCollector() *collector { return &collector{m: blockMap{recs: map[block.ID]block.Record{}}} }

func (c *collector) reset() {
	c.resets++
	c.m = blockMap{recs: map[block.ID]block.Record{}}
}

func (c *collector) page(_ *metastore.Version, p manifest.Page) error {
	if p.First != int64(len(c.m.ids)) {
		return fmt.Errorf("page at %d after %d entries", p.First, len(c.m.ids))
	}
	c.m.ids = append(c.m.ids, p.IDs...)
	for _, id := range p.IDs {
		if id.IsSparse() {
			continue
		}
		r, ok := p.Record(id)
		if !ok {
			return fmt.Errorf("page at %d has no record of %s", p.First, id.Short())
		}
		c.m.recs[id] = r
	}
	return nil
}

func equalMaps(t testing.TB, what string, got, want blockMap) {
	t.Helper()
	if !slices.Equal(got.ids, want.ids) {
		t.Errorf("%s: map of %d entries differs from the %d of the metastore", what, len(got.ids), len(want.ids))
	}
	differ := len(got.recs) != len(want.recs)
	for id, r := range got.recs {
		if w, ok := want.recs[id]; !ok || w != r {
			differ = true
			break
		}
	}
	if differ {
		t.Errorf("%s: %d records differ from the %d of the metastore", what, len(got.recs), len(want.recs))
	}
}

// read reads snapshot r completely.
func (f *fixture) read(cat *catalog.Catalog, r catalog.Ref) (*metastore.Version, blockMap, error) {
	c := newCollector()
	v, _, err := cat.Read(context.Background(), r, c.page)
	return v, c.m, err
}

// checkSnapshot reads r and compares it with the metastore's version.
func (f *fixture) checkSnapshot(r catalog.Ref) {
	f.t.Helper()
	c := newCollector()
	v, mr, err := f.cat.Read(context.Background(), r, c.page)
	if err != nil {
		f.t.Fatalf("Read(%s): %v", r.Dir(), err)
	}
	if want := f.version(r.UID); !reflect.DeepEqual(v, want) {
		f.t.Errorf("snapshot holds version\n%+v\nthe metastore\n%+v", v, want)
	}
	equalMaps(f.t, "snapshot "+r.Dir(), c.m, mapOf(f.t, f.db, r.UID))
	if s := mr.Store(); s.StoreID != f.db.StoreID() || s.BlockSize != bs || s.WrittenBy != "catalog test" {
		f.t.Errorf("snapshot store %+v", s)
	}
	regs, err := f.db.EncVersions()
	if err != nil {
		f.t.Fatal(err)
	}
	if got := mr.Keys(); len(got) != len(regs) {
		f.t.Errorf("snapshot has %d key registrations, the metastore %d", len(got), len(regs))
	} else {
		for _, k := range got {
			if !bytes.Equal(k.Registration, regs[k.EncVersion]) {
				f.t.Errorf("registration of version %d differs", k.EncVersion)
			}
		}
	}
}

func isUsableFailure(err error) bool {
	return errors.Is(err, manifest.ErrInvalid) || errors.Is(err, blockstore.ErrCorrupt) || errors.Is(err, blockstore.ErrMissing)
}

func TestWriteReadRoundTrip(t *testing.T) {
	sizes := []struct {
		name string
		size int
	}{
		{"empty", 0},
		{"one-short-block", 100},
		{"several-pages", 2*blockmap.PageEntries*bs + 300*bs + 1234},
	}
	for _, encrypted := range []bool{false, true} {
		for _, sz := range sizes {
			t.Run(fmt.Sprintf("%s/encrypted=%v", sz.name, encrypted), func(t *testing.T) {
				ctx := context.Background()
				f := newFixture(t, encrypted)
				v := f.backup(image(uint64(sz.size)+1, sz.size), "vol")
				if got := f.pending(); !slices.Equal(got, []string{v.UID}) {
					t.Fatalf("pending %v, want [%s]", got, v.UID)
				}
				w := f.write(v.UID)
				if w.UID != v.UID || w.Chunks != 1 || !w.Contiguous || w.Size <= 0 || w.StreamBytes <= 0 {
					t.Errorf("Written %+v", w)
				}
				if got := f.pending(); len(got) != 0 {
					t.Errorf("pending after Write: %v", got)
				}
				snaps, err := f.db.Snapshots()
				if err != nil {
					t.Fatal(err)
				}
				if st := snaps[v.UID]; st.Gen != w.Gen || st.Tag != w.Tag || st.Gen == 0 {
					t.Errorf("metastore records snapshot %+v, Write wrote gen %d tag %08x", st, w.Gen, w.Tag)
				}
				// The documented name: versions/<uid lower>/<gen>-<tag>/<seq>.
				lower := "v" + v.UID[1:]
				want := fmt.Sprintf("versions/%s/%016x-%08x/00000000", lower, w.Gen, w.Tag)
				if lower != strings.ToLower(v.UID) {
					t.Fatalf("uid %s is not upper-case V and lower-case hex", v.UID)
				}
				names := f.objects("versions/")
				if !slices.Equal(names, []string{want}) {
					t.Fatalf("backend holds %v, want [%s]", names, want)
				}
				info, err := f.inner.Stat(ctx, want)
				if err != nil {
					t.Fatal(err)
				}
				if info.Size != w.Size {
					t.Errorf("Written.Size %d, the object has %d bytes", w.Size, info.Size)
				}
				raw, err := f.inner.Get(ctx, want, nil)
				if err != nil {
					t.Fatal(err)
				}
				h, _, err := object.ParseHeader(raw)
				if err != nil {
					t.Fatal(err)
				}
				if h.Kind != object.KindMeta || (h.Cipher != object.CipherNone) != encrypted {
					t.Errorf("snapshot object header %+v (encrypted store: %v)", h, encrypted)
				}
				if encrypted && bytes.Contains(raw, []byte(v.UID)) {
					t.Errorf("the encrypted snapshot shows the uid in the clear")
				}
				refs := f.refs(v.UID)
				if len(refs) != 1 || refs[0] != w.Ref {
					t.Fatalf("ListVersion %+v, want [%+v]", refs, w.Ref)
				}
				f.checkSnapshot(refs[0])
				pv, err := f.cat.Peek(ctx, refs[0])
				if err != nil || !reflect.DeepEqual(pv, f.version(v.UID)) {
					t.Errorf("Peek = %+v, %v", pv, err)
				}

				// A change makes it pending; the next Write leaves one
				// snapshot, the new one.
				f.protect(v.UID)
				if got := f.pending(); !slices.Equal(got, []string{v.UID}) {
					t.Fatalf("pending after protect %v", got)
				}
				w2 := f.write(v.UID)
				if w2.Gen <= w.Gen {
					t.Errorf("second snapshot at gen %d, the first at %d", w2.Gen, w.Gen)
				}
				refs = f.refs(v.UID)
				if len(refs) != 1 || refs[0] != w2.Ref {
					t.Fatalf("after the second Write the backend holds %+v, want only %+v", refs, w2.Ref)
				}
				if names := f.objects("versions/"); len(names) != 1 {
					t.Errorf("objects after the second Write: %v", names)
				}
				f.checkSnapshot(refs[0])
				got, _, err := f.read(f.cat, refs[0])
				if err != nil || !got.Protected {
					t.Errorf("second snapshot: %+v, %v; want it protected", got, err)
				}
			})
		}
	}
}

func TestWriteSkipsIncompleteAndMissing(t *testing.T) {
	f := newFixture(t, false)
	uid, err := metastore.NewUID(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := f.db.CreateVersion(&metastore.Version{UID: uid, Volume: "vol", Size: bs, BlockSize: bs, Status: metastore.StatusIncomplete}); err != nil {
		t.Fatal(err)
	}
	if w, err := f.cat.Write(context.Background(), f.db, uid); w != nil || err != nil {
		t.Errorf("Write of an incomplete version = %+v, %v; want nil, nil", w, err)
	}
	other, _ := metastore.NewUID(time.Now())
	if _, err := f.cat.Write(context.Background(), f.db, other); !errors.Is(err, metastore.ErrVersionNotFound) {
		t.Errorf("Write of an unknown version: %v", err)
	}
	if names := f.objects("versions/"); len(names) != 0 {
		t.Errorf("objects written: %v", names)
	}
}

func TestSync(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, true)
	var uids []string
	for i := range 3 {
		uids = append(uids, f.backup(image(uint64(i)+10, 20*bs+i), fmt.Sprintf("vol%d", i)).UID)
	}
	incomplete, _ := metastore.NewUID(time.Now())
	if err := f.db.CreateVersion(&metastore.Version{UID: incomplete, Volume: "vol", Size: bs, BlockSize: bs, Status: metastore.StatusIncomplete}); err != nil {
		t.Fatal(err)
	}
	res, err := f.cat.Sync(ctx, f.db)
	if err != nil {
		t.Fatal(err)
	}
	all, err := f.cat.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var size int64
	for _, refs := range all {
		for _, r := range refs {
			size += r.Size
		}
	}
	if res.Written != 3 || res.Busy != 0 || res.Bytes != size {
		t.Errorf("Sync = %+v, want 3 written, %d bytes", res, size)
	}
	if len(all) != 3 || all[incomplete] != nil {
		t.Errorf("snapshots of %d versions after Sync: %v", len(all), all)
	}
	for _, uid := range uids {
		if len(all[uid]) != 1 {
			t.Errorf("version %s has %d snapshots", uid, len(all[uid]))
		}
	}
	before := f.objects("versions/")
	res, err = f.cat.Sync(ctx, f.db)
	if err != nil || res.Written != 0 || res.Busy != 0 || res.Bytes != 0 || len(res.Failed) != 0 {
		t.Errorf("second Sync = %+v, %v; want nothing done", res, err)
	}
	if after := f.objects("versions/"); !slices.Equal(before, after) {
		t.Errorf("a Sync with nothing pending changed the backend: %v -> %v", before, after)
	}

	// A change makes exactly its version pending.
	f.protect(uids[1])
	res, err = f.cat.Sync(ctx, f.db)
	if err != nil || res.Written != 1 {
		t.Errorf("Sync after protect = %+v, %v; want 1 written", res, err)
	}
	all2, _ := f.cat.List(ctx)
	for i, uid := range uids {
		if len(all2[uid]) != 1 {
			t.Fatalf("version %s has %d snapshots", uid, len(all2[uid]))
		}
		if same := all2[uid][0].Equal(all[uid][0]); same != (i != 1) {
			t.Errorf("version %s: snapshot %+v before, %+v after", uid, all[uid][0], all2[uid][0])
		}
	}

	// A version another process holds is left pending.
	f.protect(uids[2])
	lk, err := f.db.LockVersion(uids[2], metastore.Exclusive)
	if err != nil {
		t.Fatal(err)
	}
	res, err = f.cat.Sync(ctx, f.db)
	if err != nil || res.Written != 0 || res.Busy != 1 {
		t.Errorf("Sync with a locked version = %+v, %v; want it busy", res, err)
	}
	if got := f.pending(); !slices.Equal(got, []string{uids[2]}) {
		t.Errorf("pending %v, want [%s]", got, uids[2])
	}
	if _, err := f.cat.Write(ctx, f.db, uids[2]); !errors.Is(err, metastore.ErrLocked) {
		t.Errorf("Write of a locked version: %v", err)
	}
	lk.Unlock()
	res, err = f.cat.Sync(ctx, f.db)
	if err != nil || res.Written != 1 || res.Busy != 0 {
		t.Errorf("Sync after unlock = %+v, %v", res, err)
	}
	if got := f.pending(); len(got) != 0 {
		t.Errorf("pending %v", got)
	}
	for _, uid := range uids {
		refs := f.refs(uid)
		if len(refs) != 1 {
			t.Fatalf("version %s has %d snapshots", uid, len(refs))
		}
		f.checkSnapshot(refs[0])
	}

	// A cancelled context stops Sync.
	f.protect(uids[0])
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := f.cat.Sync(cctx, f.db); !errors.Is(err, context.Canceled) {
		t.Errorf("Sync with a cancelled context: %v", err)
	}
}

// failWrites makes a snapshot write fail twice: once at its Put, once
// after a Put that stored its object but reported an error.
func failWrites(t *testing.T, f *fixture, uid string) {
	t.Helper()
	ctx := context.Background()
	boom := errors.New("injected put failure")
	meta := func(n string) bool { return strings.HasPrefix(n, catalog.Prefix) }
	f.fb.AddFault(faulty.MethodPut).OnName(meta).ErrorInstead(boom)
	if _, err := f.cat.Sync(ctx, f.db); !errors.Is(err, boom) {
		t.Fatalf("Sync with a failing backend: %v", err)
	}
	if got := f.pending(); !slices.Equal(got, []string{uid}) {
		t.Errorf("pending after a failed Sync %v", got)
	}
	if names := f.objects("versions/"); len(names) != 0 {
		t.Errorf("a failed write left %v", names)
	}
	// A Put that stored its object but failed: the chunk is deleted again.
	f.fb.AddFault(faulty.MethodPut).OnName(meta).ErrorAfter(boom)
	if _, err := f.cat.Sync(ctx, f.db); !errors.Is(err, boom) {
		t.Fatalf("Sync with a failing backend: %v", err)
	}
	f.fb.VerifyAllFaultsFired(t)
	if got := f.pending(); !slices.Equal(got, []string{uid}) {
		t.Errorf("pending after a failed Sync %v", got)
	}
	if names := f.objects("versions/"); len(names) != 0 {
		t.Errorf("a failed write left %v", names)
	}
}

func TestSyncFailure(t *testing.T) {
	f := newFixture(t, false)
	v := f.backup(image(3, 10*bs), "vol")
	failWrites(t, f, v.UID)
	// The next command retries.
	inner, err := file.NewWithOptions(f.inner.Root(), file.Options{DeferDirSync: true})
	if err != nil {
		t.Fatal(err)
	}
	cat := catalog.New(f.store(inner, f.opts), "catalog test", nil)
	if res, err := cat.Sync(context.Background(), f.db); err != nil || res.Written != 1 {
		t.Errorf("Sync after the faults = %+v, %v", res, err)
	}
	if got := f.pending(); len(got) != 0 {
		t.Errorf("pending %v", got)
	}
	f.checkSnapshot(f.refs(v.UID)[0])
}

// TestSyncRetryInProcess retries a failed snapshot write in the same
// process, over the same backend.
func TestSyncRetryInProcess(t *testing.T) {
	f := newFixture(t, false)
	v := f.backup(image(3, 10*bs), "vol")
	failWrites(t, f, v.UID)
	res, err := f.cat.Sync(context.Background(), f.db)
	if err != nil || res.Written != 1 {
		t.Errorf("Sync after the faults = %+v, %v", res, err)
	}
}

// TestLargeSnapshot writes a snapshot of more than one chunk and damages
// it in the ways a crash or a lossy backend can.
func TestLargeSnapshot(t *testing.T) {
	if testing.Short() {
		t.Skip("writes several 4 MiB snapshots")
	}
	ctx := context.Background()
	f := newFixture(t, false)
	// About 60 bytes of stream per distinct block (one in seven is
	// sparse): 80 pages make two chunks.
	v := f.fakeVersion("big", 80*blockmap.PageEntries)
	w := f.write(v.UID)
	if w.Chunks != 2 || w.StreamBytes <= catalog.ChunkSize {
		t.Fatalf("Written %+v: want 2 chunks of a stream over %d bytes", w, catalog.ChunkSize)
	}
	names := f.objects("versions/")
	if !slices.Equal(names, []string{w.Dir() + "00000000", w.Dir() + "00000001"}) {
		t.Fatalf("objects %v", names)
	}
	first, err := f.st.GetMeta(ctx, names[0], nil)
	if err != nil {
		t.Fatal(err)
	}
	second, err := f.st.GetMeta(ctx, names[1], nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(first) != catalog.ChunkSize || int64(len(first)+len(second)) != w.StreamBytes {
		t.Errorf("chunks of %d and %d bytes, stream of %d", len(first), len(second), w.StreamBytes)
	}
	refs := f.refs(v.UID)
	if len(refs) != 1 || refs[0] != w.Ref {
		t.Fatalf("refs %+v", refs)
	}
	f.checkSnapshot(refs[0])
	s1 := refs[0]

	// A writer that fails at the last chunk and cannot delete the first
	// leaves an incomplete snapshot, which readers skip.
	f.protect(v.UID)
	boom := errors.New("injected failure")
	f.fb.AddFault(faulty.MethodPut).OnName(func(n string) bool {
		return strings.HasSuffix(n, "/00000001") && !strings.HasPrefix(n, s1.Dir())
	}).ErrorInstead(boom)
	f.fb.AddFault(faulty.MethodDelete).OnName(func(n string) bool {
		return strings.HasSuffix(n, "/00000000") && !strings.HasPrefix(n, s1.Dir())
	}).ErrorInstead(boom)
	if _, err := f.cat.Write(ctx, f.db, v.UID); !errors.Is(err, boom) {
		t.Fatalf("Write with faults: %v", err)
	}
	f.fb.VerifyAllFaultsFired(t)
	if got := f.pending(); !slices.Equal(got, []string{v.UID}) {
		t.Errorf("pending after a failed Write: %v", got)
	}
	refs = f.refs(v.UID)
	if len(refs) != 2 || !refs[1].Equal(s1) || refs[0].Chunks != 1 || !refs[0].Contiguous {
		t.Fatalf("refs after a failed Write %+v", refs)
	}
	leftover := refs[0]
	if _, _, err := f.read(f.cat, leftover); !errors.Is(err, manifest.ErrInvalid) || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("Read of an incomplete snapshot: %v", err)
	}
	c := newCollector()
	got, _, ref, err := f.cat.Latest(ctx, refs, c.reset, c.page)
	if err != nil || !ref.Equal(s1) || got.Protected || c.resets != 2 {
		t.Fatalf("Latest = %+v, %+v, %v after %d resets; want the older snapshot", got, ref, err, c.resets)
	}
	equalMaps(t, "older snapshot", c.m, mapOf(t, f.db, v.UID))
	// The version is pending (its write failed): the objects its older
	// snapshot names are kept (issue 13 item 2), nothing else.
	p, err := f.cat.Protected(ctx, f.db)
	if err != nil || len(p.Names) == 0 || !slices.Equal(p.Stale, []string{v.UID}) || len(p.Versions) != 0 || len(p.Unreadable) != 0 {
		t.Errorf("Protected with an incomplete leftover of a pending version = %d names, stale %v, versions %v, unreadable %v, %v; want the older snapshot's names kept", len(p.Names), p.Stale, p.Versions, p.Unreadable, err)
	}

	// The next write deletes both.
	w3 := f.write(v.UID)
	refs = f.refs(v.UID)
	if len(refs) != 1 || refs[0] != w3.Ref || w3.Chunks != 2 {
		t.Fatalf("refs after a good Write %+v (wrote %+v)", refs, w3)
	}
	f.checkSnapshot(refs[0])

	// Lost chunks.
	saved := f.saveDir(w3.Ref)
	last := w3.Dir() + "00000001"
	if err := f.inner.Delete(ctx, last); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.read(f.cat, w3.Ref); !errors.Is(err, blockstore.ErrMissing) {
		t.Errorf("Read of a snapshot whose listed chunk is gone: %v", err)
	}
	refs = f.refs(v.UID)
	if len(refs) != 1 || refs[0].Chunks != 1 || !refs[0].Contiguous {
		t.Fatalf("refs %+v", refs)
	}
	if _, _, err := f.read(f.cat, refs[0]); !errors.Is(err, manifest.ErrInvalid) {
		t.Errorf("Read of a snapshot without its last chunk: %v", err)
	}
	if _, _, _, err := f.cat.Latest(ctx, refs, nil, nil); !errors.Is(err, catalog.ErrNoSnapshot) || !errors.Is(err, manifest.ErrInvalid) {
		t.Errorf("Latest of the only, damaged snapshot: %v", err)
	}
	f.putRaw(saved)
	if err := f.inner.Delete(ctx, w3.Dir()+"00000000"); err != nil {
		t.Fatal(err)
	}
	refs = f.refs(v.UID)
	if len(refs) != 1 || refs[0].Contiguous {
		t.Fatalf("refs without chunk 0: %+v", refs)
	}
	if _, _, err := f.read(f.cat, refs[0]); !errors.Is(err, manifest.ErrInvalid) {
		t.Errorf("Read of a snapshot without its first chunk: %v", err)
	}
	vs, bad, err := f.cat.Versions(ctx, 2)
	if err != nil || len(vs) != 0 || !slices.Equal(bad, []string{v.UID}) {
		t.Errorf("Versions = %v, %v, %v; want the version unreadable", vs, bad, err)
	}
	f.putRaw(saved)
	f.checkSnapshot(f.refs(v.UID)[0])
}

func TestDamageFallsBack(t *testing.T) {
	type damage struct {
		name string
		// do damages chunk 0 of newer; other is a snapshot of another
		// version.
		do   func(f *fixture, newer, other catalog.Ref)
		want error
	}
	ctx := context.Background()
	rewrite := func(f *fixture, name string, fn func([]byte) []byte) {
		raw, err := f.inner.Get(ctx, name, nil)
		if err != nil {
			f.t.Fatal(err)
		}
		if err := f.inner.Put(ctx, name, fn(raw)); err != nil {
			f.t.Fatal(err)
		}
	}
	damages := []damage{
		{"flip-payload", func(f *fixture, r, _ catalog.Ref) {
			rewrite(f, r.Dir()+"00000000", func(b []byte) []byte { b[len(b)/2] ^= 0x10; return b })
		}, nil},
		{"flip-last-byte", func(f *fixture, r, _ catalog.Ref) {
			rewrite(f, r.Dir()+"00000000", func(b []byte) []byte { b[len(b)-1] ^= 0x01; return b })
		}, nil},
		{"flip-header", func(f *fixture, r, _ catalog.Ref) {
			rewrite(f, r.Dir()+"00000000", func(b []byte) []byte { b[6] ^= 0x80; return b })
		}, blockstore.ErrCorrupt},
		{"truncated-object", func(f *fixture, r, _ catalog.Ref) {
			rewrite(f, r.Dir()+"00000000", func(b []byte) []byte { return b[:len(b)-20] })
		}, nil},
		{"empty-object", func(f *fixture, r, _ catalog.Ref) {
			rewrite(f, r.Dir()+"00000000", func(b []byte) []byte { return nil })
		}, blockstore.ErrCorrupt},
		{"deleted-after-listing", func(f *fixture, r, _ catalog.Ref) {
			if err := f.inner.Delete(ctx, r.Dir()+"00000000"); err != nil {
				f.t.Fatal(err)
			}
		}, blockstore.ErrMissing},
		{"garbage-stream", func(f *fixture, r, _ catalog.Ref) {
			junk := make([]byte, 5000)
			_, _ = rand.Read(junk)
			if err := f.st.PutMeta(ctx, r.Dir()+"00000000", junk); err != nil {
				f.t.Fatal(err)
			}
		}, manifest.ErrInvalid},
		{"cut-stream", func(f *fixture, r, _ catalog.Ref) {
			plain, err := f.st.GetMeta(ctx, r.Dir()+"00000000", nil)
			if err != nil {
				f.t.Fatal(err)
			}
			if err := f.st.PutMeta(ctx, r.Dir()+"00000000", plain[:len(plain)-1]); err != nil {
				f.t.Fatal(err)
			}
		}, manifest.ErrInvalid},
		{"another-versions-stream", func(f *fixture, r, other catalog.Ref) {
			plain, err := f.st.GetMeta(ctx, other.Dir()+"00000000", nil)
			if err != nil {
				f.t.Fatal(err)
			}
			if err := f.st.PutMeta(ctx, r.Dir()+"00000000", plain); err != nil {
				f.t.Fatal(err)
			}
		}, manifest.ErrInvalid},
		{"another-versions-object", func(f *fixture, r, other catalog.Ref) {
			raw, err := f.inner.Get(ctx, other.Dir()+"00000000", nil)
			if err != nil {
				f.t.Fatal(err)
			}
			if err := f.inner.Put(ctx, r.Dir()+"00000000", raw); err != nil {
				f.t.Fatal(err)
			}
		}, nil},
	}
	for _, encrypted := range []bool{false, true} {
		for _, d := range damages {
			t.Run(fmt.Sprintf("%s/encrypted=%v", d.name, encrypted), func(t *testing.T) {
				f := newFixture(t, encrypted)
				v := f.backup(image(7, 300*bs+10), "vol")
				other := f.write(f.backup(image(8, 30*bs), "other").UID)
				older, newer := f.twoSnapshots(v.UID)
				d.do(f, newer, other.Ref)
				_, _, err := f.read(f.cat, newer)
				if err == nil || !isUsableFailure(err) || (d.want != nil && !errors.Is(err, d.want)) {
					t.Fatalf("Read of the damaged snapshot: %v (want %v)", err, d.want)
				}
				if encrypted && d.name == "another-versions-object" && !errors.Is(err, blockstore.ErrCorrupt) {
					t.Errorf("an encrypted object under another name opened: %v", err)
				}
				c := newCollector()
				got, _, ref, err := f.cat.Latest(ctx, []catalog.Ref{newer, older}, c.reset, c.page)
				if err != nil {
					t.Fatalf("Latest: %v", err)
				}
				if !ref.Equal(older) || got.Protected || got.UID != v.UID || c.resets != 2 {
					t.Errorf("Latest = %+v from %+v after %d resets; want the older, unprotected state", got, ref, c.resets)
				}
				equalMaps(t, "older snapshot", c.m, mapOf(t, f.db, v.UID))
				// With nothing older, there is nothing to fall back to.
				if _, _, _, err := f.cat.Latest(ctx, []catalog.Ref{newer}, nil, nil); !errors.Is(err, catalog.ErrNoSnapshot) {
					t.Errorf("Latest of the damaged snapshot alone: %v", err)
				}
			})
		}
	}
	t.Run("no-refs", func(t *testing.T) {
		f := newFixture(t, false)
		if _, _, _, err := f.cat.Latest(ctx, nil, nil, nil); !errors.Is(err, catalog.ErrNoSnapshot) {
			t.Errorf("Latest of nothing: %v", err)
		}
	})
}

func TestKeys(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, true)
	v := f.backup(image(9, 50*bs), "vol")
	older, newer := f.twoSnapshots(v.UID)
	refs := []catalog.Ref{newer, older}
	for _, c := range []struct {
		name string
		keys object.Keys
	}{
		{"no-keyring", nil},
		{"no-key", keys{}},
		{"other-version-only", keys{2: newKey(t, 2)}},
	} {
		t.Run(c.name, func(t *testing.T) {
			fb := faulty.New(f.inner)
			cat := catalog.New(f.store(fb, blockstore.Options{Keys: c.keys}), "", nil)
			if _, _, err := f.read(cat, newer); !errors.Is(err, object.ErrNoKey) || isUsableFailure(err) {
				t.Errorf("Read without the key: %v", err)
			}
			gets := fb.Calls(faulty.MethodGet)
			_, _, _, err := cat.Latest(ctx, refs, nil, nil)
			if !errors.Is(err, object.ErrNoKey) || errors.Is(err, catalog.ErrNoSnapshot) {
				t.Errorf("Latest without the key: %v; want ErrNoKey, not a fallback", err)
			}
			if n := fb.Calls(faulty.MethodGet) - gets; n != 1 {
				t.Errorf("Latest without the key read %d objects, want 1 (no fallback)", n)
			}
			if _, err := cat.Protected(ctx, f.db); err != nil {
				t.Errorf("Protected needs no key when nothing is unknown: %v", err)
			}
		})
	}
	t.Run("wrong-key", func(t *testing.T) {
		// Another key of version 1 (the key ring refuses this before any
		// read, comparing the key id with the registration): the object
		// does not open, and nothing reads.
		cat := catalog.New(f.store(f.inner, blockstore.Options{Keys: keys{1: newKey(t, 1)}}), "", nil)
		if _, _, err := f.read(cat, newer); err == nil || !errors.Is(err, object.ErrAuth) {
			t.Errorf("Read with the wrong key: %v", err)
		}
		if v, _, _, err := cat.Latest(ctx, refs, nil, nil); err == nil {
			t.Errorf("Latest with the wrong key read %+v", v)
		}
	})
}

func TestProtected(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, false)
	a := f.backup(image(20, 40*bs), "a")
	b := f.backup(image(21, 40*bs), "b")
	if res, err := f.cat.Sync(ctx, f.db); err != nil || res.Written != 2 {
		t.Fatalf("Sync = %+v, %v", res, err)
	}
	namesOf := func(uid string) map[block.Name]struct{} {
		out := map[block.Name]struct{}{}
		for _, r := range mapOf(t, f.db, uid).recs {
			out[r.Name] = struct{}{}
		}
		return out
	}
	namesA, namesB := namesOf(a.UID), namesOf(b.UID)
	counting := func() (*catalog.Catalog, *faulty.Backend) {
		fb := faulty.New(f.inner)
		return catalog.New(f.store(fb, blockstore.Options{}), "", nil), fb
	}
	expect := func(what string, cat *catalog.Catalog, db *metastore.DB, names map[block.Name]struct{}, versions, unreadable []string) *catalog.Protection {
		t.Helper()
		p, err := cat.Protected(ctx, db)
		if err != nil {
			t.Fatalf("%s: Protected: %v", what, err)
		}
		if len(names) == 0 {
			names = map[block.Name]struct{}{}
		}
		if !reflect.DeepEqual(p.Names, names) || !slices.Equal(p.Versions, versions) || !slices.Equal(p.Unreadable, unreadable) {
			t.Errorf("%s: Protected = %d names, versions %v, unreadable %v; want %d names, %v, %v",
				what, len(p.Names), p.Versions, p.Unreadable, len(names), versions, unreadable)
		}
		for n := range names {
			if !p.Keep(n) {
				t.Errorf("%s: Keep(%s) = false", what, n)
				break
			}
		}
		return p
	}

	// The usual case: one listing, no reads.
	cat, fb := counting()
	p := expect("all known", cat, f.db, nil, nil, nil)
	if fb.Calls(faulty.MethodGet) != 0 || fb.Calls(faulty.MethodList) != 1 {
		t.Errorf("Protected made %d gets and %d listings, want 0 and 1", fb.Calls(faulty.MethodGet), fb.Calls(faulty.MethodList))
	}
	var other block.Name
	_, _ = rand.Read(other[:])
	if p.Keep(other) || (*catalog.Protection)(nil).Keep(other) {
		t.Error("Keep of a name nothing uses")
	}

	// A metastore restored from an old copy: b's snapshot is newer than
	// the one it recorded.
	oldPath := filepath.Join(t.TempDir(), "backy.db")
	raw, err := os.ReadFile(f.db.Path())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(oldPath, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	old, err := metastore.Open(oldPath, metastore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	metastoretest.CheckOnCleanup(t, old)
	f.protect(b.UID)
	if res, err := f.cat.Sync(ctx, f.db); err != nil || res.Written != 1 {
		t.Fatalf("Sync = %+v, %v", res, err)
	}
	expect("old metastore", f.cat, old, namesB, []string{b.UID}, nil)
	cat, fb = counting()
	expect("current metastore", cat, f.db, nil, nil, nil)
	if fb.Calls(faulty.MethodGet) != 0 {
		t.Errorf("Protected read %d objects with every snapshot known", fb.Calls(faulty.MethodGet))
	}

	// An incomplete (unreadable) leftover of a known version newer than
	// its recorded snapshot, and an object backy does not write.
	snaps, err := f.db.Snapshots()
	if err != nil {
		t.Fatal(err)
	}
	junk := make([]byte, 3000)
	_, _ = rand.Read(junk)
	lowerA := strings.ToLower(a.UID)
	leftover := fmt.Sprintf("versions/%s/%016x-%08x/00000000", lowerA, snaps[a.UID].Gen+100, 0xdeadbeef)
	if err := f.st.PutMeta(ctx, leftover, junk); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"versions/" + lowerA + "/stray", "versions/readme.txt", "versions/" + lowerA + "/0000000000000001-0000000g/00000000"} {
		if err := f.inner.Put(ctx, n, junk); err != nil {
			t.Fatal(err)
		}
	}
	expect("leftover of a known version", f.cat, f.db, nil, nil, nil)

	// A version removed from the metastore whose snapshot stayed (rm
	// killed between the two, or another metastore's): its objects are
	// kept, read from its newest readable snapshot.
	lk, err := f.db.LockVersion(a.UID, metastore.Exclusive)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.db.RemoveVersion(a.UID); err != nil {
		t.Fatal(err)
	}
	lk.Unlock()
	expect("removed version", f.cat, f.db, namesA, []string{a.UID}, nil)

	// A version only the backend knows, with no readable snapshot.
	ghost, _ := metastore.NewUID(time.Now().Add(time.Hour))
	if err := f.st.PutMeta(ctx, fmt.Sprintf("versions/%s/%016x-%08x/00000000", strings.ToLower(ghost), 5, 1), junk); err != nil {
		t.Fatal(err)
	}
	expect("unreadable unknown version", f.cat, f.db, namesA, []string{a.UID}, []string{ghost})

	// Versions lists what the backend holds.
	vs, bad, err := f.cat.Versions(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != 2 || vs[0].UID != a.UID || vs[1].UID != b.UID || !vs[1].Protected || !slices.Equal(bad, []string{ghost}) {
		t.Errorf("Versions = %v, bad %v", vs, bad)
	}

	// Delete removes every snapshot of a version, and only of it.
	if err := f.cat.Delete(ctx, a.UID); err != nil {
		t.Fatal(err)
	}
	if refs := f.refs(a.UID); len(refs) != 0 {
		t.Errorf("snapshots of %s after Delete: %+v", a.UID, refs)
	}
	if refs := f.refs(b.UID); len(refs) != 1 {
		t.Errorf("snapshots of %s after deleting %s: %+v", b.UID, a.UID, refs)
	}
	expect("after Delete", f.cat, f.db, nil, nil, []string{ghost})
}

// hooked runs a function once, before the first Put or List it passes
// on, to interleave another writer at that point.
type hooked struct {
	backend.Backend
	mu     sync.Mutex
	onPut  func()
	onList func()
}

func (h *hooked) Unwrap() backend.Backend { return h.Backend }

func (h *hooked) take(fn *func()) func() {
	h.mu.Lock()
	defer h.mu.Unlock()
	f := *fn
	*fn = nil
	return f
}

func (h *hooked) Put(ctx context.Context, name string, data []byte) error {
	if f := h.take(&h.onPut); f != nil {
		f()
	}
	return h.Backend.Put(ctx, name, data)
}

func (h *hooked) List(ctx context.Context, prefix string, fn func(backend.Info) error) error {
	if f := h.take(&h.onList); f != nil {
		f()
	}
	return h.Backend.List(ctx, prefix, fn)
}

// TestConcurrentWrites interleaves two writers of one version's snapshot
// (two commands syncing at their end; both hold the version shared): the
// snapshot the metastore records must stay in the backend.
func TestConcurrentWrites(t *testing.T) {
	for _, c := range []struct {
		name string
		// arm makes the other writer run inside h's calls.
		arm func(h *hooked, other func())
	}{
		// The other writer records its snapshot while this one writes.
		{"other-records-first", func(h *hooked, other func()) { h.onPut = other }},
		// The other writer writes and finishes while this one, having
		// recorded its snapshot, lists the old ones to delete them.
		{"other-finishes-while-listing", func(h *hooked, other func()) { h.onList = other }},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t, false)
			v := f.backup(image(30, 20*bs), "vol")
			f.write(v.UID)
			f.protect(v.UID)
			h := &hooked{Backend: f.inner}
			cat := catalog.New(f.store(h, f.opts), "catalog test", nil)
			var otherErr error
			c.arm(h, func() { _, otherErr = f.cat.Write(ctx, f.db, v.UID) })
			if _, err := cat.Write(ctx, f.db, v.UID); err != nil {
				t.Fatalf("Write: %v", err)
			}
			if otherErr != nil {
				t.Fatalf("the other Write: %v", otherErr)
			}
			if h.onPut != nil || h.onList != nil {
				t.Fatal("the other writer did not run")
			}
			snaps, err := f.db.Snapshots()
			if err != nil {
				t.Fatal(err)
			}
			rec := snaps[v.UID]
			refs := f.refs(v.UID)
			if len(refs) != 1 || refs[0].Gen != rec.Gen || refs[0].Tag != rec.Tag {
				t.Fatalf("the metastore records snapshot %d-%08x, the backend holds %+v", rec.Gen, rec.Tag, refs)
			}
			if got := f.pending(); len(got) != 0 {
				t.Errorf("pending %v", got)
			}
			f.checkSnapshot(refs[0])
		})
	}
}
