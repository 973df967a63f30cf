package reencrypt_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/blockstore/backend"
	"github.com/backy/backy/blockstore/backend/faulty"
	"github.com/backy/backy/blockstore/object"
	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/metastore/metastoretest"
	"github.com/backy/backy/migrate/reencrypt"
	"github.com/backy/backy/versions/backup"
	"github.com/backy/backy/versions/restore"
)

// storedBytes sums the stored sizes of the records of ids.
func storedBytes(recs map[block.ID]block.Record, ids map[block.ID]bool) int64 {
	var n int64
	for id := range ids {
		n += int64(recs[id].StoredSize)
	}
	return n
}

// checkProgress checks the progress reports of a run against its result.
func checkProgress(t *testing.T, ps []reencrypt.Progress, res *reencrypt.Result) {
	t.Helper()
	if len(ps) == 0 {
		t.Fatal("no progress reported")
	}
	for i := 1; i < len(ps); i++ {
		if ps[i].Done < ps[i-1].Done || ps[i].Migrated < ps[i-1].Migrated || ps[i].BytesWritten < ps[i-1].BytesWritten {
			t.Fatalf("progress went backwards: %+v after %+v", ps[i], ps[i-1])
		}
	}
	last := ps[len(ps)-1]
	if last.Migrated != res.Migrated || last.BytesWritten != res.BytesWritten || last.Done != res.Examined || last.Done > last.Total {
		t.Fatalf("last progress %+v disagrees with the result %+v", last, res)
	}
}

// Migrating one version moves exactly its blocks; migrating all then leaves
// nothing below the target, no plaintext and no leftover object.
func TestMigrateOneVersionThenAll(t *testing.T) {
	e := newEnv(t)
	plain := e.open(storeOpts{comp: block.CompressionNone})
	imgA := e.image(1, 48)
	imgB := e.variant(imgA, 2, 4)
	vA := e.mustBackup(plain, imgA)
	vB := e.mustBackup(plain, imgB)
	idsA, _, refsA := e.blocksOf(imgA)
	idsB, markedB, _ := e.blocksOf(imgB)
	onlyB := map[block.ID]bool{}
	for id := range idsB {
		if !idsA[id] {
			onlyB[id] = true
		}
	}
	if len(onlyB) == 0 || len(onlyB) == len(idsB) {
		t.Fatalf("%d of B's %d blocks are B's own; want some shared, some not", len(onlyB), len(idsB))
	}
	before := e.records()
	if len(before) != len(idsA)+len(onlyB) {
		t.Fatalf("%d block records, want %d", len(before), len(idsA)+len(onlyB))
	}
	e.wantEncStats(map[uint16]metastore.EncStat{0: statsOf(before)[0]})

	e.key(1, object.CipherAES256GCM)
	st1 := e.open(storeOpts{write: 1, comp: block.CompressionZstd})
	var ps []reencrypt.Progress
	res := e.migrate(st1, reencrypt.Options{UIDs: []string{vA.UID}, Workers: 3, Batch: 7, Progress: func(p reencrypt.Progress) { ps = append(ps, p) }})
	recs, objs, orphans := e.checkRecords()
	stats := statsOf(recs)
	switch {
	case res.Migrated != int64(len(idsA)):
		t.Errorf("Migrated = %d, want %d (the distinct blocks of %s)", res.Migrated, len(idsA), vA.UID)
	case res.Examined < res.Migrated || res.Examined > int64(refsA):
		t.Errorf("Examined = %d, want %d..%d", res.Examined, res.Migrated, refsA)
	case res.Skipped != 0:
		t.Errorf("Skipped = %d", res.Skipped)
	case res.BytesRead != storedBytes(before, idsA):
		t.Errorf("BytesRead = %d, want %d", res.BytesRead, storedBytes(before, idsA))
	case res.BytesWritten != stats[1].StoredBytes || res.BytesWritten != storedBytes(recs, idsA):
		t.Errorf("BytesWritten = %d, want %d", res.BytesWritten, stats[1].StoredBytes)
	case res.ObjectsDeleted != int64(len(idsA)):
		t.Errorf("ObjectsDeleted = %d, want %d", res.ObjectsDeleted, len(idsA))
	case res.Remaining != int64(len(onlyB)):
		t.Errorf("Remaining = %d, want %d (the blocks only %s uses)", res.Remaining, len(onlyB), vB.UID)
	case res.Target != 1 || res.DurationSeconds <= 0:
		t.Errorf("result %+v", res)
	}
	checkProgress(t, ps, res)
	e.wantEncStats(stats)
	if stats[0].Blocks != int64(len(onlyB)) || stats[1].Blocks != int64(len(idsA)) {
		t.Fatalf("EncStats %v: want %d blocks at 0 and %d at 1", stats, len(onlyB), len(idsA))
	}
	zstd := 0
	for id := range idsA {
		r := recs[id]
		if r.EncVersion != 1 || r.Name == before[id].Name {
			t.Fatalf("block %s of %s: record %+v, was %+v", id.Short(), vA.UID, r, before[id])
		}
		if _, ok := objs[before[id].Name]; ok {
			t.Errorf("old object %s of block %s still exists", before[id].Name, id.Short())
		}
		if bytes.Contains(objs[r.Name].content(t), e.marker) {
			t.Errorf("migrated object %s holds the marker", r.Name)
		}
		if r.Compression == block.CompressionZstd {
			zstd++
		}
	}
	// Text compresses, random data does not and is stored as it is.
	if zstd == 0 || zstd == len(idsA) {
		t.Errorf("%d of %d migrated blocks compressed; want the text ones only", zstd, len(idsA))
	}
	for id := range onlyB {
		if recs[id] != before[id] {
			t.Errorf("block %s only %s uses changed: %+v, was %+v", id.Short(), vB.UID, recs[id], before[id])
		}
		if markedB[id] && !bytes.Contains(objs[recs[id].Name].content(t), e.marker) {
			t.Errorf("unmigrated object %s lost the marker", recs[id].Name)
		}
	}
	if len(orphans) != 0 || len(e.trash()) != 0 {
		t.Fatalf("%d orphans, %d trash entries", len(orphans), len(e.trash()))
	}
	// Both versions restore with a store holding both keys (0 needs none)...
	e.mustRestoreAll(st1.Store)
	if err := e.restoreFileEqual(t.Context(), st1.Store, vB.UID); err != nil {
		t.Fatal(err)
	}
	// ... and not without the key of version 1, which B now needs too.
	for _, uid := range []string{vA.UID, vB.UID} {
		if _, _, err := e.restore(t.Context(), plain.Store, uid, restore.Options{}); !errors.Is(err, object.ErrNoKey) {
			t.Fatalf("restore %s without the key of version 1: %v, want ErrNoKey", uid, err)
		}
	}

	// Everything else.
	ps = nil
	res = e.migrate(st1, reencrypt.Options{Workers: 2, Batch: 5, Progress: func(p reencrypt.Progress) { ps = append(ps, p) }})
	recs = e.records()
	if res.Migrated != int64(len(onlyB)) || res.Examined != int64(len(onlyB)) || res.Remaining != 0 || res.Skipped != 0 ||
		res.BytesRead != storedBytes(before, onlyB) || res.BytesWritten != storedBytes(recs, onlyB) || res.ObjectsDeleted != int64(len(onlyB)) {
		t.Fatalf("migrating the rest: %+v; want %d blocks of %d bytes migrated", res, len(onlyB), storedBytes(before, onlyB))
	}
	checkProgress(t, ps, res)
	if last := ps[len(ps)-1]; last.Total != int64(len(onlyB)) {
		t.Errorf("progress total %d, want %d", last.Total, len(onlyB))
	}
	if orphans := e.finalChecks(1); len(orphans) != 0 {
		t.Fatalf("orphans: %v", orphans)
	}
	if n, s := len(e.objects()), len(recs); n != s {
		t.Fatalf("%d object files for %d block records", n, s)
	}
	e.wantEncStats(map[uint16]metastore.EncStat{1: statsOf(recs)[1]})

	// Nothing left to do: a further run reads, writes and deletes nothing.
	again := e.open(storeOpts{write: 1, comp: block.CompressionZstd})
	res = e.migrate(again, reencrypt.Options{})
	if res.Migrated != 0 || res.Examined != 0 || res.ObjectsDeleted != 0 || res.Remaining != 0 || res.BytesRead != 0 {
		t.Fatalf("third run: %+v", res)
	}
	for _, m := range []faulty.Method{faulty.MethodGet, faulty.MethodPut, faulty.MethodDelete} {
		if n := again.fb.Calls(m); n != 0 {
			t.Errorf("third run: %d %s calls", n, m)
		}
	}
}

