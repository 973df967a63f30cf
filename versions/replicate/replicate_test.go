package replicate_test

import (
	"context"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/blockstore/backend/faulty"
	"github.com/backy/backy/blockstore/object"
	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/metastore/blockmap"
	"github.com/backy/backy/metastore/metastoretest"
	"github.com/backy/backy/versions/backup"
	"github.com/backy/backy/versions/replicate"
)

// TestCopyRoundTrip copies a version between stores of every combination
// of encryption: the target restores it bit for bit with its own keys
// only, every object in the target is sealed at the target's encryption
// version with the target's key, the version's identity and settings are
// kept, its statistics describe the copy, and a second copy sends nothing.
func TestCopyRoundTrip(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		src, dst enc
		dstComp  block.Compression
	}{
		{"plain to plain", plain, plain, block.CompressionNone},
		{"plain to encrypted", plain, aes1, block.CompressionZstd},
		{"encrypted to plain", aes1, plain, block.CompressionNone},
		{"other version and cipher", aes1, chacha3, block.CompressionZstd},
		{"same version, other key", chacha1, chacha1, block.CompressionNone},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			src := newStore(t, bs, tc.src, block.CompressionZstd)
			dst := newStore(t, bs, tc.dst, tc.dstComp)
			img := makeImage(40, 1000, 1)
			v := src.backup(img.data, "vm-1", backup.Options{Snapshot: "snap-1", Labels: map[string]string{"host": "pve1"}})
			expire := time.Date(2031, 2, 3, 4, 5, 6, 0, time.UTC)
			if _, err := src.db.UpdateVersion(v.UID, func(v *metastore.Version) error {
				v.Protected, v.Expire = true, &expire
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			v = src.version(v.UID)

			rep := mustCopy(t, src, dst, replicate.Options{UIDs: []string{v.UID}})
			res := one(t, rep)
			nBlocks := int64(len(img.data)+bs-1) / bs
			if res.State != replicate.StateCopied || res.TargetStatus != metastore.StatusValid || res.Blocks != nBlocks || res.BlocksDone != nBlocks ||
				res.BlocksSent != int64(len(img.distinct)) || res.BlocksDeduplicated != img.dups || res.BlocksSparse != img.sparse {
				t.Errorf("result %+v; want copied, valid, %d blocks: %d sent, %d deduplicated, %d sparse", res, nBlocks, len(img.distinct), img.dups, img.sparse)
			}
			if got := dst.objectBytes(); res.BytesWritten != got || rep.BytesWritten != got {
				t.Errorf("bytes written %d (report %d), the target's objects hold %d", res.BytesWritten, rep.BytesWritten, got)
			}

			tv := dst.version(v.UID)
			if tv.Volume != v.Volume || tv.Snapshot != v.Snapshot || !maps.Equal(tv.Labels, v.Labels) || !tv.Date.Equal(v.Date) ||
				tv.Size != v.Size || tv.BlockSize != v.BlockSize || !tv.Protected || tv.Expire == nil || !tv.Expire.Equal(expire) ||
				tv.Status != metastore.StatusValid || tv.BlocksDone != nBlocks {
				t.Errorf("target version %+v, want the source's %+v, valid", tv, v)
			}
			if tv.BytesWritten != res.BytesWritten || tv.BytesRead != res.BytesSent || tv.BytesDeduplicated != res.BytesDeduplicated ||
				tv.BytesSparse != img.sparse*bs || tv.BytesRead+tv.BytesDeduplicated+tv.BytesSparse != v.Size {
				t.Errorf("target statistics read %d, written %d, deduplicated %d, sparse %d; the copy sent %d (%d stored), deduplicated %d",
					tv.BytesRead, tv.BytesWritten, tv.BytesDeduplicated, tv.BytesSparse, res.BytesSent, res.BytesWritten, res.BytesDeduplicated)
			}
			sp, _ := src.db.PageList(v.UID)
			tp, _ := dst.db.PageList(v.UID)
			if !slices.Equal(sp, tp) {
				t.Errorf("the target's map pages %v differ from the source's %v", tp, sp)
			}
			dst.mustRestore(v.UID, img.data)

			objs := dst.objects()
			if len(objs) != len(img.distinct) {
				t.Errorf("the target holds %d objects, want %d", len(objs), len(img.distinct))
			}
			for _, h := range objs {
				switch {
				case h.EncVersion != tc.dst.version || h.Cipher != tc.dst.cipher:
					t.Fatalf("target object sealed at encryption version %d with %s, want %d with %s", h.EncVersion, h.Cipher, tc.dst.version, tc.dst.cipher)
				case dst.key != nil && h.KeyID != dst.key.ID:
					t.Fatalf("target object sealed with key id %x, want the target's %x", h.KeyID, dst.key.ID)
				case tc.dstComp == block.CompressionNone && h.Compression != block.CompressionNone:
					t.Fatalf("target object compressed with %s; the target does not compress", h.Compression)
				}
			}

			// Again: already there, nothing sent.
			rep = mustCopy(t, src, dst, replicate.Options{UIDs: []string{v.UID}})
			if res := one(t, rep); res.State != replicate.StateAlready || res.BlocksSent != 0 || res.TargetStatus != metastore.StatusValid {
				t.Errorf("second copy: %+v, want already there", res)
			}
			if n := len(dst.objects()); n != len(objs) {
				t.Errorf("second copy: the target holds %d objects, had %d", n, len(objs))
			}
		})
	}
}

