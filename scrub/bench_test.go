package scrub_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/blockstore/backend/file"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/scrub"
	"github.com/backy/backy/versions/backup"
)

const benchSize = 256 << 20

// benchStore backs up benchSize random bytes (nothing deduplicates) into a
// new store at block size bsz.
func benchStore(b *testing.B, bsz int64) (*metastore.DB, *blockstore.Store) {
	b.Helper()
	dir := b.TempDir()
	data := make([]byte, benchSize)
	r := rand.NewChaCha8([32]byte{42})
	_, _ = r.Read(data)
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
	if _, err := backup.Run(context.Background(), st, db, src(data), backup.Options{Volume: "bench"}); err != nil {
		b.Fatal(err)
	}
	return db, st
}

// BenchmarkScrub runs a deep-scrub (every block read and verified) and a
// scrub (every object stat'ed) of all of a store holding one version of
// 256 MiB of random data, at 4 MiB and at 64 KiB blocks.
func BenchmarkScrub(b *testing.B) {
	for _, bsz := range []int64{4 << 20, 64 << 10} {
		db, st := benchStore(b, bsz)
		b.Run(fmt.Sprintf("deep/bs=%dKiB", bsz>>10), func(b *testing.B) {
			b.SetBytes(benchSize)
			for b.Loop() {
				res, err := scrub.Run(context.Background(), st, db, scrub.Options{Deep: true, All: true})
				if err != nil || res.BytesVerified != benchSize {
					b.Fatalf("deep-scrub: %v, %d bytes verified", err, res.BytesVerified)
				}
			}
		})
		b.Run(fmt.Sprintf("stat/bs=%dKiB", bsz>>10), func(b *testing.B) {
			for b.Loop() {
				if _, err := scrub.Run(context.Background(), st, db, scrub.Options{All: true}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
