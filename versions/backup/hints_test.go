package backup_test

import (
	"errors"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/blockstore/backend/faulty"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/metastore/blockmap"
	"github.com/backy/backy/versions/backup"
	"github.com/backy/backy/versions/hints"
	"github.com/backy/backy/versions/source"
)

const hbs = 4096 // block size of the differential tests: pages hold 4 MiB

// pooled returns an image of n bytes whose blocks come from a small pool
// (and some are zero), so a map of more than one page costs few puts.
func pooled(g *gen, n int64) []byte {
	pool := make([][]byte, 24)
	for i := range pool {
		if i%6 != 5 {
			pool[i] = g.random(hbs)
		} else {
			pool[i] = make([]byte, hbs)
		}
	}
	out := make([]byte, 0, n+hbs)
	for i := 0; int64(len(out)) < n; i++ {
		out = append(out, pool[(i*13+i/7)%len(pool)]...)
	}
	return out[:n]
}

// countingSource records which blocks are read.
type countingSource struct {
	*source.File
	mu    sync.Mutex
	reads map[int64]int
}

func (c *countingSource) ReadAt(p []byte, off int64) (int, error) {
	c.mu.Lock()
	c.reads[off/hbs]++
	c.mu.Unlock()
	return c.File.ReadAt(p, off)
}

