package device_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/blockstore/backend/file"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/metastore/metastoretest"
	"github.com/backy/backy/versions"
	"github.com/backy/backy/versions/backup"
	"github.com/backy/backy/versions/device"
	"github.com/backy/backy/versions/source"
)

const bs = 64 << 10

type env struct {
	t    *testing.T
	dir  string
	db   *metastore.DB
	st   *blockstore.Store
	root string
}

func newEnv(t *testing.T) *env {
	dir := t.TempDir()
	db := metastoretest.Create(t, dir, bs)
	be, err := file.New(filepath.Join(dir, "data"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := blockstore.New(be, blockstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return &env{t: t, dir: dir, db: db, st: st, root: be.Root()}
}

// image: random blocks, every third block zero, a short last block.
func image(seed uint64, blocks int) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, blocks*bs+bs/3)
	for i := range b {
		if (i/bs)%3 != 1 {
			b[i] = byte(r.Uint32())
		}
	}
	return b
}

func (e *env) backup(data []byte, o backup.Options) *metastore.Version {
	e.t.Helper()
	path := filepath.Join(e.dir, "img")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		e.t.Fatal(err)
	}
	src, err := source.Open(path)
	if err != nil {
		e.t.Fatal(err)
	}
	defer src.Close()
	if o.Volume == "" {
		o.Volume = "vol"
	}
	v, err := backup.Run(context.Background(), e.st, e.db, src, o)
	if err != nil {
		e.t.Fatal(err)
	}
	return v
}

func readAll(t *testing.T, d *device.Device, chunk int) []byte {
	t.Helper()
	out := make([]byte, d.Size())
	for off := 0; off < len(out); off += chunk {
		if err := d.ReadAt(context.Background(), out[off:min(off+chunk, len(out))], int64(off)); err != nil {
			t.Fatalf("ReadAt(%d): %v", off, err)
		}
	}
	return out
}

func TestReadMatchesImage(t *testing.T) {
	e := newEnv(t)
	img := image(1, 40)
	v := e.backup(img, backup.Options{})
	for _, tc := range []struct {
		name  string
		chunk int
		o     device.Options
	}{
		{"block reads", bs, device.Options{ReadOnly: true}},
		{"odd reads, tiny cache", 12345, device.Options{ReadOnly: true, CacheBytes: 2 * bs}},
		{"no read-ahead", 4096, device.Options{ReadOnly: true, ReadAhead: -1}},
		{"writable, untouched", 100000, device.Options{OverlayDir: t.TempDir()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := device.Open(context.Background(), e.db, e.st, v.UID, tc.o)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if got := readAll(t, d, tc.chunk); !bytes.Equal(got, img) {
				t.Fatal("device content differs from the image")
			}
			// Random reads, straddling blocks.
			r := rand.New(rand.NewPCG(7, 7))
			for range 200 {
				off := r.Int64N(int64(len(img)))
				n := min(r.Int64N(3*bs), int64(len(img))-off)
				buf := make([]byte, n)
				if err := d.ReadAt(context.Background(), buf, off); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(buf, img[off:off+n]) {
					t.Fatalf("read of %d at %d differs", n, off)
				}
			}
			if err := d.ReadAt(context.Background(), make([]byte, 2), int64(len(img))-1); !errors.Is(err, device.ErrRange) {
				t.Errorf("read past the end: %v", err)
			}
		})
	}
}

