package reencrypt_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/blockstore/backend"
	"github.com/backy/backy/blockstore/backend/faulty"
	"github.com/backy/backy/blockstore/backend/file"
	"github.com/backy/backy/blockstore/object"
	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/metastore/metastoretest"
	"github.com/backy/backy/migrate/reencrypt"
	"github.com/backy/backy/versions/backup"
	"github.com/backy/backy/versions/restore"
)

// bs is the block size of every test store: small, so that images of a
// few MiB have dozens of blocks and the suite stays fast under -race.
const bs = 64 << 10

var errBoom = errors.New("injected failure")

// keyring is the object.Keys of a test store: the keys it holds, by
// encryption version.
type keyring map[uint16]*object.Key

func (k keyring) Key(v uint16) (*object.Key, error) {
	if key := k[v]; key != nil {
		return key, nil
	}
	return nil, fmt.Errorf("%w: the key of encryption version %d is not configured", object.ErrNoKey, v)
}

// env is one store: a metastore checked for consistency when the test
// ends, and a file backend (deferring directory syncs, as the CLI
// configures it) that every blockstore of the test writes through, each
// behind its own fault injector.
type env struct {
	t      *testing.T
	dir    string
	db     *metastore.DB
	inner  *file.Backend
	root   string // the data directory
	marker []byte
	keys   map[uint16]*object.Key // every key made, by encryption version
	mu     sync.Mutex
	images map[string][]byte // the image of each version, by uid
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	db, err := metastore.Create(filepath.Join(dir, "backy.db"), bs, [16]byte{0xe, 0xc, 0x1}, metastore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	metastoretest.CheckOnCleanup(t, db)
	inner, err := file.NewWithOptions(filepath.Join(dir, "data"), file.Options{DeferDirSync: true})
	if err != nil {
		t.Fatal(err)
	}
	var m [8]byte
	_, _ = rand.Read(m[:])
	return &env{
		t: t, dir: dir, db: db, inner: inner, root: inner.Root(),
		marker: []byte("BACKY-MARKER-" + hex.EncodeToString(m[:])),
		keys:   map[uint16]*object.Key{}, images: map[string][]byte{},
	}
}

// clone returns a copy of the store of e (which must be idle), with the
// same keys, marker and images: much cheaper than making the same backups
// again.
func (e *env) clone(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	raw, err := os.ReadFile(filepath.Join(e.dir, "backy.db"))
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, "backy.db"), raw, 0o600)
	}
	if err == nil {
		err = os.CopyFS(filepath.Join(dir, "data"), os.DirFS(e.root))
	}
	if err != nil {
		t.Fatal(err)
	}
	db, err := metastore.Open(filepath.Join(dir, "backy.db"), metastore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	metastoretest.CheckOnCleanup(t, db)
	inner, err := file.NewWithOptions(filepath.Join(dir, "data"), file.Options{DeferDirSync: true})
	if err != nil {
		t.Fatal(err)
	}
	c := &env{t: t, dir: dir, db: db, inner: inner, root: inner.Root(), marker: e.marker, keys: map[uint16]*object.Key{}, images: map[string][]byte{}}
	for v, k := range e.keys {
		c.keys[v] = k
	}
	e.mu.Lock()
	for uid, img := range e.images {
		c.images[uid] = img
	}
	e.mu.Unlock()
	return c
}

// key makes the key of encryption version v and registers the version in
// the metastore (before any block is written at it, as the CLI does).
func (e *env) key(v uint16, c object.Cipher) *object.Key {
	e.t.Helper()
	if k := e.keys[v]; k != nil {
		if k.Cipher != c {
			e.t.Fatalf("key of version %d exists with cipher %s, not %s", v, k.Cipher, c)
		}
		return k
	}
	material := make([]byte, 32)
	_, _ = rand.Read(material)
	k, err := object.NewKey(v, c, material)
	if err != nil {
		e.t.Fatal(err)
	}
	reg := fmt.Appendf(nil, `{"format":1,"encryption_version":%d,"cipher":%q,"key_id":"%x"}`, v, c, k.ID)
	if _, err := e.db.RegisterEncVersion(v, reg); err != nil {
		e.t.Fatal(err)
	}
	e.keys[v] = k
	return k
}

// storeOpts configures a test blockstore.
type storeOpts struct {
	write uint16 // encryption version of new objects (its key must exist); 0 = unencrypted
	comp  block.Compression
	// read lists the versions whose keys the store holds; nil = every key
	// made so far.
	read   []uint16
	noKeys bool // Options.Keys nil
}