// Selecting several versions that share blocks migrates each block once.
func TestSelectedVersionsShareBlocks(t *testing.T) {
	e := newEnv(t)
	plain := e.open(storeOpts{})
	imgA := e.image(1, 32)
	imgB := e.variant(imgA, 2, 3)
	vA, vB := e.mustBackup(plain, imgA), e.mustBackup(plain, imgB)
	vC := e.mustBackup(plain, e.image(3, 16))
	idsA, _, _ := e.blocksOf(imgA)
	idsB, _, _ := e.blocksOf(imgB)
	union := map[block.ID]bool{}
	for id := range idsA {
		union[id] = true
	}
	for id := range idsB {
		union[id] = true
	}
	all := e.records()
	e.key(1, object.CipherXChaCha20Poly1305)
	res := e.migrate(e.open(storeOpts{write: 1}), reencrypt.Options{UIDs: []string{vB.UID, vA.UID}, Batch: 4, Workers: 1})
	if res.Migrated != int64(len(union)) || res.Skipped != 0 || res.Remaining != int64(len(all)-len(union)) {
		t.Fatalf("result %+v; want %d migrated, %d remaining (those of %s)", res, len(union), len(all)-len(union), vC.UID)
	}
	for id, r := range e.records() {
		if want := uint16(0); union[id] {
			want = 1
			if r.EncVersion != want {
				t.Fatalf("block %s at version %d, want %d", id.Short(), r.EncVersion, want)
			}
		} else if r.EncVersion != want {
			t.Fatalf("block %s at version %d, want %d", id.Short(), r.EncVersion, want)
		}
	}
	e.mustRestoreAll(e.open(storeOpts{}))
}

func TestUnknownVersion(t *testing.T) {
	e := newEnv(t)
	e.mustBackup(e.open(storeOpts{}), e.image(1, 8))
	e.key(1, object.CipherAES256GCM)
	st := e.open(storeOpts{write: 1})
	_, err := reencrypt.Run(t.Context(), st.Store, e.db, reencrypt.Options{UIDs: []string{"V0123456789abcdef0123"}})
	if !errors.Is(err, metastore.ErrVersionNotFound) {
		t.Fatalf("Run of an unknown version: %v, want ErrVersionNotFound", err)
	}
	if n := st.fb.Calls(faulty.MethodPut) + st.fb.Calls(faulty.MethodGet); n != 0 {
		t.Fatalf("%d backend calls", n)
	}
}

type transform struct {
	name   string
	cipher object.Cipher
	comp   block.Compression
}

var transforms = []transform{
	{"plain", object.CipherNone, block.CompressionNone},
	{"zstd", object.CipherNone, block.CompressionZstd},
	{"aes", object.CipherAES256GCM, block.CompressionNone},
	{"aes+zstd", object.CipherAES256GCM, block.CompressionZstd},
	{"xchacha", object.CipherXChaCha20Poly1305, block.CompressionNone},
	{"xchacha+zstd", object.CipherXChaCha20Poly1305, block.CompressionZstd},
}

// checkTransform checks that every record is at version v and every object
// is sealed the way tr says.
func (e *env) checkTransform(v uint16, tr transform) {
	e.t.Helper()
	recs, objs, orphans := e.checkRecords()
	if len(orphans) != 0 {
		e.t.Fatalf("orphans: %v", orphans)
	}
	zstd := 0
	for _, r := range recs {
		h := objs[r.Name].hdr
		if r.EncVersion != v || h.Cipher != tr.cipher {
			e.t.Fatalf("block %s at version %d with cipher %s, want %d with %s", r.ID.Short(), r.EncVersion, h.Cipher, v, tr.cipher)
		}
		if h.Compression == block.CompressionZstd {
			zstd++
		}
	}
	if tr.comp == block.CompressionNone && zstd != 0 || tr.comp == block.CompressionZstd && (zstd == 0 || zstd == len(recs)) {
		e.t.Fatalf("%d of %d objects compressed with compression %s", zstd, len(recs), tr.comp)
	}
}

