package restore_test

import (
	"bytes"
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

// memSource is an image in memory.
type memSource struct{ *bytes.Reader }

func (m memSource) Name() string { return "memory image" }
func (m memSource) Close() error { return nil }

// benchVersion backs up benchSize random bytes (nothing deduplicates) into
// a new store in dir at block size bsz.
func benchVersion(b *testing.B, dir string, bsz int64) (*metastore.DB, *blockstore.Store, *metastore.Version) {
	b.Helper()
	data := make([]byte, benchSize)
	_, _ = rand.NewChaCha8([32]byte{42}).Read(data)
	db, err := metastore.Create(filepath.Join(dir, "backy.db"), bsz, [16]byte{4, 2}, metastore.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	be, err := file.New(filepath.Join(dir, "data"))
	if err != nil {
		b.Fatal(err)
	}
	st, err := blockstore.New(be, blockstore.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(st.Close)
	v, err := backup.Run(context.Background(), st, db, memSource{bytes.NewReader(data)}, backup.Options{Volume: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	return db, st, v
}

// discard is a target that keeps nothing: the benchmark measures the read
// and verification path, not the target's file system.
type discard struct{}

func (discard) WriteAt(p []byte, _ int64) (int, error)  { return len(p), nil }
func (discard) Zero(_, _ int64, _ bool, _ []byte) error { return nil }

// BenchmarkRestore restores a version of 256 MiB of random data, to a new
// file and to a target that discards what it gets, at 4 MiB and at 64 KiB
// blocks (4096 blocks: the per-block cost).
func BenchmarkRestore(b *testing.B) {
	for _, bsz := range []int64{benchBlockSize, 64 << 10} {
		dir := b.TempDir()
		db, st, v := benchVersion(b, dir, bsz)
		b.Run(fmt.Sprintf("file/bs=%dKiB", bsz>>10), func(b *testing.B) {
			b.SetBytes(benchSize)
			for i := 0; b.Loop(); i++ {
				target := filepath.Join(dir, fmt.Sprintf("restored-%d.raw", i))
				tgt, err := source.CreateTarget(target, v.Size, false)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := restore.Run(context.Background(), st, db, v, tgt, restore.Options{}); err != nil {
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
		})
		b.Run(fmt.Sprintf("discard/bs=%dKiB", bsz>>10), func(b *testing.B) {
			b.SetBytes(benchSize)
			for b.Loop() {
				if _, err := restore.Run(context.Background(), st, db, v, discard{}, restore.Options{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
