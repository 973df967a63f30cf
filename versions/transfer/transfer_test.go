package transfer_test

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
	"testing"
	"time"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/blockstore/backend/file"
	"github.com/backy/backy/blockstore/keyring"
	"github.com/backy/backy/blockstore/object"
	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/internal/clock"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/metastore/metastoretest"
	"github.com/backy/backy/versions/backup"
	"github.com/backy/backy/versions/catalog"
	"github.com/backy/backy/versions/manifest"
	"github.com/backy/backy/versions/transfer"
)

// testBS is the block size of the test stores: the smallest the metadata
// stream allows.
const testBS = 4096

// testKeys is the object.Keys of a test store.
type testKeys map[uint16]*object.Key

func (k testKeys) Key(v uint16) (*object.Key, error) {
	if key := k[v]; key != nil {
		return key, nil
	}
	return nil, fmt.Errorf("%w: encryption version %d", object.ErrNoKey, v)
}

// newKey makes a random key of encryption version v and its registration.
func newKey(t testing.TB, v uint16) (*object.Key, []byte) {
	t.Helper()
	material := make([]byte, 32)
	_, _ = rand.Read(material)
	k, err := object.NewKey(v, object.CipherAES256GCM, material)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := keyring.Registration{Format: 1, EncVersion: v, Cipher: k.Cipher, KeyID: k.ID, Registered: time.Now()}.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return k, reg
}

// store is one test store: a metastore (checked when the test ends unless
// noCheck), a file backend holding the store identity (and key
// registrations), a block store and a catalog.
type store struct {
	t    testing.TB
	dir  string
	db   *metastore.DB
	be   *file.Backend
	opts blockstore.Options
	st   *blockstore.Store
	cat  *catalog.Catalog
}