// TestHints: differential backups with a base version and hints.
func TestHints(t *testing.T) {
	// The base: one full page and a partial one, with a short last block.
	const baseBlocks = 1024 + 300
	const baseSize = (baseBlocks-1)*hbs + 1000
	type change struct {
		off  int64
		data []byte // nil: zero the bytes [off, off+n)
		n    int64
	}
	cases := []struct {
		name    string
		size    int64          // of the new image; 0 = baseSize
		changes []change       // applied to the base image
		hints   []hints.Extent // nil: one exists=true extent per change
		// Expectations.
		readBlocks []int64 // blocks read from the source (outside the sanity check)
		samePages  []int   // page positions shared with the base
		diffPages  []int   // page positions not shared with it
	}{
		{
			name:       "no-changes",
			hints:      []hints.Extent{},
			samePages:  []int{0, 1},
			readBlocks: nil,
		},
		{
			name:       "changes-in-page-1",
			changes:    []change{{off: 1100 * hbs, n: 2 * hbs}, {off: 1200*hbs + 17, n: 10}},
			readBlocks: []int64{1100, 1101, 1200},
			samePages:  []int{0},
			diffPages:  []int{1},
		},
		{
			name:       "change-in-page-0",
			changes:    []change{{off: 5*hbs + 4000, n: 200}},
			readBlocks: []int64{5, 6},
			samePages:  []int{1},
			diffPages:  []int{0},
		},
		{
			name: "last-short-block",
			changes: []change{{
				off: (baseBlocks-1)*hbs + 10, n: 5,
			}},
			readBlocks: []int64{baseBlocks - 1},
			samePages:  []int{0},
			diffPages:  []int{1},
		},
		{
			name:    "partial-discard-inside-a-block",
			changes: []change{{off: 700*hbs + 100, n: 200}},
			hints:   []hints.Extent{{Offset: 700*hbs + 100, Length: 200, Exists: false}},
			// The block is only partly zeroed: it must be read, and its
			// other bytes kept.
			readBlocks: []int64{700},
			samePages:  []int{1},
			diffPages:  []int{0},
		},
		{
			name:    "whole-block-discard",
			changes: []change{{off: 10 * hbs, n: 3 * hbs}, {off: 1030*hbs - 50, n: 2*hbs + 50}},
			hints: []hints.Extent{
				{Offset: 10 * hbs, Length: 3 * hbs, Exists: false},
				{Offset: 1030*hbs - 50, Length: 2*hbs + 50, Exists: false},
			},
			readBlocks: []int64{1029}, // only partly discarded
			diffPages:  []int{0, 1},
		},
		{
			name:       "discard-and-rewrite",
			changes:    []change{{off: 20 * hbs, n: 4 * hbs}, {off: 21 * hbs, data: []byte("new data")}},
			hints:      []hints.Extent{{Offset: 20 * hbs, Length: 4 * hbs, Exists: false}, {Offset: 21 * hbs, Length: 8, Exists: true}},
			readBlocks: []int64{21},
			samePages:  []int{1},
			diffPages:  []int{0},
		},
		{
			name: "larger-source-unhinted-growth",
			size: (baseBlocks+3)*hbs + 100,
			// The old short last block is now full, and 4 blocks follow:
			// none of them exists in the base, so all are read although no
			// hint names them.
			hints:      []hints.Extent{},
			readBlocks: []int64{baseBlocks - 1, baseBlocks, baseBlocks + 1, baseBlocks + 2, baseBlocks + 3},
			samePages:  []int{0},
			diffPages:  []int{1},
		},
		{
			name:       "larger-source-hinted",
			size:       2*1024*hbs + 5,
			changes:    []change{{off: 3 * hbs, n: 1}},
			hints:      []hints.Extent{{Offset: 3 * hbs, Length: 1, Exists: true}, {Offset: baseSize, Length: 2*1024*hbs + 5 - baseSize, Exists: true}},
			readBlocks: append([]int64{3}, seq(baseBlocks-1, 2*1024+1)...),
			diffPages:  []int{0, 1},
		},
		{
			name:       "smaller-source",
			size:       1300*hbs - 500,
			hints:      []hints.Extent{},
			readBlocks: []int64{1299}, // shorter than in the base
			samePages:  []int{0},
			diffPages:  []int{1},
		},
		{
			name:       "smaller-source-whole-blocks",
			size:       1100 * hbs,
			hints:      []hints.Extent{},
			readBlocks: nil,
			samePages:  []int{0},
			diffPages:  []int{1},
		},
		{
			name:       "smaller-than-a-page",
			size:       1000 * hbs,
			changes:    []change{{off: 999 * hbs, n: 1}},
			readBlocks: []int64{999},
			diffPages:  []int{0},
		},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, hbs, blockstore.Options{})
			g := newGen(uint64(100 + i))
			baseData := pooled(g, baseSize)
			base := e.mustBackup(baseData, backup.Options{})
			basePages, err := e.db.PageList(base.UID)
			if err != nil {
				t.Fatal(err)
			}
			if len(basePages) != 2 {
				t.Fatalf("base has %d pages", len(basePages))
			}
			size := c.size
			if size == 0 {
				size = baseSize
			}
			data := make([]byte, size)
			copy(data, baseData)
			if size > baseSize {
				copy(data[baseSize:], pooled(g, size-baseSize))
			}
			ext := c.hints
			for _, ch := range c.changes {
				if ch.data != nil {
					copy(data[ch.off:], ch.data)
					ch.n = int64(len(ch.data))
				} else if c.hints == nil {
					copy(data[ch.off:ch.off+ch.n], g.random(ch.n))
				} else {
					clear(data[ch.off : ch.off+ch.n])
				}
				if c.hints == nil {
					ext = append(ext, hints.Extent{Offset: ch.off, Length: ch.n, Exists: true})
				}
			}
			f, err := source.Open(e.writeImage(data))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			src := &countingSource{File: f, reads: map[int64]int{}}
			puts := e.fb.Calls(faulty.MethodPut)
			before, _ := e.db.Stats()
			v, err := backup.Run(t.Context(), e.st, e.db, src, backup.Options{
				Volume: "vol", Base: base, Hints: ext, SanityBlocks: 3, Rand: rand.New(rand.NewPCG(1, 2)),
			})
			if err != nil {
				t.Fatal(err)
			}
			if v.Base != base.UID || v.Status != metastore.StatusValid {
				t.Errorf("version %+v", v)
			}
			if v.BytesRead != bytesOf(c.readBlocks, size) {
				t.Errorf("bytes_read %d, want %d (blocks %v)", v.BytesRead, bytesOf(c.readBlocks, size), c.readBlocks)
			}
			// Every block read outside the hinted ones is one of the (at
			// most 3) sanity samples, which are unchanged blocks.
			extra := 0
			for b := range src.reads {
				if !slices.Contains(c.readBlocks, b) {
					extra++
				}
			}
			if extra > 3 {
				t.Errorf("%d unhinted blocks read: %v", extra, src.reads)
			}
			for _, b := range c.readBlocks {
				if src.reads[b] == 0 {
					t.Errorf("block %d was not read", b)
				}
			}
			// Every byte is sparse, deduplicated or in a block stored now.
			after, _ := e.db.Stats()
			if stored := after.PlainBytes - before.PlainBytes; v.BytesDeduplicated+v.BytesSparse+stored != size {
				t.Errorf("dedup %d, sparse %d, stored %d do not add up to %d", v.BytesDeduplicated, v.BytesSparse, stored, size)
			}
			if n := int64(e.fb.Calls(faulty.MethodPut) - puts); n != after.Blocks-before.Blocks {
				t.Errorf("%d puts for %d new blocks", n, after.Blocks-before.Blocks)
			}
			pages, err := e.db.PageList(v.UID)
			if err != nil {
				t.Fatal(err)
			}
			if want := int((size + 1024*hbs - 1) / (1024 * hbs)); len(pages) != want {
				t.Errorf("%d pages, want %d", len(pages), want)
			}
			for _, p := range c.samePages {
				if pages[p] != basePages[p] {
					t.Errorf("page %d not shared with the base", p)
				}
			}
			for _, p := range c.diffPages {
				if p < len(basePages) && pages[p] == basePages[p] {
					t.Errorf("page %d shared with the base", p)
				}
			}
			e.mustRestoreEqual(v.UID, data)
			e.mustRestoreEqual(base.UID, baseData)
		})
	}
}

