package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/backy/backy/cmd/backy/internal/ui"
	"github.com/backy/backy/internal/clock"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/versions"
	"github.com/backy/backy/versions/cleanup"
)

func cmdCleanup(e *env) *cli.Command {
	return &cli.Command{
		Name:  "cleanup",
		Usage: "delete stored blocks that no version references, and report the space freed",
		Description: "Deletes every stored block whose reference count is zero (after 'backy rm' or 'backy enforce')\n" +
			"and every object left in the metastore's trash. Exact and safe while backups, restores, scrubs\n" +
			"and migrations run: a backup that deduplicated against a block being deleted stores it again.\n" +
			"With --orphans it also lists the data backend and deletes the objects the metastore does not\n" +
			"know (debris of killed backups and migrations) and stale temporary files; that waits until no\n" +
			"backup or migrate-encryption runs, and holds new ones back while it runs (--no-wait: exit 75).",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "orphans", Usage: "also delete objects in the data backend that the metastore does not know"},
			&cli.BoolFlag{Name: "no-wait", Usage: "with --orphans: fail (exit 75) instead of waiting for running backups and migrations"},
		},
		Action: e.withStore(0, 0, "no arguments", func(c *cli.Context, s *store) error {
			if c.Bool("no-wait") && !c.Bool("orphans") {
				return usageErr("--no-wait applies to --orphans only")
			}
			if c.Bool("orphans") && !c.Bool("no-wait") {
				if lk, err := s.db.LockWritersExclusive(false); err == nil {
					lk.Unlock()
				} else {
					e.log.Warn("waiting for running backups and migrations to finish before the orphan sweep")
				}
			}
			// Removals a killed rm or enforce left behind are finished
			// first: their blocks are freed by this run.
			finished, busy, ferr := versions.FinishRemovals(s.db, nil, func(v *metastore.Version) error { return s.deleteMeta(c.Context, v.UID) })
			if ferr != nil {
				return fmt.Errorf("nothing was deleted: %w", ferr)
			}
			var finishedUIDs []string
			for _, v := range finished {
				e.log.Info("cleanup: finished an interrupted removal", "version", v.UID, "volume", v.Volume)
				finishedUIDs = append(finishedUIDs, v.UID)
			}
			if len(busy) > 0 {
				e.log.Info("cleanup: versions being removed by another process", "versions", busy)
			}
			// Temporary metastores of killed store creations (none runs
			// while the creation lock can be taken).
			var staleFiles []string
			if lk, err := metastore.TryLockCreate(e.cfg.Meta.Path); err == nil {
				staleFiles = e.removeCreations(nil)
				lk.Unlock()
			}
			// Every version's metadata is in the backend before anything
			// is deleted (a replaced object may still be named by a stale
			// snapshot), and objects of versions only the backend knows
			// are kept.
			if err := s.syncMeta(c.Context); err != nil {
				return fmt.Errorf("nothing was deleted: %w", err)
			}
			cat, err := s.catalog(c.Context)
			if err != nil {
				return err
			}
			prot, err := cat.Protected(c.Context, s.db)
			if err != nil {
				return fmt.Errorf("nothing was deleted: reading the version metadata in the data backend: %w", err)
			}
			if len(prot.Versions) > 0 {
				e.log.Warn("the data backend holds versions this metastore does not know (or newer states of them); their blocks are kept: import them with 'backy rebuild-metastore' or 'backy import', or remove their metadata",
					"versions", prot.Versions, "objects_kept", len(prot.Names))
			}
			if len(prot.Missing) > 0 {
				// Seen in the listing for free: the metadata the metastore
				// recorded is gone from the backend. Write it again.
				for _, uid := range prot.Missing {
					// A version removed meanwhile (rm deletes its metadata
					// first) needs none.
					if err := s.db.MarkSnapshotStale(uid); err != nil && !errors.Is(err, metastore.ErrVersionNotFound) {
						return fmt.Errorf("nothing was deleted: %w", err)
					}
				}
				e.log.Warn("the metadata of these versions was missing in the data backend (run 'backy scrub --all' to check the others); writing it again from the metastore", "versions", prot.Missing)
				if err := s.syncMeta(c.Context); err != nil {
					return fmt.Errorf("nothing was deleted: %w", err)
				}
			}
			if len(prot.Stale) > 0 {
				e.log.Warn("the metadata of these versions in the data backend could not be brought up to date; the objects its older copies name are kept", "versions", prot.Stale)
			}
			if len(prot.Unreadable) > 0 {
				e.log.Warn("the data backend holds unreadable metadata of versions this metastore does not know", "versions", prot.Unreadable)
			}
			res, err := cleanup.Run(c.Context, s.be, s.db, cleanup.Options{
				Orphans: c.Bool("orphans"), NoWait: c.Bool("no-wait"), Workers: e.cfg.Defaults.Workers, Logger: e.log, Clock: clock.System,
				Keep: prot.Keep,
			})
			if res == nil {
				return err
			}
			e.metrics.bytesProcessed, e.metrics.blocksChecked = res.BytesFreed, res.BlocksDeleted
			if res.Orphans != nil {
				e.metrics.bytesProcessed += res.Orphans.Bytes
				e.log.Info("cleanup: orphan sweep", "objects_listed", res.Orphans.Listed, "orphans_deleted", res.Orphans.Objects, "bytes_freed", res.Orphans.Bytes, "temp_files_removed", res.Orphans.TempFiles)
			}
			e.log.Info("cleanup finished", "blocks_deleted", res.BlocksDeleted, "bytes_freed", res.BytesFreed, "plain_bytes_freed", res.PlainBytesFreed,
				"trash_objects_deleted", res.TrashDeleted, "blocks_kept", res.Kept, "seconds", res.DurationSeconds)
			if e.json {
				out := struct {
					*cleanup.Result
					RemovalsFinished []string `json:"removals_finished,omitempty"`
					StaleFiles       []string `json:"stale_files_removed,omitempty"`
				}{res, finishedUIDs, staleFiles}
				if jerr := ui.JSON(e.stdout, out); jerr != nil {
					return jerr
				}
				return err
			}
			var rows [][]string
			if len(finishedUIDs) > 0 {
				rows = append(rows, []string{"interrupted removals finished", strings.Join(finishedUIDs, " ")})
			}
			if len(staleFiles) > 0 {
				rows = append(rows, []string{"stale files of interrupted commands removed", strings.Join(staleFiles, " ")})
			}
			rows = append(rows, [][]string{
				{"unreferenced blocks deleted", fmt.Sprint(res.BlocksDeleted)},
				{"space freed (stored bytes)", fmt.Sprintf("%s (%d)", ui.Bytes(res.BytesFreed), res.BytesFreed)},
				{"plain bytes of those blocks", ui.Bytes(res.PlainBytesFreed)},
				{"other trash objects deleted", fmt.Sprint(res.TrashDeleted)},
				{"kept for versions only the backend knows", fmt.Sprint(res.Kept)},
			}...)
			if o := res.Orphans; o != nil {
				rows = append(rows,
					[]string{"objects listed", fmt.Sprint(o.Listed)},
					[]string{"orphans deleted", fmt.Sprint(o.Objects)},
					[]string{"objects kept for versions only the backend knows", fmt.Sprint(o.Kept)},
					[]string{"orphan bytes freed", fmt.Sprintf("%s (%d)", ui.Bytes(o.Bytes), o.Bytes)},
					[]string{"stale temporary files removed", fmt.Sprint(o.TempFiles)},
					[]string{"foreign objects left alone", fmt.Sprint(o.Foreign)},
				)
			}
			rows = append(rows, []string{"duration", fmt.Sprintf("%.2fs", res.DurationSeconds)})
			if terr := ui.Table(e.stdout, []string{"FIELD", "VALUE"}, rows); terr != nil {
				return terr
			}
			return err
		}),
	}
}