// TestCopySendsOnlyNewBlocks: a version sharing most blocks with one
// already copied sends only the blocks the target lacks; --volume and
// --all select complete versions (oldest first) and report the others.
func TestCopySendsOnlyNewBlocks(t *testing.T) {
	t.Parallel()
	src := newStore(t, bs, plain, block.CompressionNone)
	dst := newStore(t, bs, aes1, block.CompressionNone)
	img1 := makeImage(48, 0, 2)
	img2 := img1.change(3, 5, 20, 41)
	v1 := src.backup(img1.data, "vol", backup.Options{})
	v2 := src.backup(img2.data, "vol", backup.Options{})
	other := src.backup(makeImage(6, 0, 4).data, "other", backup.Options{})

	mustCopy(t, src, dst, replicate.Options{UIDs: []string{v1.UID}})
	before := len(dst.objects())
	rep := mustCopy(t, src, dst, replicate.Options{Volume: "vol"})
	if len(rep.Versions) != 2 || rep.Versions[0].UID != v1.UID || rep.Versions[1].UID != v2.UID {
		t.Fatalf("--volume vol copied %+v, want %s then %s", rep.Versions, v1.UID, v2.UID)
	}
	r1, r2 := rep.Versions[0], rep.Versions[1]
	if r1.State != replicate.StateAlready || r1.BlocksSent != 0 {
		t.Errorf("%s: %+v, want already there", v1.UID, r1)
	}
	nonSparse := int64(len(img2.data)/bs) - img2.sparse
	if r2.State != replicate.StateCopied || r2.BlocksSent != 3 || r2.BlocksDeduplicated != nonSparse-3 || r2.BytesSent != 3*bs {
		t.Errorf("%s: %+v, want 3 blocks (%d bytes) sent and %d deduplicated", v2.UID, r2, 3*bs, nonSparse-3)
	}
	if got := len(dst.objects()); got != before+3 {
		t.Errorf("the target holds %d objects after the second copy, had %d; want 3 more", got, before)
	}
	dst.mustRestore(v2.UID, img2.data)

	// --all: an incomplete version is skipped and listed, the rest copied.
	inc := &metastore.Version{UID: mustUID(t), Volume: "vol", Size: bs, BlockSize: bs, Status: metastore.StatusIncomplete, Date: time.Now().UTC()}
	if err := src.db.CreateVersion(inc); err != nil {
		t.Fatal(err)
	}
	rep = mustCopy(t, src, dst, replicate.Options{All: true})
	var states []string
	for _, r := range rep.Versions {
		states = append(states, r.UID+" "+string(r.State))
	}
	want := []string{v1.UID + " already there", v2.UID + " already there", other.UID + " copied"}
	if !slices.Equal(states, want) {
		t.Errorf("--all: %v, want %v", states, want)
	}
	if len(rep.Skipped) != 1 || rep.Skipped[0].UID != inc.UID || !strings.Contains(rep.Skipped[0].Reason, "incomplete") {
		t.Errorf("--all skipped %+v, want the incomplete %s", rep.Skipped, inc.UID)
	}
	if _, err := runCopy(context.Background(), src, dst, replicate.Options{Volume: "nope"}); !errors.Is(err, replicate.ErrNoVersions) {
		t.Errorf("--volume of no versions: %v, want ErrNoVersions", err)
	}
}

