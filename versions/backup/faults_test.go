package backup_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/blockstore/backend/faulty"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/metastore/metastoretest"
	"github.com/backy/backy/versions/backup"
	"github.com/backy/backy/versions/restore"
)

var errInjected = errors.New("injected fault")

// runDeadline bounds a backup that must fail: a run that hangs until its
// context expires is a bug of its own.
const runDeadline = 20 * time.Second

// runFaulty runs a backup under a fault and checks that it ends promptly:
// a run that hangs until its context expires is a bug of its own.
func runFaulty(t *testing.T, e *env, path string, o backup.Options) (*metastore.Version, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), runDeadline)
	defer cancel()
	start := time.Now()
	v, err := e.backup(ctx, path, o)
	if ctx.Err() != nil {
		t.Fatalf("backup hung until its context expired (%v): %v", time.Since(start).Round(time.Millisecond), err)
	}
	return v, err
}

// leftIncomplete returns the version a failed backup left, checking that it
// is incomplete, or nil if it left none.
func leftIncomplete(t *testing.T, e *env, v *metastore.Version) *metastore.Version {
	t.Helper()
	if v == nil || v.UID == "" {
		return nil
	}
	stored, err := e.db.Version(v.UID)
	if errors.Is(err, metastore.ErrVersionNotFound) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	if stored.Status != metastore.StatusIncomplete {
		t.Fatalf("failed backup left a %s version", stored.Status)
	}
	return stored
}

// checkIncomplete restores an incomplete version: refused without force;
// forced, its committed prefix restores exactly and every other block is
// zero and listed.
func checkIncomplete(t *testing.T, e *env, v *metastore.Version, data []byte) {
	t.Helper()
	if _, _, err := e.restore(v.UID, restore.Options{}); !errors.Is(err, restore.ErrNotRestorable) {
		t.Fatalf("restore of an incomplete version = %v, want ErrNotRestorable", err)
	}
	got, res, err := e.restore(v.UID, restore.Options{Force: true})
	nBlk := v.Blocks()
	if v.BlocksDone < 0 || v.BlocksDone > nBlk {
		t.Fatalf("blocks_done %d of %d", v.BlocksDone, nBlk)
	}
	if v.BlocksDone == nBlk {
		t.Fatalf("incomplete version has every block done")
	}
	if !errors.Is(err, restore.ErrBadBlocks) {
		t.Fatalf("forced restore = %v, want ErrBadBlocks", err)
	}
	var bad []int64
	for _, b := range res.BadBlocks {
		bad = append(bad, b.Index)
		if b.Offset != b.Index*e.bs || b.ID != "" || b.Reason == "" {
			t.Errorf("bad block %+v", b)
		}
	}
	slices.Sort(bad)
	if want := seqN(v.BlocksDone, nBlk); !slices.Equal(bad, want) {
		t.Fatalf("bad blocks %v, want %v", bad, want)
	}
	cut := v.BlocksDone * e.bs
	if d := firstDiff(got[:cut], data[:cut]); d >= 0 {
		t.Fatalf("committed prefix differs at byte %d", d)
	}
	if d := firstDiff(got[cut:], make([]byte, len(data)-int(cut))); d >= 0 {
		t.Fatalf("uncommitted block not zeroed at byte %d", int(cut)+d)
	}
	if len(res.InvalidVersions) != 0 {
		t.Errorf("blocks never backed up made versions invalid: %v", res.InvalidVersions)
	}
	if after, _ := e.db.Version(v.UID); after.Status != metastore.StatusIncomplete {
		t.Errorf("forced restore changed the version to %s", after.Status)
	}
}

func seqN(from, to int64) []int64 {
	out := []int64{}
	for i := from; i < to; i++ {
		out = append(out, i)
	}
	return out
}

// TestPutFaultSweep makes the i-th Put of a backup fail, for every i, until
// a run needs fewer Puts than i. Every failing run must fail with the
// injected error and leave a consistent metastore, in which every valid
// version restores, the failed version can be resumed, and a new backup
// succeeds.
func TestPutFaultSweep(t *testing.T) {
	modes := []struct {
		name string
		// inject adds the fault that fails the i-th Put.
		inject func(fb *faulty.Backend, i int) *faulty.Fault
	}{
		{"error-instead", func(fb *faulty.Backend, i int) *faulty.Fault {
			return fb.AddFault(faulty.MethodPut).After(i).ErrorInstead(errInjected)
		}},
		// The object is stored, but its Put reports failure.
		{"ack-lost", func(fb *faulty.Backend, i int) *faulty.Fault {
			return fb.AddFault(faulty.MethodPut).After(i).ErrorAfter(errInjected)
		}},
	}
	const bs = 64 << 10
	g := newGen(600)
	// A0 is backed up first; A shares a third of its blocks, has two zero
	// blocks and two duplicated ones: 16 new distinct blocks in 22.
	a0 := g.random(24 * bs)
	a := slices.Clone(a0[:8*bs])
	a = append(a, g.random(12*bs)...)
	a = append(a, make([]byte, 2*bs)...)
	a = append(a, a[9*bs:11*bs]...)
	a = append(a, g.random(3*bs+1234)...)
	const newBlocks = 16
	// Each run starts from a copy of a store holding a backup of a0.
	tmpl := newEnv(t, bs, blockstore.Options{})
	v0 := tmpl.mustBackup(a0, backup.Options{Volume: "a0"})
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			for i := 0; ; i++ {
				if i > 100 {
					t.Fatal("faults keep firing")
				}
				fired := false
				t.Run(fmt.Sprintf("put-%d", i), func(t *testing.T) {
					fired = putSweepRun(t, i, m.inject, errInjected, tmpl, v0, a0, a)
				})
				if t.Failed() {
					return
				}
				if !fired {
					if i < newBlocks {
						t.Fatalf("a backup of %d new blocks succeeded with Put %d failing", newBlocks, i)
					}
					return
				}
			}
		})
	}
}

