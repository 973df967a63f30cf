package metastore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// damageDB returns the path of a closed metastore holding n versions,
// enough for the versions bucket to have a branch page at its root, and
// that root's page id.
func damageDB(t *testing.T, n int) (path string, root uint64) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "backy.db")
	db, err := Create(path, 4<<20, [16]byte{1}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		uid, _ := NewUID(time.Unix(int64(1e9+i), 0))
		v := &Version{UID: uid, Volume: fmt.Sprintf("volume-%04d", i), Date: time.Unix(int64(1e9+i), 0).UTC(), Size: 4 << 20, BlockSize: 4 << 20,
			Status: StatusIncomplete, Labels: map[string]string{"padding": strings.Repeat("x", 100)}}
		if err := db.CreateVersion(v); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	bdb, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, PreLoadFreelist: true})
	if err != nil {
		t.Fatal(err)
	}
	defer bdb.Close()
	err = bdb.View(func(tx *bolt.Tx) error {
		root = uint64(tx.Bucket(bktVersions).Root())
		p, err := tx.Page(int(root))
		if n >= 100 && (err != nil || p == nil || p.Type != "branch") {
			return fmt.Errorf("the versions bucket's root page %d is %+v (%v), want a branch page", root, p, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return path, root
}

func patch(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// wantDamaged requires err to be ErrDamaged naming path and what to do.
func wantDamaged(t *testing.T, what string, err error, path string) {
	t.Helper()
	if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "backy rebuild-metastore") {
		t.Errorf("%s: got %v, want ErrDamaged naming %s and 'backy rebuild-metastore'", what, err, path)
	}
}

// TestDamagedFile: damage that makes bbolt panic (inside a read and a
// write transaction, and in bolt.Open) or fail to open comes back as
// ErrDamaged naming the file, from every call, never as a panic.
func TestDamagedFile(t *testing.T) {
	const ps = 4096
	cases := []struct {
		name   string
		damage func(t *testing.T, path string, root uint64)
	}{
		{"branch page flags zeroed", func(t *testing.T, path string, root uint64) {
			patch(t, path, int64(root*ps+8), []byte{0, 0})
		}},
		{"branch page claims another id", func(t *testing.T, path string, root uint64) {
			patch(t, path, int64(root*ps), binary.LittleEndian.AppendUint64(nil, root+7))
		}},
		{"branch elements point past the file", func(t *testing.T, path string, root uint64) {
			hdr := make([]byte, 16)
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			_, err = f.ReadAt(hdr, int64(root*ps))
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
			for i := range int64(binary.LittleEndian.Uint16(hdr[10:])) {
				patch(t, path, int64(root*ps)+16+i*16+8, binary.LittleEndian.AppendUint64(nil, 1<<40+uint64(i)))
			}
		}},
		{"branch page scribbled", func(t *testing.T, path string, root uint64) {
			b := make([]byte, ps-16)
			for i := range b {
				b[i] = byte(i*7 + 3)
			}
			patch(t, path, int64(root*ps+16), b)
		}},
		{"both meta pages invalid", func(t *testing.T, path string, root uint64) {
			patch(t, path, 16, []byte{1, 2, 3, 4})
			patch(t, path, ps+16, []byte{1, 2, 3, 4})
		}},
		{"truncated to 3 pages", func(t *testing.T, path string, root uint64) {
			if err := os.Truncate(path, 3*ps); err != nil {
				t.Fatal(err)
			}
		}},
		{"truncated before the root page", func(t *testing.T, path string, root uint64) {
			if err := os.Truncate(path, int64(root*ps)); err != nil {
				t.Fatal(err)
			}
		}},
		{"empty", func(t *testing.T, path string, root uint64) {
			if err := os.Truncate(path, 0); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path, root := damageDB(t, 200)
			db, err := Open(path, Options{LockTimeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			c.damage(t, path, root)
			_, err = db.Versions(nil)
			wantDamaged(t, "Versions", err, path)
			_, err = db.UpdateVersion("V0123456789abcdef01234", func(*Version) error { return nil })
			wantDamaged(t, "UpdateVersion (after damage was seen)", err, path)
			// A fresh handle: the write path on its own, then Open.
			db2 := &DB{path: path, opts: Options{LockTimeout: 5 * time.Second}}
			_, err = db2.UpdateVersion("V0123456789abcdef01234", func(*Version) error { return nil })
			wantDamaged(t, "UpdateVersion", err, path)
			// Open reads the meta bucket only: it may not see the damage.
			if db3, err := Open(path, Options{LockTimeout: 5 * time.Second}); err == nil {
				db3.Close()
			} else if !errors.Is(err, ErrDamaged) {
				t.Errorf("Open: got %v, want nil or ErrDamaged", err)
			}
			if p, err := Inspect(path, [16]byte{1}); err != nil || p == nil {
				t.Errorf("Inspect: problem %v, error %v; want the damage reported", p, err)
			}
		})
	}
}

// TestDamagedFreelist: a scribbled freelist does not hurt readers (they
// do not use it), but no write runs on it and Inspect reports it.
func TestDamagedFreelist(t *testing.T) {
	path, _ := damageDB(t, 200)
	bdb, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, PreLoadFreelist: true})
	if err != nil {
		t.Fatal(err)
	}
	var free uint64
	_ = bdb.View(func(tx *bolt.Tx) error {
		for id := 2; ; id++ {
			p, err := tx.Page(id)
			if err != nil || p == nil {
				return err
			}
			if p.Type == "freelist" {
				free = uint64(id)
			}
		}
	})
	bdb.Close()
	if free == 0 {
		t.Fatal("no freelist page")
	}
	db, err := Open(path, Options{LockTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	// Two entries, both far beyond the file.
	patch(t, path, int64(free*4096+10), []byte{2, 0})
	patch(t, path, int64(free*4096+16), binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(nil, 1<<33), 1<<34))
	if vs, err := db.Versions(nil); err != nil || len(vs) != 200 {
		t.Fatalf("Versions with a damaged freelist: %d, %v; want all 200", len(vs), err)
	}
	_, err = db.UpdateVersion("V0123456789abcdef01234", func(*Version) error { return nil })
	wantDamaged(t, "UpdateVersion", err, path)
	if p, err := Inspect(path, [16]byte{1}); err != nil || !errors.Is(p, ErrDamaged) {
		t.Errorf("Inspect: problem %v, error %v; want the freelist reported", p, err)
	}
}

// TestPanicInWriteRollsBack: a write transaction that bbolt panics in
// leaves the file as it was; a panic of backy's own code is not hidden.
func TestPanicInWriteRollsBack(t *testing.T) {
	path, _ := damageDB(t, 3)
	db, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	vs, err := db.Versions(nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bktVersions).Delete([]byte(vs[0].UID)); err != nil {
			return err
		}
		_ = tx.Rollback() // a managed transaction: bbolt panics
		return nil
	})
	if !errors.Is(err, ErrDamaged) {
		t.Fatalf("a panic of bbolt in a write transaction: got %v, want ErrDamaged", err)
	}
	db2, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	if got, err := db2.Versions(nil); err != nil || len(got) != 3 {
		t.Fatalf("after the panic: %d versions, %v; want the 3 untouched", len(got), err)
	}
	if problems, err := db2.Check(); err != nil || len(problems) > 0 {
		t.Fatalf("after the panic: %v %v", problems, err)
	}

	defer func() {
		if r := recover(); r != "a bug" {
			t.Fatalf("a panic of backy's own code: recovered %v, want it to go on", r)
		}
		// The file lock was released: another transaction runs.
		if _, err := db2.Versions(nil); err != nil {
			t.Fatal(err)
		}
	}()
	_ = db2.update(func(tx *bolt.Tx) error { panic("a bug") })
}
