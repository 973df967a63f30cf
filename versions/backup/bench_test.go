package backup_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/blockstore/backend/file"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/versions/backup"
	"github.com/backy/backy/versions/restore"
	"github.com/backy/backy/versions/source"
)

const (
	benchSize      = 256 << 20
	benchBlockSize = 4 << 20
)

// benchImage writes benchSize random bytes to a file in dir.
func benchImage(b *testing.B, dir string) string {
	b.Helper()
	path := filepath.Join(dir, "image.raw")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	r := rand.NewChaCha8([32]byte{42})
	buf := make([]byte, 4<<20)
	for written := 0; written < benchSize; written += len(buf) {
		_, _ = r.Read(buf)
		if _, err := f.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	return path
}

type benchStore struct {
	dir string
	db  *metastore.DB
	st  *blockstore.Store
}

func newBenchStore(b *testing.B, dir string) *benchStore {
	b.Helper()
	db, err := metastore.Create(filepath.Join(dir, "backy.db"), benchBlockSize, [16]byte{4, 2}, metastore.Options{})
	if err != nil {
		b.Fatal(err)
	}
	be, err := file.New(filepath.Join(dir, "data"))
	if err != nil {
		b.Fatal(err)
	}
	st, err := blockstore.New(be, blockstore.Options{})
	if err != nil {
		b.Fatal(err)
	}
	return &benchStore{dir: dir, db: db, st: st}
}

func (s *benchStore) close() {
	s.st.Close()
	s.db.Close()
	os.RemoveAll(s.dir)
}

func benchBackup(b *testing.B, s *benchStore, path string) *metastore.Version {
	b.Helper()
	src, err := source.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	v, err := backup.Run(context.Background(), s.st, s.db, src, backup.Options{Volume: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	return v
}

// BenchmarkBackup backs up 256 MiB of random data (nothing deduplicates)
// into a new store each time.
func BenchmarkBackup(b *testing.B) {
	dir := b.TempDir()
	path := benchImage(b, dir)
	b.SetBytes(benchSize)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		s := newBenchStore(b, filepath.Join(dir, fmt.Sprintf("store-%d", i)))
		b.StartTimer()
		v := benchBackup(b, s, path)
		b.StopTimer()
		if v.BytesWritten < benchSize {
			b.Fatalf("wrote %d bytes", v.BytesWritten)
		}
		s.close()
		b.StartTimer()
	}
}

// BenchmarkRestore restores a version of 256 MiB of random data to a new
// file each time.
func BenchmarkRestore(b *testing.B) {
	dir := b.TempDir()
	path := benchImage(b, dir)
	s := newBenchStore(b, filepath.Join(dir, "store"))
	defer s.close()
	v := benchBackup(b, s, path)
	os.Remove(path)
	b.SetBytes(benchSize)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		target := filepath.Join(dir, fmt.Sprintf("restored-%d.raw", i))
		tgt, err := source.CreateTarget(target, v.Size, false)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := restore.Run(context.Background(), s.st, s.db, v, tgt, restore.Options{}); err != nil {
			tgt.Abort()
			b.Fatal(err)
		}
		if err := tgt.Commit(); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		os.Remove(target)
		b.StartTimer()
	}
}
