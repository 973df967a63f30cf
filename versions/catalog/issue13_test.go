package catalog_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/backy/backy/blockstore/backend/faulty"
	"github.com/backy/backy/versions/catalog"
)

// TestSyncGoesOnPastAFailingVersion (issue 13 item 2): a version whose
// snapshot cannot be written does not keep the others' out of the
// backend; every failure is reported, and the failing version stays
// pending for the next Sync.
func TestSyncGoesOnPastAFailingVersion(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, false)
	var uids []string
	for i := range 3 {
		uids = append(uids, f.backup(image(uint64(10+i), 6*bs), "vol").UID)
	}
	// The oldest version's snapshot can never be written (as a version
	// whose metadata breaks a rule of the format).
	bad := catalog.Prefix + strings.ToLower(uids[0]) + "/"
	boom := errors.New("injected put failure")
	f.fb.AddFault(faulty.MethodPut).OnName(func(n string) bool { return strings.HasPrefix(n, bad) }).ErrorInstead(boom).Repeat(-1)
	res, err := f.cat.Sync(ctx, f.db)
	if !errors.Is(err, catalog.ErrSync) || !errors.Is(err, boom) || !strings.Contains(err.Error(), uids[0]) {
		t.Errorf("Sync = %v, want ErrSync naming %s and wrapping the cause", err, uids[0])
	}
	if res.Written != 2 || !slices.Equal(res.WrittenUIDs, uids[1:]) {
		t.Errorf("Sync wrote %d %v, want the other two %v", res.Written, res.WrittenUIDs, uids[1:])
	}
	if len(res.Failed) != 1 || res.Failed[0].UID != uids[0] || !errors.Is(res.Failed[0].Err, boom) {
		t.Errorf("Failed = %+v", res.Failed)
	}
	if got := f.pending(); !slices.Equal(got, uids[:1]) {
		t.Errorf("pending after Sync %v, want only %s", got, uids[0])
	}
	for _, uid := range uids[1:] {
		refs := f.refs(uid)
		if len(refs) != 1 {
			t.Fatalf("version %s has %d snapshots", uid, len(refs))
		}
		f.checkSnapshot(refs[0])
	}
	// A later change of another version is written although the bad one
	// still fails.
	f.protect(uids[2])
	res, err = f.cat.Sync(ctx, f.db)
	if !errors.Is(err, boom) || !slices.Equal(res.WrittenUIDs, uids[2:]) {
		t.Errorf("second Sync = %+v, %v; want %s written and the failure reported", res, err, uids[2])
	}
}

