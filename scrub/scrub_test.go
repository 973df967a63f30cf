package scrub_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/blockstore/backend/file"
	"github.com/backy/backy/blockstore/object"
	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/metastore/metastoretest"
	"github.com/backy/backy/migrate/reencrypt"
	"github.com/backy/backy/scrub"
	"github.com/backy/backy/versions/backup"
)

// bs is the block size of the test stores: small, so that images of a few
// MiB have dozens of blocks.
const bs = 64 << 10

type keyring map[uint16]*object.Key

func (k keyring) Key(v uint16) (*object.Key, error) {
	if key := k[v]; key != nil {
		return key, nil
	}
	return nil, fmt.Errorf("%w: the key of encryption version %d is not configured", object.ErrNoKey, v)
}

// counting is a block store that counts Get and Check calls per block.
type counting struct {
	*blockstore.Store
	gets, checks, failed atomic.Int64
	mu                   sync.Mutex
	perBlock             map[block.ID]int
	beforeGet            func()
}

func (c *counting) Get(ctx context.Context, rec block.Record, buf []byte) ([]byte, error) {
	c.gets.Add(1)
	if c.beforeGet != nil {
		c.beforeGet()
	}
	c.mu.Lock()
	c.perBlock[rec.ID]++
	c.mu.Unlock()
	data, err := c.Store.Get(ctx, rec, buf)
	if errors.Is(err, blockstore.ErrMissing) || errors.Is(err, blockstore.ErrCorrupt) {
		c.failed.Add(1)
	}
	return data, err
}

func (c *counting) Check(ctx context.Context, rec block.Record) error {
	c.checks.Add(1)
	return c.Store.Check(ctx, rec)
}

type env struct {
	t    *testing.T
	dir  string
	db   *metastore.DB
	root string
	st   *counting
	keys keyring
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	db := metastoretest.Create(t, dir, bs)
	be, err := file.New(filepath.Join(dir, "data"))
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, dir: dir, db: db, root: be.Root(), keys: keyring{}}
	e.st = e.store(0)
	return e
}

// store opens a block store writing at encryption version write, holding
// every key made so far.
func (e *env) store(write uint16) *counting {
	e.t.Helper()
	be, err := file.New(e.root)
	if err != nil {
		e.t.Fatal(err)
	}
	o := blockstore.Options{Keys: e.keys}
	if write != 0 {
		o.Key = e.keys[write]
	}
	st, err := blockstore.New(be, o)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(st.Close)
	return &counting{Store: st, perBlock: map[block.ID]int{}}
}

func (e *env) key(v uint16) {
	e.t.Helper()
	material := make([]byte, 32)
	_, _ = rand.Read(material)
	k, err := object.NewKey(v, object.CipherAES256GCM, material)
	if err != nil {
		e.t.Fatal(err)
	}
	reg := fmt.Appendf(nil, `{"format":1,"encryption_version":%d,"cipher":%q,"key_id":"%x"}`, v, k.Cipher, k.ID)
	if _, err := e.db.RegisterEncVersion(v, reg); err != nil {
		e.t.Fatal(err)
	}
	e.keys[v] = k
}

type memSource struct {
	*bytes.Reader
	size int64
}

func (m memSource) Size() int64  { return m.size }
func (m memSource) Name() string { return "memory image" }
func (m memSource) Close() error { return nil }

func src(data []byte) memSource { return memSource{bytes.NewReader(data), int64(len(data))} }

func (e *env) backup(data []byte) *metastore.Version {
	e.t.Helper()
	v, err := backup.Run(e.t.Context(), e.st.Store, e.db, src(data), backup.Options{Volume: "vol"})
	if err != nil {
		e.t.Fatal(err)
	}
	return v
}

