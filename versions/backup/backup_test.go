package backup_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"slices"
	"testing"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/blockstore/backend/faulty"
	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/metastore/metastoretest"
	"github.com/backy/backy/versions/backup"
	"github.com/backy/backy/versions/source"
)

// checkFirstBackup compares the counters of the first backup of data into
// an empty store with what the data says they must be.
func checkFirstBackup(t *testing.T, e *env, v *metastore.Version, data []byte, bytesRead int64) {
	t.Helper()
	want := statsOf(data, e.bs)
	size := int64(len(data))
	if v.Size != size || v.BlockSize != e.bs || v.BlocksDone != want.numBlocks || v.Blocks() != want.numBlocks {
		t.Errorf("size %d, block size %d, blocks done %d; want %d, %d, %d", v.Size, v.BlockSize, v.BlocksDone, size, e.bs, want.numBlocks)
	}
	if v.BytesRead != bytesRead {
		t.Errorf("bytes_read %d, want %d", v.BytesRead, bytesRead)
	}
	if v.BytesSparse != want.sparse {
		t.Errorf("bytes_sparse %d, want %d", v.BytesSparse, want.sparse)
	}
	if v.BytesDeduplicated != want.dedup {
		t.Errorf("bytes_deduplicated %d, want %d", v.BytesDeduplicated, want.dedup)
	}
	st, err := e.db.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Blocks != int64(want.distinct) || st.PlainBytes != want.plain {
		t.Errorf("store holds %d blocks of %d bytes, want %d of %d", st.Blocks, st.PlainBytes, want.distinct, want.plain)
	}
	// Each distinct block is written once, and bytes_written counts it once.
	if v.BytesWritten != st.StoredBytes {
		t.Errorf("bytes_written %d, store holds %d bytes", v.BytesWritten, st.StoredBytes)
	}
	if n := e.fb.Calls(faulty.MethodPut); n != want.distinct {
		t.Errorf("%d objects put, want %d", n, want.distinct)
	}
	pl, err := e.db.PageList(v.UID)
	if err != nil {
		t.Fatal(err)
	}
	if len(pl) != want.pages {
		t.Errorf("%d pages, want %d", len(pl), want.pages)
	}
	stored, err := e.db.Version(v.UID)
	if err != nil {
		t.Fatal(err)
	}
	if stored.Status != metastore.StatusValid || stored.BytesWritten != v.BytesWritten || stored.BlocksDone != v.BlocksDone {
		t.Errorf("stored version %+v differs from the returned %+v", stored, v)
	}
}