// TestCopyResume: a target backend that dies after some puts stops the
// copy with its committed prefix recorded; a clean run continues it
// without sending again what was committed, across a page boundary, and
// the copy restores bit for bit (the metastores are checked at the end).
func TestCopyResume(t *testing.T) {
	t.Parallel()
	// 1100 blocks: two pages of the map; mostly empty, so it is cheap,
	// with data on both sides of the page boundary.
	data := make([]byte, 1100*bs-333)
	rich := makeImage(60, 0, 5)
	copy(data[990*bs:], rich.data)
	copy(data[:10*bs], rich.data[10*bs:20*bs])
	img := analyse(data)
	// putsBefore counts the distinct blocks first met before block i: with
	// one worker, blocks are stored in order.
	putsBefore := func(i int) int {
		seen := map[block.ID]bool{}
		for k := range i {
			p := data[k*bs : min((k+1)*bs, len(data))]
			if !block.IsZero(p) {
				seen[block.Sum(p)] = true
			}
		}
		return len(seen)
	}
	for _, tc := range []struct {
		name  string
		puts  int
		pages int64 // the page the second run must start from, at least
	}{
		{"dies early", putsBefore(6), 0},
		{"dies in the second page", putsBefore(1036), 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			src := newStore(t, bs, plain, block.CompressionNone)
			dst := newStore(t, bs, chacha1, block.CompressionZstd)
			v := src.backup(img.data, "big", backup.Options{})

			dst.fb.DieAfterPuts(tc.puts)
			_, err := runCopy(context.Background(), src, dst, replicate.Options{UIDs: []string{v.UID}, Workers: 1})
			if !errors.Is(err, faulty.ErrDead) {
				t.Fatalf("copy to a dying backend: %v, want ErrDead", err)
			}
			tv := dst.version(v.UID)
			if tv.Status != metastore.StatusIncomplete || tv.BlocksDone <= tc.pages*1024 || tv.BlocksDone >= v.Blocks() {
				t.Fatalf("after the failure the target has %+v, want an incomplete version with more than %d blocks done", tv, tc.pages*1024)
			}
			t.Logf("interrupted with %d of %d blocks committed", tv.BlocksDone, v.Blocks())
			recorded := dst.records()
			metastoretest.Check(t, dst.db)

			dst.reopen()
			rep := mustCopy(t, src, dst, replicate.Options{UIDs: []string{v.UID}, CommitInterval: time.Hour})
			res := one(t, rep)
			if res.State != replicate.StateResumed || res.BlocksBefore != tv.BlocksDone || res.TargetStatus != metastore.StatusValid {
				t.Errorf("second run: %+v, want resumed from %d blocks, valid", res, tv.BlocksDone)
			}
			// Exactly the blocks not recorded yet are sent, each once.
			if want := int64(len(img.distinct)) - recorded; res.BlocksSent != want || int64(dst.fb.Calls(faulty.MethodPut)) != want {
				t.Errorf("second run sent %d blocks (%d puts), want %d: the %d recorded ones must not be sent again",
					res.BlocksSent, dst.fb.Calls(faulty.MethodPut), want, recorded)
			}
			dst.mustRestore(v.UID, img.data)
			if got := dst.version(v.UID); got.BytesRead+got.BytesDeduplicated+got.BytesSparse != v.Size {
				t.Errorf("the resumed copy counts %d read, %d deduplicated, %d sparse bytes; they should add up to its %d bytes once",
					got.BytesRead, got.BytesDeduplicated, got.BytesSparse, v.Size)
			}
		})
	}
}

// TestCopyCancel: cancelling stops the copy after a commit; the next run
// continues it.
func TestCopyCancel(t *testing.T) {
	t.Parallel()
	src := newStore(t, bs, plain, block.CompressionNone)
	dst := newStore(t, bs, plain, block.CompressionNone)
	img := makeImage(40, 0, 6)
	v := src.backup(img.data, "vol", backup.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	hw := &hookWriter{Writer: dst.st}
	hw.onFlush = func(n int) error {
		if n == 5 {
			cancel() // the fifth commit goes through, then the copy stops
		}
		return nil
	}
	rep, err := replicate.Run(ctx, replicate.Source{DB: src.db, Blocks: src.st}, replicate.Target{DB: dst.db, Blocks: hw},
		copyOpts(replicate.Options{UIDs: []string{v.UID}, Workers: 1}))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled copy: %v, want context.Canceled", err)
	}
	if rep == nil || len(rep.Versions) != 1 || rep.Versions[0].State != replicate.StateFailed {
		t.Errorf("cancelled copy reported %+v, want the version failed", rep)
	}
	tv := dst.version(v.UID)
	if tv.Status != metastore.StatusIncomplete || tv.BlocksDone < 5 {
		t.Fatalf("after cancelling the target has %+v, want incomplete with at least 5 blocks done", tv)
	}
	res := one(t, mustCopy(t, src, dst, replicate.Options{UIDs: []string{v.UID}}))
	if res.State != replicate.StateResumed || res.BlocksBefore != tv.BlocksDone {
		t.Errorf("after cancelling: %+v, want resumed from %d", res, tv.BlocksDone)
	}
	dst.mustRestore(v.UID, img.data)
}