// TestBackendGoesAway: every Put from the i-th on fails.
func TestBackendGoesAway(t *testing.T) {
	const bs = 64 << 10
	g := newGen(650)
	a0 := g.random(12 * bs)
	a := append(slices.Clone(a0[:4*bs]), g.random(16*bs)...)
	tmpl := newEnv(t, bs, blockstore.Options{})
	v0 := tmpl.mustBackup(a0, backup.Options{Volume: "a0"})
	for _, i := range []int{0, 1, 7, 15} {
		t.Run(fmt.Sprintf("put-%d", i), func(t *testing.T) {
			fired := putSweepRun(t, i, func(fb *faulty.Backend, i int) *faulty.Fault {
				return fb.AddFault(faulty.MethodPut).After(i).Repeat(-1).ErrorInstead(errInjected)
			}, errInjected, tmpl, v0, a0, a)
			if !fired {
				t.Fatal("the fault never fired")
			}
		})
	}
}

// putSweepRun backs up a0 and then, with the fault inject adds for Put i,
// a. It reports whether the fault fired.
func putSweepRun(t *testing.T, i int, inject func(*faulty.Backend, int) *faulty.Fault, want error, tmpl *env, v0 *metastore.Version, a0, a []byte) bool {
	return putSweepOn(t, tmpl.clone(t, blockstore.Options{}), i, inject, want, v0, a0, a)
}

// putSweepOn is putSweepRun on e, a store holding v0, a backup of a0.
func putSweepOn(t *testing.T, e *env, i int, inject func(*faulty.Backend, int) *faulty.Fault, want error, v0 *metastore.Version, a0, a []byte) bool {
	images := map[string][]byte{v0.UID: a0}
	path := e.writeImage(a)
	f := inject(e.fb, i)
	o := backup.Options{Workers: 4, CommitInterval: time.Millisecond}
	v, err := runFaulty(t, e, path, o)
	if f.Fired() == 0 {
		if err != nil {
			t.Fatalf("backup without a fault fired: %v", err)
		}
		e.mustRestoreEqual(v.UID, a)
		return false
	}
	if !errors.Is(err, want) {
		t.Fatalf("backup with Put %d failing = %v, want an error wrapping %v", i, err, want)
	}
	inc := leftIncomplete(t, e, v)
	metastoretest.Check(t, e.db)
	e.checkValidVersionsRestore(images)
	if inc != nil {
		checkIncomplete(t, e, inc, a)
	}
	// Without faults: the failed version resumes, and a new backup
	// succeeds.
	e.st = e.clean
	if inc != nil {
		r, err := e.backup(t.Context(), path, backup.Options{Resume: inc.UID})
		if err != nil {
			t.Fatalf("resume after Put %d failed: %v", i, err)
		}
		images[r.UID] = a
	}
	v2 := e.mustBackup(a, backup.Options{})
	images[v2.UID] = a
	metastoretest.Check(t, e.db)
	e.checkValidVersionsRestore(images)
	return true
}

// TestPutFaultEarlyInLargeImage: a Put failing early in an image much
// larger than the pipeline's window must end the backup, not stall it.
func TestPutFaultEarlyInLargeImage(t *testing.T) {
	cases := []struct {
		name    string
		workers int
		failAt  int
		repeat  int
	}{
		{"one-worker", 1, 3, 0},
		{"four-workers", 4, 3, 0},
		{"four-workers-first-put", 4, 0, 0},
		{"many-workers-two-failures", 12, 10, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, hbs, blockstore.Options{})
			data := newGen(700).random(300 * hbs)
			path := e.writeImage(data)
			e.fb.AddFault(faulty.MethodPut).After(c.failAt).Repeat(c.repeat).ErrorInstead(errInjected)
			v, err := runFaulty(t, e, path, backup.Options{Workers: c.workers, CommitInterval: time.Millisecond})
			if !errors.Is(err, errInjected) {
				t.Fatalf("backup = %v, want the injected error", err)
			}
			e.fb.VerifyAllFaultsFired(t)
			inc := leftIncomplete(t, e, v)
			if inc == nil {
				t.Fatal("no incomplete version left")
			}
			checkIncomplete(t, e, inc, data)
			e.st = e.clean
			r, err := e.backup(t.Context(), path, backup.Options{Resume: inc.UID})
			if err != nil {
				t.Fatal(err)
			}
			e.mustRestoreEqual(r.UID, data)
		})
	}
}
