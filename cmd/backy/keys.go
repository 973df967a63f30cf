package main

import (
	"context"
	"fmt"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/blockstore/backend"
	"github.com/backy/backy/blockstore/keyring"
	"github.com/backy/backy/cmd/backy/internal/config"
	"github.com/backy/backy/internal/clock"
	"github.com/backy/backy/metastore"
)

// keySources turns the configured keys into keyring sources.
func keySources(cfg *config.Config) ([]keyring.Source, error) {
	var out []keyring.Source
	for _, k := range cfg.Encryption.Keys {
		c, err := keyring.ParseCipher(k.Cipher)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %w", config.ErrInvalid, k.Origin, err)
		}
		out = append(out, keyring.Source{EncVersion: k.Version, Cipher: c, Key: k.Key, Passphrase: k.Passphrase, Origin: k.Origin})
	}
	return out, nil
}

// blocks returns the block store, opening it on first use with the keys
// of the configuration verified against the store's registered keys, so
// that a wrong or missing key is reported before any block is read or
// written. New blocks are sealed at the configured encryption_version.
// Commands that touch only metadata never call it and need no keys.
func (s *store) blocks(ctx context.Context) (*blockstore.Store, error) {
	return s.blocksAt(ctx, s.e.cfg.Encryption.Version)
}

// blocksAt is blocks with new blocks sealed at encryption version write
// (migrate-encryption --to).
func (s *store) blocksAt(ctx context.Context, write uint16) (*blockstore.Store, error) {
	if s.st != nil {
		if s.st.EncVersion() != write {
			return nil, fmt.Errorf("internal error: block store opened for encryption version %d, now wanted at %d", s.st.EncVersion(), write)
		}
		return s.st, nil
	}
	st, err := keyedStore(ctx, s.e, s.db, s.be, write)
	if err != nil {
		return nil, err
	}
	s.st = st
	return st, nil
}

// keyedStore opens a block store over be with the configured keys,
// verified against db's key registrations, sealing new objects at
// encryption version write (0: reading only, nothing registered).
func keyedStore(ctx context.Context, e *env, db *metastore.DB, be backend.Backend, write uint16) (*blockstore.Store, error) {
	return keyedStoreWith(ctx, e, db, be, write, keyring.Options{Log: e.log, Clock: clock.System})
}

// recoveringStore is keyedStore for reading a store with no metastore
// (rebuild-metastore, ls and restore --from-backend): a configured key
// whose registration keys/<N>.json is lost is registered again when the
// store's objects carry its key id, and keys/<N>.json rewritten.
func recoveringStore(ctx context.Context, e *env, db *metastore.DB, be backend.Backend) (*blockstore.Store, error) {
	return keyedStoreWith(ctx, e, db, be, 0, keyring.Options{Log: e.log, Clock: clock.System, Recover: true})
}

func keyedStoreWith(ctx context.Context, e *env, db *metastore.DB, be backend.Backend, write uint16, ko keyring.Options) (*blockstore.Store, error) {
	sources, err := keySources(e.cfg)
	if err != nil {
		return nil, err
	}
	ring, err := keyring.Load(ctx, db, be, sources, write, ko)
	if err != nil {
		return nil, err
	}
	o := storeOptions(e.cfg)
	o.Key = ring.WriteKey()
	o.Keys = ring
	return blockstore.New(be, o)
}
