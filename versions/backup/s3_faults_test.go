package backup_test

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"testing"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/blockstore/backend/faulty"
	s3be "github.com/backy/backy/blockstore/backend/s3"
	"github.com/backy/backy/blockstore/backend/s3/s3test"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/versions/backup"
	"github.com/backy/backy/versions/restore"
)

// newS3Env is a store whose data backend is a fresh bucket on srv.
func newS3Env(t *testing.T, srv *s3test.Server, bs int64) *env {
	t.Helper()
	dir := t.TempDir()
	db, err := metastore.Create(filepath.Join(dir, "backy.db"), bs, [16]byte{0x53, 3}, metastore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	be, err := s3be.New(t.Context(), srv.Options(srv.NewBucket(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = be.Close() })
	return envOn(t, dir, db, be, "", blockstore.Options{})
}

// TestS3BackupFaults runs the Put fault cases of TestPutFaultSweep and
// TestBackendGoesAway on the S3 backend: a failed or unacknowledged Put,
// or a backend that stops working, fails the backup cleanly, leaves a
// consistent metastore that records no block as stored that is not, and
// the version resumes. Then Get faults: a bit flip or a truncation is a
// damaged block for restore, never wrong data.
func TestS3BackupFaults(t *testing.T) {
	srv := s3test.Start(t)
	const bs = 64 << 10
	g := newGen(900)
	a0 := g.random(12 * bs)
	a := append(slices.Clone(a0[:4*bs]), g.random(16*bs)...)
	modes := []struct {
		name   string
		inject func(fb *faulty.Backend, i int) *faulty.Fault
	}{
		{"error-instead", func(fb *faulty.Backend, i int) *faulty.Fault {
			return fb.AddFault(faulty.MethodPut).After(i).ErrorInstead(errInjected)
		}},
		{"ack-lost", func(fb *faulty.Backend, i int) *faulty.Fault {
			return fb.AddFault(faulty.MethodPut).After(i).ErrorAfter(errInjected)
		}},
		{"goes-away", func(fb *faulty.Backend, i int) *faulty.Fault {
			return fb.AddFault(faulty.MethodPut).After(i).Repeat(-1).ErrorInstead(errInjected)
		}},
	}
	for _, m := range modes {
		for _, i := range []int{0, 5, 13} {
			t.Run(fmt.Sprintf("%s/put-%d", m.name, i), func(t *testing.T) {
				t.Parallel()
				e := newS3Env(t, srv, bs)
				v0 := e.mustBackup(a0, backup.Options{Volume: "a0"})
				if !putSweepOn(t, e, i, m.inject, errInjected, v0, a0, a) {
					t.Fatal("the fault never fired")
				}
			})
		}
	}
	for _, tc := range []struct {
		name   string
		inject func(f *faulty.Fault)
	}{
		{"bit-flip", func(f *faulty.Fault) { f.FlipBit() }},
		{"truncate", func(f *faulty.Fault) { f.Truncate(100) }},
	} {
		t.Run("get-"+tc.name, func(t *testing.T) {
			t.Parallel()
			e := newS3Env(t, srv, bs)
			v := e.mustBackup(a, backup.Options{Volume: "a"})
			tc.inject(e.fb.AddFault(faulty.MethodGet).After(3))
			_, _, err := e.restore(v.UID, restore.Options{})
			if !errors.Is(err, blockstore.ErrCorrupt) {
				t.Fatalf("restore with a damaged Get = %v, want ErrCorrupt", err)
			}
			got, err := e.db.Version(v.UID)
			if err != nil {
				t.Fatal(err)
			}
			if got.Status != metastore.StatusInvalid {
				t.Errorf("after a damaged read the version is %v, want invalid", got.Status)
			}
		})
	}
}