// Every transform (compression x cipher) as a source and as a target.
func TestTransforms(t *testing.T) {
	for i, from := range transforms {
		tmpl := newEnv(t)
		src := uint16(0)
		if from.cipher != object.CipherNone {
			src = 1
			tmpl.key(src, from.cipher)
		}
		img := tmpl.image(uint64(10+i), 8)
		tmpl.mustBackup(tmpl.open(storeOpts{write: src, comp: from.comp}), img)
		tmpl.checkTransform(src, from)
		if from.cipher == object.CipherNone && from.comp == block.CompressionNone && len(tmpl.markerFiles()) == 0 {
			t.Fatal("the marker is not found in unencrypted objects")
		}
		for _, to := range transforms {
			if to.cipher == object.CipherNone {
				continue // a target is encrypted (TestNoTarget)
			}
			t.Run(from.name+"->"+to.name, func(t *testing.T) {
				t.Parallel()
				e := tmpl.clone(t)
				dst := src + 1
				e.key(dst, to.cipher)
				ids, _, _ := e.blocksOf(img)
				res := e.migrate(e.open(storeOpts{write: dst, comp: to.comp}), reencrypt.Options{})
				if res.Migrated != int64(len(ids)) || res.Remaining != 0 {
					t.Fatalf("result %+v, want %d blocks migrated", res, len(ids))
				}
				e.checkTransform(dst, to)
				e.wantEncStats(statsOf(e.records()))
				if orphans := e.finalChecks(dst); len(orphans) != 0 {
					t.Fatalf("orphans: %v", orphans)
				}
				// The old key is no longer needed.
				e.mustRestoreAll(e.open(storeOpts{read: []uint16{dst}}))
			})
		}
	}
}

// A rotation chain through different ciphers, with
// versions written meanwhile at the current and at an older version.
func TestRotationChain(t *testing.T) {
	e := newEnv(t)
	// Small batches make the scan of the block records take several
	// windows (16 x Batch records each).
	steps := []struct {
		v      uint16
		cipher object.Cipher
		comp   block.Compression
		batch  int
	}{
		{1, object.CipherAES256GCM, block.CompressionZstd, 0},
		{2, object.CipherXChaCha20Poly1305, block.CompressionNone, 1},
		{3, object.CipherAES256GCM, block.CompressionNone, 2},
		{4, object.CipherXChaCha20Poly1305, block.CompressionZstd, 16},
	}
	cur := e.open(storeOpts{})
	base := e.image(20, 16)
	e.mustBackup(cur, base)
	for i, s := range steps {
		// A host writing at the current version and one not yet
		// reconfigured, still writing unencrypted.
		e.mustBackup(cur, e.variant(base, uint64(30+i), 3))
		e.mustBackup(e.open(storeOpts{}), e.variant(base, uint64(40+i), 5))
		e.key(s.v, s.cipher)
		next := e.open(storeOpts{write: s.v, comp: s.comp})
		var below int64
		for ev, st := range e.encStats() {
			if ev >= s.v {
				t.Fatalf("step %d: blocks at version %d before the migration", i, ev)
			}
			below += st.Blocks
		}
		if i > 0 && len(e.encStats()) != 2 {
			t.Fatalf("step %d: EncStats %v, want blocks at 0 and at %d", i, e.encStats(), steps[i-1].v)
		}
		if s.batch > 0 && s.batch < 16 && int64(16*s.batch) >= below {
			t.Fatalf("step %d: %d blocks fit in one scan window", i, below)
		}
		res := e.migrate(next, reencrypt.Options{Batch: s.batch})
		if res.Migrated != below || res.Remaining != 0 {
			t.Fatalf("step %d: %+v, want %d migrated", i, res, below)
		}
		e.checkTransform(s.v, transform{cipher: s.cipher, comp: s.comp})
		if orphans := e.finalChecks(s.v); len(orphans) != 0 {
			t.Fatalf("step %d: orphans %v", i, orphans)
		}
		// Only the newest key is needed now.
		e.mustRestoreAll(e.open(storeOpts{read: []uint16{s.v}}))
		cur = next
	}
}

// backendState is what a run that must do nothing may not change.
type backendState struct {
	files map[string]string // path -> content
	recs  map[block.ID]block.Record
	stats map[uint16]metastore.EncStat
	trash []metastore.TrashEntry
	vers  map[string]metastore.Status
}

func (e *env) state() backendState {
	e.t.Helper()
	s := backendState{files: map[string]string{}, recs: e.records(), stats: e.encStats(), trash: e.trash(), vers: map[string]metastore.Status{}}
	for _, o := range e.objects() {
		s.files[o.path] = string(o.content(e.t))
	}
	vs, err := e.db.Versions(nil)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, v := range vs {
		s.vers[v.UID] = v.Status
	}
	return s
}

func (e *env) wantState(was backendState) {
	e.t.Helper()
	now := e.state()
	switch {
	case !mapsEqual(now.files, was.files):
		e.t.Fatalf("the backend changed: %d objects, were %d", len(now.files), len(was.files))
	case !mapsEqual(now.recs, was.recs):
		e.t.Fatal("block records changed")
	case !mapsEqual(now.stats, was.stats):
		e.t.Fatalf("EncStats changed: %v, were %v", now.stats, was.stats)
	case !slices.Equal(now.trash, was.trash):
		e.t.Fatalf("trash changed: %v, was %v", now.trash, was.trash)
	case !mapsEqual(now.vers, was.vers):
		e.t.Fatalf("versions changed: %v, were %v", now.vers, was.vers)
	}
}

func noCalls(t *testing.T, st *store) {
	t.Helper()
	for _, m := range []faulty.Method{faulty.MethodGet, faulty.MethodPut, faulty.MethodDelete, faulty.MethodList, faulty.MethodStat} {
		if n := st.fb.Calls(m); n != 0 {
			t.Errorf("%d %s calls", n, m)
		}
	}
}

// trashAnObject leaves an object in the trash, as an interrupted run
// does, and returns its name.
func (e *env) trashAnObject(st *store, data []byte) block.Name {
	e.t.Helper()
	p := data[bs : 2*bs]
	id := block.Sum(p)
	rec, err := st.Put(e.t.Context(), id, p)
	if err != nil {
		e.t.Fatal(err)
	}
	var other block.Name
	copy(other[:], randBytes(block.NameSize))
	r, err := e.db.ReplaceObjects([]metastore.Replacement{{Old: other, New: rec}})
	if err != nil || len(r.Skipped) != 1 || len(r.Replaced) != 0 {
		e.t.Fatalf("ReplaceObjects of a stale replacement: %+v, %v", r, err)
	}
	return rec.Name
}