// records returns the records of a version's blocks, by position.
func (e *env) records(uid string) []block.Record {
	e.t.Helper()
	var out []block.Record
	err := e.db.WalkMap(uid, func(c metastore.MapChunk) error {
		out = append(out, c.Records...)
		return nil
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

func (e *env) objectPath(rec block.Record) string {
	return filepath.Join(e.root, filepath.FromSlash(blockstore.ObjectName(rec.Name)))
}

func (e *env) status(uid string) metastore.Status {
	e.t.Helper()
	v, err := e.db.Version(uid)
	if err != nil {
		e.t.Fatal(err)
	}
	return v.Status
}

func (e *env) invalid(id block.ID) bool {
	e.t.Helper()
	out := make([]metastore.Lookup, 1)
	if err := e.db.LookupBlocks([]block.ID{id}, out); err != nil || !out[0].Found {
		e.t.Fatalf("lookup %s: %v", id.Short(), err)
	}
	return out[0].Record.Invalid
}

func (e *env) scrub(o scrub.Options) (*scrub.Result, error) {
	e.t.Helper()
	if len(o.UIDs) == 0 && o.Volume == "" {
		o.All = true
	}
	return scrub.Run(e.t.Context(), e.st, e.db, o)
}

func randomImage(blocks int, seed uint64) []byte {
	r := mrand.New(mrand.NewPCG(seed, 7))
	b := make([]byte, blocks*bs)
	for i := 0; i+8 <= len(b); i += 8 {
		v := r.Uint64()
		for k := range 8 {
			b[i+k] = byte(v >> (8 * k))
		}
	}
	return b
}

func failedIDs(res *scrub.Result, kind string) []string {
	var out []string
	for _, f := range res.Failures {
		if kind == "" || f.Kind == kind {
			out = append(out, f.ID)
		}
	}
	slices.Sort(out)
	return out
}

func ids(recs ...block.Record) []string {
	var out []string
	for _, r := range recs {
		out = append(out, r.ID.String())
	}
	slices.Sort(out)
	return out
}

// TestCorruption damages three objects of blocks shared by two versions
// (a flipped byte, a truncation, a deletion): scrub finds the truncation
// and the deletion, deep-scrub all three; each marks the blocks and every
// version using them invalid and goes on. Restoring the objects and
// deep-scrubbing again makes blocks and versions valid.
func TestCorruption(t *testing.T) {
	e := newEnv(t)
	img := randomImage(8, 1)
	v1 := e.backup(img)
	img2 := slices.Clone(img)
	copy(img2[7*bs:], randomImage(1, 2))
	v2 := e.backup(img2)
	other := e.backup(randomImage(3, 3)) // shares nothing
	recs := e.records(v1.UID)
	flip, trunc, del := recs[1], recs[2], recs[3]
	saved := map[string][]byte{}
	for _, r := range []block.Record{flip, trunc, del} {
		b, err := os.ReadFile(e.objectPath(r))
		if err != nil {
			t.Fatal(err)
		}
		saved[e.objectPath(r)] = b
	}
	damaged := slices.Clone(saved[e.objectPath(flip)])
	damaged[len(damaged)/2] ^= 0x40
	must(t, os.WriteFile(e.objectPath(flip), damaged, 0o600))
	must(t, os.Truncate(e.objectPath(trunc), int64(trunc.StoredSize)-1))
	must(t, os.Remove(e.objectPath(del)))

	res, err := e.scrub(scrub.Options{})
	if !errors.Is(err, scrub.ErrDamage) {
		t.Fatalf("scrub: %v, want ErrDamage", err)
	}
	if got, want := failedIDs(res, ""), ids(trunc, del); !slices.Equal(got, want) {
		t.Fatalf("scrub found %v, want %v (truncated, deleted)", res.Failures, want)
	}
	if k := failedIDs(res, scrub.FailMissing); !slices.Equal(k, ids(del)) {
		t.Errorf("missing = %v", k)
	}
	if e.invalid(flip.ID) || !e.invalid(trunc.ID) || !e.invalid(del.ID) {
		t.Error("scrub: wrong invalid flags")
	}
	if !slices.Equal(res.InvalidVersions, sorted(v1.UID, v2.UID)) {
		t.Errorf("invalid versions %v, want %s %s", res.InvalidVersions, v1.UID, v2.UID)
	}
	if e.status(v1.UID) != metastore.StatusInvalid || e.status(v2.UID) != metastore.StatusInvalid || e.status(other.UID) != metastore.StatusValid {
		t.Error("scrub: wrong version states")
	}
	if res.BlocksChecked != 8+1+3 || e.st.gets.Load() != 0 {
		t.Errorf("scrub checked %d blocks with %d reads, want 12 and none", res.BlocksChecked, e.st.gets.Load())
	}
	for _, vr := range res.Versions {
		v, _ := e.db.Version(vr.UID)
		ls := v.LastScrub
		wantBad := int64(2)
		if vr.UID == other.UID {
			wantBad = 0
		}
		if ls == nil || ls.Kind != scrub.KindScrub || ls.OK != (wantBad == 0) || ls.BlocksBad != wantBad || ls.BlocksChecked != v.Blocks() || ls.Percent != 100 {
			t.Errorf("last scrub of %s = %+v, want %d bad", vr.UID, ls, wantBad)
		}
	}

	res, err = e.scrub(scrub.Options{Deep: true})
	if !errors.Is(err, scrub.ErrDamage) {
		t.Fatalf("deep-scrub: %v, want ErrDamage", err)
	}
	if got, want := failedIDs(res, ""), ids(flip, trunc, del); !slices.Equal(got, want) {
		t.Fatalf("deep-scrub found %v, want %v", res.Failures, want)
	}
	if !e.invalid(flip.ID) {
		t.Error("deep-scrub: the flipped block is not invalid")
	}
	if e.st.gets.Load() != 12 {
		t.Errorf("deep-scrub read %d blocks, want 12 distinct", e.st.gets.Load())
	}
	for _, vr := range res.Versions {
		if vr.UID != other.UID && (vr.BlocksBad != 3 || vr.OK) {
			t.Errorf("deep-scrub result %+v, want 3 bad", vr)
		}
	}

	// Heal: put the objects back.
	for p, b := range saved {
		must(t, os.WriteFile(p, b, 0o600))
	}
	res, err = e.scrub(scrub.Options{Deep: true})
	if err != nil {
		t.Fatalf("deep-scrub after repair: %v (%+v)", err, res.Failures)
	}
	if res.BlocksHealed != 3 || !slices.Equal(res.ValidVersions, sorted(v1.UID, v2.UID)) {
		t.Errorf("healed %d blocks, validated %v", res.BlocksHealed, res.ValidVersions)
	}
	for _, r := range []block.Record{flip, trunc, del} {
		if e.invalid(r.ID) {
			t.Errorf("block %s still invalid", r.ID.Short())
		}
	}
	for _, uid := range []string{v1.UID, v2.UID, other.UID} {
		if e.status(uid) != metastore.StatusValid {
			t.Errorf("%s is %s after the repair", uid, e.status(uid))
		}
	}
}

// TestHealByBackup: a new backup of the same data stores fresh copies of
// the invalid blocks (it never deduplicates against them); the older
// version stays invalid until a deep-scrub finds it sound.
func TestHealByBackup(t *testing.T) {
	e := newEnv(t)
	img := randomImage(6, 4)
	v1 := e.backup(img)
	rec := e.records(v1.UID)[2]
	must(t, os.Remove(e.objectPath(rec)))
	if _, err := e.scrub(scrub.Options{}); !errors.Is(err, scrub.ErrDamage) {
		t.Fatalf("scrub: %v", err)
	}
	v2 := e.backup(img)
	if e.status(v2.UID) != metastore.StatusValid || e.invalid(rec.ID) {
		t.Fatal("the new backup did not store a fresh copy")
	}
	if v2.BytesWritten == 0 {
		t.Error("the new backup wrote nothing")
	}
	if e.status(v1.UID) != metastore.StatusInvalid {
		t.Fatal("the old version became valid without a deep-scrub")
	}
	// A plain scrub never makes a version valid.
	if _, err := e.scrub(scrub.Options{UIDs: []string{v1.UID}}); err != nil || e.status(v1.UID) != metastore.StatusInvalid {
		t.Fatalf("scrub: %v, status %s", err, e.status(v1.UID))
	}
	res, err := e.scrub(scrub.Options{Deep: true, UIDs: []string{v1.UID}})
	if err != nil || !slices.Equal(res.ValidVersions, []string{v1.UID}) || e.status(v1.UID) != metastore.StatusValid {
		t.Fatalf("deep-scrub: %v, validated %v, status %s", err, res.ValidVersions, e.status(v1.UID))
	}
}

// TestSharedBlockOnce: a block used by several versions, and several times
// by one, is read once per run.
func TestSharedBlockOnce(t *testing.T) {
	e := newEnv(t)
	base := randomImage(4, 5)
	img := slices.Concat(base, base, make([]byte, 2*bs), base[:bs]) // 11 blocks, 4 distinct, 2 sparse
	v1 := e.backup(img)
	v2 := e.backup(img)
	img3 := slices.Clone(img)
	copy(img3[10*bs:], randomImage(1, 6))
	v3 := e.backup(img3)
	res, err := e.scrub(scrub.Options{Deep: true})
	if err != nil {
		t.Fatal(err)
	}
	if g := e.st.gets.Load(); g != 5 || res.BlocksChecked != 5 {
		t.Fatalf("%d reads, %d blocks checked; want 5 distinct blocks", g, res.BlocksChecked)
	}
	for id, n := range e.st.perBlock {
		if n != 1 {
			t.Errorf("block %s read %d times", id.Short(), n)
		}
	}
	for _, vr := range res.Versions {
		if vr.BlocksChecked != 9 || !vr.OK || vr.Status != metastore.StatusValid {
			t.Errorf("%+v: want 9 blocks checked, ok", vr)
		}
	}
	_ = v2
	// A shared bad block counts against every version using it.
	must(t, os.Remove(e.objectPath(e.records(v1.UID)[0])))
	res, err = e.scrub(scrub.Options{})
	if !errors.Is(err, scrub.ErrDamage) || res.FailuresTotal != 1 {
		t.Fatalf("scrub: %v, %d failures, want 1", err, res.FailuresTotal)
	}
	for _, vr := range res.Versions {
		want := int64(3) // positions 0, 4 and 10
		if vr.UID == v3.UID {
			want = 2 // its block 10 differs
		}
		if vr.BlocksBad != want || vr.Status != metastore.StatusInvalid {
			t.Errorf("%+v: want %d bad positions, invalid", vr, want)
		}
	}
}

// TestPercent: --percent samples about that share of the blocks, the
// next window of the rotation each run (see rotation_test.go).
func TestPercent(t *testing.T) {
	e := newEnv(t)
	v := e.backup(randomImage(400, 8))
	res, err := e.scrub(scrub.Options{Deep: true, Percent: 25})
	if err != nil {
		t.Fatal(err)
	}
	n := res.BlocksChecked
	if n < 60 || n > 140 || e.st.gets.Load() != n {
		t.Fatalf("25%% of 400 blocks: checked %d with %d reads", n, e.st.gets.Load())
	}
	if w := res.Window; w == nil || w.From != 0 || w.To != 25 {
		t.Errorf("window %+v, want 0 to 25", w)
	}
	first := maps(e.st)
	vv, _ := e.db.Version(v.UID)
	if vv.LastScrub == nil || vv.LastScrub.Percent != 25 || vv.LastScrub.BlocksChecked != n {
		t.Errorf("last scrub %+v", vv.LastScrub)
	}
	e.st = e.store(0)
	res, err = e.scrub(scrub.Options{Deep: true, Percent: 25})
	if err != nil || res.Window == nil || res.Window.From != 25 || res.Window.To != 50 {
		t.Fatalf("second run: %v, window %+v", err, res.Window)
	}
	for id := range maps(e.st) {
		if first[id] != 0 {
			t.Errorf("block %s read by both runs", id.Short())
		}
	}
	if res, err := e.scrub(scrub.Options{Deep: true}); err != nil || res.Window != nil || res.BlocksChecked != 400 {
		t.Errorf("100%%: %v, window %+v, %d blocks", err, res.Window, res.BlocksChecked)
	}
	if _, err := e.scrub(scrub.Options{Percent: 101}); !errors.Is(err, scrub.ErrOptions) {
		t.Fatalf("percent 101: %v", err)
	}
}

func maps(c *counting) map[block.ID]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[block.ID]int{}
	for k, v := range c.perBlock {
		out[k] = v
	}
	return out
}

func equalKeys(a, b map[block.ID]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if _, ok := b[k]; !ok {
			return false
		}
	}
	return true
}

// TestSource: a deep-scrub with a source finds a data block and a sparse
// block that differ from it, reports them as differences (ErrDiffers,
// result "differs"), and marks nothing: no block or version invalid, no
// block counted bad, and a version made invalid earlier by a block since
// stored again becomes valid as usual.
func TestSource(t *testing.T) {
	e := newEnv(t)
	img := slices.Concat(randomImage(5, 9), make([]byte, 2*bs), randomImage(1, 10)[:bs/2])
	v := e.backup(img)
	if res, err := e.scrub(scrub.Options{Deep: true, UIDs: []string{v.UID}, Source: src(img)}); err != nil || res.Versions[0].BlocksChecked != 8 {
		t.Fatalf("deep-scrub against the same image: %v %+v", err, res)
	}
	other := slices.Clone(img)
	other[3*bs+5] ^= 1 // data block 3
	other[6*bs+9] = 1  // sparse block 6
	res, err := e.scrub(scrub.Options{Deep: true, UIDs: []string{v.UID}, Source: src(other)})
	if !errors.Is(err, scrub.ErrDiffers) || errors.Is(err, scrub.ErrDamage) {
		t.Fatalf("deep-scrub against another image: %v", err)
	}
	if len(res.Failures) != 0 || res.FailuresTotal != 0 || res.DifferencesTotal != 2 {
		t.Errorf("failures %+v (%d), differences %d: want none and 2", res.Failures, res.FailuresTotal, res.DifferencesTotal)
	}
	if vr := res.Versions[0]; !vr.OK || vr.Result != scrub.ResultDiffers || vr.BlocksBad != 0 || vr.BlocksDiffering != 2 || vr.Status != metastore.StatusValid {
		t.Errorf("version result %+v", vr)
	}
	var idx []int64
	for _, f := range res.Differences {
		if f.Kind != scrub.FailSource {
			t.Errorf("failure %+v", f)
		}
		idx = append(idx, f.Index)
	}
	slices.Sort(idx)
	if !slices.Equal(idx, []int64{3, 6}) {
		t.Fatalf("source mismatches at %v, want 3 and 6", idx)
	}
	if e.status(v.UID) != metastore.StatusValid || len(res.InvalidVersions) != 0 {
		t.Error("a source mismatch marked the version invalid")
	}
	if vv, _ := e.db.Version(v.UID); vv.LastScrub == nil || !vv.LastScrub.OK || vv.LastScrub.BlocksBad != 0 || vv.LastScrub.BlocksDiffering != 2 {
		t.Errorf("last scrub %+v", vv.LastScrub)
	}
	for _, r := range e.records(v.UID) {
		if !r.ID.IsSparse() && e.invalid(r.ID) {
			t.Errorf("block %s marked invalid", r.ID.Short())
		}
	}
	if _, err := e.scrub(scrub.Options{Deep: true, UIDs: []string{v.UID}, Source: src(img[:bs])}); !errors.Is(err, scrub.ErrSourceSize) {
		t.Errorf("short source: %v", err)
	}
	if _, err := e.scrub(scrub.Options{Deep: true, Source: src(img)}); err != nil {
		t.Errorf("--all with one version and a source: %v", err)
	}
	e.backup(img)
	if _, err := e.scrub(scrub.Options{Deep: true, Source: src(img)}); !errors.Is(err, scrub.ErrOptions) {
		t.Errorf("two versions and a source: %v", err)
	}
}

// TestLocksAndSkips: a version being written is skipped (and named
// explicitly, reported as locked); the scrub holds shared locks.
func TestLocksAndSkips(t *testing.T) {
	e := newEnv(t)
	v1 := e.backup(randomImage(3, 11))
	v2 := e.backup(randomImage(3, 12))
	lk, err := e.db.LockVersion(v2.UID, metastore.Exclusive)
	if err != nil {
		t.Fatal(err)
	}
	res, err := e.scrub(scrub.Options{})
	if err != nil || len(res.Skipped) != 1 || res.Skipped[0].UID != v2.UID || len(res.Versions) != 1 {
		t.Fatalf("--all with a locked version: %v %+v", err, res)
	}
	if _, err := e.scrub(scrub.Options{UIDs: []string{v1.UID, v2.UID}}); !errors.Is(err, metastore.ErrLocked) {
		t.Fatalf("named locked version: %v", err)
	}
	lk.Unlock()
	if _, err := e.db.UpdateVersion(v2.UID, func(v *metastore.Version) error { v.Status = metastore.StatusIncomplete; return nil }); err != nil {
		t.Fatal(err)
	}
	res, err = e.scrub(scrub.Options{Volume: "vol"})
	if err != nil || len(res.Skipped) != 1 || res.Skipped[0].UID != v2.UID {
		t.Fatalf("incomplete version: %v %+v", err, res)
	}
	if _, err := e.scrub(scrub.Options{Volume: "nope"}); !errors.Is(err, scrub.ErrNoVersions) {
		t.Fatalf("unknown volume: %v", err)
	}
	if _, err := e.scrub(scrub.Options{UIDs: []string{"V0000000000000000000000"}}); !errors.Is(err, metastore.ErrVersionNotFound) {
		t.Fatalf("unknown version: %v", err)
	}
}

// TestMissingKey: a deep-scrub of blocks whose key is not configured fails
// before it reads anything; a plain scrub needs no key.
func TestMissingKey(t *testing.T) {
	e := newEnv(t)
	e.key(1)
	e.st = e.store(1)
	v := e.backup(randomImage(3, 13))
	delete(e.keys, 1)
	e.st = e.store(0)
	if _, err := e.scrub(scrub.Options{Deep: true, UIDs: []string{v.UID}}); !errors.Is(err, object.ErrNoKey) || e.st.gets.Load() != 0 {
		t.Fatalf("deep-scrub without the key: %v after %d reads", err, e.st.gets.Load())
	}
	if _, err := e.scrub(scrub.Options{UIDs: []string{v.UID}}); err != nil {
		t.Fatalf("scrub without the key: %v", err)
	}
}

// TestBrokenMap: a page missing from the metastore is reported and makes
// the version invalid; once it is back, a deep-scrub makes it valid.
func TestBrokenMap(t *testing.T) {
	e := newEnv(t)
	v := e.backup(randomImage(4, 14))
	pl, err := e.db.PageList(v.UID)
	if err != nil {
		t.Fatal(err)
	}
	var page []byte
	raw := func(fn func(*bolt.Bucket) error) {
		t.Helper()
		bdb, err := bolt.Open(filepath.Join(e.dir, "backy.db"), 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer bdb.Close()
		must(t, bdb.Update(func(tx *bolt.Tx) error { return fn(tx.Bucket([]byte("pages"))) }))
	}
	raw(func(b *bolt.Bucket) error {
		page = slices.Clone(b.Get(pl[0][:]))
		return b.Delete(pl[0][:])
	})
	res, err := e.scrub(scrub.Options{})
	if !errors.Is(err, scrub.ErrDamage) || len(res.Failures) != 1 || res.Failures[0].Kind != scrub.FailMetadata {
		t.Fatalf("scrub of a map without its page: %v %+v", err, res)
	}
	if e.status(v.UID) != metastore.StatusInvalid {
		t.Fatal("version with a missing page is not invalid")
	}
	raw(func(b *bolt.Bucket) error { return b.Put(pl[0][:], page) })
	if _, err := e.scrub(scrub.Options{Deep: true}); err != nil || e.status(v.UID) != metastore.StatusValid {
		t.Fatalf("deep-scrub of the repaired map: %v, %s", err, e.status(v.UID))
	}
}

// TestConcurrentMigration: a deep-scrub running while migrate-encryption
// moves every block to new objects (and deletes the old ones) follows the
// records and finds no damage.
func TestConcurrentMigration(t *testing.T) {
	for round := range 3 {
		t.Run(fmt.Sprint(round), func(t *testing.T) {
			e := newEnv(t)
			var uids []string
			for i := range 3 {
				uids = append(uids, e.backup(randomImage(60, uint64(100*round+i))).UID)
			}
			e.key(1)
			mig := e.store(1)
			scr := e.store(0) // holds the key of version 1 too
			var wg sync.WaitGroup
			var migErr error
			migrated := make(chan struct{})
			switch round {
			case 0: // every read finds its object moved
				scr.beforeGet = func() { <-migrated }
			default: // reads and switches interleave
				scr.beforeGet = func() { time.Sleep(time.Millisecond) }
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer close(migrated)
				_, migErr = reencrypt.Run(t.Context(), mig.Store, e.db, reencrypt.Options{Workers: 2, Batch: 8})
			}()
			res, err := scrub.Run(t.Context(), scr, e.db, scrub.Options{Deep: true, All: true, Workers: 4})
			wg.Wait()
			if migErr != nil {
				t.Fatal(migErr)
			}
			if err != nil || res.FailuresTotal != 0 {
				t.Fatalf("deep-scrub during a migration: %v %+v", err, res.Failures)
			}
			for _, uid := range uids {
				if e.status(uid) != metastore.StatusValid {
					t.Fatalf("%s is %s", uid, e.status(uid))
				}
			}
			t.Logf("%d reads failed and were followed to the moved record", scr.failed.Load())
			if round == 0 && scr.failed.Load() == 0 {
				t.Error("no read found its object moved")
			}
			if res.BlocksChecked != 180 {
				t.Errorf("checked %d blocks, want 180", res.BlocksChecked)
			}
		})
	}
}

func sorted(s ...string) []string { slices.Sort(s); return s }

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
