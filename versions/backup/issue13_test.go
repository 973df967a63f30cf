package backup_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/versions/backup"
	"github.com/backy/backy/versions/hints"
	"github.com/backy/backy/versions/restore"
	"github.com/backy/backy/versions/source"
)

// TestEmptyHintsWithoutBase: hints without a base that name no data (no
// exists=true extent) would make an all-zero "valid" version of any
// image: Run refuses them (ErrEmptyHints) before anything is written,
// unless AllowEmptyHints; with a base, empty hints mean nothing changed.
func TestEmptyHintsWithoutBase(t *testing.T) {
	const hbs = 64 << 10
	e := newEnv(t, hbs, blockstore.Options{})
	data := newGen(1301).random(20 * hbs)
	for _, tc := range []struct {
		name  string
		hints []hints.Extent
	}{
		{"empty", []hints.Extent{}},
		{"only discards", []hints.Extent{{Offset: 0, Length: 4 * hbs, Exists: false}, {Offset: 8 * hbs, Length: hbs, Exists: false}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.backup(t.Context(), e.writeImage(data), backup.Options{Hints: tc.hints})
			if !errors.Is(err, backup.ErrEmptyHints) {
				t.Fatalf("backup with hints naming no data = %v, want ErrEmptyHints", err)
			}
			if vs, err := e.db.Versions(nil); err != nil || len(vs) != 0 {
				t.Fatalf("the refused backup left versions %v (%v)", vs, err)
			}
		})
	}
	t.Run("allowed", func(t *testing.T) {
		v, err := e.backup(t.Context(), e.writeImage(data), backup.Options{Hints: []hints.Extent{}, AllowEmptyHints: true})
		if err != nil {
			t.Fatal(err)
		}
		if v.Status != metastore.StatusValid || v.BytesRead != 0 || v.BytesSparse != v.Size {
			t.Errorf("allowed empty hints made %+v, want a valid all-sparse version", v)
		}
		e.mustRestoreEqual(v.UID, make([]byte, len(data)))
	})
	t.Run("one data extent", func(t *testing.T) {
		v := e.mustBackup(data, backup.Options{Hints: []hints.Extent{{Offset: 0, Length: 1, Exists: true}}})
		want := make([]byte, len(data))
		copy(want, data[:hbs])
		e.mustRestoreEqual(v.UID, want)
	})
	t.Run("base", func(t *testing.T) {
		base := e.mustBackup(data, backup.Options{})
		v := e.mustBackup(data, backup.Options{Base: base, Hints: []hints.Extent{}})
		if v.BytesRead != 0 {
			t.Errorf("nothing changed, yet %d bytes were read", v.BytesRead)
		}
		e.mustRestoreEqual(v.UID, data)
	})
}

// memSource is an image in memory; after reads ReadAt calls it runs
// change once (a writer modifying the source while it is read).
type memSource struct {
	mu     sync.Mutex
	data   []byte
	reads  int
	after  int
	change func(data []byte)
}

func (m *memSource) ReadAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off >= int64(len(m.data)) {
		return 0, io.EOF
	}
	n := copy(p, m.data[off:])
	m.reads++
	if m.reads == m.after && m.change != nil {
		m.change(m.data)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *memSource) Size() int64  { return int64(len(m.data)) }
func (m *memSource) Name() string { return "memory image" }
func (m *memSource) Close() error { return nil }

// hookFile is a source file that runs change once after reads ReadAt
// calls; its State is the file's.
type hookFile struct {
	*source.File
	reads  atomic.Int64
	after  int64
	change func()
}

func (h *hookFile) ReadAt(p []byte, off int64) (int, error) {
	n, err := h.File.ReadAt(p, off)
	if h.reads.Add(1) == h.after {
		h.change()
	}
	return n, err
}