// A missing key fails the run before it reads or writes anything.
func TestMissingKey(t *testing.T) {
	cases := []struct {
		name string
		st   storeOpts
		uids func(vA, vB, vC string) []string
		// wantErr names the version whose key is missing; "" = success.
		wantErr string
	}{
		{"all, key of 1 missing", storeOpts{write: 3, read: []uint16{2, 3}}, nil, "encryption version 1"},
		{"all, key of 2 missing", storeOpts{write: 3, read: []uint16{1, 3}}, nil, "encryption version 2"},
		{"all, no keys at all", storeOpts{write: 3, noKeys: true}, nil, "encryption version"},
		{"one version, its key missing", storeOpts{write: 3, read: []uint16{2, 3}}, func(a, b, c string) []string { return []string{a} }, "encryption version 1"},
		{"second version's key missing", storeOpts{write: 3, read: []uint16{3}}, func(a, b, c string) []string { return []string{c, b} }, "encryption version 2"},
		{"unneeded keys missing", storeOpts{write: 3, read: []uint16{3}}, func(a, b, c string) []string { return []string{c} }, ""},
	}
	tmpl := newEnv(t)
	tmpl.key(1, object.CipherAES256GCM)
	tmpl.key(2, object.CipherXChaCha20Poly1305)
	tmpl.key(3, object.CipherAES256GCM)
	imgC := tmpl.image(3, 16)
	vA := tmpl.mustBackup(tmpl.open(storeOpts{write: 1}), tmpl.image(1, 16))
	vB := tmpl.mustBackup(tmpl.open(storeOpts{write: 2, comp: block.CompressionZstd}), tmpl.image(2, 16))
	vC := tmpl.mustBackup(tmpl.open(storeOpts{}), imgC)
	tmpl.wantEncStats(statsOf(tmpl.records()))
	if len(tmpl.encStats()) != 3 {
		t.Fatalf("EncStats %v, want blocks at 0, 1 and 2", tmpl.encStats())
	}
	// Work an interrupted run left: the failing run must not touch it
	// either.
	trashed := tmpl.trashAnObject(tmpl.open(storeOpts{write: 3}), imgC)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := tmpl.clone(t)
			was := e.state()
			var o reencrypt.Options
			if tc.uids != nil {
				o.UIDs = tc.uids(vA.UID, vB.UID, vC.UID)
			}
			st := e.open(tc.st)
			res, err := reencrypt.Run(t.Context(), st.Store, e.db, o)
			if tc.wantErr == "" {
				idsC, _, _ := e.blocksOf(imgC)
				if err != nil || res.Migrated != int64(len(idsC)) || res.ObjectsDeleted != int64(len(idsC))+1 {
					t.Fatalf("Run: %+v, %v; want %d migrated and the trash drained", res, err, len(idsC))
				}
				if _, ok := e.objects()[trashed]; ok || len(e.trash()) != 0 {
					t.Fatal("the trash was not drained")
				}
				e.mustRestoreAll(e.open(storeOpts{}))
				return
			}
			if !errors.Is(err, object.ErrNoKey) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Run: %v; want ErrNoKey naming %s", err, tc.wantErr)
			}
			if res != nil {
				t.Fatalf("an early failure returned a result: %+v", res)
			}
			noCalls(t, st)
			e.wantState(was)
			if _, ok := e.objects()[trashed]; !ok {
				t.Fatal("the trashed object is gone")
			}
			// With every key the same run goes through.
			res = e.migrate(e.open(storeOpts{write: 3}), o)
			if res.Migrated == 0 || res.ObjectsDeleted != res.Migrated+1 {
				t.Fatalf("with every key: %+v", res)
			}
			e.mustRestoreAll(e.open(storeOpts{}))
		})
	}
}

// Target 0 (no encryption) is refused before anything happens.
func TestNoTarget(t *testing.T) {
	for _, uids := range []bool{false, true} {
		t.Run(map[bool]string{false: "all", true: "one version"}[uids], func(t *testing.T) {
			e := newEnv(t)
			e.key(1, object.CipherAES256GCM)
			v := e.mustBackup(e.open(storeOpts{}), e.image(1, 8))
			e.mustBackup(e.open(storeOpts{write: 1}), e.image(2, 8))
			was := e.state()
			st := e.open(storeOpts{})
			var o reencrypt.Options
			if uids {
				o.UIDs = []string{v.UID}
			}
			res, err := reencrypt.Run(t.Context(), st.Store, e.db, o)
			if !errors.Is(err, reencrypt.ErrNoTarget) {
				t.Fatalf("Run to version 0: %v, want ErrNoTarget", err)
			}
			if res != nil {
				t.Fatalf("an early failure returned a result: %+v", res)
			}
			noCalls(t, st)
			e.wantState(was)
		})
	}
}

// Blocks at or above the target are left alone.
func TestBlocksAtOrAboveTarget(t *testing.T) {
	e := newEnv(t)
	e.key(1, object.CipherAES256GCM)
	e.key(2, object.CipherXChaCha20Poly1305)
	v := e.mustBackup(e.open(storeOpts{write: 2}), e.image(1, 16))
	was := e.state()
	for _, target := range []uint16{1, 2} {
		for _, uids := range [][]string{nil, {v.UID}} {
			st := e.open(storeOpts{write: target})
			res := e.migrate(st, reencrypt.Options{UIDs: uids})
			if res.Migrated != 0 || res.Remaining != 0 || res.ObjectsDeleted != 0 {
				t.Fatalf("target %d, uids %v: %+v", target, uids, res)
			}
			for _, m := range []faulty.Method{faulty.MethodGet, faulty.MethodPut, faulty.MethodDelete} {
				if n := st.fb.Calls(m); n != 0 {
					t.Fatalf("target %d, uids %v: %d %s calls", target, uids, n, m)
				}
			}
			e.wantState(was)
		}
	}
}

// Migrating all blocks includes blocks no version uses any more.
func TestUnreferencedBlocks(t *testing.T) {
	e := newEnv(t)
	plain := e.open(storeOpts{})
	imgA := e.image(1, 24)
	e.mustBackup(plain, imgA)
	vB := e.mustBackup(plain, e.variant(imgA, 2, 3))
	lk, err := e.db.LockVersion(vB.UID, metastore.Exclusive)
	if err != nil {
		t.Fatal(err)
	}
	err = e.db.RemoveVersion(vB.UID)
	lk.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	delete(e.images, vB.UID)
	s, err := e.db.Stats()
	if err != nil || s.Unreferenced == 0 {
		t.Fatalf("stats %+v, %v; want unreferenced blocks", s, err)
	}
	e.key(1, object.CipherAES256GCM)
	res := e.migrate(e.open(storeOpts{write: 1}), reencrypt.Options{})
	if res.Migrated != s.Blocks || res.Remaining != 0 {
		t.Fatalf("%+v, want all %d blocks migrated", res, s.Blocks)
	}
	s2, err := e.db.Stats()
	if err != nil || s2.Unreferenced != s.Unreferenced || s2.Blocks != s.Blocks || s2.PlainBytes != s.PlainBytes {
		t.Fatalf("stats %+v, were %+v (%v)", s2, s, err)
	}
	e.finalChecks(1)
}

