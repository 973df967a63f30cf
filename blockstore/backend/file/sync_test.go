package file

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
)

// TestDeferDirSync: with DeferDirSync, Put syncs no directory and Sync
// syncs each touched directory once; a failed directory sync is kept for
// the next Sync.
func TestDeferDirSync(t *testing.T) {
	b, err := NewWithOptions(t.TempDir(), Options{DeferDirSync: true})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	synced := map[string]int{}
	fail := true
	b.ops.syncDir = func(dir string) error {
		mu.Lock()
		defer mu.Unlock()
		synced[dir]++
		if fail && filepath.Base(dir) == "bb" {
			return errors.New("injected dir sync failure")
		}
		return nil
	}
	ctx := context.Background()
	for _, n := range []string{"blocks/aa/1", "blocks/aa/2", "blocks/bb/3"} {
		if err := b.Put(ctx, n, []byte(n)); err != nil {
			t.Fatal(err)
		}
	}
	putSyncs := synced[filepath.Join(b.root, "blocks", "aa")] + synced[filepath.Join(b.root, "blocks", "bb")]
	// Creating a directory syncs its parent, not itself.
	if putSyncs != 0 {
		t.Fatalf("Put synced object directories %d times with DeferDirSync", putSyncs)
	}
	if err := b.Sync(ctx); err == nil {
		t.Fatal("Sync hid a failed directory sync")
	}
	if got := synced[filepath.Join(b.root, "blocks", "aa")]; got != 1 {
		t.Fatalf("directory aa synced %d times, want once for two objects", got)
	}
	fail = false
	if err := b.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got := synced[filepath.Join(b.root, "blocks", "bb")]; got != 2 {
		t.Fatalf("failed directory bb synced %d times, want a retry", got)
	}
	if err := b.Sync(ctx); err != nil || synced[filepath.Join(b.root, "blocks", "aa")] != 1 {
		t.Fatalf("Sync with nothing pending synced again: %v %v", err, synced)
	}
}
