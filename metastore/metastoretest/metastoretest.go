// Package metastoretest gives tests of other packages a real metastore in a
// temporary directory whose consistency (metastore.DB.Check) is verified
// when the test ends, so every test that writes is also a consistency test.
package metastoretest

import (
	"path/filepath"
	"testing"

	"github.com/backy/backy/metastore"
)

// Create makes an empty metastore at dir/backy.db (a new temporary
// directory when dir is "") for a store with the given block size. It is
// checked and closed when the test ends.
func Create(t testing.TB, dir string, blockSize int64) *metastore.DB {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	db, err := metastore.Create(filepath.Join(dir, "backy.db"), blockSize, [16]byte{0xb, 0xac, 0xc1}, metastore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	CheckOnCleanup(t, db)
	return db
}

// CheckOnCleanup checks db's consistency when the test ends, failing the
// test on every problem, and closes it.
func CheckOnCleanup(t testing.TB, db *metastore.DB) {
	t.Cleanup(func() {
		Check(t, db)
		db.Close()
	})
}

// Check fails the test for every consistency problem of db.
func Check(t testing.TB, db *metastore.DB) {
	t.Helper()
	problems, err := db.Check()
	if err != nil {
		t.Errorf("metastore check: %v", err)
	}
	for _, p := range problems {
		t.Errorf("metastore check: %v", p)
	}
}