// kill is one way to interrupt a run.
type kill struct {
	how  string // see interrupt
	n    int
	uids bool // migrate version A only
}

// interrupt runs a migration that kill interrupts and checks that it
// failed the way it should. It returns the result and the store.
func (e *env) interrupt(k kill, uidA string) (*reencrypt.Result, *store) {
	t := e.t
	t.Helper()
	st := e.open(storeOpts{write: 1, comp: block.CompressionZstd})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	o := reencrypt.Options{Workers: 3, Batch: 6}
	if k.uids {
		o.UIDs = []string{uidA}
	}
	want := errBoom
	var flushes atomic.Int64
	switch k.how {
	case "die": // the backend dies after n more Puts
		st.fb.DieAfterPuts(k.n)
		want = faulty.ErrDead
	case "put": // the Put after n fails
		st.fb.AddFault(faulty.MethodPut).ErrorInstead(errBoom).After(k.n)
	case "get": // the Get after n fails: an I/O error, not damage
		st.fb.AddFault(faulty.MethodGet).ErrorInstead(errBoom).After(k.n)
	case "flush": // flushes after the n-th fail
		st.hk.syncErr = func() error {
			if flushes.Add(1) > int64(k.n) {
				return errBoom
			}
			return nil
		}
	case "delete": // every Delete after n fails
		st.fb.AddFault(faulty.MethodDelete).ErrorInstead(errBoom).After(k.n).Repeat(-1)
	case "delete-after": // every Delete after n deletes, then fails
		st.fb.AddFault(faulty.MethodDelete).ErrorAfter(errBoom).After(k.n).Repeat(-1)
	case "cancel-put": // cancelled once n Puts have succeeded
		st.hk.afterPut = func(n int64) {
			if n == int64(k.n) {
				cancel()
			}
		}
		want = context.Canceled
	case "cancel-switch": // cancelled after the n-th batch switched records
		var last int64
		switches := 0
		o.Progress = func(p reencrypt.Progress) {
			if p.Migrated > last {
				last = p.Migrated
				if switches++; switches == k.n {
					cancel()
				}
			}
		}
		want = context.Canceled
	default:
		t.Fatalf("unknown kill %q", k.how)
	}
	res, err := reencrypt.Run(ctx, st.Store, e.db, o)
	if !errors.Is(err, want) {
		t.Fatalf("%+v: Run returned %v (result %+v), want %v", k, err, res, want)
	}
	st.fb.VerifyAllFaultsFired(t)
	if k.how == "flush" && flushes.Load() <= int64(k.n) {
		t.Fatalf("%+v: only %d flushes", k, flushes.Load())
	}
	if res == nil {
		t.Fatalf("%+v: no result", k)
	}
	return res, st
}

// Interrupted runs (dead backend, failed puts, reads, flushes and deletes,
// cancellation) leave a consistent store that a later run completes.
func TestInterrupted(t *testing.T) {
	cases := []struct {
		name  string
		kills []kill
		// debris: the interruptions may leave new objects no record
		// names (orphans); otherwise there must be none.
		debris bool
	}{
		{"backend dies at once", []kill{{how: "die", n: 0}}, false},
		{"backend dies after 1 put", []kill{{how: "die", n: 1}}, true},
		{"backend dies after 9 puts", []kill{{how: "die", n: 9}}, true},
		{"backend dies after 18 puts", []kill{{how: "die", n: 18}}, true},
		{"put fails after 5", []kill{{how: "put", n: 5}}, true},
		{"read fails after 12", []kill{{how: "get", n: 12}}, true},
		{"first flush fails", []kill{{how: "flush", n: 0}}, true},
		{"third flush fails", []kill{{how: "flush", n: 2}}, true},
		{"deletes fail from the first", []kill{{how: "delete", n: 0}}, false},
		{"deletes fail after 10", []kill{{how: "delete", n: 10}}, false},
		{"deletes delete but fail", []kill{{how: "delete-after", n: 3}}, false},
		{"cancelled at put 1", []kill{{how: "cancel-put", n: 1}}, true},
		{"cancelled at put 14", []kill{{how: "cancel-put", n: 14}}, true},
		{"cancelled after the first switch", []kill{{how: "cancel-switch", n: 1}}, false},
		{"cancelled after the third switch", []kill{{how: "cancel-switch", n: 3}}, false},
		{"one version, dies after 9 puts", []kill{{how: "die", n: 9, uids: true}}, true},
		{"one version, deletes fail after 4", []kill{{how: "delete", n: 4, uids: true}}, false},
		{"three in a row", []kill{{how: "die", n: 12}, {how: "delete", n: 2}, {how: "cancel-switch", n: 1}}, true},
		{"while draining the trash", []kill{{how: "delete", n: 0}, {how: "die", n: 0}, {how: "delete-after", n: 0}, {how: "delete", n: 3}}, false},
	}
	tmpl := newEnv(t)
	plain := tmpl.open(storeOpts{})
	imgA := tmpl.image(1, 20)
	vA := tmpl.mustBackup(plain, imgA)
	tmpl.mustBackup(plain, tmpl.variant(imgA, 2, 4))
	tmpl.mustBackup(plain, tmpl.image(3, 10))
	tmpl.key(1, object.CipherAES256GCM)
	if n := len(tmpl.records()); n <= 20 {
		t.Fatalf("%d blocks: too few for the kill points", n)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := tmpl.clone(t)
			puts := 0
			for i, k := range tc.kills {
				before := e.records()
				res, st := e.interrupt(k, vA.UID)
				puts += st.fb.Calls(faulty.MethodPut)
				// The interrupted state is consistent: every record
				// names an intact object, nothing is marked damaged,
				// every version restores.
				metastoretest.Check(t, e.db)
				recs, objs, orphans := e.checkRecords()
				switched := 0
				for id, r := range recs {
					if r.Invalid {
						t.Fatalf("kill %d: block %s marked invalid", i, id.Short())
					}
					if r.EncVersion == 1 && before[id].EncVersion == 0 {
						switched++
					}
				}
				if res.Migrated != int64(switched) {
					t.Errorf("kill %d (%+v): Migrated = %d, but %d records switched", i, k, res.Migrated, switched)
				}
				for _, te := range e.trash() {
					if r, ok := recs[te.ID]; ok && r.Name == te.Name {
						t.Fatalf("kill %d: trash lists %s, the object of block %s", i, te.Name, te.ID.Short())
					}
				}
				// Objects no record names are old ones waiting in the
				// trash, or new encrypted ones (debris).
				inTrash := map[block.Name]bool{}
				for _, te := range e.trash() {
					inTrash[te.Name] = true
				}
				for _, n := range orphans {
					if h := objs[n].hdr; !inTrash[n] && (h.EncVersion != 1 || h.Cipher == object.CipherNone) {
						t.Fatalf("kill %d: orphan %s, not in the trash, at version %d with cipher %s", i, n, h.EncVersion, h.Cipher)
					}
				}
				e.mustRestoreAll(e.open(storeOpts{}))
			}

			// A fresh store without faults completes the job.
			recs, objs, _ := e.checkRecords()
			var at0, trashed int64
			for _, r := range recs {
				if r.EncVersion == 0 {
					at0++
				}
			}
			for _, te := range e.trash() {
				if _, ok := objs[te.Name]; ok {
					trashed++
				}
			}
			res := e.migrate(e.open(storeOpts{write: 1, comp: block.CompressionZstd}), reencrypt.Options{Workers: 2, Batch: 8})
			if res.Migrated != at0 || res.Remaining != 0 || res.Skipped != 0 || res.ObjectsDeleted != trashed+at0 {
				t.Fatalf("final run: %+v; want %d migrated, %d deleted from the trash", res, at0, trashed)
			}
			orphans := e.finalChecks(1)
			if !tc.debris && len(orphans) != 0 || len(orphans) > puts {
				t.Fatalf("%d orphans after runs that made %d Puts: %v", len(orphans), puts, orphans)
			}
			if len(orphans) > 0 {
				t.Logf("left for cleanup --orphans (all encrypted at version 1): %v", orphans)
			}
		})
	}
}

