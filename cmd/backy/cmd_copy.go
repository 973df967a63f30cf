package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/backy/backy/cmd/backy/internal/config"
	"github.com/backy/backy/cmd/backy/internal/ui"
	"github.com/backy/backy/internal/clock"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/versions/replicate"
)

func cmdCopy(e *env) *cli.Command {
	return &cli.Command{
		Name:      "copy",
		Usage:     "copy versions to a second store (another configuration), sending only the blocks it lacks",
		ArgsUsage: "VERSION... | --all | --volume VOLUME  --to CONFIG",
		Description: "Copies the versions from the store of this configuration to the store of CONFIG (which must\n" +
			"exist: 'backy -c CONFIG init', with the same block size). A copy keeps the version's uid, volume,\n" +
			"snapshot, labels, date, expiry date and protection. Blocks the target holds already are referenced;\n" +
			"the others are read and verified with this store's keys and stored with the target's encryption\n" +
			"and compression. A copy cut short (Ctrl-C, kill) is continued by running the command again;\n" +
			"versions the target holds already are reported as such. --all and --volume take complete\n" +
			"versions; incomplete or invalid ones are copied only with --force.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "to", Usage: "configuration `FILE` of the target store"},
			&cli.BoolFlag{Name: "all", Usage: "copy every complete version"},
			&cli.StringFlag{Name: "volume", Usage: "copy every complete version of `VOLUME`"},
			&cli.BoolFlag{Name: "force", Usage: "copy incomplete or invalid versions too (what they hold)"},
			&cli.BoolFlag{Name: "dry-run", Aliases: []string{"n"}, Usage: "change nothing: say per version whether the target lacks it and what a copy would send (reads no blocks, needs no keys)"},
		},
		Action: func(c *cli.Context) error {
			uids := c.Args().Slice()
			n := 0
			for _, set := range []bool{len(uids) > 0, c.Bool("all"), c.IsSet("volume")} {
				if set {
					n++
				}
			}
			if n != 1 {
				return usageErr("'backy copy' takes VERSIONs, --all or --volume VOLUME (one of them), and --to CONFIG")
			}
			if c.IsSet("volume") && c.String("volume") == "" {
				return usageErr("--volume needs a volume name")
			}
			to := c.String("to")
			if to == "" {
				return usageErr("'backy copy' needs --to CONFIG, the configuration file of the store to copy to")
			}
			dry := c.Bool("dry-run")
			rep, err := e.runCopy(c, to, replicate.Options{
				UIDs: uids, All: c.Bool("all"), Volume: c.String("volume"), Force: c.Bool("force"), DryRun: dry,
				Logger: e.log, Clock: clock.System,
			})
			if rep == nil {
				return err
			}
			e.metrics.bytesProcessed, e.metrics.blocksChecked = rep.BytesWritten, rep.BlocksSent
			if !dry {
				e.log.Info("copy finished", "to", to, "versions", copyStates(rep), "blocks_sent", rep.BlocksSent, "bytes_written", rep.BytesWritten,
					"blocks_deduplicated", rep.BlocksDeduplicated, "invalid_versions", rep.InvalidVersions, "seconds", rep.DurationSeconds)
			}
			switch {
			case e.json:
				if jerr := ui.JSON(e.stdout, rep); jerr != nil {
					return jerr
				}
			case err != nil && len(rep.Versions) == 1 && len(rep.Skipped) == 0 && rep.Versions[0].BlocksSent == 0:
				// One version, failed before sending anything: the error
				// line says it all.
			default:
				printCopy(e, rep)
			}
			return err
		},
	}
}

// copyStates lists "UID=state" for the log.
func copyStates(rep *replicate.Report) []string {
	out := make([]string, 0, len(rep.Versions))
	for _, v := range rep.Versions {
		out = append(out, v.UID+"="+string(v.State))
	}
	return out
}

