package backup_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/blockstore/backend/faulty"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/metastore/blockmap"
	"github.com/backy/backy/metastore/metastoretest"
	"github.com/backy/backy/versions/backup"
	"github.com/backy/backy/versions/hints"
)

// TestResume kills a backup (cancels its context) part-way, then finishes
// it with Options.Resume.
func TestResume(t *testing.T) {
	cases := []struct {
		name      string
		bs        int64
		blocks    int64
		cancelAt  int64         // cancel once the committer has seen this many blocks
		minDone   int64         // the least blocks_done expected of the killed run
		latency   time.Duration // of every Put
		workers   int
		withHints bool
	}{
		{"within-the-first-page", 64 << 10, 40, 15, 1, 5 * time.Millisecond, 3, false},
		{"one-worker", 64 << 10, 30, 10, 1, 2 * time.Millisecond, 1, false},
		{"past-the-first-page", 4096, 1024 + 200, 1100, 1024, 0, 2, false},
		{"past-the-first-page-with-base", 4096, 2*1024 + 10, 1160, 1024, 0, 2, true},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, c.bs, blockstore.Options{})
			g := newGen(uint64(800 + i))
			size := c.blocks*c.bs - 77
			var data []byte
			if c.bs == hbs {
				// Few distinct blocks, but new ones after the kill.
				data = pooled(g, size)
				copy(data[1110*c.bs:1210*c.bs], g.random(100*c.bs))
			} else {
				data = g.random(size)
			}
			clear(data[2*c.bs : 4*c.bs]) // some sparse blocks
			copy(data[7*c.bs:8*c.bs], data[5*c.bs:6*c.bs])
			o := backup.Options{CommitInterval: time.Millisecond, Workers: c.workers}
			var base *metastore.Version
			if c.withHints {
				// A base that differs in every page, so nothing is reused
				// whole, but hints mark some blocks unchanged.
				baseData := append([]byte(nil), data...)
				copy(baseData[1110*c.bs:1210*c.bs], g.random(100*c.bs))
				for p := int64(0); p*1024*c.bs+501*c.bs <= size; p++ {
					copy(baseData[p*1024*c.bs+500*c.bs:], g.random(c.bs))
				}
				base = e.mustBackup(baseData, backup.Options{})
				var ext []hints.Extent
				for p := int64(0); p*1024*c.bs+501*c.bs <= size; p++ {
					ext = append(ext, hints.Extent{Offset: p*1024*c.bs + 500*c.bs, Length: c.bs, Exists: true})
				}
				// Blocks 1000-1209 and 1900 on are read too.
				ext = append(ext, hints.Extent{Offset: 1000 * c.bs, Length: 210 * c.bs, Exists: true},
					hints.Extent{Offset: 1900 * c.bs, Length: size - 1900*c.bs, Exists: true})
				o.Base, o.Hints = base, ext
			}
			if c.latency > 0 {
				e.fb.AddFault(faulty.MethodPut).SleepFor(c.latency).Repeat(-1)
			}
			path := e.writeImage(data)
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			o.Progress = func(p backup.Progress) {
				if p.Done >= c.cancelAt*c.bs {
					cancel()
				}
			}
			statsBefore, _ := e.db.Stats()
			v, err := e.backup(ctx, path, o)
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("killed backup = %v, want context.Canceled", err)
			}
			killed := leftIncomplete(t, e, v)
			if killed == nil {
				t.Fatal("killed backup left no version")
			}
			if killed.BlocksDone < c.minDone || killed.BlocksDone >= killed.Blocks() {
				t.Fatalf("killed backup has %d of %d blocks done, want at least %d", killed.BlocksDone, killed.Blocks(), c.minDone)
			}
			metastoretest.Check(t, e.db)
			checkIncomplete(t, e, killed, data)
			afterKill, _ := e.db.Stats()
			committed := afterKill.Blocks - statsBefore.Blocks

			// Resume it.
			o.Progress = nil
			o.Resume = killed.UID
			putsKilled := e.fb.Calls(faulty.MethodPut)
			v, err = e.backup(t.Context(), path, o)
			if err != nil {
				t.Fatalf("resume: %v", err)
			}
			if v.UID != killed.UID || v.Status != metastore.StatusValid || v.BlocksDone != v.Blocks() {
				t.Fatalf("resumed version %+v", v)
			}
			final, _ := e.db.Stats()
			distinct := final.Blocks - statsBefore.Blocks
			// Blocks committed by the killed run are not stored again;
			// the rest (also those stored but not committed) are.
			if puts := int64(e.fb.Calls(faulty.MethodPut) - putsKilled); puts != distinct-committed {
				t.Errorf("resume stored %d blocks, want %d (%d distinct, %d committed before)", puts, distinct-committed, distinct, committed)
			}
			resumedWritten := v.BytesWritten - killed.BytesWritten
			if resumedWritten <= 0 || resumedWritten >= final.StoredBytes-statsBefore.StoredBytes {
				t.Errorf("resumed run wrote %d bytes, the whole version %d", resumedWritten, final.StoredBytes-statsBefore.StoredBytes)
			}
			// The counters describe the version as if one run made it.
			if v.BytesWritten+v.BytesDeduplicated+v.BytesSparse < size ||
				v.BytesDeduplicated+v.BytesSparse > size || v.BytesRead > size {
				t.Errorf("counters of the resumed version: read %d, written %d, dedup %d, sparse %d for %d bytes",
					v.BytesRead, v.BytesWritten, v.BytesDeduplicated, v.BytesSparse, size)
			}
			if !c.withHints && v.BytesRead != size {
				t.Errorf("bytes_read %d of a %d-byte source", v.BytesRead, size)
			}
			// Objects stored but never committed are not counted.
			if v.BytesWritten != final.StoredBytes-statsBefore.StoredBytes {
				t.Errorf("bytes_written %d, the store grew by %d", v.BytesWritten, final.StoredBytes-statsBefore.StoredBytes)
			}
			if v.DurationSeconds < killed.DurationSeconds {
				t.Errorf("duration %v < %v", v.DurationSeconds, killed.DurationSeconds)
			}
			pages, _ := e.db.PageList(v.UID)
			if want := int((v.Blocks() + blockmap.PageEntries - 1) / blockmap.PageEntries); len(pages) != want {
				t.Errorf("%d pages, want %d", len(pages), want)
			}
			e.mustRestoreEqual(v.UID, data)
			if base != nil {
				vs, _ := e.db.Versions(nil)
				if len(vs) != 2 || v.Base != base.UID {
					t.Errorf("%d versions, base %q", len(vs), v.Base)
				}
			}
			// A valid version cannot be resumed again.
			if _, err := e.backup(t.Context(), path, o); !errors.Is(err, backup.ErrBadResume) {
				t.Errorf("second resume = %v", err)
			}
		})
	}
}