// A damaged block is reported and marked, everything else moves.
func TestDamagedBlock(t *testing.T) {
	cases := []struct {
		name   string
		damage func(t *testing.T, path string)
		reason error
		uids   int // versions selected: 0 = all blocks, 1 = A, 2 = A and B
	}{
		{"flipped payload byte", flipAt(func(n int) int { return n / 2 }), blockstore.ErrCorrupt, 0},
		{"flipped header byte", flipAt(func(int) int { return 9 }), blockstore.ErrCorrupt, 0},
		{"flipped last byte", flipAt(func(n int) int { return n - 1 }), blockstore.ErrCorrupt, 0},
		{"truncated", func(t *testing.T, p string) {
			fi, err := os.Stat(p)
			if err == nil {
				err = os.Truncate(p, fi.Size()-1)
			}
			if err != nil {
				t.Fatal(err)
			}
		}, blockstore.ErrCorrupt, 0},
		{"deleted", func(t *testing.T, p string) {
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
		}, blockstore.ErrMissing, 0},
		{"flipped, one version selected", flipAt(func(n int) int { return n / 3 }), blockstore.ErrCorrupt, 1},
		// Both versions use the damaged block: it is reported once.
		{"flipped, both versions using it selected", flipAt(func(n int) int { return n / 3 }), blockstore.ErrCorrupt, 2},
	}
	tmpl := newEnv(t)
	plain := tmpl.open(storeOpts{})
	imgA := tmpl.image(1, 24)
	imgB := tmpl.variant(imgA, 2, 4)
	vA, vB := tmpl.mustBackup(plain, imgA), tmpl.mustBackup(plain, imgB)
	vC := tmpl.mustBackup(plain, tmpl.image(3, 8))
	bad := blockID(imgA, 2)
	if blockID(imgB, 2) != bad {
		t.Fatal("A and B do not share block 2")
	}
	idsA, _, _ := tmpl.blocksOf(imgA)
	idsAB, _, _ := tmpl.blocksOf(imgB)
	for id := range idsA {
		idsAB[id] = true
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := tmpl.clone(t)
			before := e.records()
			tc.damage(t, e.objects()[before[bad].Name].path)

			e.key(1, object.CipherAES256GCM)
			st1 := e.open(storeOpts{write: 1, comp: block.CompressionZstd})
			var o reencrypt.Options
			selected := map[int]map[block.ID]bool{1: idsA, 2: idsAB}[tc.uids] // nil: all
			o.UIDs = [][]string{nil, {vA.UID}, {vA.UID, vB.UID}}[tc.uids]
			res, err := reencrypt.Run(t.Context(), st1.Store, e.db, o)
			if !errors.Is(err, reencrypt.ErrFailures) {
				t.Fatalf("Run: %v, want ErrFailures", err)
			}
			if len(res.Failures) != 1 || res.Failures[0].ID != bad.String() || !strings.Contains(res.Failures[0].Reason, tc.reason.Error()) {
				t.Fatalf("failures %+v; want block %s, %q", res.Failures, bad, tc.reason)
			}
			if got, want := sortedUIDs(res.InvalidVersions...), sortedUIDs(vA.UID, vB.UID); !slices.Equal(got, want) {
				t.Fatalf("invalid versions %v, want %v", got, want)
			}
			for uid, want := range map[string]metastore.Status{vA.UID: metastore.StatusInvalid, vB.UID: metastore.StatusInvalid, vC.UID: metastore.StatusValid} {
				if v, err := e.db.Version(uid); err != nil || v.Status != want {
					t.Fatalf("version %s: %+v, %v; want %s", uid, v, err, want)
				}
			}
			recs := e.records()
			if r := recs[bad]; !r.Invalid || r.EncVersion != 0 || r.Name != before[bad].Name {
				t.Fatalf("damaged block's record %+v", r)
			}
			wantMigrated := len(recs) - 1
			if selected != nil {
				wantMigrated = len(selected) - 1
			}
			migrated := 0
			for id, r := range recs {
				if r.EncVersion == 1 {
					migrated++
				} else if id != bad && (selected == nil || selected[id]) {
					t.Errorf("block %s not migrated", id.Short())
				}
			}
			if res.Migrated != int64(wantMigrated) || migrated != wantMigrated || res.Remaining != int64(len(recs)-wantMigrated) {
				t.Fatalf("result %+v: %d records migrated; want %d migrated, %d remaining", res, migrated, wantMigrated, len(recs)-wantMigrated)
			}
			// A restore of C works; those of A and B refuse, or, forced,
			// zero exactly the damaged block.
			if err := e.restoreEqual(t.Context(), st1.Store, vC.UID); err != nil {
				t.Fatal(err)
			}
			if _, _, err := e.restore(t.Context(), st1.Store, vA.UID, restore.Options{}); !errors.Is(err, restore.ErrNotRestorable) {
				t.Fatalf("restore of the invalid version: %v", err)
			}
			got, rr, err := e.restore(t.Context(), st1.Store, vA.UID, restore.Options{Force: true})
			if !errors.Is(err, restore.ErrBadBlocks) || len(rr.BadBlocks) != 1 || rr.BadBlocks[0].Index != 2 {
				t.Fatalf("forced restore: %v, %+v", err, rr)
			}
			want := bytes.Clone(imgA)
			clear(want[2*bs : 3*bs])
			if d := firstDiff(got, want); d >= 0 {
				t.Fatalf("forced restore differs at byte %d", d)
			}

			// Again: the damaged block is not tried again, and the run
			// says that the store is not wholly migrated.
			res, err = reencrypt.Run(t.Context(), e.open(storeOpts{write: 1}).Store, e.db, reencrypt.Options{})
			if !errors.Is(err, reencrypt.ErrIncomplete) || len(res.Failures) != 0 || res.Remaining != 1 {
				t.Fatalf("second run: %+v, %v", res, err)
			}
			// A backup of the intact data heals the block; the damaged
			// object waits in the trash, which the next run drains.
			e.mustBackup(st1, imgA)
			if r := e.records()[bad]; r.Invalid || r.EncVersion != 1 {
				t.Fatalf("healed record %+v", r)
			}
			_, existed := e.objects()[before[bad].Name]
			res = e.migrate(e.open(storeOpts{write: 1}), reencrypt.Options{})
			if res.Migrated != 0 || res.Remaining != 0 || (res.ObjectsDeleted == 1) != existed || res.ObjectsDeleted > 1 {
				t.Fatalf("run after healing: %+v (damaged object existed: %v)", res, existed)
			}
			if orphans := e.finalChecks(1, vA.UID, vB.UID); len(orphans) != 0 {
				t.Fatalf("orphans: %v", orphans)
			}
			// The healed block serves the invalid versions again.
			for uid, img := range map[string][]byte{vA.UID: imgA, vB.UID: imgB} {
				got, _, err := e.restore(t.Context(), st1.Store, uid, restore.Options{Force: true})
				if err != nil || !bytes.Equal(got, img) {
					t.Fatalf("forced restore of %s after healing: %v", uid, err)
				}
			}
		})
	}
}

