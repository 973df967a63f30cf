package restore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/blockstore/backend/faulty"
	"github.com/backy/backy/blockstore/backend/file"
	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/metastore/metastoretest"
	"github.com/backy/backy/versions/backup"
	"github.com/backy/backy/versions/restore"
	"github.com/backy/backy/versions/source"
)

const bs = 64 << 10

type env struct {
	t     *testing.T
	dir   string
	db    *metastore.DB
	root  string
	fb    *faulty.Backend
	st    *blockstore.Store // through fb
	clean *blockstore.Store // without faults
	n     int
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	db := metastoretest.Create(t, dir, bs)
	inner, err := file.New(filepath.Join(dir, "data"))
	if err != nil {
		t.Fatal(err)
	}
	fb := faulty.New(inner)
	st, err := blockstore.New(fb, blockstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	clean, err := blockstore.New(inner, blockstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(clean.Close)
	return &env{t: t, dir: dir, db: db, root: inner.Root(), fb: fb, st: st, clean: clean}
}

// path returns a fresh file name in the test's directory.
func (e *env) path(name string) string {
	e.n++
	return filepath.Join(e.dir, fmt.Sprintf("%s-%d", name, e.n))
}

func (e *env) backup(data []byte, volume string) *metastore.Version {
	e.t.Helper()
	path := e.path("image")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		e.t.Fatal(err)
	}
	src, err := source.Open(path)
	if err != nil {
		e.t.Fatal(err)
	}
	defer src.Close()
	v, err := backup.Run(context.Background(), e.clean, e.db, src, backup.Options{Volume: volume})
	if err != nil {
		e.t.Fatal(err)
	}
	return v
}

// restore runs a restore of uid into a new file with ToFile, as the CLI
// does, and returns the file's content (nil when the restore failed and the
// target was aborted, which must leave no file behind).
func (e *env) restore(uid string, o restore.Options) ([]byte, *restore.Result, error) {
	e.t.Helper()
	path := e.path("restored")
	res, err := restore.ToFile(context.Background(), e.st, e.db, uid, path, o)
	if err != nil && !(o.Force && errors.Is(err, restore.ErrBadBlocks)) {
		if ents, _ := os.ReadDir(e.dir); slices.ContainsFunc(ents, func(d os.DirEntry) bool { return strings.Contains(d.Name(), "restored") }) {
			e.t.Errorf("failed restore left a file behind")
		}
		return nil, res, err
	}
	b, rerr := os.ReadFile(path)
	if rerr != nil {
		e.t.Fatal(rerr)
	}
	os.Remove(path)
	return b, res, err
}

func random(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 99))
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(r.Uint32())
	}
	return p
}

// record returns the record of block idx of version uid.
func (e *env) record(uid string, idx int64) block.Record {
	e.t.Helper()
	var rec block.Record
	found := false
	err := e.db.WalkMap(uid, func(c metastore.MapChunk) error {
		if k := idx - c.First; k >= 0 && k < int64(len(c.IDs)) {
			rec, found = c.Records[k], c.Found[k]
		}
		return nil
	})
	if err != nil || !found || rec.ID.IsSparse() {
		e.t.Fatalf("no record of block %d of %s: %v", idx, uid, err)
	}
	return rec
}

func (e *env) status(uid string) metastore.Status {
	e.t.Helper()
	v, err := e.db.Version(uid)
	if err != nil {
		e.t.Fatal(err)
	}
	return v.Status
}

func TestRoundTripAndProgress(t *testing.T) {
	e := newEnv(t)
	data := random(1, 10*bs+123)
	clear(data[2*bs : 4*bs])
	v := e.backup(data, "vol")
	var last restore.Progress
	got, res, err := e.restore(v.UID, restore.Options{Workers: 3, Progress: func(p restore.Progress) {
		if p.Done <= last.Done || p.Total != int64(len(data)) {
			t.Errorf("progress %+v after %+v", p, last)
		}
		last = p
	}})
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("restore: %v", err)
	}
	if last.Done != int64(len(data)) || res.BytesSparse != 2*bs || res.BytesWritten != int64(len(data))-2*bs || res.UID != v.UID {
		t.Errorf("progress %+v, result %+v", last, res)
	}
}

