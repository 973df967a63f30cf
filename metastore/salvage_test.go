package metastore

import (
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/backy/backy/internal/block"
)

// TestSalvage reads a sound metastore completely, and damaged copies of
// it (pages scribbled over, truncated) without a panic: every read
// returns what it can or an error.
func TestSalvage(t *testing.T) {
	db := newTestDB(t)
	var uids []string
	for i := range 40 {
		uids = append(uids, finished(t, db, rec(3*i+1), rec(3*i+2)).UID)
	}
	if _, err := db.RegisterEncVersion(1, []byte(`{"format":1}`)); err != nil {
		t.Fatal(err)
	}
	s, err := OpenSalvage(db.Path())
	if err != nil {
		t.Fatal(err)
	}
	if s.StoreID != db.StoreID() || s.BlockSize != db.BlockSize() || s.Schema != CurrentSchema {
		t.Errorf("OpenSalvage = %+v", s)
	}
	vs, bad, err := s.Versions()
	if err != nil || len(vs) != len(uids) || len(bad) != 0 {
		t.Fatalf("Versions = %d versions, %v, %v", len(vs), bad, err)
	}
	if regs, err := s.EncVersions(); err != nil || string(regs[1]) != `{"format":1}` {
		t.Errorf("EncVersions = %v, %v", regs, err)
	}
	for _, uid := range uids {
		var ids []block.ID
		if err := s.WalkMap(uid, func(c MapChunk) error { ids = append(ids, c.IDs...); return nil }); err != nil || len(ids) != 3 {
			t.Errorf("WalkMap(%s) = %d entries, %v", uid, len(ids), err)
		}
	}

	sound, err := os.ReadFile(db.Path())
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(13, 1))
	recovered := 0
	note := func(err error) {
		if err != nil && strings.Contains(err.Error(), "failed on damaged data") {
			recovered++
		}
	}
	for i := range 60 {
		b := append([]byte(nil), sound...)
		switch i % 3 {
		case 0: // a page scribbled over
			off := 4096 * (2 + r.IntN(len(b)/4096-2))
			for j := off; j < off+4096 && j < len(b); j++ {
				b[j] = byte(r.Uint32())
			}
		case 1: // a few bytes of a page header
			off := 4096*(2+r.IntN(len(b)/4096-2)) + r.IntN(16)
			for j := off; j < off+4; j++ {
				b[j] = byte(r.Uint32())
			}
		default: // truncated
			b = b[:r.IntN(len(b))]
		}
		p := filepath.Join(t.TempDir(), "damaged.db")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := OpenSalvage(p)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrNotBacky) {
				t.Logf("case %d: OpenSalvage: %v", i, err)
			}
			continue
		}
		vs, _, err := s.Versions()
		note(err)
		_, err2 := s.EncVersions()
		note(err2)
		if err != nil {
			continue
		}
		for _, v := range vs {
			note(s.WalkMap(v.UID, func(MapChunk) error { return nil }))
		}
	}
	// The damage above makes bbolt panic (assertions on page ids): the
	// test covers turning that into errors.
	if recovered == 0 {
		t.Error("no read of the damaged copies panicked inside bbolt: the damage no longer exercises the recovery")
	}
}
