package transfer_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/blockstore/backend/file"
	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/metastore/blockmap"
	"github.com/backy/backy/versions/catalog"
	"github.com/backy/backy/versions/transfer"
)

// BenchmarkRebuild measures 'backy rebuild-metastore' on a generated store
// of BACKY_BENCH_VERSIONS versions (default 1000): 10 volumes of
// BACKY_BENCH_VOLUME_GIB GiB (default 16) at 4 MiB blocks, each backed up
// versions/10 times with 2% of its blocks changed each time. Only metadata
// is generated (the block records name objects that are never written:
// rebuild reads the snapshots, not the blocks). It reports the time per
// rebuild and the size of the per-version metadata objects.
//
//	go test -run '^$' -bench Rebuild -benchtime 3x ./versions/transfer/
func BenchmarkRebuild(b *testing.B) {
	nVersions := envInt("BACKY_BENCH_VERSIONS", 1000)
	volGiB := envInt("BACKY_BENCH_VOLUME_GIB", 16)
	const bs = 4 << 20
	const volumes = 10
	ctx := context.Background()
	dir := b.TempDir()
	be, err := file.NewWithOptions(filepath.Join(dir, "data"), file.Options{DeferDirSync: true})
	if err != nil {
		b.Fatal(err)
	}
	var sid [16]byte
	_, _ = rand.Read(sid[:])
	if err := blockstore.WriteIdentity(ctx, be, blockstore.NewIdentity(sid, bs, time.Now())); err != nil {
		b.Fatal(err)
	}
	db, err := metastore.Create(filepath.Join(dir, "backy.db"), bs, sid, metastore.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	st, err := blockstore.New(be, blockstore.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	cat := catalog.New(st, "bench", nil)

	start := time.Now()
	blocks := volGiB << 30 / bs
	changed := max(1, blocks/50)
	maps := make([][]block.ID, volumes)
	for vi := range maps {
		maps[vi] = make([]block.ID, blocks)
	}
	date := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var records int
	for n := range nVersions {
		vi := n % volumes
		m := maps[vi]
		var recs []block.Record
		fresh := func(i int) {
			var r block.Record
			_, _ = rand.Read(r.ID[:])
			_, _ = rand.Read(r.Name[:])
			r.Size, r.StoredSize = bs, bs+40
			m[i] = r.ID
			recs = append(recs, r)
		}
		if n < volumes {
			for i := range m {
				fresh(i)
			}
		} else {
			for k := range changed {
				fresh((n*7919 + k*104729) % blocks)
			}
		}
		records += len(recs)
		uid, err := metastore.NewUID(date.Add(time.Duration(n) * time.Hour))
		if err != nil {
			b.Fatal(err)
		}
		v := &metastore.Version{UID: uid, Volume: "vm-" + strconv.Itoa(vi), Date: date.Add(time.Duration(n) * time.Hour),
			Size: int64(blocks) * bs, BlockSize: bs, Status: metastore.StatusIncomplete, Labels: map[string]string{"gen": "bench"}}
		if err := db.CreateVersion(v); err != nil {
			b.Fatal(err)
		}
		var pages []metastore.PageWrite
		for lo := 0; lo < blocks; lo += blockmap.PageEntries {
			pages = append(pages, metastore.NewPage(append([]block.ID(nil), m[lo:min(lo+blockmap.PageEntries, blocks)]...)))
		}
		if _, err := db.Commit(metastore.Commit{UID: uid, Pages: pages, New: recs, Update: func(v *metastore.Version) error {
			v.Status, v.BlocksDone = metastore.StatusValid, int64(blocks)
			return nil
		}}); err != nil {
			b.Fatal(err)
		}
	}
	sres, err := cat.Sync(ctx, db)
	if err != nil {
		b.Fatal(err)
	}
	if sres.Written != nVersions {
		b.Fatalf("wrote %d snapshots, want %d", sres.Written, nVersions)
	}
	b.Logf("generated %d versions (%d GiB, %d blocks each), %d block records, %.1f MB of snapshots in %s",
		nVersions, volGiB, blocks, records, float64(sres.Bytes)/1e6, time.Since(start).Round(time.Millisecond))
	want, err := db.Stats()
	if err != nil {
		b.Fatal(err)
	}
	open := func(context.Context, *metastore.DB) (*catalog.Catalog, error) { return cat, nil }
	b.ResetTimer()
	for i := range b.N {
		path := filepath.Join(dir, fmt.Sprintf("rebuilt-%d.db", i))
		res, err := transfer.Rebuild(ctx, path, be, open, transfer.RebuildOptions{})
		if err != nil {
			b.Fatal(err)
		}
		if res.Versions != nVersions {
			b.Fatalf("rebuilt %d versions, want %d", res.Versions, nVersions)
		}
		b.StopTimer()
		ndb, err := metastore.Open(path, metastore.Options{})
		if err != nil {
			b.Fatal(err)
		}
		got, err := ndb.Stats()
		_ = ndb.Close()
		if err != nil || got.Blocks != want.Blocks || got.Versions != want.Versions || got.StoredBytes != want.StoredBytes {
			b.Fatalf("rebuilt store %+v, want %+v (%v)", got, want, err)
		}
		_ = os.Remove(path)
		b.StartTimer()
	}
	b.ReportMetric(float64(sres.Bytes)/float64(nVersions), "snapshot-bytes/version")
	b.ReportMetric(float64(nVersions), "versions")
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}