func TestRoundTrip(t *testing.T) {
	const k64 = 64 << 10
	zeroBlock := func(n int64) []byte { return make([]byte, n) }
	cases := []struct {
		name    string
		bs      int64
		workers int
		comp    block.Compression
		data    func(g *gen) []byte
	}{
		{"random", k64, 0, block.CompressionNone, func(g *gen) []byte { return g.random(2 << 20) }},
		{"random-zstd", k64, 0, block.CompressionZstd, func(g *gen) []byte { return g.random(1 << 20) }},
		{"compressible-zstd", k64, 0, block.CompressionZstd, func(g *gen) []byte {
			return bytes.Repeat([]byte("a line of text that compresses\n"), 40000)
		}},
		{"all-zero", k64, 0, block.CompressionNone, func(g *gen) []byte { return zeroBlock(1 << 20) }},
		{"not-a-multiple", k64, 0, block.CompressionNone, func(g *gen) []byte { return g.random(1<<20 + 12345) }},
		{"one-short-block", k64, 0, block.CompressionNone, func(g *gen) []byte { return g.random(100) }},
		{"one-byte-zero", k64, 0, block.CompressionNone, func(g *gen) []byte { return []byte{0} }},
		{"size-zero", k64, 0, block.CompressionNone, func(g *gen) []byte { return nil }},
		{"zero-tail", k64, 0, block.CompressionNone, func(g *gen) []byte { return append(g.random(3*k64), zeroBlock(999)...) }},
		{"repeated-blocks", k64, 8, block.CompressionNone, func(g *gen) []byte {
			a, b, c := g.random(k64), g.random(k64), g.random(k64)
			var out []byte
			for i := range 30 {
				out = append(out, [][]byte{a, b, a, zeroBlock(k64), c, a}[i%6]...)
			}
			return append(out, a[:5000]...) // a short tail is another block
		}},
		{"repeated-one-worker", k64, 1, block.CompressionNone, func(g *gen) []byte {
			a := g.random(k64)
			return bytes.Repeat(a, 12)
		}},
		// Maps of more than one page. Most blocks come from a small pool,
		// so they cost few puts.
		{"one-page-exactly", 4096, 0, block.CompressionNone, func(g *gen) []byte {
			d := pooled(g, 1024*4096)
			copy(d[1000*4096:], g.random(24*4096))
			return d
		}},
		{"more-than-one-page", 4096, 0, block.CompressionNone, func(g *gen) []byte {
			d := pooled(g, (1024+5)*4096)
			copy(d[1010*4096:], g.random(19*4096))
			clear(d[1023*4096 : 1025*4096])                      // zeros across the page boundary
			copy(d[1026*4096:1027*4096], d[1020*4096:1021*4096]) // a duplicate across it
			return d
		}},
		{"two-pages-and-a-bit", 4096, 3, block.CompressionZstd, func(g *gen) []byte {
			// Few distinct blocks, so most of the map is deduplicated.
			pool := [][]byte{g.random(4096), g.random(4096), zeroBlock(4096), g.random(4096)}
			var out []byte
			for i := range 2048 {
				out = append(out, pool[(i*7+i/3)%len(pool)]...)
			}
			return append(out, g.random(777)...)
		}},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, c.bs, blockstore.Options{Compression: c.comp})
			data := c.data(newGen(uint64(i)))
			v := e.mustBackup(data, backup.Options{Workers: c.workers, Snapshot: "snap", Labels: map[string]string{"k": "v"}})
			if v.Volume != "vol" || v.Snapshot != "snap" || v.Labels["k"] != "v" || v.Base != "" || !metastore.ValidUID(v.UID) {
				t.Errorf("version %+v", v)
			}
			checkFirstBackup(t, e, v, data, int64(len(data)))
			e.mustRestoreEqual(v.UID, data)
			e.mustRestoreFileEqual(v.UID, data)
		})
	}
}

// TestSparseSource: holes of a sparse source are not read, and restore as
// zeros.
func TestSparseSource(t *testing.T) {
	const bs = 64 << 10
	e := newEnv(t, bs, blockstore.Options{})
	g := newGen(7)
	path := e.writeImage(nil)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	const size = 40*bs + 300
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, size)
	// Data in blocks 3-5 and 20, zeros written (not a hole) in block 30,
	// and a few bytes in the short last block.
	for _, r := range [][2]int64{{3 * bs, 6 * bs}, {20 * bs, 21 * bs}, {40 * bs, 40*bs + 10}} {
		copy(data[r[0]:r[1]], g.random(r[1]-r[0]))
	}
	for _, r := range [][2]int64{{3 * bs, 6 * bs}, {20 * bs, 21 * bs}, {30 * bs, 31 * bs}, {40 * bs, 40*bs + 10}} {
		if _, err := f.WriteAt(data[r[0]:r[1]], r[0]); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	if !isSparse(t, path) {
		t.Skip("the file system keeps no holes")
	}
	v, err := e.backup(t.Context(), path, backup.Options{})
	if err != nil {
		t.Fatal(err)
	}
	// Read: blocks 3, 4, 5, 20, 30 and 40.
	checkFirstBackup(t, e, v, data, 5*bs+300)
	e.mustRestoreFileEqual(v.UID, data)
}