// store is a blockstore over the env's backend with its own fault
// injector (fb) and hooks (hk): Store -> hooked -> faulty -> file.
type store struct {
	*blockstore.Store
	fb *faulty.Backend
	hk *hooked
}

func (e *env) open(o storeOpts) *store {
	e.t.Helper()
	kr := keyring{}
	if o.read == nil {
		for v, k := range e.keys {
			kr[v] = k
		}
	}
	for _, v := range o.read {
		if e.keys[v] == nil {
			e.t.Fatalf("no key of version %d made", v)
		}
		kr[v] = e.keys[v]
	}
	bo := blockstore.Options{Compression: o.comp, Keys: kr}
	if o.noKeys {
		bo.Keys = nil
	}
	if o.write != 0 {
		if bo.Key = e.keys[o.write]; bo.Key == nil {
			e.t.Fatalf("no key of version %d made", o.write)
		}
	}
	fb := faulty.New(e.inner)
	hk := &hooked{Backend: fb}
	st, err := blockstore.New(hk, bo)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(st.Close)
	return &store{Store: st, fb: fb, hk: hk}
}

// hooked wraps a backend to watch Puts and to fail Syncs (which the fault
// injector passes through untouched).
type hooked struct {
	backend.Backend
	puts     atomic.Int64
	afterPut func(n int64) // called after the n-th successful Put
	syncErr  func() error  // when set and returning an error, Sync fails with it
}

func (h *hooked) Put(ctx context.Context, name string, data []byte) error {
	err := h.Backend.Put(ctx, name, data)
	if err == nil {
		n := h.puts.Add(1)
		if h.afterPut != nil {
			h.afterPut(n)
		}
	}
	return err
}

func (h *hooked) Sync(ctx context.Context) error {
	if h.syncErr != nil {
		if err := h.syncErr(); err != nil {
			return err
		}
	}
	return backend.Sync(ctx, h.Backend)
}

func (h *hooked) Unwrap() backend.Backend { return h.Backend }

// memSource is a backup source in memory.
type memSource struct {
	*bytes.Reader
	size int64
}

func (m memSource) Size() int64  { return m.size }
func (m memSource) Name() string { return "memory image" }
func (m memSource) Close() error { return nil }

// backup backs data up with st and remembers the image of the version.
func (e *env) backup(ctx context.Context, st backup.BlockStore, data []byte, o backup.Options) (*metastore.Version, error) {
	if o.Volume == "" {
		o.Volume = "vol"
	}
	v, err := backup.Run(ctx, st, e.db, memSource{bytes.NewReader(data), int64(len(data))}, o)
	if err != nil {
		return v, err
	}
	if v.Status != metastore.StatusValid {
		return v, fmt.Errorf("backup returned a %s version", v.Status)
	}
	e.mu.Lock()
	e.images[v.UID] = data
	e.mu.Unlock()
	return v, nil
}

func (e *env) mustBackup(st *store, data []byte) *metastore.Version {
	e.t.Helper()
	v, err := e.backup(e.t.Context(), st.Store, data, backup.Options{})
	if err != nil {
		e.t.Fatalf("backup: %v", err)
	}
	return v
}

// memTarget is an in-memory restore target that starts as garbage, so
// that every byte the restore does not write shows.
type memTarget struct{ b []byte }

func (m *memTarget) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(m.b)) {
		return 0, fmt.Errorf("write of %d bytes at %d beyond the %d-byte target", len(p), off, len(m.b))
	}
	return copy(m.b[off:], p), nil
}

func (m *memTarget) Zero(off, n int64, _ bool, _ []byte) error {
	if off < 0 || off+n > int64(len(m.b)) {
		return fmt.Errorf("bad Zero(%d, %d)", off, n)
	}
	clear(m.b[off : off+n])
	return nil
}

// restore restores version uid, read-locked as the CLI does, into memory.
func (e *env) restore(ctx context.Context, st restore.BlockStore, uid string, o restore.Options) ([]byte, *restore.Result, error) {
	lk, err := e.db.LockVersion(uid, metastore.Shared)
	if err != nil {
		return nil, nil, err
	}
	defer lk.Unlock()
	v, err := e.db.Version(uid)
	if err != nil {
		return nil, nil, err
	}
	tgt := &memTarget{b: bytes.Repeat([]byte{0xee}, int(v.Size))}
	res, err := restore.Run(ctx, st, e.db, v, tgt, o)
	return tgt.b, res, err
}