func newStore(t testing.TB, encrypted bool) *store {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	var sid [16]byte
	_, _ = rand.Read(sid[:])
	db, err := metastore.Create(filepath.Join(dir, "backy.db"), testBS, sid, metastore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	metastoretest.CheckOnCleanup(t, db)
	be, err := file.NewWithOptions(filepath.Join(dir, "data"), file.Options{DeferDirSync: true})
	if err != nil {
		t.Fatal(err)
	}
	stats, err := db.Stats()
	if err != nil {
		t.Fatal(err)
	}
	created, err := time.Parse(time.RFC3339, stats.Created)
	if err != nil {
		t.Fatal(err)
	}
	if err := blockstore.WriteIdentity(ctx, be, blockstore.NewIdentity(sid, testBS, created)); err != nil {
		t.Fatal(err)
	}
	s := &store{t: t, dir: dir, db: db, be: be}
	if encrypted {
		k, reg := newKey(t, 1)
		if _, err := db.RegisterEncVersion(1, reg); err != nil {
			t.Fatal(err)
		}
		if err := be.Put(ctx, keyring.ObjectName(1), reg); err != nil {
			t.Fatal(err)
		}
		s.opts = blockstore.Options{Compression: block.CompressionZstd, Key: k, Keys: testKeys{1: k}}
	}
	s.st = s.blockStore()
	s.cat = catalog.New(s.st, "transfer test", nil)
	return s
}

// blockStore opens another block store over the store's backend.
func (s *store) blockStore() *blockstore.Store {
	s.t.Helper()
	st, err := blockstore.New(s.be, s.opts)
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(st.Close)
	return st
}

// openCatalog is the transfer.OpenCatalog of the store: a catalog that
// reads with the store's keys.
func (s *store) openCatalog(context.Context, *metastore.DB) (*catalog.Catalog, error) {
	return catalog.New(s.blockStore(), "transfer test", nil), nil
}

// target creates another metastore of the same store (same backend).
func (s *store) target() *metastore.DB {
	s.t.Helper()
	db, err := metastore.Create(filepath.Join(s.t.TempDir(), "backy.db"), testBS, s.db.StoreID(), metastore.Options{})
	if err != nil {
		s.t.Fatal(err)
	}
	metastoretest.CheckOnCleanup(s.t, db)
	return db
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

func (s *store) backup(data []byte, volume string) *metastore.Version {
	s.t.Helper()
	v, err := backup.Run(context.Background(), s.st, s.db, &memSource{data}, backup.Options{Volume: volume, Workers: 4})
	if err != nil {
		s.t.Fatalf("backup: %v", err)
	}
	return v
}

// image makes n bytes of test image: random blocks, zero blocks and
// repeats.
func image(seed uint64, n int) []byte {
	r := mrand.New(mrand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for off := 0; off < n; off += testBS {
		blk := b[off:min(off+testBS, n)]
		switch i := off / testBS; {
		case i%5 == 3:
		case i%5 == 4 && off >= 4*testBS:
			copy(blk, b[testBS:2*testBS])
		default:
			for j := range blk {
				blk[j] = byte(r.Uint32())
			}
		}
	}
	return b
}

// changed returns a copy of b with every 9th block rewritten.
func changed(b []byte, seed uint64) []byte {
	c := slices.Clone(b)
	r := mrand.New(mrand.NewPCG(seed, 1))
	for off := 0; off < len(c); off += 9 * testBS {
		for j := off; j < min(off+testBS, len(c)); j++ {
			c[j] = byte(r.Uint32())
		}
	}
	return c
}

func (s *store) update(uid string, fn func(*metastore.Version)) {
	s.t.Helper()
	if _, err := s.db.UpdateVersion(uid, func(v *metastore.Version) error { fn(v); return nil }); err != nil {
		s.t.Fatal(err)
	}
}

// versions makes a few versions: two of volume a (the second sharing most
// blocks with the first), a protected, invalid one of volume b with labels
// and an expiry date, and an empty one.
func (s *store) versions() []string {
	s.t.Helper()
	a := image(1, 700*testBS+77)
	v1 := s.backup(a, "a")
	v2 := s.backup(changed(a, 2), "a")
	v3 := s.backup(image(3, 40*testBS), "b")
	exp := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	s.update(v3.UID, func(v *metastore.Version) {
		v.Protected = true
		v.Labels["owner"] = "test"
		v.Expire = &exp
	})
	// A block of v3 found damaged: v3 is invalid, its record flagged.
	for _, id := range mapOf(s.t, s.db, v3.UID).IDs {
		if !id.IsSparse() {
			if uids, err := s.db.MarkInvalid([]block.ID{id}); err != nil || !slices.Equal(uids, []string{v3.UID}) {
				s.t.Fatalf("MarkInvalid = %v, %v", uids, err)
			}
			break
		}
	}
	v4 := s.backup(nil, "empty")
	return []string{v1.UID, v2.UID, v3.UID, v4.UID}
}

func (s *store) export(uids ...string) []byte {
	s.t.Helper()
	var buf bytes.Buffer
	res, err := transfer.Export(context.Background(), s.db, uids, &buf, "transfer test")
	if err != nil {
		s.t.Fatalf("Export: %v", err)
	}
	if !slices.Equal(res.Versions, uids) || res.Bytes != int64(buf.Len()) {
		s.t.Errorf("Export = %+v, want versions %v and %d bytes", res, uids, buf.Len())
	}
	return buf.Bytes()
}

func opener(b []byte) func() (io.ReadCloser, error) {
	return func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
}

func importStream(db *metastore.DB, stream []byte, objects transfer.Statter) (*transfer.ImportResult, error) {
	return transfer.Import(context.Background(), db, opener(stream), transfer.ImportOptions{Objects: objects, Workers: 4})
}

// rewrite re-encodes a stream after fn changed its store description or
// key registrations.
func rewrite(t testing.TB, stream []byte, fn func(*manifest.StoreInfo, *[]manifest.KeyReg)) []byte {
	t.Helper()
	mr, err := manifest.NewReader(bytes.NewReader(stream))
	if err != nil {
		t.Fatal(err)
	}
	info, keys := mr.Store(), slices.Clone(mr.Keys())
	fn(&info, &keys)
	var buf bytes.Buffer
	mw, err := manifest.NewWriter(&buf, info, keys)
	if err != nil {
		t.Fatal(err)
	}
	for {
		v, err := mr.NextVersion()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := mw.BeginVersion(v); err != nil {
			t.Fatal(err)
		}
		for {
			p, err := mr.NextPage()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			recs := make([]block.Record, len(p.IDs))
			for i, id := range p.IDs {
				if !id.IsSparse() {
					recs[i], _ = p.Record(id)
				}
			}
			if err := mw.Page(p.IDs, recs); err != nil {
				t.Fatal(err)
			}
		}
		if err := mw.EndVersion(); err != nil {
			t.Fatal(err)
		}
	}
	if err := mw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// blockMap is a version's map and the records of its blocks.
type blockMap struct {
	IDs  []block.ID
	Recs map[block.ID]block.Record
}

func mapOf(t testing.TB, db *metastore.DB, uid string) blockMap {
	t.Helper()
	m := blockMap{Recs: map[block.ID]block.Record{}}
	err := db.WalkMap(uid, func(c metastore.MapChunk) error {
		m.IDs = append(m.IDs, c.IDs...)
		for i, id := range c.IDs {
			if !id.IsSparse() {
				if !c.Found[i] {
					return fmt.Errorf("block %d has no record", c.First+int64(i))
				}
				m.Recs[id] = c.Records[i]
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// state is everything of a metastore a test compares.
type state struct {
	Stats     metastore.StoreStats
	Versions  []*metastore.Version
	Snapshots map[string]metastore.SnapshotState
	Keys      map[uint16][]byte
	Maps      map[string]blockMap
	Trash     []metastore.TrashEntry
	Pending   []string
}

func dump(t testing.TB, db *metastore.DB, maps bool) state {
	t.Helper()
	var s state
	var err error
	if s.Stats, err = db.Stats(); err != nil {
		t.Fatal(err)
	}
	if s.Versions, err = db.Versions(nil); err != nil {
		t.Fatal(err)
	}
	if s.Snapshots, err = db.Snapshots(); err != nil {
		t.Fatal(err)
	}
	if s.Keys, err = db.EncVersions(); err != nil {
		t.Fatal(err)
	}
	if s.Trash, err = db.Trash(1 << 20); err != nil {
		t.Fatal(err)
	}
	if s.Pending, err = db.PendingSnapshots(); err != nil {
		t.Fatal(err)
	}
	if maps {
		s.Maps = map[string]blockMap{}
		for _, v := range s.Versions {
			if v.Status != metastore.StatusIncomplete {
				s.Maps[v.UID] = mapOf(t, db, v.UID)
			}
		}
	}
	return s
}

func unchanged(t testing.TB, what string, db *metastore.DB, before state) {
	t.Helper()
	if after := dump(t, db, before.Maps != nil); !reflect.DeepEqual(before, after) {
		t.Errorf("%s changed the metastore:\nbefore %+v\nafter  %+v", what, before.Stats, after.Stats)
	}
}

// sameContent compares the versions (all fields but LastScrub and
// LastDeepScrub when noScrub), their maps and records, and the block totals of two
// metastores.
func sameContent(t testing.TB, got, want state, noScrub bool) {
	t.Helper()
	clean := func(vs []*metastore.Version) []metastore.Version {
		var out []metastore.Version
		for _, v := range vs {
			c := *v
			if noScrub {
				c.LastScrub, c.LastDeepScrub = nil, nil
			}
			out = append(out, c)
		}
		return out
	}
	if g, w := clean(got.Versions), clean(want.Versions); !reflect.DeepEqual(g, w) {
		t.Errorf("versions\n%+v\nwant\n%+v", g, w)
	}
	if !reflect.DeepEqual(got.Maps, want.Maps) {
		t.Errorf("block maps or records differ (%d maps, want %d)", len(got.Maps), len(want.Maps))
	}
	gs, ws := got.Stats, want.Stats
	if gs.Versions != ws.Versions || gs.Blocks != ws.Blocks || gs.StoredBytes != ws.StoredBytes || gs.PlainBytes != ws.PlainBytes || gs.BlockSize != ws.BlockSize {
		t.Errorf("stats %+v, want %+v", gs, ws)
	}
	if !reflect.DeepEqual(got.Keys, want.Keys) {
		t.Errorf("key registrations %s, want %s", fmt.Sprint(got.Keys), fmt.Sprint(want.Keys))
	}
}

func TestExportImport(t *testing.T) {
	for _, encrypted := range []bool{false, true} {
		t.Run(fmt.Sprintf("encrypted=%v", encrypted), func(t *testing.T) {
			s := newStore(t, encrypted)
			uids := s.versions()
			stream := s.export(uids...)
			dst := s.target()
			res, err := importStream(dst, stream, s.st)
			if err != nil {
				t.Fatalf("Import: %v", err)
			}
			want := dump(t, s.db, true)
			var blocks int64
			for _, v := range want.Versions {
				blocks += v.Blocks()
			}
			if !slices.Equal(res.Versions, uids) || res.Blocks != blocks || res.Records == 0 || res.ObjectsChecked != res.Records {
				t.Errorf("Import = %+v, want versions %v and %d blocks", res, uids, blocks)
			}
			got := dump(t, dst, true)
			sameContent(t, got, want, false)
			// Imported versions get snapshots of their own.
			if !slices.Equal(got.Pending, uids) {
				t.Errorf("pending after import %v, want %v", got.Pending, uids)
			}
			if got.Stats.Unreferenced != 0 || got.Stats.Trash != 0 {
				t.Errorf("import left %d unreferenced blocks and %d trash entries", got.Stats.Unreferenced, got.Stats.Trash)
			}

			// Again: every uid exists.
			before := dump(t, dst, true)
			if _, err := importStream(dst, stream, s.st); !errors.Is(err, transfer.ErrExists) {
				t.Errorf("second Import: %v", err)
			}
			unchanged(t, "a second import", dst, before)
			if _, err := importStream(dst, s.export(uids[2]), nil); !errors.Is(err, transfer.ErrExists) {
				t.Errorf("Import of one existing version: %v", err)
			}
			unchanged(t, "a second import", dst, before)

			// A subset, in the order asked, into a third metastore.
			third := s.target()
			sub := s.export(uids[2], uids[0])
			res, err = importStream(third, sub, s.st)
			if err != nil || !slices.Equal(res.Versions, []string{uids[2], uids[0]}) {
				t.Fatalf("Import of a subset = %+v, %v", res, err)
			}
			for _, uid := range []string{uids[0], uids[2]} {
				if !reflect.DeepEqual(mapOf(t, third, uid), want.Maps[uid]) {
					t.Errorf("map of %s differs", uid)
				}
			}
			// The rest follows, deduplicated against what is there.
			if _, err := importStream(third, s.export(uids[1], uids[3]), s.st); err != nil {
				t.Fatal(err)
			}
			sameContent(t, dump(t, third, true), want, false)
		})
	}
}

func TestExportRefused(t *testing.T) {
	s := newStore(t, false)
	v := s.backup(image(4, 10*testBS), "a")
	uid, err := metastore.NewUID(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.db.CreateVersion(&metastore.Version{UID: uid, Volume: "a", Size: testBS, BlockSize: testBS, Status: metastore.StatusIncomplete}); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := transfer.Export(context.Background(), s.db, []string{v.UID, uid}, &buf, ""); !errors.Is(err, transfer.ErrNotExportable) {
		t.Errorf("Export of an incomplete version: %v", err)
	}
	unknown, _ := metastore.NewUID(time.Now().Add(time.Hour))
	if _, err := transfer.Export(context.Background(), s.db, []string{unknown}, &buf, ""); !errors.Is(err, metastore.ErrVersionNotFound) {
		t.Errorf("Export of an unknown version: %v", err)
	}
	lk, err := s.db.LockVersion(v.UID, metastore.Exclusive)
	if err != nil {
		t.Fatal(err)
	}
	defer lk.Unlock()
	if _, err := transfer.Export(context.Background(), s.db, []string{v.UID}, &buf, ""); !errors.Is(err, metastore.ErrLocked) {
		t.Errorf("Export of a version being written: %v", err)
	}
}

func TestImportRefused(t *testing.T) {
	ctx := context.Background()
	s := newStore(t, false)
	uids := s.versions()
	// dst holds the first version already; the stream brings the others.
	dst := s.target()
	if _, err := importStream(dst, s.export(uids[0]), s.st); err != nil {
		t.Fatal(err)
	}
	stream := s.export(uids[1:]...)
	before := dump(t, dst, true)
	refuse := func(what string, db *metastore.DB, stream []byte, objects transfer.Statter, want error) error {
		t.Helper()
		_, err := importStream(db, stream, objects)
		if !errors.Is(err, want) {
			t.Errorf("%s: Import = %v, want %v", what, err, want)
		}
		if db == dst {
			unchanged(t, what, dst, before)
		}
		return err
	}

	t.Run("other-store", func(t *testing.T) {
		other := rewrite(t, stream, func(s *manifest.StoreInfo, _ *[]manifest.KeyReg) { s.StoreID[0] ^= 1 })
		refuse("another store id", dst, other, s.st, transfer.ErrOtherStore)
		// The same store id with another block size.
		db, err := metastore.Create(filepath.Join(t.TempDir(), "backy.db"), 2*testBS, s.db.StoreID(), metastore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		metastoretest.CheckOnCleanup(t, db)
		refuse("another block size", db, stream, s.st, transfer.ErrOtherStore)
	})

	t.Run("key-mismatch", func(t *testing.T) {
		db := s.target()
		k1, reg1 := newKey(t, 1)
		_, reg2 := newKey(t, 1)
		if _, err := db.RegisterEncVersion(1, reg1); err != nil {
			t.Fatal(err)
		}
		with := func(reg []byte) []byte {
			return rewrite(t, stream, func(_ *manifest.StoreInfo, keys *[]manifest.KeyReg) {
				*keys = append(*keys, manifest.KeyReg{EncVersion: 1, Registration: reg})
			})
		}
		b := dump(t, db, false)
		refuse("another key of version 1", db, with(reg2), nil, transfer.ErrKeyMismatch)
		// Another cipher with the same key id.
		other, err := keyring.Registration{Format: 1, EncVersion: 1, Cipher: object.CipherXChaCha20Poly1305, KeyID: k1.ID, Registered: time.Now()}.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		refuse("another cipher of version 1", db, with(other), nil, transfer.ErrKeyMismatch)
		unchanged(t, "refused imports", db, b)
		// The same key, registered at another time: it imports.
		same, err := keyring.Registration{Format: 1, EncVersion: 1, Cipher: k1.Cipher, KeyID: k1.ID, Registered: time.Now().Add(time.Hour)}.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := importStream(db, with(same), nil); err != nil {
			t.Errorf("Import with the store's own key: %v", err)
		}
		keys, err := db.EncVersions()
		if err != nil || !bytes.Equal(keys[1], reg1) {
			t.Errorf("registration after import %q, %v; want the store's own kept", keys[1], err)
		}
		// A version a store does not have yet is registered.
		db2 := s.target()
		if _, err := importStream(db2, with(reg2), nil); err != nil {
			t.Fatal(err)
		}
		if keys, err := db2.EncVersions(); err != nil || !bytes.Equal(keys[1], reg2) {
			t.Errorf("registration after import %q, %v", keys[1], err)
		}
	})

	t.Run("damaged-stream", func(t *testing.T) {
		for _, n := range []int{0, 1, 4, 5, 20, len(stream) / 3, len(stream) / 2, len(stream) - 34, len(stream) - 1} {
			refuse(fmt.Sprintf("a stream cut at %d of %d bytes", n, len(stream)), dst, stream[:n], s.st, manifest.ErrInvalid)
		}
		at := bytes.Index(stream, []byte(uids[1]))
		if at < 0 {
			t.Fatal("the stream does not hold the uid in the clear")
		}
		for _, pos := range []int{at + 5, at + 40, len(stream) / 2, len(stream) - 20, len(stream) - 1} {
			b := slices.Clone(stream)
			b[pos] ^= 0x01
			refuse(fmt.Sprintf("a stream with byte %d flipped", pos), dst, b, s.st, manifest.ErrInvalid)
		}
		b := append(slices.Clone(stream), 0)
		refuse("a stream with a byte appended", dst, b, s.st, manifest.ErrInvalid)
		// Every byte of the stream matters: a flip anywhere is refused
		// and changes nothing.
		for pos := 0; pos < len(stream); pos += max(1, len(stream)/97) {
			b := slices.Clone(stream)
			b[pos] ^= 0x80
			if _, err := importStream(dst, b, nil); err == nil {
				t.Errorf("a stream with byte %d flipped imported", pos)
				break
			}
		}
		unchanged(t, "flipped streams", dst, before)
	})

	t.Run("missing-objects", func(t *testing.T) {
		// Three objects only the second version names, and one the first
		// and the second name.
		first, second := before.Maps[uids[0]], mapOf(t, s.db, uids[1])
		var pick []block.Name
		for id, r := range second.Recs {
			if _, ok := first.Recs[id]; !ok && len(pick) < 3 {
				pick = append(pick, r.Name)
			}
		}
		for id, r := range second.Recs {
			if _, ok := first.Recs[id]; ok {
				pick = append(pick, r.Name)
				break
			}
		}
		if len(pick) != 4 {
			t.Fatalf("picked %d objects", len(pick))
		}
		saved := map[string][]byte{}
		for _, n := range pick {
			name := blockstore.ObjectName(n)
			b, err := s.be.Get(ctx, name, nil)
			if err != nil {
				t.Fatal(err)
			}
			saved[name] = b
			if err := s.be.Delete(ctx, name); err != nil {
				t.Fatal(err)
			}
		}
		defer func() {
			for n, b := range saved {
				if err := s.be.Put(ctx, n, b); err != nil {
					t.Error(err)
				}
			}
		}()
		err := refuse("missing objects", dst, stream, s.st, transfer.ErrMissingObjects)
		var me *transfer.MissingError
		if !errors.As(err, &me) || me.Count != 4 || len(me.Samples) != 4 {
			t.Errorf("Import with 4 objects missing: %#v", err)
		}
		// The first and the second version, which both name the fourth
		// object, into an empty metastore: still 4 objects missing.
		empty := s.target()
		b := dump(t, empty, true)
		_, err = importStream(empty, s.export(uids[0], uids[1]), s.st)
		if !errors.As(err, &me) || me.Count != 4 {
			t.Errorf("Import with 4 objects missing, one named by both versions: %v", err)
		}
		unchanged(t, "an import missing objects", empty, b)
		// A damaged object (of another size) counts as missing.
		for n, raw := range saved {
			if err := s.be.Put(ctx, n, raw[:len(raw)-1]); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := importStream(empty, s.export(uids[0], uids[1]), s.st); !errors.As(err, &me) || me.Count != 4 {
			t.Errorf("Import with 4 objects truncated: %v", err)
		}
		unchanged(t, "an import of damaged objects", empty, b)
		// Without the check it imports.
		res, err := importStream(dst, stream, nil)
		if err != nil || res.ObjectsChecked != 0 || !slices.Equal(res.Versions, uids[1:]) {
			t.Fatalf("Import without verification = %+v, %v", res, err)
		}
		for _, uid := range uids[1:] {
			if !reflect.DeepEqual(mapOf(t, dst, uid), mapOf(t, s.db, uid)) {
				t.Errorf("map of %s differs", uid)
			}
		}
	})
}

func TestImportTrashed(t *testing.T) {
	s := newStore(t, false)
	uids := s.versions()
	stream := s.export(uids[1])
	dst := s.target()
	// A scratch version of dst whose block z first named object m, then
	// object n, a name the stream uses: n is in dst's trash.
	var n block.Name
	for _, r := range mapOf(t, s.db, uids[1]).Recs {
		n = r.Name
		break
	}
	uid, err := metastore.NewUID(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := dst.CreateVersion(&metastore.Version{UID: uid, Volume: "scratch", Size: testBS, BlockSize: testBS, Status: metastore.StatusIncomplete}); err != nil {
		t.Fatal(err)
	}
	var z block.ID
	var m block.Name
	_, _ = rand.Read(z[:])
	_, _ = rand.Read(m[:])
	for _, name := range []block.Name{m, n} {
		if _, err := dst.Commit(metastore.Commit{UID: uid, Pages: []metastore.PageWrite{metastore.NewPage([]block.ID{z})},
			New: []block.Record{{ID: z, Name: name, Size: testBS, StoredSize: testBS + 40}}}); err != nil {
			t.Fatal(err)
		}
	}
	trash, err := dst.Trash(10)
	if err != nil || len(trash) != 1 || trash[0].Name != n {
		t.Fatalf("trash %v, %v; want %s", trash, err, n)
	}
	before := dump(t, dst, true)
	if _, err := importStream(dst, stream, s.st); !errors.Is(err, metastore.ErrTrashed) {
		t.Errorf("Import of a record naming a trashed object: %v", err)
	}
	unchanged(t, "an import of a trashed object", dst, before)
}

// withSnapshots makes the versions of s and writes their snapshots.
func withSnapshots(t *testing.T, s *store) []string {
	t.Helper()
	uids := s.versions()
	res, err := s.cat.Sync(context.Background(), s.db)
	if err != nil || res.Written != len(uids) {
		t.Fatalf("Sync = %+v, %v", res, err)
	}
	return uids
}

func rebuild(t *testing.T, s *store, path string, o transfer.RebuildOptions) (*transfer.RebuildResult, error) {
	t.Helper()
	return transfer.Rebuild(context.Background(), path, s.be, s.openCatalog, o)
}

// openChecked opens the metastore at path; it is checked and closed when
// the test ends.
func openChecked(t *testing.T, path string) *metastore.DB {
	t.Helper()
	db, err := metastore.Open(path, metastore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	metastoretest.CheckOnCleanup(t, db)
	return db
}

// checkAndClose checks and closes a metastore now (Rebuild waits for the
// store lock every open metastore holds).
func checkAndClose(t *testing.T, path string) state {
	t.Helper()
	db, err := metastore.Open(path, metastore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	metastoretest.Check(t, db)
	return dump(t, db, true)
}

func TestRebuild(t *testing.T) {
	for _, encrypted := range []bool{false, true} {
		t.Run(fmt.Sprintf("encrypted=%v", encrypted), func(t *testing.T) {
			s := newStore(t, encrypted)
			uids := withSnapshots(t, s)
			// A scrub outcome does not make a snapshot stale.
			if err := s.db.SetLastScrub(uids[0], metastore.ScrubRecord{At: time.Now().UTC(), Kind: "scrub", Percent: 100, OK: true}); err != nil {
				t.Fatal(err)
			}
			want := dump(t, s.db, true)
			if len(want.Pending) != 0 {
				t.Fatalf("pending %v", want.Pending)
			}
			var blocks int64
			for _, v := range want.Versions {
				blocks += v.Blocks()
			}

			// No metastore at all.
			path := filepath.Join(t.TempDir(), "meta", "backy.db")
			res, err := rebuild(t, s, path, transfer.RebuildOptions{})
			if err != nil {
				t.Fatalf("Rebuild: %v", err)
			}
			if res.Versions != len(uids) || res.Blocks != blocks || res.OlderSnapshots != 0 || len(res.Unreadable) != 0 ||
				res.Conflicts != 0 || res.KeptAside != "" || res.OldProblem != "" {
				t.Errorf("Rebuild = %+v, want %d versions of %d blocks", res, len(uids), blocks)
			}
			got := checkAndClose(t, path)
			sameContent(t, got, want, true)
			if got.Stats.Created != want.Stats.Created || got.Stats.Unreferenced != 0 || got.Stats.Trash != 0 {
				t.Errorf("rebuilt stats %+v, want %+v", got.Stats, want.Stats)
			}
			if !sameSnapshots(got.Snapshots, want.Snapshots) {
				t.Errorf("snapshot bookkeeping %v, want %v", got.Snapshots, want.Snapshots)
			}
			if len(got.Pending) != 0 {
				t.Errorf("pending after rebuild %v", got.Pending)
			}
			entries, _ := os.ReadDir(filepath.Dir(path))
			for _, e := range entries {
				if strings.Contains(e.Name(), ".rebuilding-") {
					t.Errorf("rebuild left %s", e.Name())
				}
			}

			// A healthy metastore is refused, and kept as it is.
			old, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := rebuild(t, s, path, transfer.RebuildOptions{}); !errors.Is(err, transfer.ErrHealthy) {
				t.Errorf("Rebuild of a healthy metastore: %v", err)
			}
			if now, _ := os.ReadFile(path); !bytes.Equal(now, old) {
				t.Error("a refused rebuild changed the metastore")
			}
			// With Force it is rebuilt, the old one kept aside.
			stamp := time.Date(2031, 5, 6, 7, 8, 9, 0, time.UTC)
			res, err = rebuild(t, s, path, transfer.RebuildOptions{Force: true, Clock: clock.NewFake(stamp)})
			if err != nil {
				t.Fatalf("Rebuild --force: %v", err)
			}
			if res.KeptAside != path+".replaced-20310506T070809Z" || res.OldProblem != "" || res.Versions != len(uids) {
				t.Errorf("Rebuild --force = %+v", res)
			}
			if aside, err := os.ReadFile(res.KeptAside); err != nil || !bytes.Equal(aside, old) {
				t.Errorf("the metastore kept aside differs from the old one (%v)", err)
			}
			sameContent(t, checkAndClose(t, path), want, true)
			// Again in the same second: kept under another name.
			res, err = rebuild(t, s, path, transfer.RebuildOptions{Force: true, Clock: clock.NewFake(stamp)})
			if err != nil || res.KeptAside != path+".replaced-20310506T070809Z-2" {
				t.Errorf("second Rebuild --force = %+v, %v", res, err)
			}

			// A damaged metastore is rebuilt without Force.
			for _, d := range []struct {
				name string
				do   func() []byte
			}{
				{"truncated", func() []byte {
					b, err := os.ReadFile(path)
					if err != nil {
						t.Fatal(err)
					}
					return b[:len(b)/3]
				}},
				{"garbage", func() []byte {
					b := make([]byte, 64<<10)
					_, _ = rand.Read(b)
					return b
				}},
				{"empty", func() []byte { return nil }},
				{"another-store", func() []byte {
					p := filepath.Join(t.TempDir(), "other.db")
					var sid [16]byte
					_, _ = rand.Read(sid[:])
					db, err := metastore.Create(p, testBS, sid, metastore.Options{})
					if err != nil {
						t.Fatal(err)
					}
					db.Close()
					b, err := os.ReadFile(p)
					if err != nil {
						t.Fatal(err)
					}
					return b
				}},
			} {
				bad := d.do()
				if err := os.WriteFile(path, bad, 0o600); err != nil {
					t.Fatal(err)
				}
				res, err := rebuild(t, s, path, transfer.RebuildOptions{Clock: clock.NewFake(stamp.Add(time.Hour))})
				if err != nil {
					t.Errorf("%s: Rebuild of a damaged metastore: %v", d.name, err)
					continue
				}
				if res.OldProblem == "" || res.KeptAside == "" || res.Versions != len(uids) {
					t.Errorf("%s: Rebuild = %+v", d.name, res)
				}
				if aside, err := os.ReadFile(res.KeptAside); err != nil || !bytes.Equal(aside, bad) {
					t.Errorf("%s: the metastore kept aside is not the damaged one (%v)", d.name, err)
				}
				sameContent(t, checkAndClose(t, path), want, true)
			}
			db := openChecked(t, path)
			// The rebuilt metastore works on: a change is synced, and
			// only the new snapshot stays.
			if _, err := db.UpdateVersion(uids[0], func(v *metastore.Version) error { v.Protected = true; return nil }); err != nil {
				t.Fatal(err)
			}
			cat := catalog.New(s.st, "transfer test", nil)
			if sres, err := cat.Sync(context.Background(), db); err != nil || sres.Written != 1 {
				t.Errorf("Sync after rebuild = %+v, %v", sres, err)
			}
			if refs, err := cat.ListVersion(context.Background(), uids[0]); err != nil || len(refs) != 1 {
				t.Errorf("snapshots after Sync %+v, %v", refs, err)
			}
			if p, err := cat.Protected(context.Background(), db); err != nil || len(p.Versions)+len(p.Unreadable)+len(p.Names) != 0 {
				t.Errorf("Protected after rebuild = %+v, %v", p, err)
			}
		})
	}
}

// sameSnapshots compares the snapshot each version's bookkeeping names.
func sameSnapshots(a, b map[string]metastore.SnapshotState) bool {
	if len(a) != len(b) {
		return false
	}
	for uid, s := range a {
		if o, ok := b[uid]; !ok || o.Gen != s.Gen || o.Tag != s.Tag {
			return false
		}
	}
	return true
}

func TestRebuildDamagedSnapshots(t *testing.T) {
	ctx := context.Background()
	s := newStore(t, true)
	uids := withSnapshots(t, s)
	a, b := uids[0], uids[2]
	want := dump(t, s.db, true)
	// a: a damaged newest snapshot over an intact older one (the older
	// is the state before a change).
	refs, err := s.cat.ListVersion(ctx, a)
	if err != nil || len(refs) != 1 {
		t.Fatalf("refs %+v, %v", refs, err)
	}
	older := refs[0]
	saved := map[string][]byte{}
	for i := range older.Chunks {
		n := fmt.Sprintf("%s%08x", older.Dir(), i)
		if saved[n], err = s.be.Get(ctx, n, nil); err != nil {
			t.Fatal(err)
		}
	}
	s.update(a, func(v *metastore.Version) { v.Protected = true })
	if res, err := s.cat.Sync(ctx, s.db); err != nil || res.Written != 1 {
		t.Fatalf("Sync = %+v, %v", res, err)
	}
	for n, raw := range saved {
		if err := s.be.Put(ctx, n, raw); err != nil {
			t.Fatal(err)
		}
	}
	flip := func(uid string) {
		refs, err := s.cat.ListVersion(ctx, uid)
		if err != nil || len(refs) == 0 {
			t.Fatalf("refs of %s: %+v, %v", uid, refs, err)
		}
		n := refs[0].Dir() + "00000000"
		raw, err := s.be.Get(ctx, n, nil)
		if err != nil {
			t.Fatal(err)
		}
		raw[len(raw)/2] ^= 0x04
		if err := s.be.Put(ctx, n, raw); err != nil {
			t.Fatal(err)
		}
	}
	flip(a)
	// b: its only snapshot damaged.
	flip(b)

	path := filepath.Join(t.TempDir(), "backy.db")
	res, err := rebuild(t, s, path, transfer.RebuildOptions{})
	if err != nil {
		t.Fatalf("Rebuild: %v", err)
	}
	if res.Versions != len(uids)-1 || res.OlderSnapshots != 1 || !slices.Equal(res.Unreadable, []string{b}) {
		t.Errorf("Rebuild = %+v; want %d versions, one from an older snapshot, %s unreadable", res, len(uids)-1, b)
	}
	db := openChecked(t, path)
	got := dump(t, db, true)
	// The expected state: a as it was before the change, b absent.
	var wantVs []*metastore.Version
	for _, v := range want.Versions {
		if v.UID != b {
			wantVs = append(wantVs, v)
		}
	}
	want.Versions = wantVs
	delete(want.Maps, b)
	for _, v := range got.Versions {
		if v.UID == a && v.Protected {
			t.Errorf("version %s rebuilt from the damaged newest snapshot", a)
		}
	}
	// Block totals: the records of the versions rebuilt.
	recs := map[block.ID]block.Record{}
	for _, m := range want.Maps {
		for id, r := range m.Recs {
			recs[id] = r
		}
	}
	want.Stats.Versions = len(wantVs)
	want.Stats.Blocks, want.Stats.StoredBytes, want.Stats.PlainBytes = int64(len(recs)), 0, 0
	for _, r := range recs {
		want.Stats.StoredBytes += int64(r.StoredSize)
		want.Stats.PlainBytes += int64(r.Size)
	}
	sameContent(t, got, want, true)
}

// TestRebuildConflicts rebuilds from snapshots that name different
// objects for one block (a record switched objects and only one of the
// versions using it got a fresh snapshot): the newer snapshot's record
// wins, and the other version gets a fresh snapshot.
func TestRebuildConflicts(t *testing.T) {
	ctx := context.Background()
	s := newStore(t, false)
	data := image(5, 30*testBS)
	v1 := s.backup(data, "a")
	v2 := s.backup(data, "b")
	if res, err := s.cat.Sync(ctx, s.db); err != nil || res.Written != 2 {
		t.Fatalf("Sync = %+v, %v", res, err)
	}
	var rec block.Record
	for _, r := range mapOf(t, s.db, v1.UID).Recs {
		rec = r
		break
	}
	moved := rec
	_, _ = rand.Read(moved.Name[:])
	if res, err := s.db.ReplaceObjects([]metastore.Replacement{{Old: rec.Name, New: moved}}); err != nil || len(res.Replaced) != 1 {
		t.Fatalf("ReplaceObjects = %+v, %v", res, err)
	}
	if err := s.db.ForgetTrash([]block.Name{rec.Name}); err != nil {
		t.Fatal(err)
	}
	if w, err := s.cat.Write(ctx, s.db, v2.UID); err != nil || w == nil {
		t.Fatalf("Write(%s) = %+v, %v", v2.UID, w, err)
	}
	path := filepath.Join(t.TempDir(), "backy.db")
	res, err := rebuild(t, s, path, transfer.RebuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Versions != 2 || res.Conflicts != 1 {
		t.Errorf("Rebuild = %+v, want 2 versions and 1 conflict", res)
	}
	db := openChecked(t, path)
	got, ok, err := db.LookupBlock(rec.ID)
	if err != nil || !ok || got != moved {
		t.Errorf("rebuilt record %+v (%v, %v), want the newer snapshot's %+v", got, ok, err, moved)
	}
	if p, err := db.PendingSnapshots(); err != nil || !slices.Equal(p, []string{v1.UID}) {
		t.Errorf("pending after rebuild %v, %v; want the version of the older record", p, err)
	}
	want := dump(t, s.db, true)
	sameContent(t, dump(t, db, true), want, true)
}

// TestRebuildFailure: a rebuild that cannot finish leaves the metastore
// as it was, and nothing of its own.
func TestRebuildFailure(t *testing.T) {
	ctx := context.Background()
	s := newStore(t, true)
	withSnapshots(t, s)
	dir := t.TempDir()
	path := filepath.Join(dir, "backy.db")
	garbage := []byte("not a metastore")
	if err := os.WriteFile(path, garbage, 0o600); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("no catalog")
	for _, c := range []struct {
		name string
		open transfer.OpenCatalog
		want error
	}{
		{"open-fails", func(context.Context, *metastore.DB) (*catalog.Catalog, error) { return nil, boom }, boom},
		// Without the key every snapshot fails alike: not a version to
		// skip but a rebuild to refuse.
		{"no-key", func(context.Context, *metastore.DB) (*catalog.Catalog, error) {
			st, err := blockstore.New(s.be, blockstore.Options{})
			if err != nil {
				return nil, err
			}
			t.Cleanup(st.Close)
			return catalog.New(st, "", nil), nil
		}, object.ErrNoKey},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := transfer.Rebuild(ctx, path, s.be, c.open, transfer.RebuildOptions{})
			if !errors.Is(err, c.want) {
				t.Errorf("Rebuild = %v, want %v", err, c.want)
			}
			if b, err := os.ReadFile(path); err != nil || !bytes.Equal(b, garbage) {
				t.Errorf("a failed rebuild changed the metastore (%v)", err)
			}
			entries, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range entries {
				if e.Name() != "backy.db" && e.Name() != "backy.db.locks" {
					t.Errorf("a failed rebuild left %s", e.Name())
				}
			}
		})
	}
	t.Run("no-store", func(t *testing.T) {
		empty, err := file.New(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := transfer.Rebuild(ctx, filepath.Join(t.TempDir(), "backy.db"), empty, s.openCatalog, transfer.RebuildOptions{}); !errors.Is(err, blockstore.ErrNoIdentity) {
			t.Errorf("Rebuild over an empty backend: %v", err)
		}
	})
}

func TestFromBackend(t *testing.T) {
	ctx := context.Background()
	s := newStore(t, true)
	uids := withSnapshots(t, s)
	for _, uid := range uids {
		dir := t.TempDir()
		db, err := transfer.FromBackend(ctx, dir, s.be, s.openCatalog, uid, nil)
		if err != nil {
			t.Fatalf("FromBackend(%s): %v", uid, err)
		}
		metastoretest.CheckOnCleanup(t, db)
		vs, err := db.Versions(nil)
		if err != nil {
			t.Fatal(err)
		}
		want, err := s.db.Version(uid)
		if err != nil {
			t.Fatal(err)
		}
		if len(vs) != 1 || !reflect.DeepEqual(vs[0], want) {
			t.Errorf("FromBackend(%s) holds %+v, want %+v", uid, vs, want)
		}
		if got, want := mapOf(t, db, uid), mapOf(t, s.db, uid); !reflect.DeepEqual(got, want) {
			t.Errorf("FromBackend(%s): map of %d entries, %d records; want %d, %d", uid, len(got.IDs), len(got.Recs), len(want.IDs), len(want.Recs))
		}
		if db.StoreID() != s.db.StoreID() || db.BlockSize() != testBS {
			t.Errorf("FromBackend(%s): store %x, block size %d", uid, db.StoreID(), db.BlockSize())
		}
	}
	unknown, _ := metastore.NewUID(time.Now().Add(time.Hour))
	if _, err := transfer.FromBackend(ctx, t.TempDir(), s.be, s.openCatalog, unknown, nil); !errors.Is(err, catalog.ErrNoSnapshot) {
		t.Errorf("FromBackend of an unknown version: %v", err)
	}
}

// FuzzImport feeds arbitrary streams to Import against a metastore that
// holds versions: nothing panics, and a failed import changes nothing.
func FuzzImport(f *testing.F) {
	s := newStore(f, false)
	a := image(1, 30*testBS+5)
	v1 := s.backup(a, "a")
	v2 := s.backup(changed(a, 2), "a")
	v3 := s.backup(image(3, 3*testBS), "b")
	dst := s.target()
	if _, err := importStream(dst, s.export(v1.UID), s.st); err != nil {
		f.Fatal(err)
	}
	full := s.export(v1.UID, v2.UID, v3.UID)
	seeds := [][]byte{
		full,
		s.export(v2.UID),
		s.export(v3.UID, v2.UID),
		full[:len(full)/2],
		rewrite(f, s.export(v3.UID), func(i *manifest.StoreInfo, _ *[]manifest.KeyReg) { i.StoreID[3] ^= 0x20 }),
		nil,
		[]byte("BKYM\x01"),
	}
	flipped := slices.Clone(full)
	flipped[len(flipped)/3] ^= 1
	seeds = append(seeds, flipped)
	for _, b := range seeds {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		before := dump(t, dst, false)
		res, err := importStream(dst, data, s.st)
		after := dump(t, dst, false)
		if err != nil {
			if !reflect.DeepEqual(before, after) {
				t.Fatalf("a failed import (%v) changed the metastore", err)
			}
			return
		}
		// It imported: exactly its versions were added.
		if len(after.Versions) != len(before.Versions)+len(res.Versions) {
			t.Fatalf("import of %v: %d versions before, %d after", res.Versions, len(before.Versions), len(after.Versions))
		}
		for _, uid := range res.Versions {
			if _, err := dst.Version(uid); err != nil {
				t.Fatalf("imported version %s: %v", uid, err)
			}
		}
		metastoretest.Check(t, dst)
	})
}