func TestEmptyVersion(t *testing.T) {
	e := newEnv(t)
	v := e.backup(nil, "vol")
	got, res, err := e.restore(v.UID, restore.Options{})
	if err != nil || len(got) != 0 || res.Size != 0 {
		t.Fatalf("restore of an empty version: %d bytes, %v", len(got), err)
	}
}

// TestNotRestorable: incomplete, invalid and removing versions need Force
// (or are refused outright).
func TestNotRestorable(t *testing.T) {
	e := newEnv(t)
	data := random(2, 3*bs)
	valid := e.backup(data, "vol")
	mk := func(edit func(v *metastore.Version)) *metastore.Version {
		uid, err := metastore.NewUID(time.Now())
		if err != nil {
			t.Fatal(err)
		}
		v := &metastore.Version{UID: uid, Volume: "vol", Size: 3 * bs, BlockSize: bs, Status: metastore.StatusIncomplete}
		if err := e.db.CreateVersion(v); err != nil {
			t.Fatal(err)
		}
		v, err = e.db.UpdateVersion(uid, func(v *metastore.Version) error { edit(v); return nil })
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	incomplete := mk(func(*metastore.Version) {})
	invalid := mk(func(v *metastore.Version) { v.Status = metastore.StatusInvalid })
	removing := mk(func(v *metastore.Version) { v.Removing = true })
	removingValid := *valid
	removingValid.Removing = true
	cases := []struct {
		name  string
		v     *metastore.Version
		force bool
		want  error
	}{
		{"incomplete", incomplete, false, restore.ErrNotRestorable},
		{"invalid", invalid, false, restore.ErrNotRestorable},
		{"removing", removing, false, restore.ErrNotRestorable},
		{"removing-forced", removing, true, restore.ErrNotRestorable},
		{"removing-valid-forced", &removingValid, true, restore.ErrNotRestorable},
		{"incomplete-forced", incomplete, true, restore.ErrBadBlocks},
		{"invalid-forced", invalid, true, restore.ErrBadBlocks},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tgt := &memTarget{b: bytes.Repeat([]byte{1}, int(c.v.Size))}
			res, err := restore.Run(t.Context(), e.st, e.db, c.v, tgt, restore.Options{Force: c.force})
			if !errors.Is(err, c.want) {
				t.Fatalf("Run = %v, want %v", err, c.want)
			}
			if c.want == restore.ErrNotRestorable {
				if res != nil || e.fb.Calls(faulty.MethodGet) != 0 || tgt.b[0] != 1 {
					t.Errorf("a refused restore did something: %+v", res)
				}
				return
			}
			// Nothing was backed up: every block is listed and zeroed.
			if len(res.BadBlocks) != 3 || !bytes.Equal(tgt.b, make([]byte, c.v.Size)) {
				t.Errorf("bad blocks %+v", res.BadBlocks)
			}
			for _, b := range res.BadBlocks {
				if b.Length != bs || b.ID != "" || !strings.Contains(b.Reason, "not backed up") {
					t.Errorf("bad block %+v", b)
				}
			}
		})
	}
}

type memTarget struct{ b []byte }

func (m *memTarget) WriteAt(p []byte, off int64) (int, error) { return copy(m.b[off:], p), nil }
func (m *memTarget) Zero(off, n int64, _ bool, _ []byte) error {
	clear(m.b[off : off+n])
	return nil
}

