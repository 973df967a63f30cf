package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/versions/catalog"
)

// errMetaSync wraps a failure to write version metadata to the backend
// after a command did its work.
var errMetaSync = errors.New("writing version metadata to the data backend failed")

// catalog returns the catalog of version snapshots in the backend. It
// seals snapshots like new blocks (the configured encryption version), so
// it needs the keys; a command that opened its block store at another
// write version (restore: none; migrate-encryption: --to) gets a second
// store at the configured one.
func (s *store) catalog(ctx context.Context) (*catalog.Catalog, error) {
	if s.cat != nil {
		return s.cat, nil
	}
	want := s.e.cfg.Encryption.Version
	var st *blockstore.Store
	if s.st != nil && s.st.EncVersion() == want {
		st = s.st
	} else if s.st == nil {
		var err error
		if st, err = s.blocks(ctx); err != nil {
			return nil, err
		}
	} else {
		var err error
		if st, err = keyedStore(ctx, s.e, s.db, s.be, want); err != nil {
			return nil, err
		}
		s.extra = append(s.extra, st)
	}
	s.cat = catalog.New(st, "backy "+backyVersion(), s.e.log)
	return s.cat, nil
}

// syncMeta writes the snapshot of every version whose copy in the data
// backend is missing or stale. Commands that change versions (backup,
// protect, scrub, restore finding damage, import, migrate-encryption,
// copy) call it at their end; cleanup calls it before deleting anything.
func (s *store) syncMeta(ctx context.Context) error {
	// Most commands change nothing that needs writing: no keys then.
	if pending, err := s.db.PendingSnapshots(); err == nil && len(pending) == 0 {
		return nil
	}
	cat, err := s.catalog(ctx)
	if err == nil {
		var res catalog.SyncResult
		res, err = cat.Sync(ctx, s.db)
		if err == nil && res.Written > 0 {
			s.e.log.Info("version metadata written to the data backend", "versions", res.Written, "bytes", res.Bytes)
		}
	}
	if err != nil {
		return fmt.Errorf("%w: %w (what the command did is recorded in the metastore; the next backup or cleanup writes the metadata again)", errMetaSync, err)
	}
	return nil
}

// deleteMeta deletes a version's metadata from the data backend (rm).
func (s *store) deleteMeta(ctx context.Context, uid string) error {
	// Deleting needs no key: a catalog over an unkeyed store is enough.
	st, err := blockstore.New(s.be, blockstore.Options{})
	if err != nil {
		return err
	}
	defer st.Close()
	return catalog.New(st, "", s.e.log).Delete(ctx, uid)
}