// runCopy opens both stores (and, unless a dry run, their keys) and runs
// the engine.
func (e *env) runCopy(c *cli.Context, to string, o replicate.Options) (*replicate.Report, error) {
	ctx := c.Context
	tcfg, err := config.Load(to)
	if err != nil {
		return nil, fmt.Errorf("--to: %w", err)
	}
	for _, w := range tcfg.Warnings {
		e.log.Warn(w)
	}
	// A store is never created by a copy: a typo in --to must not make one.
	if _, err := os.Stat(tcfg.Meta.Path); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: the target store of %s does not exist (no metastore %s): run 'backy -c %s init' first",
			metastore.ErrNoStore, to, tcfg.Meta.Path, to)
	}
	s, err := e.openStore(ctx)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	for _, uid := range o.UIDs {
		if _, err := versionArg(s.db, uid); err != nil {
			return nil, err
		}
	}
	te := &env{stdout: e.stdout, stderr: e.stderr, getenv: e.getenv, json: e.json, log: e.log, cfg: tcfg}
	ts, err := te.openStore(ctx)
	if err != nil {
		return nil, fmt.Errorf("target store (%s): %w", configName(tcfg), err)
	}
	defer ts.Close()
	if ts.db.StoreID() == s.db.StoreID() {
		return nil, usageErr("--to %s names the store being copied from (metastore %s): name the configuration of another store", to, ts.db.Path())
	}
	src := replicate.Source{DB: s.db}
	dst := replicate.Target{DB: ts.db}
	if !o.DryRun {
		// Keys are verified here, before any block is read or written:
		// the source's for reading, the target's as a backup opens them.
		if src.Blocks, err = s.blocksAt(ctx, 0); err != nil {
			return nil, fmt.Errorf("source store (%s): %w", configName(e.cfg), err)
		}
		if dst.Blocks, err = ts.blocks(ctx); err != nil {
			return nil, fmt.Errorf("target store (%s): %w", configName(tcfg), err)
		}
	}
	// Each worker waits on a read of the source and a write to the target:
	// enough of them to keep the connections of both backends busy.
	o.Workers = s.ioWorkers()
	if e.cfg.Defaults.Workers <= 0 {
		o.Workers = max(o.Workers, ts.be.Properties().Connections)
	}
	what := "copy"
	if o.DryRun {
		what = "copy --dry-run"
	}
	prog := ui.NewProgress(os.Stderr, what)
	o.Progress = func(p replicate.Progress) { prog.Update(p.Done, p.Total) }
	rep, err := replicate.Run(ctx, src, dst, o)
	prog.Done()
	if !o.DryRun {
		var copied []string
		if rep != nil {
			for _, r := range rep.Versions {
				if r.TargetStatus != "" {
					copied = append(copied, r.UID)
				}
			}
		}
		if serr := ts.syncMeta(ctx, copied...); serr != nil && err == nil {
			err = fmt.Errorf("target store: %w", serr)
		}
	}
	if err != nil && ctx.Err() != nil && !o.DryRun {
		err = &leftError{err, "the versions copied so far are complete in the target, and the one being copied is left incomplete there: run the same copy again to continue it"}
	}
	return rep, err
}

func printCopy(e *env, rep *replicate.Report) {
	rows := make([][]string, 0, len(rep.Versions)+len(rep.Skipped))
	var notes []string
	counts := map[replicate.State]int{}
	for _, v := range rep.Versions {
		counts[v.State]++
		secs := fmt.Sprintf("%.1f", v.DurationSeconds)
		if rep.DryRun {
			secs = "-" // nothing was copied
		}
		rows = append(rows, []string{v.UID, v.Volume, string(v.State), fmt.Sprint(v.BlocksSent), fmt.Sprint(v.BlocksDeduplicated),
			ui.Bytes(v.BytesSent), secs})
		switch {
		case v.Error != "":
			notes = append(notes, v.UID+": "+v.Error)
		case v.Note != "":
			notes = append(notes, v.UID+": "+v.Note)
		}
	}
	for _, s := range rep.Skipped {
		rows = append(rows, []string{s.UID, s.Volume, "skipped: " + s.Reason, "", "", "", ""})
	}
	_ = ui.Table(e.stdout, []string{"VERSION", "VOLUME", "STATE", "BLOCKS SENT", "DEDUPLICATED", "BYTES SENT", "SECONDS"}, rows)
	for _, n := range notes {
		fmt.Fprintln(e.stdout, n)
	}
	var line string
	if rep.DryRun {
		line = fmt.Sprintf("dry run, nothing changed: %d version(s) missing in the target, %d incomplete, %d already there; a copy would send %d block(s) (%s) and reference %d",
			counts[replicate.StateMissing], counts[replicate.StateIncomplete], counts[replicate.StateAlready],
			rep.BlocksSent, ui.Bytes(rep.BytesSent), rep.BlocksDeduplicated)
	} else {
		var parts []string
		for _, s := range []replicate.State{replicate.StateCopied, replicate.StateResumed, replicate.StateAlready, replicate.StateFailed} {
			if counts[s] > 0 {
				parts = append(parts, fmt.Sprintf("%d %s", counts[s], s))
			}
		}
		if len(parts) == 0 {
			parts = []string{"no version copied"}
		}
		line = fmt.Sprintf("%s: %d block(s) sent (%s, %s stored in the target), %d deduplicated, in %.1f s",
			strings.Join(parts, ", "), rep.BlocksSent, ui.Bytes(rep.BytesSent), ui.Bytes(rep.BytesWritten), rep.BlocksDeduplicated, rep.DurationSeconds)
	}
	if len(rep.InvalidVersions) > 0 {
		line += "; invalid now in the source: " + strings.Join(rep.InvalidVersions, " ")
	}
	fmt.Fprintln(e.stdout, line)
}