// TestUnchangedRebackup: backing up the same data again writes nothing and
// shares every page.
func TestUnchangedRebackup(t *testing.T) {
	for _, bs := range []int64{4096, 64 << 10} {
		t.Run("", func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, bs, blockstore.Options{Compression: block.CompressionZstd})
			g := newGen(8)
			data := pooled(g, 1100*4096)
			copy(data[100*4096:], g.random(100*4096))
			clear(data[200*4096 : 300*4096])
			copy(data[500*4096:600*4096], data[50*4096:150*4096])
			v1 := e.mustBackup(data, backup.Options{})
			puts := e.fb.Calls(faulty.MethodPut)
			st1, _ := e.db.Stats()
			v2 := e.mustBackup(data, backup.Options{})
			if v2.BytesWritten != 0 || e.fb.Calls(faulty.MethodPut) != puts {
				t.Errorf("unchanged backup wrote %d bytes in %d puts", v2.BytesWritten, e.fb.Calls(faulty.MethodPut)-puts)
			}
			want := statsOf(data, bs)
			if v2.BytesDeduplicated != want.plain+want.dedup || v2.BytesSparse != want.sparse || v2.BytesRead != int64(len(data)) {
				t.Errorf("second backup: dedup %d, sparse %d, read %d", v2.BytesDeduplicated, v2.BytesSparse, v2.BytesRead)
			}
			st2, _ := e.db.Stats()
			if st2.Blocks != st1.Blocks || st2.StoredBytes != st1.StoredBytes || st2.Versions != 2 {
				t.Errorf("stats %+v after %+v", st2, st1)
			}
			p1, _ := e.db.PageList(v1.UID)
			p2, _ := e.db.PageList(v2.UID)
			if !slices.Equal(p1, p2) {
				t.Errorf("pages differ: %v vs %v", p1, p2)
			}
			e.mustRestoreEqual(v1.UID, data)
			e.mustRestoreEqual(v2.UID, data)
		})
	}
}

// TestIncrementalDedup: a second image that shares most blocks with the
// first writes only the new ones.
func TestIncrementalDedup(t *testing.T) {
	const bs = 64 << 10
	e := newEnv(t, bs, blockstore.Options{})
	g := newGen(9)
	a := g.random(32 * bs)
	v1 := e.mustBackup(a, backup.Options{})
	b := slices.Clone(a)
	copy(b[5*bs:], g.random(bs))
	copy(b[17*bs:], g.random(2*bs))
	b = append(b, g.random(bs/2)...)
	puts := e.fb.Calls(faulty.MethodPut)
	v2 := e.mustBackup(b, backup.Options{})
	if n := e.fb.Calls(faulty.MethodPut) - puts; n != 4 {
		t.Errorf("%d objects put, want 4", n)
	}
	if v2.BytesDeduplicated != 29*bs || v2.BytesRead != int64(len(b)) {
		t.Errorf("dedup %d, read %d", v2.BytesDeduplicated, v2.BytesRead)
	}
	e.mustRestoreEqual(v1.UID, a)
	e.mustRestoreEqual(v2.UID, b)
	// Removing the first version keeps the second restorable.
	if err := e.db.RemoveVersion(v1.UID); err != nil {
		t.Fatal(err)
	}
	metastoretest.Check(t, e.db)
	e.mustRestoreEqual(v2.UID, b)
}

func TestProgress(t *testing.T) {
	const bs = 64 << 10
	e := newEnv(t, bs, blockstore.Options{})
	data := newGen(10).random(20*bs + 5)
	var last backup.Progress
	calls := 0
	v := e.mustBackup(data, backup.Options{Progress: func(p backup.Progress) {
		calls++
		if p.Done < last.Done || p.BytesRead < last.BytesRead || p.BytesWritten < last.BytesWritten || p.Total != int64(len(data)) {
			t.Errorf("progress %+v after %+v", p, last)
		}
		last = p
	}})
	if calls != 21 || last.Done != last.Total || last.BytesRead != v.BytesRead || last.BytesWritten != v.BytesWritten {
		t.Errorf("%d progress calls, last %+v, version %+v", calls, last, v)
	}
}

