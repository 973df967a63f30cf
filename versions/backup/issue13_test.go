package backup_test

import (
	"errors"
	"testing"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/versions/backup"
	"github.com/backy/backy/versions/hints"
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
