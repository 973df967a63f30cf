package transfer_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/backy/backy/blockstore/keyring"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/versions/transfer"
)

// copyOld copies the store's metastore file to a new path: the "old"
// metastore a rebuild replaces (the store's own stays open for the test).
func copyOld(t *testing.T, s *store) string {
	t.Helper()
	b, err := os.ReadFile(s.db.Path())
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "backy.db")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// dropSnapshots deletes every snapshot of uid from the backend.
func dropSnapshots(t *testing.T, s *store, uid string) {
	t.Helper()
	if err := s.cat.Delete(context.Background(), uid); err != nil {
		t.Fatal(err)
	}
}

// flipSnapshot damages the newest snapshot of uid.
func flipSnapshot(t *testing.T, s *store, uid string) {
	t.Helper()
	ctx := context.Background()
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

// editBolt changes a metastore file directly, as damage would.
func editBolt(t *testing.T, path string, fn func(*bolt.Tx) error) {
	t.Helper()
	bdb, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer bdb.Close()
	if err := bdb.Update(fn); err != nil {
		t.Fatal(err)
	}
}

func lostUIDs(res *transfer.RebuildResult) []string {
	var out []string
	for _, l := range res.Lost {
		out = append(out, l.UID)
	}
	slices.Sort(out)
	return out
}

// TestRebuildKeepsOldVersions (issue 13 item 1): a version the old
// metastore has but the backend cannot give back (its snapshots deleted,
// or its only snapshot damaged) is taken from the old metastore, marked
// for a fresh snapshot, and the rebuilt metastore holds exactly what the
// old one did. A version the old metastore cannot give either (its map
// damaged there, incomplete, its record undecodable) makes the rebuild
// fail with ErrLoss, listing it, and change nothing; with AcceptLoss the
// rebuild goes on without it (the old file kept aside). A version being
// removed is not a loss. A key registration the backend lost is taken
// from the old metastore and written back.
func TestRebuildKeepsOldVersions(t *testing.T) {
	ctx := context.Background()
	s := newStore(t, true)
	uids := withSnapshots(t, s)
	gone, damaged, intact := uids[0], uids[2], uids[1]
	want := dump(t, s.db, true)
	dropSnapshots(t, s, gone)
	flipSnapshot(t, s, damaged)
	if err := s.be.Delete(ctx, keyring.ObjectName(1)); err != nil {
		t.Fatal(err)
	}

	t.Run("recovered", func(t *testing.T) {
		path := copyOld(t, s)
		res, err := rebuild(t, s, path, transfer.RebuildOptions{Force: true})
		if err != nil {
			t.Fatalf("Rebuild: %v", err)
		}
		rec := slices.Sorted(slices.Values(res.Recovered))
		if !slices.Equal(rec, slices.Sorted(slices.Values([]string{gone, damaged}))) || len(res.Lost) != 0 || len(res.Unreadable) != 0 ||
			res.Versions != len(uids) || res.OldVersions != len(uids) || res.KeptAside == "" {
			t.Errorf("Rebuild = %+v; want %s and %s taken from the old metastore, nothing lost or unreadable", res, gone, damaged)
		}
		got := checkAndClose(t, path)
		sameContent(t, got, want, true)
		if !slices.Equal(slices.Sorted(slices.Values(got.Pending)), rec) {
			t.Errorf("pending after the rebuild %v, want the recovered versions %v (their snapshots are written again)", got.Pending, rec)
		}
		if b, err := s.be.Get(ctx, keyring.ObjectName(1), nil); err != nil || !bytes.Equal(b, want.Keys[1]) {
			t.Errorf("keys/1.json after the rebuild: %q, %v; want the old metastore's registration", b, err)
		}
		if err := s.be.Delete(ctx, keyring.ObjectName(1)); err != nil {
			t.Fatal(err)
		}
	})

	// Damage in the old metastore: gone's map loses a page, an
	// incomplete version (no snapshot ever), one being removed, and a
	// record that does not decode.
	path := copyOld(t, s)
	incomplete := newVersionIn(t, path, metastore.StatusIncomplete, false)
	removing := newVersionIn(t, path, metastore.StatusValid, true)
	editBolt(t, path, func(tx *bolt.Tx) error {
		pages := tx.Bucket([]byte("maps")).Get([]byte(gone))
		if len(pages) < 32 {
			t.Fatalf("the map of %s has no page", gone)
		}
		if err := tx.Bucket([]byte("pages")).Delete(pages[:32]); err != nil {
			return err
		}
		return tx.Bucket([]byte("versions")).Put([]byte("V0000000000000000bad1"), []byte("{not json"))
	})
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	res, err := rebuild(t, s, path, transfer.RebuildOptions{Force: true})
	if !errors.Is(err, transfer.ErrLoss) || res == nil {
		t.Fatalf("Rebuild over a damaged old metastore = %+v, %v; want ErrLoss", res, err)
	}
	wantLost := slices.Sorted(slices.Values([]string{gone, incomplete, "V0000000000000000bad1"}))
	if got := lostUIDs(res); !slices.Equal(got, wantLost) || !slices.Equal(res.Recovered, []string{damaged}) {
		t.Errorf("Rebuild lost %v and recovered %v; want %v lost and %s recovered", got, res.Recovered, wantLost, damaged)
	}
	for _, l := range res.Lost {
		switch l.UID {
		case gone:
			if l.Volume != "a" || l.Date.IsZero() || l.Status != "valid" || !strings.Contains(l.Why, "no metadata of it") || !strings.Contains(l.Why, "damaged") {
				t.Errorf("lost %+v: want its volume, date, status and why (no snapshot, damaged map)", l)
			}
		case incomplete:
			if !strings.Contains(l.Why, "incomplete") {
				t.Errorf("lost %+v: want it said incomplete", l)
			}
		}
	}
	for _, uid := range append(slices.Clone(wantLost), incomplete) {
		if !strings.Contains(err.Error(), uid) {
			t.Errorf("the error should name %s: %v", uid, err)
		}
	}
	if slices.Contains(lostUIDs(res), removing) {
		t.Errorf("a version being removed counted as lost")
	}
	if now, err := os.ReadFile(path); err != nil || !bytes.Equal(now, before) {
		t.Errorf("a refused rebuild changed the metastore (%v)", err)
	}
	if m, _ := filepath.Glob(path + ".*"); len(m) != 1 { // only backy.db.locks
		t.Errorf("a refused rebuild left %v", m)
	}
	if _, err := s.be.Get(ctx, keyring.ObjectName(1), nil); err == nil {
		t.Errorf("a refused rebuild wrote keys/1.json")
	}

	res, err = rebuild(t, s, path, transfer.RebuildOptions{Force: true, AcceptLoss: true})
	if err != nil {
		t.Fatalf("Rebuild with AcceptLoss: %v", err)
	}
	if got := lostUIDs(res); !slices.Equal(got, wantLost) || res.KeptAside == "" || res.Versions != len(uids)-1 {
		t.Errorf("Rebuild with AcceptLoss = %+v; want %v lost, %d versions, the old file kept", res, wantLost, len(uids)-1)
	}
	if aside, err := os.ReadFile(res.KeptAside); err != nil || !bytes.Equal(aside, before) {
		t.Errorf("the metastore kept aside is not the old one (%v)", err)
	}
	got := checkAndClose(t, path)
	if got.Stats.Versions != len(uids)-1 {
		t.Errorf("%d versions after the accepted loss, want %d", got.Stats.Versions, len(uids)-1)
	}
	for _, v := range got.Versions {
		if v.UID == gone {
			t.Errorf("%s is in the rebuilt metastore", gone)
		}
	}
	_ = intact
}

// TestRebuildOldUnreadable: when the old metastore cannot be read at all
// (garbage; a salvager that fails), the rebuild goes on as before (the
// versions cannot be compared; it says why), and a failed export of the
// versions to take back lists them as lost.
func TestRebuildOldUnreadable(t *testing.T) {
	s := newStore(t, false)
	uids := withSnapshots(t, s)
	dropSnapshots(t, s, uids[1])
	path := copyOld(t, s)
	res, err := rebuild(t, s, path, transfer.RebuildOptions{Force: true, Salvager: failing{survey: true}})
	if err != nil || res.OldUnreadable == "" || res.OldVersions != -1 || res.Versions != len(uids)-1 {
		t.Fatalf("Rebuild with an unreadable old metastore = %+v, %v; want it rebuilt without comparing, saying why", res, err)
	}
	path = copyOld(t, s)
	res, err = rebuild(t, s, path, transfer.RebuildOptions{Force: true, Salvager: failing{}})
	if !errors.Is(err, transfer.ErrLoss) || res == nil || !slices.Equal(lostUIDs(res), []string{uids[1]}) || !strings.Contains(res.Lost[0].Why, "boom") {
		t.Fatalf("Rebuild whose salvager fails to export = %+v, %v; want %s lost, saying why", res, err, uids[1])
	}
}

// failing is a Salvager whose reads fail (as a crashed child's would).
type failing struct{ survey bool }

func (f failing) Survey(ctx context.Context, path string) (*transfer.Survey, error) {
	if f.survey {
		return nil, errors.New("boom: the reader crashed")
	}
	return transfer.InProcess{}.Survey(ctx, path)
}

func (failing) Export(context.Context, string, []string, string) (map[string]string, error) {
	return nil, errors.New("boom: the reader crashed")
}

// newVersionIn adds a version to the metastore file at path (closed
// again at once).
func newVersionIn(t *testing.T, path string, status metastore.Status, removing bool) string {
	t.Helper()
	db, err := metastore.Open(path, metastore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	uid, err := metastore.NewUID(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	v := &metastore.Version{UID: uid, Volume: "x", Date: time.Now().UTC(), Size: 0, BlockSize: testBS, Status: status, Removing: removing}
	if err := db.CreateVersion(v); err != nil {
		t.Fatal(err)
	}
	return uid
}