func seq(from, to int64) []int64 {
	var out []int64
	for i := from; i < to; i++ {
		out = append(out, i)
	}
	return out
}

func bytesOf(blocks []int64, size int64) int64 {
	var n int64
	for _, b := range blocks {
		n += min(hbs, size-b*hbs)
	}
	return n
}

// TestHintsWithoutBase: without a base, unhinted regions are zero and not
// read.
func TestHintsWithoutBase(t *testing.T) {
	e := newEnv(t, hbs, blockstore.Options{})
	g := newGen(200)
	const size = 1500*hbs + 10
	data := make([]byte, size)
	ext := []hints.Extent{
		{Offset: 0, Length: 3 * hbs, Exists: true},
		{Offset: 1023*hbs + 5, Length: 10, Exists: true},         // one block, across nothing
		{Offset: 1400 * hbs, Length: 100*hbs + 10, Exists: true}, // to the end
		{Offset: 50 * hbs, Length: 10 * hbs, Exists: false},
	}
	for _, x := range ext {
		if x.Exists {
			copy(data[x.Offset:x.Offset+x.Length], g.random(x.Length))
		}
	}
	f, err := source.Open(e.writeImage(data))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	src := &countingSource{File: f, reads: map[int64]int{}}
	v, err := backup.Run(t.Context(), e.st, e.db, src, backup.Options{Volume: "vol", Hints: ext})
	if err != nil {
		t.Fatal(err)
	}
	read := append([]int64{0, 1, 2, 1023}, seq(1400, 1501)...)
	if v.BytesRead != bytesOf(read, size) || len(src.reads) != len(read) {
		t.Errorf("bytes_read %d, want %d; %d blocks read", v.BytesRead, bytesOf(read, size), len(src.reads))
	}
	if v.BytesSparse != size-bytesOf(read, size) {
		t.Errorf("bytes_sparse %d", v.BytesSparse)
	}
	e.mustRestoreEqual(v.UID, data)
}