// TestForcePartialMap: an incomplete version whose map covers only some
// blocks restores those and zeroes the rest.
func TestForcePartialMap(t *testing.T) {
	e := newEnv(t)
	data := random(3, 5*bs)
	uid, _ := metastore.NewUID(time.Now())
	v := &metastore.Version{UID: uid, Volume: "vol", Size: 8*bs - 10, BlockSize: bs, Status: metastore.StatusIncomplete}
	if err := e.db.CreateVersion(v); err != nil {
		t.Fatal(err)
	}
	var ids []block.ID
	var recs []block.Record
	for i := range 5 {
		p := data[i*bs : (i+1)*bs]
		if i == 2 {
			clear(p)
			ids = append(ids, block.Sparse)
			continue
		}
		rec, err := e.clean.Put(t.Context(), block.Sum(p), p)
		if err != nil {
			t.Fatal(err)
		}
		ids, recs = append(ids, rec.ID), append(recs, rec)
	}
	if _, err := e.db.Commit(metastore.Commit{UID: uid, Pages: []metastore.PageWrite{metastore.NewPage(ids)}, New: recs,
		Update: func(v *metastore.Version) error { v.BlocksDone = 5; return nil }}); err != nil {
		t.Fatal(err)
	}
	got, res, err := e.restore(uid, restore.Options{Force: true, Sparse: true})
	if !errors.Is(err, restore.ErrBadBlocks) {
		t.Fatalf("forced restore = %v", err)
	}
	want := append(slices.Clone(data), make([]byte, 3*bs-10)...)
	if !bytes.Equal(got, want) {
		t.Errorf("restored data differs")
	}
	var bad []int64
	for _, b := range res.BadBlocks {
		bad = append(bad, b.Index)
	}
	slices.Sort(bad)
	if !slices.Equal(bad, []int64{5, 6, 7}) || res.BadBlocks[0].Length+res.BadBlocks[1].Length+res.BadBlocks[2].Length != 3*bs-10 {
		t.Errorf("bad blocks %+v", res.BadBlocks)
	}
	if e.status(uid) != metastore.StatusIncomplete || len(res.InvalidVersions) != 0 {
		t.Errorf("status %s, invalid versions %v", e.status(uid), res.InvalidVersions)
	}
}

