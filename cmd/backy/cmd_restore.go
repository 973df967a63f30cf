package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/cmd/backy/internal/ui"
	"github.com/backy/backy/internal/clock"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/versions/restore"
	"github.com/backy/backy/versions/source"
)

func cmdRestore(e *env) *cli.Command {
	return &cli.Command{
		Name:      "restore",
		Usage:     "restore a version to a new file, or (--force) over an existing file or block device",
		ArgsUsage: "VERSION TARGET",
		Description: "Every block is verified before it is written. A new file is written under a temporary\n" +
			"name and appears as TARGET only when the restore is complete.",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "sparse", Usage: "leave holes for empty blocks (punch them in an existing file) instead of writing zeros"},
			&cli.BoolFlag{Name: "force", Usage: "overwrite an existing TARGET; restore an incomplete or invalid version, zeroing and listing what cannot be restored"},
			&cli.BoolFlag{Name: "from-backend", Usage: "use no metastore: read the version's metadata from the data backend (when the metastore is lost)"},
		},
		Action: func(c *cli.Context) error {
			if err := args(c, 2, 2, "VERSION TARGET"); err != nil {
				return err
			}
			uid, target := c.Args().Get(0), c.Args().Get(1)
			if c.Bool("from-backend") {
				return restoreFromBackend(c.Context, e, uid, func(db *metastore.DB, bst *blockstore.Store) error {
					return runRestore(c, e, bst, db, uid, target)
				})
			}
			s, err := e.openStore(c.Context)
			if err != nil {
				return err
			}
			defer s.Close()
			if _, err := versionArg(s.db, uid); err != nil {
				return err
			}
			// Reading only: no write version is registered by a restore.
			bst, err := s.blocksAt(c.Context, 0)
			if err != nil {
				return err
			}
			err = runRestore(c, e, bst, s.db, uid, target)
			// Damage found marked versions invalid.
			if serr := s.syncMeta(c.Context); serr != nil && err == nil {
				err = serr
			}
			return err
		},
	}
}

// restoreFailure marks the error of a restore, so that the advice added to
// it (exit.go, hint) is about running the restore again, not a backup.
type restoreFailure struct {
	err error
	// existing: the target existed before (--force): a failed restore
	// leaves it partly overwritten; a new file is removed.
	existing bool
	target   string
}

func (r *restoreFailure) Error() string { return r.err.Error() }
func (r *restoreFailure) Unwrap() error { return r.err }

// runRestore restores version uid of db to target and prints the result.
func runRestore(c *cli.Context, e *env, bst *blockstore.Store, db *metastore.DB, uid, target string) error {
	force := c.Bool("force")
	existed := false
	if p, err := source.PathFromSpec(target); err == nil {
		_, serr := os.Stat(p)
		existed = serr == nil
	}
	prog := ui.NewProgress(os.Stderr, "restore")
	res, err := restore.ToFile(c.Context, bst, db, uid, target, restore.Options{
		Sparse: c.Bool("sparse"), Force: force, Workers: e.cfg.Defaults.Workers, Logger: e.log, Clock: clock.System,
		Progress: func(p restore.Progress) { prog.Update(p.Done, p.Total) },
	})
	prog.Done()
	if err != nil {
		err = &restoreFailure{err: err, existing: existed && force, target: target}
	}
	if res != nil {
		e.metrics.bytesProcessed = res.BytesWritten + res.BytesSparse
	}
	if res == nil || (err != nil && !(force && errors.Is(err, restore.ErrBadBlocks))) {
		return err
	}
	e.log.Info("version restored", "version", uid, "target", target, "bytes_written", res.BytesWritten, "bytes_sparse", res.BytesSparse,
		"bad_blocks", len(res.BadBlocks), "invalid_versions", res.InvalidVersions, "seconds", res.DurationSeconds)
	if e.json {
		if jerr := ui.JSON(e.stdout, res); jerr != nil {
			return jerr
		}
	} else if len(res.BadBlocks) > 0 {
		rows := make([][]string, 0, len(res.BadBlocks))
		for _, b := range res.BadBlocks {
			rows = append(rows, []string{fmt.Sprint(b.Index), fmt.Sprint(b.Offset), fmt.Sprint(b.Length), b.Reason})
		}
		fmt.Fprintln(e.stdout, "blocks not restored (zeros in the target):")
		_ = ui.Table(e.stdout, []string{"BLOCK", "OFFSET", "LENGTH", "REASON"}, rows)
	}
	return err
}
