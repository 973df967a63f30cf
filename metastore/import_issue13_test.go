package metastore

import (
	"testing"
	"time"

	"github.com/backy/backy/internal/block"
)

// TestImportInvalidRecord: a valid version imported with a block whose
// record is invalid (the metastore's, which the import keeps, or a new
// one from the stream) becomes invalid, as MarkInvalid makes every
// version using such a block; a version whose blocks are all sound stays
// valid.
func TestImportInvalidRecord(t *testing.T) {
	db := newTestDB(t)
	damaged := finished(t, db, rec(1))
	if _, err := db.MarkInvalid([]block.ID{rec(1).ID}); err != nil {
		t.Fatal(err)
	}
	bad := rec(2)
	bad.Invalid = true
	for _, tc := range []struct {
		name  string
		recs  []block.Record
		want  Status
		entry block.ID
	}{
		{"kept record invalid", []block.Record{rec(1)}, StatusInvalid, rec(1).ID},
		{"new record invalid", []block.Record{bad}, StatusInvalid, bad.ID},
		{"sound", []block.Record{rec(3)}, StatusValid, rec(3).ID},
	} {
		uid, _ := NewUID(time.Now())
		v := &Version{UID: uid, Volume: "imp", Size: 3 << 22, BlockSize: 4 << 20, Status: StatusValid, BlocksDone: 3}
		err := db.Import(func(im *Importer) error {
			if err := im.CreateVersion(v); err != nil {
				return err
			}
			_, err := im.AppendPage(uid, []block.ID{tc.entry, block.Sparse, block.Sparse}, tc.recs)
			return err
		})
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		got, err := db.Version(uid)
		if err != nil {
			t.Fatal(err)
		}
		if got.Status != tc.want {
			t.Errorf("%s: the imported version is %s, want %s", tc.name, got.Status, tc.want)
		}
	}
	if got, _ := db.Version(damaged.UID); got.Status != StatusInvalid {
		t.Errorf("the version MarkInvalid hit is %s", got.Status)
	}
}
