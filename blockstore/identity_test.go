package blockstore_test

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/blockstore/backend/file"
)

func newBackend(t *testing.T) *file.Backend {
	t.Helper()
	be, err := file.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return be
}

func TestIdentityRoundTrip(t *testing.T) {
	be := newBackend(t)
	now := time.Date(2026, 11, 22, 2, 15, 5, 999, time.FixedZone("x", 3600))
	id := blockstore.NewIdentity([16]byte{1, 2, 3}, 4<<20, now)
	if id.Format != blockstore.IdentityFormat || id.StoreID != "01020300000000000000000000000000" || id.BlockSize != 4<<20 {
		t.Errorf("NewIdentity = %+v", id)
	}
	if !id.Created.Equal(now.Truncate(time.Second)) || id.Created.Location() != time.UTC {
		t.Errorf("Created = %v", id.Created)
	}
	if err := blockstore.WriteIdentity(t.Context(), be, id); err != nil {
		t.Fatal(err)
	}
	got, err := blockstore.ReadIdentity(t.Context(), be)
	if err != nil {
		t.Fatal(err)
	}
	if got != id {
		t.Errorf("ReadIdentity = %+v, want %+v", got, id)
	}
}

func TestWriteIdentityRefusesOverwrite(t *testing.T) {
	be := newBackend(t)
	first := blockstore.NewIdentity([16]byte{1}, 4<<20, time.Now())
	if err := blockstore.WriteIdentity(t.Context(), be, first); err != nil {
		t.Fatal(err)
	}
	second := blockstore.NewIdentity([16]byte{2}, 1<<20, time.Now())
	if err := blockstore.WriteIdentity(t.Context(), be, second); err == nil {
		t.Fatal("WriteIdentity replaced an existing identity")
	}
	if err := blockstore.WriteIdentity(t.Context(), be, first); err == nil {
		t.Fatal("WriteIdentity rewrote the same identity")
	}
	got, err := blockstore.ReadIdentity(t.Context(), be)
	if err != nil || got != first {
		t.Errorf("identity after refused writes = %+v, %v; want the first", got, err)
	}
}

func TestReadIdentityErrors(t *testing.T) {
	cases := []struct {
		name    string
		content string // "" = no identity object
		want    error
		wantErr bool
	}{
		{"missing", "", blockstore.ErrNoIdentity, true},
		{"not-json", "not json", blockstore.ErrCorrupt, true},
		{"no-store-id", `{"format":1,"block_size":4194304}`, blockstore.ErrCorrupt, true},
		{"newer-format", `{"format":99,"store_id":"ab","block_size":1}`, nil, true},
		{"valid", `{"format":1,"store_id":"ab","block_size":1}`, nil, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			be := newBackend(t)
			if c.content != "" {
				if err := os.WriteFile(filepath.Join(be.Root(), blockstore.IdentityName), []byte(c.content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			_, err := blockstore.ReadIdentity(t.Context(), be)
			if (err != nil) != c.wantErr || c.want != nil && !errors.Is(err, c.want) {
				t.Fatalf("ReadIdentity = %v, want %v", err, c.want)
			}
			if c.name == "newer-format" && (errors.Is(err, blockstore.ErrCorrupt) || errors.Is(err, blockstore.ErrNoIdentity)) {
				t.Errorf("newer format reported as %v", err)
			}
			// WriteIdentity refuses to replace a damaged or foreign object too.
			if c.content != "" {
				if werr := blockstore.WriteIdentity(t.Context(), be, blockstore.NewIdentity([16]byte{9}, 1, time.Now())); werr == nil {
					t.Errorf("WriteIdentity replaced %q", c.content)
				}
				b, _ := os.ReadFile(filepath.Join(be.Root(), blockstore.IdentityName))
				if string(b) != c.content {
					t.Errorf("identity object changed to %q", b)
				}
			}
		})
	}
}

// TestIdentityJSON pins the field names: they are part of the store format.
func TestIdentityJSON(t *testing.T) {
	id := blockstore.NewIdentity([16]byte{0xff}, 65536, time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	b, err := json.Marshal(id)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"format":1,"store_id":"ff000000000000000000000000000000","block_size":65536,"created":"2026-01-02T03:04:05Z"}`
	if string(b) != want {
		t.Errorf("JSON = %s\nwant %s", b, want)
	}
}