// TestGetFaults damages one block of a version on its way from the backend
// (or in the backend), and checks what the restore makes of it.
func TestGetFaults(t *testing.T) {
	errTransient := errors.New("backend timeout")
	cases := []struct {
		name    string
		damage  func(e *env, rec block.Record) // nil: no damage beyond fault
		fault   func(f *faulty.Fault)
		want    error
		invalid bool // the damage is recorded in the metastore
	}{
		{"flipped-bit", nil, func(f *faulty.Fault) { f.FlipBit() }, blockstore.ErrCorrupt, true},
		{"truncated", nil, func(f *faulty.Fault) { f.Truncate(bs / 2) }, blockstore.ErrCorrupt, true},
		{"truncated-to-nothing", nil, func(f *faulty.Fault) { f.Truncate(0) }, blockstore.ErrCorrupt, true},
		{"deleted", func(e *env, rec block.Record) {
			if err := os.Remove(filepath.Join(e.root, blockstore.ObjectName(rec.Name))); err != nil {
				e.t.Fatal(err)
			}
		}, nil, blockstore.ErrMissing, true},
		{"overwritten-on-disk", func(e *env, rec block.Record) {
			p := filepath.Join(e.root, blockstore.ObjectName(rec.Name))
			b, err := os.ReadFile(p)
			if err != nil {
				e.t.Fatal(err)
			}
			b[len(b)-1] ^= 0xff
			if err := os.WriteFile(p, b, 0o600); err != nil {
				e.t.Fatal(err)
			}
		}, nil, blockstore.ErrCorrupt, true},
		{"transient-error", nil, func(f *faulty.Fault) { f.ErrorInstead(errTransient) }, errTransient, false},
	}
	for _, c := range cases {
		for _, force := range []bool{false, true} {
			name := c.name
			if force {
				name += "-forced"
			}
			t.Run(name, func(t *testing.T) {
				e := newEnv(t)
				data := random(4, 12*bs+99)
				other := slices.Clone(data)
				copy(other[bs:], random(5, 2*bs)) // shares every block but 1 and 2
				third := random(6, 3*bs)          // shares nothing
				v1 := e.backup(data, "vol")
				v2 := e.backup(other, "vol")
				v3 := e.backup(third, "vol")
				const badIdx = 7
				rec := e.record(v1.UID, badIdx)
				if c.damage != nil {
					c.damage(e, rec)
				}
				if c.fault != nil {
					target := blockstore.ObjectName(rec.Name)
					c.fault(e.fb.AddFault(faulty.MethodGet).OnName(func(n string) bool { return n == target }))
				}
				got, res, err := e.restore(v1.UID, restore.Options{Force: force, Workers: 4})
				if !errors.Is(err, c.want) && !(force && c.invalid && errors.Is(err, restore.ErrBadBlocks)) {
					t.Fatalf("restore = %v, want %v", err, c.want)
				}
				if c.fault != nil {
					e.fb.VerifyAllFaultsFired(t)
				}
				if !c.invalid {
					// A backend error is no damage: nothing is recorded, and
					// not even a forced restore zeroes the block.
					if got != nil {
						t.Errorf("restore with a backend error produced a target")
					}
					if e.status(v1.UID) != metastore.StatusValid || len(res.BadBlocks) != 0 {
						t.Errorf("status %s, bad blocks %+v", e.status(v1.UID), res.BadBlocks)
					}
					return
				}
				if len(res.BadBlocks) != 1 || res.BadBlocks[0].Index != badIdx || res.BadBlocks[0].ID != rec.ID.String() ||
					res.BadBlocks[0].Offset != badIdx*bs || res.BadBlocks[0].Length != bs {
					t.Fatalf("bad blocks %+v", res.BadBlocks)
				}
				if force {
					if !errors.Is(err, restore.ErrBadBlocks) {
						t.Fatalf("forced restore = %v, want ErrBadBlocks", err)
					}
					want := slices.Clone(data)
					clear(want[badIdx*bs : (badIdx+1)*bs])
					if !bytes.Equal(got, want) {
						t.Errorf("forced restore: data differs from the source with the bad block zeroed")
					}
				} else if got != nil {
					t.Errorf("failed restore produced a target")
				}
				// Both versions holding the block are invalid now; the
				// third is not.
				slices.Sort(res.InvalidVersions)
				wantInvalid := []string{v1.UID, v2.UID}
				slices.Sort(wantInvalid)
				if !slices.Equal(res.InvalidVersions, wantInvalid) {
					t.Errorf("invalid versions %v, want %v", res.InvalidVersions, wantInvalid)
				}
				if e.status(v1.UID) != metastore.StatusInvalid || e.status(v2.UID) != metastore.StatusInvalid || e.status(v3.UID) != metastore.StatusValid {
					t.Errorf("statuses %s %s %s", e.status(v1.UID), e.status(v2.UID), e.status(v3.UID))
				}
				if _, _, err := e.restore(v1.UID, restore.Options{}); !errors.Is(err, restore.ErrNotRestorable) {
					t.Errorf("restore of the invalid version = %v", err)
				}
				// A new backup of the data stores the damaged block again
				// (and only it), which heals the old versions' data.
				stats, _ := e.db.Stats()
				v4 := e.backup(data, "vol")
				if v4.BytesWritten == 0 || v4.BytesDeduplicated != int64(len(data))-bs {
					t.Errorf("healing backup wrote %d bytes, deduplicated %d", v4.BytesWritten, v4.BytesDeduplicated)
				}
				if after, _ := e.db.Stats(); after.Blocks != stats.Blocks {
					t.Errorf("blocks %d -> %d: the damaged record was not replaced", stats.Blocks, after.Blocks)
				}
				e.st = e.clean
				for _, vv := range []struct {
					uid  string
					data []byte
				}{{v1.UID, data}, {v2.UID, other}, {v4.UID, data}} {
					got, _, err := e.restore(vv.uid, restore.Options{Force: true})
					if err != nil || !bytes.Equal(got, vv.data) {
						t.Errorf("restore of %s after healing: %v", vv.uid, err)
					}
				}
			})
		}
	}
}

