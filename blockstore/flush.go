package blockstore

import (
	"context"
	"fmt"

	"github.com/backy/backy/blockstore/backend"
)

// Flush makes every block whose Put returned before the call durable, for
// backends that defer part of Put's durability (backend.Syncer). Callers
// flush before they record the blocks in the metastore.
func (s *Store) Flush(ctx context.Context) error {
	if err := backend.Sync(ctx, s.be); err != nil {
		return fmt.Errorf("making stored blocks durable: %w", err)
	}
	return nil
}