func TestRunErrors(t *testing.T) {
	const bs = 64 << 10
	e := newEnv(t, bs, blockstore.Options{})
	data := newGen(11).random(4 * bs)
	path := e.writeImage(data)
	valid := e.mustBackup(data, backup.Options{})
	other := e.mustBackup(data, backup.Options{Volume: "other"})
	incomplete := &metastore.Version{UID: mustUID(t), Volume: "vol", Size: int64(len(data)), BlockSize: bs, Status: metastore.StatusIncomplete}
	if err := e.db.CreateVersion(incomplete); err != nil {
		t.Fatal(err)
	}
	invalid, err := e.db.UpdateVersion(other.UID, func(v *metastore.Version) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	invalid.Status = metastore.StatusInvalid
	wrongBS := *valid
	wrongBS.BlockSize = 4096
	removing := *valid
	removing.Status, removing.Removing = metastore.StatusIncomplete, true
	versions, _ := e.db.Versions(nil)

	cases := []struct {
		name string
		o    backup.Options
		want error
	}{
		{"empty-volume", backup.Options{Volume: "", Resume: ""}, backup.ErrInput},
		// Names the version's metadata in the data backend cannot hold
		// (issue 13 item 2).
		{"volume-too-long", backup.Options{Volume: string(bytes.Repeat([]byte("v"), 256))}, backup.ErrInput},
		{"volume-control", backup.Options{Volume: "vm\x1b[1m"}, backup.ErrInput},
		{"snapshot-not-utf8", backup.Options{Volume: "vol", Snapshot: "s\xff"}, backup.ErrInput},
		{"label-newline", backup.Options{Volume: "vol", Labels: map[string]string{"k": "a\nb"}}, backup.ErrInput},
		{"base-of-other-volume", backup.Options{Volume: "vol", Base: other, Hints: nil}, backup.ErrBadBase},
		{"base-incomplete", backup.Options{Volume: "vol", Base: incomplete}, backup.ErrBadBase},
		{"base-invalid", backup.Options{Volume: "other", Base: invalid}, backup.ErrBadBase},
		{"base-block-size", backup.Options{Volume: "vol", Base: &wrongBS}, backup.ErrBadBase},
		// Being removed: gone, not a bad command line (exit 66).
		{"base-removing", backup.Options{Volume: "vol", Base: &removing}, metastore.ErrVersionNotFound},
		{"resume-valid", backup.Options{Resume: valid.UID}, backup.ErrBadResume},
		{"resume-other-volume", backup.Options{Volume: "zzz", Resume: incomplete.UID}, backup.ErrBadResume},
		{"resume-bad-uid", backup.Options{Resume: "nonsense"}, backup.ErrBadResume},
		{"resume-unknown", backup.Options{Resume: mustUID(t)}, metastore.ErrVersionNotFound},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src, err := source.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			_, err = backup.Run(t.Context(), e.st, e.db, src, c.o)
			if !errors.Is(err, c.want) {
				t.Fatalf("Run = %v, want %v", err, c.want)
			}
		})
	}
	// A base locked exclusively (being removed) is refused.
	lk, err := e.db.LockVersion(valid.UID, metastore.Exclusive)
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.backup(t.Context(), path, backup.Options{Base: valid, Hints: noHints})
	lk.Unlock()
	if !errors.Is(err, backup.ErrBadBase) || !errors.Is(err, metastore.ErrLocked) {
		t.Errorf("backup from a locked base = %v", err)
	}
	// A resume of a version of another size is refused.
	_, err = e.backup(t.Context(), e.writeImage(data[:bs]), backup.Options{Resume: incomplete.UID})
	if !errors.Is(err, backup.ErrBadResume) {
		t.Errorf("resume with another size = %v", err)
	}
	// A resume of a version in use by another writer is refused.
	lk, err = e.db.LockVersion(incomplete.UID, metastore.Shared)
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.backup(t.Context(), path, backup.Options{Resume: incomplete.UID})
	lk.Unlock()
	if !errors.Is(err, backup.ErrBadResume) || !errors.Is(err, metastore.ErrLocked) {
		t.Errorf("resume of a locked version = %v", err)
	}
	after, _ := e.db.Versions(nil)
	if len(after) != len(versions) {
		t.Errorf("failed runs created versions: %d -> %d", len(versions), len(after))
	}
	// The incomplete version resumes fine with the right source.
	v, err := e.backup(t.Context(), path, backup.Options{Resume: incomplete.UID})
	if err != nil || v.Status != metastore.StatusValid || v.UID != incomplete.UID {
		t.Fatalf("resume = %+v, %v", v, err)
	}
	e.mustRestoreEqual(v.UID, data)
}

// TestCancelledBeforeStart: a cancelled context leaves at most an
// incomplete version, and the metastore consistent.
func TestCancelledBeforeStart(t *testing.T) {
	e := newEnv(t, 64<<10, blockstore.Options{})
	data := newGen(12).random(10 << 16)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	v, err := e.backup(ctx, e.writeImage(data), backup.Options{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v", err)
	}
	if v != nil && v.Status == metastore.StatusValid {
		t.Fatalf("cancelled backup produced a valid version")
	}
}