// TestCorruptPut: an object damaged on its way into the backend is found by
// the restore, not by the backup.
func TestCorruptPut(t *testing.T) {
	e := newEnv(t)
	e.fb.AddFault(faulty.MethodPut).After(3).FlipBit()
	data := random(7, 8*bs)
	path := e.path("image")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	src, err := source.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	v, err := backup.Run(t.Context(), e.st, e.db, src, backup.Options{Volume: "vol", Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	e.fb.VerifyAllFaultsFired(t)
	_, res, err := e.restore(v.UID, restore.Options{})
	if !errors.Is(err, blockstore.ErrCorrupt) {
		t.Fatalf("restore = %v", err)
	}
	if len(res.BadBlocks) != 1 || res.BadBlocks[0].Index != 3 || e.status(v.UID) != metastore.StatusInvalid {
		t.Errorf("bad blocks %+v, status %s", res.BadBlocks, e.status(v.UID))
	}
}

// TestCancel: a cancelled restore fails and records no damage.
func TestCancel(t *testing.T) {
	e := newEnv(t)
	data := random(8, 16*bs)
	v := e.backup(data, "vol")
	e.fb.AddFault(faulty.MethodGet).SleepFor(20 * time.Millisecond).Repeat(-1)
	ctx, cancel := context.WithCancel(t.Context())
	tgt := &memTarget{b: make([]byte, len(data))}
	calls := 0
	res, err := restore.Run(ctx, e.st, e.db, v, tgt, restore.Options{Workers: 2, Progress: func(restore.Progress) {
		calls++
		if calls == 2 {
			cancel()
		}
	}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v", err)
	}
	if len(res.BadBlocks) != 0 || e.status(v.UID) != metastore.StatusValid {
		t.Errorf("cancelled restore recorded damage: %+v", res.BadBlocks)
	}
}

// TestRestoreOverExisting restores over an existing file full of garbage,
// with and without sparse: zero blocks must end up zero, as holes with
// sparse.
func TestRestoreOverExisting(t *testing.T) {
	e := newEnv(t)
	data := random(9, 32*bs)
	clear(data[4*bs : 20*bs])
	v := e.backup(data, "vol")
	for _, sparse := range []bool{false, true} {
		path := e.path("existing")
		if err := os.WriteFile(path, bytes.Repeat([]byte{0xab}, len(data)+5), 0o600); err != nil {
			t.Fatal(err)
		}
		tgt, err := source.CreateTarget(path, v.Size, true)
		if err != nil {
			t.Fatal(err)
		}
		res, err := restore.Run(t.Context(), e.st, e.db, v, tgt, restore.Options{Sparse: sparse})
		if err != nil {
			t.Fatal(err)
		}
		if err := tgt.Commit(); err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(path)
		if !bytes.Equal(got[:len(data)], data) || !bytes.Equal(got[len(data):], bytes.Repeat([]byte{0xab}, 5)) {
			t.Fatalf("sparse %v: restored file differs", sparse)
		}
		if res.BytesSparse != 16*bs {
			t.Errorf("bytes_sparse %d", res.BytesSparse)
		}
		var st syscall.Stat_t
		if err := syscall.Stat(path, &st); err != nil {
			t.Fatal(err)
		}
		if alloc := st.Blocks * 512; sparse && alloc > int64(len(data))-16*bs+bs || !sparse && alloc < int64(len(data)) {
			t.Errorf("sparse %v: %d bytes allocated for %d bytes of data", sparse, alloc, len(data)-16*bs)
		}
	}
}