// restoreEqual restores uid and compares it with the image it was made
// from; it may run in any goroutine.
func (e *env) restoreEqual(ctx context.Context, st restore.BlockStore, uid string) error {
	e.mu.Lock()
	want, ok := e.images[uid]
	e.mu.Unlock()
	if !ok {
		return fmt.Errorf("version %s of no known image", uid)
	}
	got, res, err := e.restore(ctx, st, uid, restore.Options{Sparse: true})
	if err != nil {
		return fmt.Errorf("restore %s: %w", uid, err)
	}
	if d := firstDiff(got, want); d >= 0 {
		return fmt.Errorf("restore %s: %d bytes, want %d; first difference at byte %d (block %d)", uid, len(got), len(want), d, d/bs)
	}
	if res.Size != int64(len(want)) || res.BytesWritten+res.BytesSparse != res.Size || len(res.BadBlocks) != 0 {
		return fmt.Errorf("restore %s: result %+v", uid, res)
	}
	return nil
}

// restoreFileEqual restores uid to a new file with restore.ToFile, as the
// CLI does, and compares it with its image.
func (e *env) restoreFileEqual(ctx context.Context, st restore.BlockStore, uid string) error {
	e.mu.Lock()
	want := e.images[uid]
	e.mu.Unlock()
	path := filepath.Join(e.dir, "restored-"+uid+"-"+hex.EncodeToString(randBytes(4)))
	if _, err := restore.ToFile(ctx, st, e.db, uid, path, restore.Options{}); err != nil {
		return fmt.Errorf("restore %s to a file: %w", uid, err)
	}
	defer os.Remove(path)
	got, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if d := firstDiff(got, want); d >= 0 {
		return fmt.Errorf("restore %s to a file: first difference at byte %d", uid, d)
	}
	return nil
}

// mustRestoreAll restores every version of the store with st and compares
// each with its image. Every version must be valid, except those listed in
// invalid, which must be invalid and are skipped.
func (e *env) mustRestoreAll(st restore.BlockStore, invalid ...string) {
	e.t.Helper()
	vs, err := e.db.Versions(nil)
	if err != nil {
		e.t.Fatal(err)
	}
	if len(vs) == 0 {
		e.t.Fatal("no versions to restore")
	}
	for _, v := range vs {
		if slices.Contains(invalid, v.UID) {
			if v.Status != metastore.StatusInvalid {
				e.t.Fatalf("version %s is %s, want invalid", v.UID, v.Status)
			}
			continue
		}
		if v.Status != metastore.StatusValid {
			e.t.Fatalf("version %s is %s", v.UID, v.Status)
		}
		if err := e.restoreEqual(e.t.Context(), st, v.UID); err != nil {
			e.t.Fatal(err)
		}
	}
}

func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// image makes a deterministic test image of n blocks, the last one short
// by 1000 bytes. Block i is, by i mod 5: all zeros (sparse); compressible
// text carrying the marker; random data with the marker at three places;
// plain random data; a repeat of block i-3 (deduplicated within the image).
func (e *env) image(seed uint64, n int) []byte {
	r := mrand.New(mrand.NewPCG(seed, 0xbac4))
	size := n*bs - 1000
	data := make([]byte, size)
	for i := range n {
		b := data[i*bs : min((i+1)*bs, size)]
		switch i % 5 {
		case 1:
			e.text(b, seed, i)
		case 2:
			fillRandom(r, b)
			for _, off := range []int{100, len(b) / 2, len(b) - 200} {
				copy(b[off:], e.marker)
			}
		case 3:
			fillRandom(r, b)
		case 4:
			e.text(b, seed, i-3)
		}
	}
	return data
}

// variant returns a copy of base whose blocks i with i%every == 0 hold new
// text carrying the marker; every other block is shared with base.
func (e *env) variant(base []byte, seed uint64, every int) []byte {
	data := bytes.Clone(base)
	for i := 0; i*bs < len(data); i += every {
		e.text(data[i*bs:min((i+1)*bs, len(data))], seed, i)
	}
	return data
}

// text fills b with compressible text that carries the marker and is
// distinct for each (seed, i).
func (e *env) text(b []byte, seed uint64, i int) {
	line := fmt.Appendf(nil, "%s seed %d block %d; ", e.marker, seed, i)
	for off := 0; off < len(b); off += copy(b[off:], line) {
	}
}

func fillRandom(r *mrand.Rand, b []byte) {
	for i := 0; i < len(b); i += 8 {
		v := r.Uint64()
		for k := 0; k < 8 && i+k < len(b); k++ {
			b[i+k] = byte(v >> (8 * k))
		}
	}
}