// TestSanityFailure: hints that do not describe the changes fail the
// backup before a version exists.
func TestSanityFailure(t *testing.T) {
	cases := []struct {
		name  string
		hints func(size int64) []hints.Extent
	}{
		{"everything-changed-no-hints", func(int64) []hints.Extent { return []hints.Extent{} }},
		{"one-unhinted-block-changed", func(size int64) []hints.Extent {
			// Everything is hinted but block 700, which changed too.
			return []hints.Extent{{Offset: 0, Length: 700 * hbs, Exists: true}, {Offset: 701 * hbs, Length: size - 701*hbs, Exists: true}}
		}},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, hbs, blockstore.Options{})
			g := newGen(uint64(300 + i))
			const size = 1100 * hbs
			baseData := pooled(g, size)
			base := e.mustBackup(baseData, backup.Options{})
			data := pooled(g, size) // another pool: every non-zero block differs
			puts := e.fb.Calls(faulty.MethodPut)
			_, err := e.backup(t.Context(), e.writeImage(data), backup.Options{Base: base, Hints: c.hints(size), Rand: rand.New(rand.NewPCG(5, 6))})
			if !errors.Is(err, backup.ErrSanity) {
				t.Fatalf("Run = %v, want ErrSanity", err)
			}
			vs, _ := e.db.Versions(nil)
			if len(vs) != 1 || vs[0].UID != base.UID {
				t.Errorf("versions after the failed sanity check: %d", len(vs))
			}
			if n := e.fb.Calls(faulty.MethodPut) - puts; n != 0 {
				t.Errorf("%d objects put", n)
			}
			// The base is not locked any more.
			lk, err := e.db.LockVersion(base.UID, metastore.Exclusive)
			if err != nil {
				t.Fatalf("base still locked: %v", err)
			}
			lk.Unlock()
		})
	}
}

// TestSanityPasses: hints that are right pass the check whatever the
// sample.
func TestSanityPasses(t *testing.T) {
	e := newEnv(t, hbs, blockstore.Options{})
	g := newGen(400)
	const size = 300 * hbs
	baseData := pooled(g, size)
	base := e.mustBackup(baseData, backup.Options{})
	data := slices.Clone(baseData)
	copy(data[7*hbs:], g.random(hbs))
	path := e.writeImage(data)
	for seed := range uint64(5) {
		v, err := e.backup(t.Context(), path, backup.Options{
			Base: base, Hints: []hints.Extent{{Offset: 7 * hbs, Length: hbs, Exists: true}},
			SanityBlocks: 50, Rand: rand.New(rand.NewPCG(seed, seed)),
		})
		if err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		if v.BytesRead != hbs {
			t.Errorf("bytes_read %d", v.BytesRead)
		}
	}
	vs, _ := e.db.Versions(nil)
	e.mustRestoreEqual(vs[len(vs)-1].UID, data)
}

// TestBasePageCheck: hints with a base make each reused page exactly the
// base's; a page id really is the content of the page.
func TestBasePageCheck(t *testing.T) {
	e := newEnv(t, hbs, blockstore.Options{})
	data := pooled(newGen(500), 1024*hbs)
	base := e.mustBackup(data, backup.Options{})
	v, err := e.backup(t.Context(), e.writeImage(data), backup.Options{Base: base, Hints: noHints})
	if err != nil {
		t.Fatal(err)
	}
	pb, _ := e.db.PageList(base.UID)
	pv, _ := e.db.PageList(v.UID)
	if len(pv) != 1 || pv[0] != pb[0] {
		t.Fatalf("pages %v vs %v", pv, pb)
	}
	ents, err := e.db.Page(pv[0])
	if err != nil || len(ents) != blockmap.PageEntries {
		t.Fatalf("page: %d entries, %v", len(ents), err)
	}
	if v.BytesRead != 0 || v.BytesWritten != 0 || v.BytesDeduplicated+v.BytesSparse != int64(len(data)) {
		t.Errorf("version %+v", v)
	}
}