// flipAt returns a damage that flips one byte of a file at pos(size).
func flipAt(pos func(size int) int) func(t *testing.T, path string) {
	return func(t *testing.T, path string) {
		t.Helper()
		b, err := os.ReadFile(path)
		if err == nil {
			b[pos(len(b))] ^= 0x20
			err = os.Chmod(path, 0o600)
		}
		if err == nil {
			err = os.WriteFile(path, b, 0o600)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// A backup running during a migration.
func TestConcurrentBackup(t *testing.T) {
	tmpl := newEnv(t)
	plain := tmpl.open(storeOpts{})
	imgA := tmpl.image(1, 32)
	tmpl.mustBackup(plain, imgA)
	tmpl.mustBackup(plain, tmpl.variant(imgA, 2, 4))
	tmpl.key(1, object.CipherAES256GCM)
	tmpl.key(2, object.CipherXChaCha20Poly1305)
	imgC := tmpl.variant(imgA, 3, 3)
	for _, w := range []uint16{1, 0, 2} {
		t.Run(map[uint16]string{1: "backup at the target", 0: "backup unencrypted", 2: "backup above the target"}[w], func(t *testing.T) {
			t.Parallel()
			e := tmpl.clone(t)
			bst := e.open(storeOpts{write: w, comp: block.CompressionZstd})
			mst := e.open(storeOpts{write: 1, comp: block.CompressionZstd})
			start := make(chan struct{})
			var wg sync.WaitGroup
			var berr, merr error
			var res *reencrypt.Result
			wg.Go(func() {
				<-start
				_, berr = e.backup(t.Context(), bst.Store, imgC, backup.Options{CommitInterval: time.Millisecond, Workers: 2})
			})
			wg.Go(func() {
				<-start
				res, merr = reencrypt.Run(t.Context(), mst.Store, e.db, reencrypt.Options{Batch: 2, Workers: 2})
			})
			close(start)
			wg.Wait()
			// A backup writing below the target meanwhile may leave blocks
			// behind; the migration of the whole store must then say so.
			if errors.Is(merr, reencrypt.ErrIncomplete) && res.Remaining > 0 {
				merr = nil
			}
			if berr != nil || merr != nil {
				t.Fatalf("backup: %v; migration: %v", berr, merr)
			}
			if len(res.Failures) != 0 {
				t.Fatalf("migration failures: %+v", res.Failures)
			}
			metastoretest.Check(t, e.db)
			if _, _, orphans := e.checkRecords(); len(orphans) != 0 {
				t.Fatalf("orphans: %v", orphans)
			}
			e.mustRestoreAll(e.open(storeOpts{}))
			// Whatever the backup stored below the target meanwhile.
			res = e.migrate(e.open(storeOpts{write: 1}), reencrypt.Options{})
			if res.Remaining != 0 {
				t.Fatalf("final run: %+v", res)
			}
			if w == 1 && res.Migrated != 0 {
				t.Errorf("final run migrated %d blocks, though the backup wrote at the target", res.Migrated)
			}
			if orphans := e.finalChecks(1); len(orphans) != 0 {
				t.Fatalf("orphans: %v", orphans)
			}
		})
	}
}

// gate holds every Get until it is opened and counts them.
type gate struct {
	backend.Backend
	arrived chan struct{}
	once    sync.Once
	open    chan struct{}
	gets    atomic.Int64
}

func (g *gate) Get(ctx context.Context, name string, buf []byte) ([]byte, error) {
	g.gets.Add(1)
	g.once.Do(func() { close(g.arrived) })
	select {
	case <-g.open:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return g.Backend.Get(ctx, name, buf)
}

// Restores running during a migration follow the moved records.
func TestConcurrentRestore(t *testing.T) {
	t.Run("every block moved under a restore", func(t *testing.T) {
		e := newEnv(t)
		img := e.image(1, 32)
		v := e.mustBackup(e.open(storeOpts{}), img)
		_, _, refs := e.blocksOf(img)
		e.key(1, object.CipherXChaCha20Poly1305)
		g := &gate{Backend: e.inner, arrived: make(chan struct{}), open: make(chan struct{})}
		rst, err := blockstore.New(g, blockstore.Options{Keys: keyring{1: e.keys[1]}})
		if err != nil {
			t.Fatal(err)
		}
		defer rst.Close()
		done := make(chan error, 1)
		go func() { done <- e.restoreEqual(t.Context(), rst, v.UID) }()
		// The restore has read the map (one page) with the old records.
		select {
		case <-g.arrived:
		case err := <-done:
			t.Fatalf("restore ended early: %v", err)
		}
		res := e.migrate(e.open(storeOpts{write: 1}), reencrypt.Options{UIDs: []string{v.UID}})
		if res.Remaining != 0 || res.ObjectsDeleted != res.Migrated {
			t.Fatalf("migration: %+v", res)
		}
		close(g.open)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		// Each block was looked for at its old object, then found at
		// the new one.
		if n := g.gets.Load(); n != int64(2*refs) {
			t.Fatalf("%d Gets for %d blocks, want two each", n, refs)
		}
	})
	t.Run("repeated", func(t *testing.T) {
		e := newEnv(t)
		plain := e.open(storeOpts{})
		imgA := e.image(1, 24)
		e.mustBackup(plain, imgA)
		vB := e.mustBackup(plain, e.variant(imgA, 2, 4))
		ciphers := []object.Cipher{object.CipherAES256GCM, object.CipherXChaCha20Poly1305}
		for round := 1; round <= 3; round++ {
			v := uint16(round)
			e.key(v, ciphers[round%2])
			rst := e.open(storeOpts{})
			mst := e.open(storeOpts{write: v, comp: block.CompressionZstd})
			vs, err := e.db.Versions(nil)
			if err != nil {
				t.Fatal(err)
			}
			var o reencrypt.Options
			if round%2 == 0 {
				o.UIDs = []string{vB.UID}
			}
			o.Batch, o.Workers = 3, 2
			start := make(chan struct{})
			var wg sync.WaitGroup
			errs := make([]error, len(vs)+1)
			var res *reencrypt.Result
			for i, ver := range vs {
				wg.Go(func() {
					<-start
					if i%2 == 0 {
						errs[i] = e.restoreEqual(t.Context(), rst.Store, ver.UID)
					} else {
						errs[i] = e.restoreFileEqual(t.Context(), rst.Store, ver.UID)
					}
				})
			}
			wg.Go(func() {
				<-start
				res, errs[len(vs)] = reencrypt.Run(t.Context(), mst.Store, e.db, o)
			})
			close(start)
			wg.Wait()
			if err := errors.Join(errs...); err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
			if res.Migrated == 0 || len(res.Failures) != 0 {
				t.Fatalf("round %d: %+v", round, res)
			}
			if o.UIDs != nil {
				// The rest, for the next round.
				e.migrate(mst, reencrypt.Options{})
			}
			if orphans := e.finalChecks(v); len(orphans) != 0 {
				t.Fatalf("round %d: orphans %v", round, orphans)
			}
			e.mustBackup(mst, e.variant(imgA, uint64(10+round), 5))
		}
	})
}

// Two migrations at once never lose a block nor leave debris.
func TestConcurrentMigrations(t *testing.T) {
	e := newEnv(t)
	plain := e.open(storeOpts{})
	imgA := e.image(1, 32)
	e.mustBackup(plain, imgA)
	e.mustBackup(plain, e.variant(imgA, 2, 4))
	all := int64(len(e.records()))
	e.key(1, object.CipherAES256GCM)
	stores := []*store{e.open(storeOpts{write: 1}), e.open(storeOpts{write: 1, comp: block.CompressionZstd})}
	results := make([]*reencrypt.Result, len(stores))
	errs := make([]error, len(stores))
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i, st := range stores {
		wg.Go(func() {
			<-start
			results[i], errs[i] = reencrypt.Run(t.Context(), st.Store, e.db, reencrypt.Options{Batch: 3, Workers: 2})
		})
	}
	close(start)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	var migrated, written int64
	for _, r := range results {
		migrated += r.Migrated
		written += r.BytesWritten
		if r.Remaining != 0 || len(r.Failures) != 0 {
			t.Fatalf("result %+v", r)
		}
	}
	t.Logf("migrated %d + %d, skipped %d + %d", results[0].Migrated, results[1].Migrated, results[0].Skipped, results[1].Skipped)
	if migrated != all {
		t.Fatalf("%d blocks migrated in all, the store has %d", migrated, all)
	}
	if s := e.encStats()[1]; s.Blocks != all || s.StoredBytes != written {
		t.Fatalf("EncStats[1] = %+v, want %d blocks of %d bytes", s, all, written)
	}
	if orphans := e.finalChecks(1); len(orphans) != 0 {
		t.Fatalf("orphans: %v", orphans)
	}
}

// Deduplication matches blocks whatever their encryption version.
func TestDedupAcrossEncryptionVersions(t *testing.T) {
	cases := []struct {
		name   string
		write  uint16
		cipher object.Cipher
	}{
		{"store at the migrated version", 1, object.CipherAES256GCM},
		{"store at a newer version", 2, object.CipherXChaCha20Poly1305},
		{"unencrypted store", 0, object.CipherNone},
	}
	tmpl := newEnv(t)
	img := tmpl.image(1, 32)
	tmpl.mustBackup(tmpl.open(storeOpts{}), img)
	tmpl.key(1, object.CipherAES256GCM)
	tmpl.migrate(tmpl.open(storeOpts{write: 1, comp: block.CompressionZstd}), reencrypt.Options{})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := tmpl.clone(t)
			if tc.write > 1 {
				e.key(tc.write, tc.cipher)
			}
			was := e.state()
			st := e.open(storeOpts{write: tc.write, comp: block.CompressionZstd})
			v := e.mustBackup(st, img)
			ids, _, refs := e.blocksOf(img)
			var plain int64
			for off := 0; off < len(img); off += bs {
				if p := img[off:min(off+bs, len(img))]; !block.IsZero(p) {
					plain += int64(len(p))
				}
			}
			if v.BytesWritten != 0 || v.BytesDeduplicated != plain || refs == 0 || len(ids) == 0 {
				t.Fatalf("backup of the unchanged image: written %d, deduplicated %d of %d bytes", v.BytesWritten, v.BytesDeduplicated, plain)
			}
			if n := st.fb.Calls(faulty.MethodPut); n != 0 {
				t.Fatalf("%d objects written", n)
			}
			now := e.state()
			if !mapsEqual(now.files, was.files) || !mapsEqual(now.recs, was.recs) || !mapsEqual(now.stats, was.stats) {
				t.Fatal("the unchanged backup changed the store")
			}
			// A changed image stores only its new blocks, at the
			// store's version; the rest stays where it is.
			imgB := e.variant(img, 2, 6)
			vB := e.mustBackup(st, imgB)
			idsB, _, _ := e.blocksOf(imgB)
			recs := e.records()
			for id := range idsB {
				want := uint16(1)
				if !ids[id] {
					want = tc.write
				}
				if recs[id].EncVersion != want {
					t.Fatalf("block %s at version %d, want %d", id.Short(), recs[id].EncVersion, want)
				}
			}
			if vB.BytesWritten == 0 {
				t.Fatal("the changed image wrote nothing")
			}
			e.wantEncStats(statsOf(recs))
			e.mustRestoreAll(e.open(storeOpts{}))
		})
	}
}