// TestCopyDamagedSourceBlock: a source object with a flipped bit is not
// sent; nothing is recorded for it in the target, where the version stays
// incomplete; the block and every version using it are marked invalid in
// the source, as restore does; the other selected versions are copied.
func TestCopyDamagedSourceBlock(t *testing.T) {
	t.Parallel()
	src := newStore(t, bs, aes1, block.CompressionNone)
	dst := newStore(t, bs, plain, block.CompressionNone)
	img := makeImage(30, 0, 7)
	v1 := src.backup(img.data, "vol", backup.Options{})
	v2 := src.backup(img.change(8, 1).data, "vol", backup.Options{}) // shares block 12
	good := src.backup(makeImage(5, 0, 9).data, "good", backup.Options{})

	// Flip a bit in the object of block 12.
	id := block.Sum(img.data[12*bs : 13*bs])
	rec, found, err := src.db.LookupBlock(id)
	if err != nil || !found {
		t.Fatalf("block 12 not recorded: %v", err)
	}
	path := filepath.Join(src.inner.Root(), blockstore.ObjectName(rec.Name))
	obj, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	obj[len(obj)/2] ^= 0x10
	if err := os.WriteFile(path, obj, 0o600); err != nil {
		t.Fatal(err)
	}

	rep, err := runCopy(context.Background(), src, dst, replicate.Options{UIDs: []string{v1.UID, good.UID}})
	if !errors.Is(err, blockstore.ErrCorrupt) {
		t.Fatalf("copy of a damaged version: %v, want ErrCorrupt", err)
	}
	if rep == nil || len(rep.Versions) != 2 || rep.Versions[0].State != replicate.StateFailed || rep.Versions[1].State != replicate.StateCopied {
		t.Fatalf("report %+v: want %s failed and %s copied", rep, v1.UID, good.UID)
	}
	if _, found, _ := dst.db.LookupBlock(id); found {
		t.Error("the damaged block has a record in the target")
	}
	if tv := dst.version(v1.UID); tv.Status != metastore.StatusIncomplete || tv.BlocksDone > 12 {
		t.Errorf("target version %+v: want incomplete with at most the 12 blocks before the damaged one", tv)
	}
	if rec, _, _ := src.db.LookupBlock(id); !rec.Invalid {
		t.Error("the damaged block is not marked invalid in the source")
	}
	for _, uid := range []string{v1.UID, v2.UID} {
		if st := src.version(uid).Status; st != metastore.StatusInvalid {
			t.Errorf("source version %s is %s, want invalid", uid, st)
		}
	}
	if !slices.Equal(rep.InvalidVersions, []string{v1.UID, v2.UID}) {
		t.Errorf("report lists invalid versions %v, want %v", rep.InvalidVersions, []string{v1.UID, v2.UID})
	}
	dst.mustRestore(good.UID, src.restoreBytes(good.UID))

	// Now invalid in the source: refused without --force; with it, the
	// damaged block still stops the copy.
	if _, err := runCopy(context.Background(), src, dst, replicate.Options{UIDs: []string{v2.UID}}); !errors.Is(err, replicate.ErrNotCopyable) {
		t.Errorf("copy of an invalid version: %v, want ErrNotCopyable", err)
	}
	if _, err := runCopy(context.Background(), src, dst, replicate.Options{UIDs: []string{v2.UID}, Force: true}); !errors.Is(err, blockstore.ErrCorrupt) {
		t.Errorf("forced copy of a damaged version: %v, want ErrCorrupt", err)
	}
	if _, found, _ := dst.db.LookupBlock(id); found {
		t.Error("the damaged block has a record in the target")
	}
}

