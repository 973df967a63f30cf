package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/blockstore/backend"
	"github.com/backy/backy/metastore"
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
//
// own are the versions the command itself made or changed. If the
// snapshot of one of them could not be written, syncMeta returns an error
// wrapping errMetaSync: the command's own work did not reach the backend.
// A failure of any other version's snapshot (left pending by an earlier
// command) does not fail this one: it is a warning naming the version,
// and the next command that syncs tries again. So one version whose
// metadata cannot be written never makes every later command fail.
// Cancellation fails the command whatever it was syncing.
func (s *store) syncMeta(ctx context.Context, own ...string) error {
	s.lastSync = catalog.SyncResult{}
	// Most commands change nothing that needs writing: no keys then.
	pending, err := s.db.PendingSnapshots()
	if err != nil {
		// The metastore itself failed (damaged, say): that is the
		// command's failure, not a pending snapshot's.
		return fmt.Errorf("%w: %w", errMetaSync, err)
	}
	if len(pending) == 0 {
		return nil
	}
	const later = "what the command did is recorded in the metastore; the next command that reaches the data backend writes the metadata again"
	// A metadata-only command (protect, expire) whose data backend is
	// unreachable has done its work: the change waits in the metastore.
	unreached := func(cause error) error {
		s.e.log.Warn("the data backend could not be reached: the change is recorded in the metastore, and its metadata will be written to the data backend by the next command that reaches it",
			"versions", pending, "err", cause)
		return nil
	}
	if s.be == nil {
		return unreached(s.beDown)
	}
	cat, err := s.catalog(ctx)
	if err != nil && s.e.metaOnly && errors.Is(err, backend.ErrUnavailable) && ctx.Err() == nil {
		return unreached(err)
	}
	if err != nil {
		if len(own) == 0 && ctx.Err() == nil && !errors.Is(err, metastore.ErrDamaged) {
			s.e.log.Warn("version metadata could not be written to the data backend ("+later+")", "err", err)
			return nil
		}
		return fmt.Errorf("%w: %w (%s)", errMetaSync, err, later)
	}
	res, err := cat.Sync(ctx, s.db)
	s.lastSync = res
	if res.Written > 0 {
		s.e.log.Info("version metadata written to the data backend", "versions", res.Written, "bytes", res.Bytes)
	}
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("%w: %w (%s)", errMetaSync, ctx.Err(), later)
	}
	if s.e.metaOnly && errors.Is(err, backend.ErrUnavailable) {
		return unreached(err)
	}
	mine := map[string]bool{}
	for _, uid := range own {
		mine[uid] = true
	}
	var fail []error
	for _, f := range res.Failed {
		if mine[f.UID] {
			fail = append(fail, fmt.Errorf("version %s: %w", f.UID, f.Err))
			continue
		}
		s.e.log.Warn("the metadata of another version could not be written to the data backend; it stays pending (the next command that syncs tries again)",
			"version", f.UID, "err", f.Err)
	}
	if len(fail) == 0 && len(own) > 0 {
		// Sync stopped (backend unreachable, a missing key) before it
		// reached one of ours?
		if pending, perr := s.db.PendingSnapshots(); perr == nil {
			for _, uid := range pending {
				if mine[uid] {
					fail = append(fail, fmt.Errorf("version %s: not written: %w", uid, res.Failed[len(res.Failed)-1].Err))
				}
			}
		}
	}
	if len(fail) > 0 {
		return fmt.Errorf("%w: %w (%s)", errMetaSync, joinErrors(fail), later)
	}
	return nil
}

// syncMetaAll is syncMeta with every pending version its own: it fails if
// any snapshot could not be written (migrate-encryption before it deletes
// replaced objects, which a stale snapshot may still name).
func (s *store) syncMetaAll(ctx context.Context) error {
	pending, err := s.db.PendingSnapshots()
	if err != nil {
		return err
	}
	return s.syncMeta(ctx, pending...)
}

// joinErrors joins errs into one error of one line that wraps them all.
func joinErrors(errs []error) error {
	if len(errs) == 1 {
		return errs[0]
	}
	return lineErrors(errs)
}

type lineErrors []error

func (l lineErrors) Error() string {
	parts := make([]string, len(l))
	for i, e := range l {
		parts[i] = e.Error()
	}
	return strings.Join(parts, "; ")
}

func (l lineErrors) Unwrap() []error { return l }

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