// blocksOf returns the distinct non-sparse blocks of data (and those that
// carry the marker) and the number of non-sparse block references.
func (e *env) blocksOf(data []byte) (ids, marked map[block.ID]bool, refs int) {
	ids, marked = map[block.ID]bool{}, map[block.ID]bool{}
	for off := 0; off < len(data); off += bs {
		p := data[off:min(off+bs, len(data))]
		if block.IsZero(p) {
			continue
		}
		refs++
		id := block.Sum(p)
		ids[id] = true
		if bytes.Contains(p, e.marker) {
			marked[id] = true
		}
	}
	return ids, marked, refs
}

// blockID returns the identity of block i of data.
func blockID(data []byte, i int) block.ID {
	return block.Sum(data[i*bs : min((i+1)*bs, len(data))])
}

// storedObject is one block object in the backend.
type storedObject struct {
	path string
	size int64
	hdr  object.Header
	herr error
}

// content reads the whole object.
func (o storedObject) content(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(o.path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// objects returns every block object of the backend, header parsed.
func (e *env) objects() map[block.Name]storedObject {
	e.t.Helper()
	out := map[block.Name]storedObject{}
	var head []byte
	err := e.inner.List(e.t.Context(), blockstore.BlockPrefix, func(info backend.Info) error {
		n, ok := blockstore.ParseObjectName(info.Name)
		if !ok {
			return fmt.Errorf("unexpected object %s under %s", info.Name, blockstore.BlockPrefix)
		}
		p := filepath.Join(e.root, filepath.FromSlash(info.Name))
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		// The longest header: 23 fixed bytes, a 24-byte nonce, the CRC.
		head = slices.Grow(head[:0], 64)[:64]
		k, err := io.ReadFull(f, head)
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
			return err
		}
		h, _, herr := object.ParseHeader(head[:k])
		h.Nonce = nil // aliases head
		out[n] = storedObject{path: p, size: info.Size, hdr: h, herr: herr}
		return nil
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// records returns every block record of the metastore (also those marked
// invalid, which versions' maps name).
func (e *env) records() map[block.ID]block.Record {
	e.t.Helper()
	out := map[block.ID]block.Record{}
	after := block.Sparse
	for {
		recs, last, done, err := e.db.BlocksBelow(math.MaxUint16, after, 1000)
		if err != nil {
			e.t.Fatal(err)
		}
		for _, r := range recs {
			out[r.ID] = r
		}
		if done {
			break
		}
		after = last
	}
	vs, err := e.db.Versions(nil)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, v := range vs {
		err := e.db.WalkMap(v.UID, func(c metastore.MapChunk) error {
			for i, r := range c.Records {
				if c.Found[i] && r.Invalid {
					out[r.ID] = r
				}
			}
			return nil
		})
		if err != nil {
			e.t.Fatal(err)
		}
	}
	s, err := e.db.Stats()
	if err != nil {
		e.t.Fatal(err)
	}
	if s.Blocks != int64(len(out)) {
		e.t.Fatalf("found %d block records, the store counts %d", len(out), s.Blocks)
	}
	return out
}

// checkRecords checks that the object of every record exists and agrees
// with the record (stored size, encryption version, compression), and
// returns the records, the objects and the objects no record names.
func (e *env) checkRecords() (map[block.ID]block.Record, map[block.Name]storedObject, []block.Name) {
	e.t.Helper()
	recs := e.records()
	objs := e.objects()
	named := map[block.Name]bool{}
	for _, r := range recs {
		named[r.Name] = true
		o, ok := objs[r.Name]
		switch {
		case r.Invalid:
			// Damage found earlier: the object may be gone or broken.
		case !ok:
			e.t.Errorf("block %s: its object %s does not exist", r.ID.Short(), r.Name)
		case o.herr != nil:
			e.t.Errorf("block %s: object %s: %v", r.ID.Short(), r.Name, o.herr)
		case o.size != int64(r.StoredSize) || o.hdr.EncVersion != r.EncVersion || o.hdr.Compression != r.Compression || o.hdr.PlainSize != r.Size:
			e.t.Errorf("block %s: object %s (%d bytes, version %d, %s, plain %d) disagrees with its record %+v",
				r.ID.Short(), r.Name, o.size, o.hdr.EncVersion, o.hdr.Compression, o.hdr.PlainSize, r)
		case (o.hdr.Cipher == object.CipherNone) != (r.EncVersion == 0):
			e.t.Errorf("block %s: object %s has cipher %s at version %d", r.ID.Short(), r.Name, o.hdr.Cipher, r.EncVersion)
		case r.EncVersion != 0 && o.hdr.Cipher != e.keys[r.EncVersion].Cipher:
			e.t.Errorf("block %s: object %s has cipher %s, version %d uses %s", r.ID.Short(), r.Name, o.hdr.Cipher, r.EncVersion, e.keys[r.EncVersion].Cipher)
		}
	}
	var orphans []block.Name
	for n := range objs {
		if !named[n] {
			orphans = append(orphans, n)
		}
	}
	slices.SortFunc(orphans, func(a, b block.Name) int { return bytes.Compare(a[:], b[:]) })
	return recs, objs, orphans
}

// markerFiles returns the files under the data directory that contain
// the marker.
func (e *env) markerFiles() []string {
	e.t.Helper()
	var out []string
	err := filepath.WalkDir(e.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if bytes.Contains(b, e.marker) {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// encStats returns the metastore's statistics per encryption version.
func (e *env) encStats() map[uint16]metastore.EncStat {
	e.t.Helper()
	s, err := e.db.EncStats()
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

// statsOf computes the per-version statistics the records imply.
func statsOf(recs map[block.ID]block.Record) map[uint16]metastore.EncStat {
	out := map[uint16]metastore.EncStat{}
	for _, r := range recs {
		s := out[r.EncVersion]
		s.Blocks++
		s.StoredBytes += int64(r.StoredSize)
		out[r.EncVersion] = s
	}
	return out
}

func (e *env) wantEncStats(want map[uint16]metastore.EncStat) {
	e.t.Helper()
	got := e.encStats()
	if !mapsEqual(got, want) {
		e.t.Fatalf("EncStats = %v, want %v", got, want)
	}
}

func mapsEqual[K comparable, V comparable](a, b map[K]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// trash returns the metastore's trash.
func (e *env) trash() []metastore.TrashEntry {
	e.t.Helper()
	tr, err := e.db.Trash(math.MaxInt32)
	if err != nil {
		e.t.Fatal(err)
	}
	s, err := e.db.Stats()
	if err != nil {
		e.t.Fatal(err)
	}
	if s.Trash != int64(len(tr)) {
		e.t.Fatalf("trash lists %d entries, the store counts %d", len(tr), s.Trash)
	}
	return tr
}

// migrate runs a migration that must succeed completely.
func (e *env) migrate(st *store, o reencrypt.Options) *reencrypt.Result {
	e.t.Helper()
	res, err := reencrypt.Run(e.t.Context(), st.Store, e.db, o)
	if err != nil {
		e.t.Fatalf("migration to version %d: %v (result %+v)", st.EncVersion(), err, res)
	}
	if res.Target != st.EncVersion() || len(res.Failures) != 0 || len(res.InvalidVersions) != 0 {
		e.t.Fatalf("migration result %+v", res)
	}
	return res
}

// finalChecks verifies a store after its last migration to target: the
// metastore is consistent, no record is below the target and every
// record's object agrees with it, the trash is empty, no file holds the
// marker, and every version (but those listed invalid) restores
// bit-identically. It returns the orphan objects, which must all be
// encrypted target-version objects.
func (e *env) finalChecks(target uint16, invalid ...string) []block.Name {
	e.t.Helper()
	metastoretest.Check(e.t, e.db)
	recs, objs, orphans := e.checkRecords()
	for _, r := range recs {
		if r.EncVersion < target {
			e.t.Errorf("block %s is at encryption version %d, below the target %d", r.ID.Short(), r.EncVersion, target)
		}
	}
	e.wantEncStats(statsOf(recs))
	if tr := e.trash(); len(tr) != 0 {
		e.t.Errorf("%d objects left in the trash", len(tr))
	}
	if f := e.markerFiles(); len(f) != 0 {
		e.t.Errorf("%d files under the data directory hold the marker, e.g. %s", len(f), f[0])
	}
	for _, n := range orphans {
		o := objs[n]
		if o.herr != nil || o.hdr.Kind != object.KindBlock || o.hdr.EncVersion != target || o.hdr.Cipher == object.CipherNone {
			e.t.Errorf("orphan object %s is not a new encrypted block object (version %d, cipher %s, header error %v)", n, o.hdr.EncVersion, o.hdr.Cipher, o.herr)
		}
	}
	e.mustRestoreAll(e.open(storeOpts{}), invalid...)
	return orphans
}

func sortedUIDs(uids ...string) []string {
	out := slices.Clone(uids)
	sort.Strings(out)
	return out
}
