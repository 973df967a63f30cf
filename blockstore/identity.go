package blockstore

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/backy/backy/blockstore/backend"
)

// IdentityName is the backend object that says which store a backend
// belongs to.
const IdentityName = "store.json"

// IdentityFormat is the version of the identity object's layout.
const IdentityFormat = 1

// ErrNoIdentity: the backend holds no store identity object.
var ErrNoIdentity = errors.New("backend holds no backy store")

// Identity ties a backend to its metastore: both record the same store id,
// so a metastore is never used with another store's data by mistake.
type Identity struct {
	Format    int       `json:"format"`
	StoreID   string    `json:"store_id"`
	BlockSize int64     `json:"block_size"`
	Created   time.Time `json:"created"`
}

// NewIdentity returns the identity of a new store.
func NewIdentity(id [16]byte, blockSize int64, now time.Time) Identity {
	return Identity{Format: IdentityFormat, StoreID: hex.EncodeToString(id[:]), BlockSize: blockSize, Created: now.UTC().Truncate(time.Second)}
}

// ErrStoreExists: the backend holds a store already.
var ErrStoreExists = errors.New("the data backend holds a store already")

// WriteIdentity stores id in be. It refuses to replace an existing one.
func WriteIdentity(ctx context.Context, be backend.Backend, id Identity) error {
	if old, err := ReadIdentity(ctx, be); err == nil {
		return fmt.Errorf("%w: %s already holds backy store %s: choose an empty data backend, or, if that store's metastore was lost, recreate it with 'backy rebuild-metastore'",
			ErrStoreExists, be.Properties().Location, old.StoreID)
	} else if !errors.Is(err, ErrNoIdentity) {
		return err
	}
	b, err := json.MarshalIndent(id, "", "  ")
	if err != nil {
		return err
	}
	if err := be.Put(ctx, IdentityName, append(b, '\n')); err != nil {
		return fmt.Errorf("writing store identity: %w", err)
	}
	if err := backend.Sync(ctx, be); err != nil {
		return fmt.Errorf("writing store identity: %w", err)
	}
	return nil
}

// ReadIdentity reads the store identity from be.
func ReadIdentity(ctx context.Context, be backend.Backend) (Identity, error) {
	var id Identity
	b, err := be.Get(ctx, IdentityName, nil)
	if err != nil {
		if errors.Is(err, backend.ErrNotFound) {
			return id, fmt.Errorf("%w at %s", ErrNoIdentity, be.Properties().Location)
		}
		return id, fmt.Errorf("reading store identity: %w", err)
	}
	if err := json.Unmarshal(b, &id); err != nil || id.StoreID == "" {
		return id, fmt.Errorf("%w: %s at %s is not a valid identity object", ErrCorrupt, IdentityName, be.Properties().Location)
	}
	if id.Format > IdentityFormat {
		return id, fmt.Errorf("store identity format %d is newer than this backy supports (%d): upgrade backy", id.Format, IdentityFormat)
	}
	return id, nil
}