// TestCopyForce: incomplete and invalid versions are refused without
// --force; with it, an incomplete version is copied as far as it goes (and
// stays incomplete in the target, "already there" the next time), and an
// invalid one whose blocks all read back intact becomes a valid copy.
func TestCopyForce(t *testing.T) {
	t.Parallel()
	src := newStore(t, bs, plain, block.CompressionNone)
	dst := newStore(t, bs, plain, block.CompressionNone)
	img := makeImage(20, 0, 10)
	v := src.backup(img.data, "vol", backup.Options{})
	if _, err := src.db.MarkVersionInvalid(v.UID); err != nil {
		t.Fatal(err)
	}
	// An incomplete version: a backup killed after 7 blocks (the map's
	// first 7 entries of v, blocks_done 7).
	entries, err := src.db.Page(mustPage(t, src, v.UID, 0))
	if err != nil {
		t.Fatal(err)
	}
	inc := &metastore.Version{UID: mustUID(t), Volume: "vol", Size: v.Size, BlockSize: bs, Status: metastore.StatusIncomplete, Date: time.Now().UTC()}
	if err := src.db.CreateVersion(inc); err != nil {
		t.Fatal(err)
	}
	if _, err := src.db.Commit(metastore.Commit{UID: inc.UID, Pages: []metastore.PageWrite{metastore.NewPage(entries[:7])},
		Update: func(v *metastore.Version) error { v.BlocksDone = 7; return nil }}); err != nil {
		t.Fatal(err)
	}

	for _, uid := range []string{v.UID, inc.UID} {
		if _, err := runCopy(context.Background(), src, dst, replicate.Options{UIDs: []string{uid}}); !errors.Is(err, replicate.ErrNotCopyable) {
			t.Errorf("copy of %s without --force: %v, want ErrNotCopyable", uid, err)
		}
		if _, err := dst.db.Version(uid); !errors.Is(err, metastore.ErrVersionNotFound) {
			t.Errorf("a refused copy created %s in the target (%v)", uid, err)
		}
	}
	rep := mustCopy(t, src, dst, replicate.Options{UIDs: []string{v.UID, inc.UID}, Force: true})
	rv, ri := rep.Versions[0], rep.Versions[1]
	if rv.State != replicate.StateCopied || rv.TargetStatus != metastore.StatusValid || rv.SourceStatus != metastore.StatusInvalid || rv.Note == "" {
		t.Errorf("forced copy of the invalid version: %+v, want copied, valid, with a note", rv)
	}
	dst.mustRestore(v.UID, img.data)
	if ri.State != replicate.StateCopied || ri.TargetStatus != metastore.StatusIncomplete || ri.Blocks != 7 || ri.BlocksDone != 7 || ri.Note == "" {
		t.Errorf("forced copy of the incomplete version: %+v, want copied, incomplete, 7 blocks, with a note", ri)
	}
	if tv := dst.version(inc.UID); tv.Status != metastore.StatusIncomplete || tv.BlocksDone != 7 {
		t.Errorf("target copy of the incomplete version: %+v", tv)
	}
	rep = mustCopy(t, src, dst, replicate.Options{UIDs: []string{inc.UID}, Force: true})
	if r := one(t, rep); r.State != replicate.StateAlready || r.BlocksSent != 0 {
		t.Errorf("second forced copy of the incomplete version: %+v, want already there", r)
	}
}