// TestSourceChanged: a source written while it is read is found out before
// the version becomes valid (ErrSourceChanged): by its size and times if
// it is a file, by reading its first blocks again otherwise. The version
// stays incomplete with every block read recorded (restore --force gives
// what was read), is labelled source-changed, and cannot be resumed. An
// unchanged source makes a valid version as before.
func TestSourceChanged(t *testing.T) {
	const hbs = 64 << 10
	const nblk = 40
	for _, tc := range []struct {
		name string
		// src returns the source and what a restore of the version must
		// give (the data as it was read)
		src  func(e *env, data []byte) (source.Source, []byte)
		want string // in the error
	}{
		{"first block rewritten", func(e *env, data []byte) (source.Source, []byte) {
			read := slices.Clone(data)
			return &memSource{data: slices.Clone(data), after: 10, change: func(d []byte) { d[100] ^= 0xff }}, read
		}, "1 of the first 4 blocks read, read again at the end, differ from what was stored (the first at byte 0)"},
		{"several sampled blocks rewritten", func(e *env, data []byte) (source.Source, []byte) {
			read := slices.Clone(data)
			return &memSource{data: slices.Clone(data), after: 5, change: func(d []byte) { d[hbs+1] ^= 1; d[3*hbs+7] ^= 1 }}, read
		}, "2 of the first 4 blocks read"},
		{"file written ahead of the reader", func(e *env, data []byte) (source.Source, []byte) {
			path := e.writeImage(data)
			f, err := source.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { f.Close() })
			read := slices.Clone(data)
			copy(read[(nblk-1)*hbs:], bytes.Repeat([]byte{7}, hbs))
			return &hookFile{File: f, after: 3, change: func() {
				// Make sure the modification time moves on coarse clocks.
				time.Sleep(20 * time.Millisecond)
				w, err := os.OpenFile(path, os.O_WRONLY, 0)
				if err != nil {
					panic(err)
				}
				_, _ = w.WriteAt(bytes.Repeat([]byte{7}, hbs), (nblk-1)*hbs)
				w.Close()
			}}, read
		}, "it was modified (mtime"},
		{"file grown", func(e *env, data []byte) (source.Source, []byte) {
			path := e.writeImage(data)
			f, err := source.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { f.Close() })
			return &hookFile{File: f, after: 2, change: func() {
				if err := os.Truncate(path, nblk*hbs+4096); err != nil {
					panic(err)
				}
			}}, slices.Clone(data)
		}, fmt.Sprintf("its size changed from %d to %d bytes", nblk*hbs, nblk*hbs+4096)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, hbs, blockstore.Options{})
			data := newGen(1314).random(nblk * hbs)
			src, read := tc.src(e, data)
			v, err := backup.Run(t.Context(), e.st, e.db, src, backup.Options{Volume: "vol", Workers: 2})
			if !errors.Is(err, backup.ErrSourceChanged) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "snapshot") {
				t.Fatalf("backup of a changing source = %v, want ErrSourceChanged saying %q", err, tc.want)
			}
			got, err := e.db.Version(v.UID)
			if err != nil {
				t.Fatal(err)
			}
			if got.Status != metastore.StatusIncomplete || got.BlocksDone != nblk || got.Labels[backup.LabelSourceChanged] == "" {
				t.Fatalf("version after the change: status %s, %d of %d blocks done, labels %v; want incomplete, all done, labelled",
					got.Status, got.BlocksDone, nblk, got.Labels)
			}
			b, _, err := e.restore(v.UID, restore.Options{Force: true})
			if err != nil {
				t.Fatalf("forced restore of the incomplete version: %v", err)
			}
			if d := firstDiff(b, read); d >= 0 {
				t.Errorf("forced restore differs from what was read at byte %d", d)
			}
			// Resuming would make it valid: refused.
			_, err = backup.Run(t.Context(), e.st, e.db, &memSource{data: read}, backup.Options{Resume: v.UID})
			if !errors.Is(err, backup.ErrBadResume) || !strings.Contains(err.Error(), "source changed") {
				t.Fatalf("resume of a version whose source changed = %v, want ErrBadResume", err)
			}
		})
	}
	t.Run("unchanged", func(t *testing.T) {
		e := newEnv(t, hbs, blockstore.Options{})
		data := newGen(1315).random(nblk * hbs)
		v, err := backup.Run(t.Context(), e.st, e.db, &memSource{data: data}, backup.Options{Volume: "vol"})
		if err != nil || v.Status != metastore.StatusValid || len(v.Labels) != 0 {
			t.Fatalf("backup of an unchanged source: %+v, %v", v, err)
		}
		e.mustRestoreEqual(v.UID, data)
	})
	t.Run("change outside the sample of a device", func(t *testing.T) {
		// What is not caught (no times, not sampled): documented as such.
		e := newEnv(t, hbs, blockstore.Options{})
		data := newGen(1316).random(nblk * hbs)
		src := &memSource{data: slices.Clone(data), after: 10, change: func(d []byte) { d[20*hbs] ^= 1 }}
		if _, err := backup.Run(t.Context(), e.st, e.db, src, backup.Options{Volume: "vol", Workers: 1}); err != nil {
			t.Fatalf("a change the cheap checks cannot see failed the backup: %v", err)
		}
	})
}