// TestSyncStopsWhenTheBackendIsUnreachable: a failure that would fail
// every version (here: cancellation) ends Sync at once.
func TestSyncStopsWhenTheBackendIsUnreachable(t *testing.T) {
	f := newFixture(t, false)
	for i := range 2 {
		f.backup(image(uint64(20+i), 3*bs), "vol")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	res, err := f.cat.Sync(ctx, f.db)
	if !errors.Is(err, context.Canceled) || res.Written != 0 || len(res.Failed) != 1 {
		t.Errorf("Sync with a cancelled context = %+v, %v", res, err)
	}
}

// TestCheck (issue 13 item 1): Check finds a snapshot the metastore
// recorded that is missing, lacks chunks or has a chunk of an impossible
// size (a listing only), and (deep) one that does not read or describes
// another state of the version.
func TestCheck(t *testing.T) {
	ctx := context.Background()
	for _, encrypted := range []bool{false, true} {
		name := "plain"
		if encrypted {
			name = "encrypted"
		}
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, encrypted)
			v := f.backup(image(31, 9*bs), "vol")
			f.write(v.UID)
			check := func(deep bool) catalog.CheckResult {
				t.Helper()
				r, err := f.cat.Check(ctx, f.db, v.UID, deep)
				if err != nil {
					t.Fatalf("Check(deep %v): %v", deep, err)
				}
				return r
			}
			want := func(what string, deep bool, state string) {
				t.Helper()
				if r := check(deep); r.State != state || (state != catalog.StateOK && state != catalog.StatePending && r.Reason == "") {
					t.Errorf("%s: Check(deep %v) = %+v, want %s with a reason", what, deep, r, state)
				}
			}
			want("intact", false, catalog.StateOK)
			want("intact", true, catalog.StateOK)
			refs := f.refs(v.UID)
			if len(refs) != 1 {
				t.Fatalf("refs %+v", refs)
			}
			saved := f.saveDir(refs[0])
			chunk := refs[0].Dir() + "00000000"
			restore := func() {
				t.Helper()
				for n := range saved {
					_ = f.inner.Delete(ctx, n)
				}
				f.putRaw(saved)
				want("restored", true, catalog.StateOK)
			}

			// Deleted: both kinds of check see it.
			if err := f.inner.Delete(ctx, chunk); err != nil {
				t.Fatal(err)
			}
			want("deleted", false, catalog.StateMissing)
			want("deleted", true, catalog.StateMissing)
			restore()

			// A gap: chunk 1 exists, chunk 0 does not.
			if err := f.inner.Delete(ctx, chunk); err != nil {
				t.Fatal(err)
			}
			if err := f.inner.Put(ctx, refs[0].Dir()+"00000001", saved[chunk]); err != nil {
				t.Fatal(err)
			}
			want("gap", false, catalog.StateDamaged)
			_ = f.inner.Delete(ctx, refs[0].Dir()+"00000001")
			restore()

			// Truncated below an object header.
			if err := f.inner.Delete(ctx, chunk); err != nil {
				t.Fatal(err)
			}
			if err := f.inner.Put(ctx, chunk, saved[chunk][:10]); err != nil {
				t.Fatal(err)
			}
			want("truncated", false, catalog.StateDamaged)
			want("truncated", true, catalog.StateDamaged)
			restore()

			// A flipped byte: only a deep check sees it.
			flipped := slices.Clone(saved[chunk])
			flipped[len(flipped)-5] ^= 0x10
			if err := f.inner.Delete(ctx, chunk); err != nil {
				t.Fatal(err)
			}
			if err := f.inner.Put(ctx, chunk, flipped); err != nil {
				t.Fatal(err)
			}
			want("flipped", false, catalog.StateOK)
			want("flipped", true, catalog.StateDamaged)
			restore()

			// Stale: the metastore knows, nothing to report.
			f.protect(v.UID)
			want("stale", false, catalog.StatePending)
			want("stale", true, catalog.StatePending)
			w := f.write(v.UID)

			// An intact snapshot of an older state under the name of the
			// current one (unencrypted: encrypted chunks open only under
			// their own name, which the flip case covers).
			if !encrypted {
				for n := range f.saveDir(w.Ref) {
					_ = f.inner.Delete(ctx, n)
				}
				for n, b := range saved {
					if err := f.inner.Put(ctx, w.Dir()+strings.TrimPrefix(n, refs[0].Dir()), b); err != nil {
						t.Fatal(err)
					}
				}
				want("older state", false, catalog.StateOK)
				r := check(true)
				if r.State != catalog.StateDamaged || !strings.Contains(r.Reason, "another state") {
					t.Errorf("older state under the current name: Check = %+v, want damaged: another state", r)
				}
			}

			// A bad snapshot, once marked stale, is what the next Sync
			// writes again.
			if err := f.db.MarkSnapshotStale(v.UID); err != nil {
				t.Fatal(err)
			}
			if got := f.pending(); !slices.Equal(got, []string{v.UID}) {
				t.Errorf("pending after MarkSnapshotStale: %v", got)
			}
			if res, err := f.cat.Sync(ctx, f.db); err != nil || res.Written != 1 {
				t.Errorf("Sync = %+v, %v", res, err)
			}
			want("rewritten", true, catalog.StateOK)
		})
	}
}

// TestProtectedFindsMissing: the listing Protected makes anyway shows a
// current snapshot that is gone; a stale one is not reported (the next
// Sync writes it), and a pending version's old snapshot keeps its objects.
func TestProtectedFindsMissing(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, false)
	v1 := f.backup(image(41, 4*bs), "vol")
	v2 := f.backup(image(42, 4*bs), "vol")
	f.write(v1.UID)
	f.write(v2.UID)
	r1 := f.refs(v1.UID)[0]
	if err := f.inner.Delete(ctx, r1.Dir()+"00000000"); err != nil {
		t.Fatal(err)
	}
	p, err := f.cat.Protected(ctx, f.db)
	if err != nil || !slices.Equal(p.Missing, []string{v1.UID}) || len(p.Stale) != 0 {
		t.Fatalf("Protected = %+v, %v; want %s missing", p, err, v1.UID)
	}
	// v2 changed and its new snapshot could not be written: not missing,
	// but stale, and the objects its old snapshot names are kept.
	f.protect(v2.UID)
	p, err = f.cat.Protected(ctx, f.db)
	if err != nil || !slices.Equal(p.Missing, []string{v1.UID}) || !slices.Equal(p.Stale, []string{v2.UID}) || len(p.Names) == 0 {
		t.Fatalf("Protected = %+v, %v; want %s missing, %s stale with names kept", p, err, v1.UID, v2.UID)
	}
}

// TestCheckKeyGone: a snapshot sealed under a key no longer configured is
// reported (a rebuild could not read it), so that it is written again at
// the configured encryption version.
func TestCheckKeyGone(t *testing.T) {
	f := newFixture(t, true)
	v := f.backup(image(51, 5*bs), "vol")
	f.write(v.UID)
	o := f.opts
	o.Keys, o.Key = keys{}, nil
	cat := catalog.New(f.store(f.inner, o), "catalog test", nil)
	r, err := cat.Check(context.Background(), f.db, v.UID, true)
	if err != nil || r.State != catalog.StateDamaged || !strings.Contains(r.Reason, "configured keys") {
		t.Errorf("Check without the key = %+v, %v; want damaged: cannot be opened with the configured keys", r, err)
	}
	if r, err := cat.Check(context.Background(), f.db, v.UID, false); err != nil || r.State != catalog.StateOK {
		t.Errorf("a listing needs no key: %+v, %v", r, err)
	}
}