func TestExtentsShowHoles(t *testing.T) {
	e := newEnv(t)
	img := image(2, 9)
	v := e.backup(img, backup.Options{})
	d, err := device.Open(context.Background(), e.db, e.st, v.UID, device.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ext, err := d.Extents(context.Background(), 0, d.Size())
	if err != nil {
		t.Fatal(err)
	}
	var off int64
	for _, x := range ext {
		for o := off; o < off+x.Length; o++ {
			if x.Hole && img[o] != 0 {
				t.Fatalf("extent at %d (len %d) is a hole but holds data at %d", off, x.Length, o)
			}
		}
		off += x.Length
	}
	if off != d.Size() || len(ext) < 6 {
		t.Errorf("extents cover %d of %d bytes in %d runs: %+v", off, d.Size(), len(ext), ext)
	}
}

func TestCopyOnWriteBecomesVersion(t *testing.T) {
	e := newEnv(t)
	img := image(3, 20)
	v := e.backup(img, backup.Options{Labels: map[string]string{"a": "b"}})
	ctx := context.Background()
	d, err := device.Open(ctx, e.db, e.st, v.UID, device.Options{OverlayDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(img)
	write := func(off int64, p []byte) {
		if err := d.WriteAt(ctx, p, off); err != nil {
			t.Fatal(err)
		}
		copy(want[off:], p)
	}
	write(100, []byte("hello"))                     // inside block 0
	write(3*bs-2, []byte("straddle"))               // blocks 2 and 3
	write(5*bs, bytes.Repeat([]byte{7}, bs))        // all of block 5
	write(int64(len(img))-3, []byte("end"))         // the short last block
	if err := d.Zero(ctx, 8*bs, 2*bs); err != nil { // blocks 8, 9
		t.Fatal(err)
	}
	clear(want[8*bs : 10*bs])
	// Whole blocks zeroed beyond the last write read back as zeros.
	if err := d.Zero(ctx, 15*bs, 2*bs); err != nil {
		t.Fatal(err)
	}
	clear(want[15*bs : 17*bs])
	if got := readAll(t, d, 7777); !bytes.Equal(got, want) {
		t.Fatal("device content after writes differs")
	}
	if !d.Changed() || len(d.Changes()) == 0 {
		t.Fatal("no changes reported")
	}
	// The served version is locked: rm refuses it.
	if err := versions.Remove(e.db, v.UID, versions.RemoveOptions{Force: true}); !errors.Is(err, metastore.ErrLocked) {
		t.Errorf("rm of the served version: %v, want ErrLocked", err)
	}
	nv, err := backup.Run(ctx, e.st, e.db, d.Source(ctx), backup.Options{Volume: v.Volume, Base: v, Hints: d.Changes(),
		Labels: map[string]string{"nbd-origin": v.UID}})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	// Only the changed blocks were read and stored.
	if nv.BytesRead > 10*bs || nv.BytesWritten > 9*(bs+100) {
		t.Errorf("commit read %d and wrote %d bytes for 9 changed blocks", nv.BytesRead, nv.BytesWritten)
	}
	for uid, data := range map[string][]byte{v.UID: img, nv.UID: want} {
		r, err := device.Open(ctx, e.db, e.st, uid, device.Options{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		if got := readAll(t, r, bs); !bytes.Equal(got, data) {
			t.Errorf("version %s reads back wrong", uid)
		}
		r.Close()
	}
	// The served version can go now.
	if err := versions.Remove(e.db, v.UID, versions.RemoveOptions{Force: true}); err != nil {
		t.Errorf("rm after close: %v", err)
	}
}

func TestReadOnlyRefusesWrites(t *testing.T) {
	e := newEnv(t)
	v := e.backup(image(4, 3), backup.Options{})
	d, err := device.Open(context.Background(), e.db, e.st, v.UID, device.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.WriteAt(context.Background(), []byte("x"), 0); !errors.Is(err, device.ErrReadOnly) {
		t.Errorf("WriteAt on a read-only device: %v", err)
	}
	if err := d.Zero(context.Background(), 0, 10); !errors.Is(err, device.ErrReadOnly) {
		t.Errorf("Zero on a read-only device: %v", err)
	}
}

func TestDamagedBlockIsAnErrorAndMarked(t *testing.T) {
	e := newEnv(t)
	img := image(5, 6)
	v := e.backup(img, backup.Options{})
	// Damage the object of block 2.
	look := make([]metastore.Lookup, 1)
	pages, _ := e.db.PageList(v.UID)
	ids, _ := e.db.Page(pages[0])
	if err := e.db.LookupBlocks(ids[2:3], look); err != nil || !look[0].Found {
		t.Fatal(err)
	}
	obj := filepath.Join(e.root, blockstore.ObjectName(look[0].Record.Name))
	raw, err := os.ReadFile(obj)
	if err != nil {
		t.Fatal(err)
	}
	raw[len(raw)-5] ^= 1
	if err := os.WriteFile(obj, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := device.Open(context.Background(), e.db, e.st, v.UID, device.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	buf := make([]byte, bs)
	if err := d.ReadAt(context.Background(), buf, 2*bs); !errors.Is(err, blockstore.ErrCorrupt) {
		t.Fatalf("read of a damaged block: %v, want ErrCorrupt", err)
	}
	if err := d.ReadAt(context.Background(), buf, 0); err != nil || !bytes.Equal(buf, img[:bs]) {
		t.Errorf("an intact block: %v", err)
	}
	if got, err := e.db.Version(v.UID); err != nil || got.Status != metastore.StatusInvalid {
		t.Errorf("version after the damaged read: %+v, %v; want invalid", got, err)
	}
	if len(d.Bad()) != 1 {
		t.Errorf("Bad() = %v", d.Bad())
	}
}

func TestIncompleteIsRefused(t *testing.T) {
	e := newEnv(t)
	uid, _ := metastore.NewUID(timeNow())
	if err := e.db.CreateVersion(&metastore.Version{UID: uid, Volume: "v", Size: bs, BlockSize: bs, Status: metastore.StatusIncomplete}); err != nil {
		t.Fatal(err)
	}
	if _, err := device.Open(context.Background(), e.db, e.st, uid, device.Options{ReadOnly: true}); !errors.Is(err, device.ErrNotServable) {
		t.Errorf("Open of an incomplete version: %v", err)
	}
}

func timeNow() time.Time { return time.Now() }
