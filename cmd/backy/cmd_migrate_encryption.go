package main

import (
	"fmt"
	"math"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/backy/backy/cmd/backy/internal/ui"
	"github.com/backy/backy/internal/clock"
	"github.com/backy/backy/migrate/reencrypt"
)

func cmdMigrateEncryption(e *env) *cli.Command {
	return &cli.Command{
		Name:      "migrate-encryption",
		Usage:     "rewrite stored blocks below an encryption version at that version (turn encryption on, rotate keys)",
		ArgsUsage: "VERSION... | --all",
		Description: "Every block used by the given versions (with --all: every block of the store) that is stored\n" +
			"below the target encryption version is read, verified, sealed at the target version with its\n" +
			"key (and the configured compression), written as a new object and switched to in the metastore;\n" +
			"the old object is deleted once nothing points to it. The target is encryption_version of the\n" +
			"configuration, or --to N (whose key must be configured, e.g. in an [EncryptionN] section).\n" +
			"The keys of every version read must be configured. Safe to interrupt and run again, and to\n" +
			"run while backups and restores run.",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "all", Usage: "migrate every block of the store"},
			&cli.IntFlag{Name: "to", Usage: "target encryption `N` (default: encryption_version of the configuration)"},
		},
		Action: func(c *cli.Context) error {
			all := c.Bool("all")
			if all && c.NArg() > 0 {
				return usageErr("'backy migrate-encryption' takes VERSIONs or --all, not both")
			}
			if !all && c.NArg() == 0 {
				return usageErr("'backy migrate-encryption' takes one or more VERSIONs, or --all")
			}
			target := e.cfg.Encryption.Version
			if c.IsSet("to") {
				to := c.Int("to")
				if to < 1 || to > math.MaxUint16 {
					return usageErr("--to %d: use an encryption version between 1 and 65535", to)
				}
				target = uint16(to)
			}
			s, err := e.openStore(c.Context)
			if err != nil {
				return err
			}
			defer s.Close()
			uids := c.Args().Slice()
			for _, uid := range uids {
				if _, err := versionArg(s.db, uid); err != nil {
					return err
				}
			}
			if target == 0 {
				return fmt.Errorf("%w: %w", errConfigTarget, reencrypt.ErrNoTarget)
			}
			bst, err := s.blocksAt(c.Context, target)
			if err != nil {
				return err
			}
			prog := ui.NewBlockProgress(os.Stderr, "migrate-encryption") // blocks examined
			res, err := reencrypt.Run(c.Context, bst, s.db, reencrypt.Options{
				UIDs: uids, Workers: e.cfg.Defaults.Workers, Logger: e.log, Clock: clock.System,
				Progress: func(p reencrypt.Progress) { prog.Update(p.Done, p.Total) },
				// No replaced object goes before the snapshots naming it
				// are rewritten.
				BeforeDelete: s.syncMetaAll,
			})
			prog.Done()
			if res == nil {
				return err
			}
			if serr := s.syncMetaAll(c.Context); serr != nil && err == nil {
				err = serr
			}
			e.metrics.bytesProcessed, e.metrics.blocksChecked = res.BytesWritten, res.Examined
			e.log.Info("migrate-encryption finished", "target", res.Target, "blocks_examined", res.Examined, "blocks_migrated", res.Migrated,
				"bytes_written", res.BytesWritten, "objects_deleted", res.ObjectsDeleted, "damaged", len(res.Failures), "blocks_below_target", res.Remaining)
			if e.json {
				if jerr := ui.JSON(e.stdout, res); jerr != nil {
					return jerr
				}
				return err
			}
			rows := [][]string{
				{"target encryption version", fmt.Sprint(res.Target)},
				{"blocks examined", fmt.Sprint(res.Examined)},
				{"blocks migrated", fmt.Sprint(res.Migrated)},
				{"blocks skipped (changed meanwhile)", fmt.Sprint(res.Skipped)},
				{"bytes read", ui.Bytes(res.BytesRead)},
				{"bytes written", ui.Bytes(res.BytesWritten)},
				{"old objects deleted", fmt.Sprint(res.ObjectsDeleted)},
				{"blocks still below target (store)", fmt.Sprint(res.Remaining)},
				{"damaged blocks (marked invalid)", fmt.Sprint(len(res.Failures))},
				{"duration", fmt.Sprintf("%.2fs", res.DurationSeconds)},
			}
			if terr := ui.Table(e.stdout, []string{"FIELD", "VALUE"}, rows); terr != nil {
				return terr
			}
			for _, f := range res.Failures {
				fmt.Fprintf(e.stdout, "damaged: block %s: %s\n", f.ID, f.Reason)
			}
			return err
		},
	}
}