// TestCopyDryRun: a dry run changes nothing in the target (metastore
// bytes, objects) and reports what a copy would send, counting a block
// shared by two versions once.
func TestCopyDryRun(t *testing.T) {
	t.Parallel()
	src := newStore(t, bs, aes1, block.CompressionNone)
	dst := newStore(t, bs, plain, block.CompressionNone)
	img1 := makeImage(30, 100, 11)
	img2 := img1.change(12, 2, 9)
	v1 := src.backup(img1.data, "vol", backup.Options{})
	v2 := src.backup(img2.data, "vol", backup.Options{})
	// The target holds part of v1 already: an interrupted copy.
	dst.fb.DieAfterPuts(6)
	if _, err := runCopy(context.Background(), src, dst, replicate.Options{UIDs: []string{v1.UID}, Workers: 1}); err == nil {
		t.Fatal("copy to a dying backend succeeded")
	}
	dst.reopen()
	tv := dst.version(v1.UID)

	dbBefore, err := os.ReadFile(dst.db.Path())
	if err != nil {
		t.Fatal(err)
	}
	objsBefore := len(dst.objects())
	// No block stores: a dry run reads no block and needs no keys.
	dry, err := replicate.Run(context.Background(), replicate.Source{DB: src.db}, replicate.Target{DB: dst.db},
		replicate.Options{UIDs: []string{v1.UID, v2.UID}, DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if dbAfter, _ := os.ReadFile(dst.db.Path()); string(dbAfter) != string(dbBefore) || len(dst.objects()) != objsBefore {
		t.Fatal("a dry run changed the target")
	}
	if !dry.DryRun || len(dry.Versions) != 2 {
		t.Fatalf("dry run report %+v", dry)
	}
	d1, d2 := dry.Versions[0], dry.Versions[1]
	if d1.State != replicate.StateIncomplete || d1.BlocksBefore != tv.BlocksDone || d2.State != replicate.StateMissing {
		t.Errorf("dry run: %s %s (before %d), %s %s; want incomplete (before %d), missing", d1.UID, d1.State, d1.BlocksBefore, d2.UID, d2.State, tv.BlocksDone)
	}
	real := mustCopy(t, src, dst, replicate.Options{UIDs: []string{v1.UID, v2.UID}})
	for i, r := range real.Versions {
		d := dry.Versions[i]
		if d.BlocksSent != r.BlocksSent || d.BlocksDeduplicated != r.BlocksDeduplicated || d.BlocksSparse != r.BlocksSparse || d.BytesSent != r.BytesSent {
			t.Errorf("%s: the dry run said %d sent (%d bytes), %d deduplicated, %d sparse; the copy did %d (%d bytes), %d, %d",
				r.UID, d.BlocksSent, d.BytesSent, d.BlocksDeduplicated, d.BlocksSparse, r.BlocksSent, r.BytesSent, r.BlocksDeduplicated, r.BlocksSparse)
		}
	}
	if d2.BlocksSent != 2 {
		t.Errorf("dry run: %s would send %d blocks, want the 2 it does not share with %s", v2.UID, d2.BlocksSent, v1.UID)
	}
	dry, err = replicate.Run(context.Background(), replicate.Source{DB: src.db}, replicate.Target{DB: dst.db}, replicate.Options{All: true, DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range dry.Versions {
		if r.State != replicate.StateAlready || r.BlocksSent != 0 {
			t.Errorf("dry run after the copy: %+v, want already there", r)
		}
	}
}

// TestCopyRefusals: a different version under the same uid, a target of
// another block size, the source itself as the target, a missing key.
func TestCopyRefusals(t *testing.T) {
	t.Parallel()
	src := newStore(t, bs, aes1, block.CompressionNone)
	img := makeImage(10, 0, 13)
	v := src.backup(img.data, "vol", backup.Options{})

	t.Run("same uid, another version", func(t *testing.T) {
		t.Parallel()
		for _, tc := range []struct {
			name string
			tv   metastore.Version
		}{
			{"volume", metastore.Version{Volume: "other", Size: v.Size}},
			{"size", metastore.Version{Volume: "vol", Size: v.Size - bs}},
			{"map", metastore.Version{Volume: "vol", Size: v.Size, Status: metastore.StatusValid, BlocksDone: v.Blocks()}},
		} {
			dst := newStore(t, bs, plain, block.CompressionNone)
			tv := tc.tv
			tv.UID, tv.BlockSize, tv.Date = v.UID, bs, v.Date
			if tv.Status == "" {
				tv.Status = metastore.StatusIncomplete
			}
			if err := dst.db.CreateVersion(&tv); err != nil {
				t.Fatal(err)
			}
			for _, dry := range []bool{false, true} {
				_, err := runCopy(context.Background(), src, dst, replicate.Options{UIDs: []string{v.UID}, DryRun: dry})
				if !errors.Is(err, replicate.ErrConflict) {
					t.Errorf("%s (dry run %v): %v, want ErrConflict", tc.name, dry, err)
				}
			}
			if len(dst.objects()) != 0 {
				t.Errorf("%s: a refused copy stored objects", tc.name)
			}
		}
	})
	t.Run("block size", func(t *testing.T) {
		t.Parallel()
		dst := newStore(t, 2*bs, plain, block.CompressionNone)
		_, err := runCopy(context.Background(), src, dst, replicate.Options{UIDs: []string{v.UID}})
		if !errors.Is(err, replicate.ErrBlockSize) || !strings.Contains(err.Error(), "--block-size 65536") {
			t.Errorf("copy to a store of another block size: %v, want ErrBlockSize naming --block-size 65536", err)
		}
		if _, err := dst.db.Version(v.UID); !errors.Is(err, metastore.ErrVersionNotFound) {
			t.Errorf("the refused copy created the version in the target (%v)", err)
		}
	})
	t.Run("same store", func(t *testing.T) {
		t.Parallel()
		if _, err := runCopy(context.Background(), src, src, replicate.Options{UIDs: []string{v.UID}}); !errors.Is(err, replicate.ErrOptions) {
			t.Errorf("copy to the source itself: %v, want ErrOptions", err)
		}
	})
	t.Run("source key missing", func(t *testing.T) {
		t.Parallel()
		dst := newStore(t, bs, plain, block.CompressionNone)
		noKey, err := blockstore.New(src.inner, blockstore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer noKey.Close()
		_, err = replicate.Run(context.Background(), replicate.Source{DB: src.db, Blocks: noKey}, replicate.Target{DB: dst.db, Blocks: dst.st},
			replicate.Options{UIDs: []string{v.UID}})
		if !errors.Is(err, object.ErrNoKey) || !strings.Contains(err.Error(), "source store") {
			t.Errorf("copy without the source's key: %v, want ErrNoKey naming the source store", err)
		}
		if _, err := dst.db.Version(v.UID); !errors.Is(err, metastore.ErrVersionNotFound) || dst.fb.Calls(faulty.MethodPut) != 0 {
			t.Error("a copy without the source's key wrote to the target")
		}
	})
}

// TestCopyLocks: the source version is share-locked (rm cannot take it)
// and the target's writers lock is held (cleanup --orphans cannot run)
// while blocks are stored; a version being written in the source is not
// copied.
func TestCopyLocks(t *testing.T) {
	t.Parallel()
	src := newStore(t, bs, plain, block.CompressionNone)
	dst := newStore(t, bs, plain, block.CompressionNone)
	img := makeImage(10, 0, 14)
	v := src.backup(img.data, "vol", backup.Options{})
	hw := &hookWriter{Writer: dst.st}
	checked := false
	hw.onPut = func(n int) error {
		if n != 3 {
			return nil
		}
		checked = true
		if lk, err := src.db.LockVersion(v.UID, metastore.Exclusive); !errors.Is(err, metastore.ErrLocked) {
			lk.Unlock()
			t.Error("the source version could be locked exclusively (removed) during the copy")
		}
		if lk, err := dst.db.LockWritersExclusive(false); !errors.Is(err, metastore.ErrLocked) {
			lk.Unlock()
			t.Error("the target's writers lock could be taken exclusively (cleanup --orphans) during the copy")
		}
		if lk, err := dst.db.LockVersion(v.UID, metastore.Shared); !errors.Is(err, metastore.ErrLocked) {
			lk.Unlock()
			t.Error("the target's copy could be read-locked while it is written")
		}
		return nil
	}
	if _, err := replicate.Run(context.Background(), replicate.Source{DB: src.db, Blocks: src.st}, replicate.Target{DB: dst.db, Blocks: hw},
		copyOpts(replicate.Options{UIDs: []string{v.UID}})); err != nil {
		t.Fatal(err)
	}
	if !checked {
		t.Fatal("the locks were not checked during the copy")
	}
	// Records only name durable objects: none is recorded that was stored
	// after the last Flush.
	for id := range img.distinct {
		rec, found, err := dst.db.LookupBlock(id)
		if err != nil || !found {
			t.Fatalf("block %s not recorded in the target (%v)", id.Short(), err)
		}
		if hw.unflushed[rec.Name] {
			t.Errorf("block %s is recorded, but its object was never flushed", id.Short())
		}
	}
	if hw.durable != len(img.distinct) {
		t.Errorf("%d objects were flushed, want the %d stored", hw.durable, len(img.distinct))
	}
	// A version locked by a writer in the source.
	w := src.backup(makeImage(4, 0, 15).data, "vol", backup.Options{})
	lk, err := src.db.LockVersion(w.UID, metastore.Exclusive)
	if err != nil {
		t.Fatal(err)
	}
	defer lk.Unlock()
	if _, err := runCopy(context.Background(), src, dst, replicate.Options{UIDs: []string{w.UID}}); !errors.Is(err, metastore.ErrLocked) {
		t.Errorf("copy of a version locked in the source: %v, want ErrLocked", err)
	}
	rep := mustCopy(t, src, dst, replicate.Options{All: true})
	if len(rep.Skipped) != 1 || rep.Skipped[0].UID != w.UID {
		t.Errorf("--all with a locked version: skipped %+v, want %s", rep.Skipped, w.UID)
	}
}

// TestCopyCleanupRace: a block the copy deduplicated against in the target
// is removed by a cleanup before the commit; the commit finds it missing,
// the block is sent again from the source, and the copy is whole.
func TestCopyCleanupRace(t *testing.T) {
	t.Parallel()
	src := newStore(t, bs, plain, block.CompressionNone)
	dst := newStore(t, bs, aes1, block.CompressionNone)
	img0 := makeImage(12, 0, 16)
	img1 := img0.change(17, 0, 1) // shares ten blocks with img0
	v0 := src.backup(img0.data, "vol", backup.Options{})
	v1 := src.backup(img1.data, "vol", backup.Options{})
	mustCopy(t, src, dst, replicate.Options{UIDs: []string{v0.UID}})
	// rm in the target: v0's blocks stay recorded, unreferenced, until a
	// cleanup collects them.
	if err := dst.db.RemoveVersion(v0.UID); err != nil {
		t.Fatal(err)
	}
	collected := 0
	hw := &hookWriter{Writer: dst.st}
	hw.onFlush = func(n int) error {
		if n != 1 {
			return nil
		}
		// Just before the first commit: the cleanup.
		for after, done := block.Sparse, false; !done; {
			c, err := dst.db.CollectGarbage(after, 0)
			if err != nil {
				return err
			}
			var names []block.Name
			for _, r := range c.Records {
				if err := dst.st.Delete(context.Background(), r.Name); err != nil {
					return err
				}
				names = append(names, r.Name)
				collected++
			}
			if err := dst.db.ForgetTrash(names); err != nil {
				return err
			}
			after, done = c.Last, c.Done
		}
		return nil
	}
	rep, err := replicate.Run(context.Background(), replicate.Source{DB: src.db, Blocks: src.st}, replicate.Target{DB: dst.db, Blocks: hw},
		replicate.Options{UIDs: []string{v1.UID}, Workers: 4, CommitInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if collected == 0 {
		t.Fatal("the cleanup collected nothing")
	}
	res := one(t, rep)
	if res.BlocksSent != int64(len(img1.distinct)) || res.BlocksDeduplicated != img1.dups {
		t.Errorf("result %+v: every distinct block (%d) should have been sent, the removed ones again", res, len(img1.distinct))
	}
	dst.mustRestore(v1.UID, img1.data)
}

// TestCopyHealsInvalidTargetBlock: a block the target knows damaged is
// never deduplicated against: it is sent again, and the fresh copy
// replaces the damaged one for every version of the target.
func TestCopyHealsInvalidTargetBlock(t *testing.T) {
	t.Parallel()
	src := newStore(t, bs, plain, block.CompressionNone)
	dst := newStore(t, bs, plain, block.CompressionNone)
	img0 := makeImage(10, 0, 18)
	img1 := img0.change(19, 7)
	v0 := src.backup(img0.data, "vol", backup.Options{})
	v1 := src.backup(img1.data, "vol", backup.Options{})
	mustCopy(t, src, dst, replicate.Options{UIDs: []string{v0.UID}})
	// Block 0 is damaged in the target (and known to be).
	id := block.Sum(img0.data[:bs])
	rec, _, err := dst.db.LookupBlock(id)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dst.inner.Root(), blockstore.ObjectName(rec.Name)), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := dst.db.MarkInvalid([]block.ID{id}); err != nil {
		t.Fatal(err)
	}
	res := one(t, mustCopy(t, src, dst, replicate.Options{UIDs: []string{v1.UID}}))
	if res.BlocksSent != 2 {
		t.Errorf("result %+v: want 2 blocks sent (the changed one and the one damaged in the target)", res)
	}
	if cur, _, _ := dst.db.LookupBlock(id); cur.Invalid || cur.Name == rec.Name {
		t.Errorf("the target's record of the damaged block is %+v; want a valid one naming a fresh object", cur)
	}
	dst.mustRestore(v1.UID, img1.data)
}

func mustUID(t *testing.T) string {
	t.Helper()
	uid, err := metastore.NewUID(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return uid
}

func mustPage(t *testing.T, s *store, uid string, p int) blockmap.PageID {
	t.Helper()
	pl, err := s.db.PageList(uid)
	if err != nil || len(pl) <= p {
		t.Fatalf("page %d of %s: %v (%d pages)", p, uid, err, len(pl))
	}
	return pl[p]
}
