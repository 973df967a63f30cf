package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/backy/backy/cmd/backy/internal/ui"
	"github.com/backy/backy/internal/clock"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/versions"
	"github.com/backy/backy/versions/backup"
	"github.com/backy/backy/versions/hints"
	"github.com/backy/backy/versions/source"
)

func cmdBackup(e *env) *cli.Command {
	return &cli.Command{
		Name:      "backup",
		Usage:     "back up a disk image or block device as a new version of VOLUME",
		ArgsUsage: "SOURCE VOLUME",
		Description: "SOURCE is a file or block device path, or a file:// URL. Prints the new version's uid.\n\n" +
			"With --hints FILE (the output of 'rbd diff --format=json') and --from VERSION, only hinted blocks\n" +
			"are read; the rest come from VERSION. Without --from, regions no hint names are zero.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "snapshot", Usage: "snapshot `NAME` to record with the version"},
			&cli.StringSliceFlag{Name: "label", Usage: "label `KEY=VALUE` (repeatable)"},
			&cli.StringFlag{Name: "from", Usage: "base `VERSION` (valid, same volume) for a differential backup"},
			&cli.StringFlag{Name: "hints", Usage: "`FILE` of changed extents (rbd diff --format=json); - for stdin"},
			&cli.BoolFlag{Name: "hints-allow-empty", Usage: "with --hints and without --from: accept hints that name no data (the version is all zeros)"},
			&cli.StringFlag{Name: "resume", Usage: "finish the incomplete `VERSION` instead of starting a new one"},
			&cli.StringFlag{Name: "expire", Usage: "expiry `DATE` of the new version for 'backy enforce' (RFC 3339, or YYYY-MM-DD = midnight in the time zone)"},
			timezoneFlag("time zone of a YYYY-MM-DD --expire date"),
		},
		Action: func(c *cli.Context) error {
			if err := args(c, 2, 2, "SOURCE VOLUME"); err != nil {
				return err
			}
			srcSpec, volume := c.Args().Get(0), c.Args().Get(1)
			labels, err := parseLabels(c.StringSlice("label"))
			if err != nil {
				return err
			}
			// Before anything is written: names the version's metadata in
			// the data backend could not hold are refused.
			if err := versions.ValidateNames(volume, c.String("snapshot"), labels); err != nil {
				return usageErr("%v", err)
			}
			var expire *time.Time
			if c.IsSet("expire") {
				if expire, err = parseBackupExpire(c, e, time.Now()); err != nil {
					return err
				}
			}
			if c.IsSet("hints") && !c.IsSet("from") && c.IsSet("resume") {
				return usageErr("--hints with --resume needs --from as in the interrupted run")
			}
			if c.Bool("hints-allow-empty") && (!c.IsSet("hints") || c.IsSet("from")) {
				return usageErr("--hints-allow-empty applies to --hints without --from only (with --from, empty hints mean nothing changed)")
			}
			// Check everything the operator gave before anything is written.
			src, err := source.Open(srcSpec)
			if err != nil {
				return err
			}
			defer src.Close()
			var extents []hints.Extent
			if c.IsSet("hints") {
				if extents, err = readHints(c.Context, c.String("hints"), src.Size()); err != nil {
					return err
				}
				if !c.IsSet("from") && !c.Bool("hints-allow-empty") && src.Size() > 0 && !hints.HasData(extents) {
					return fmt.Errorf("%w: hints file %s has no extent with exists=true, so without --from the version would be all zeros; for a differential backup give its base with --from, and if %s is really empty pass --hints-allow-empty",
						backup.ErrEmptyHints, c.String("hints"), src.Name())
				}
			}
			s, err := e.openStore(c.Context)
			if err != nil {
				return err
			}
			defer s.Close()
			// Keys are verified here, before the source is read.
			bst, err := s.blocks(c.Context)
			if err != nil {
				return err
			}
			opts := backup.Options{
				Volume: volume, Snapshot: c.String("snapshot"), Labels: labels, Hints: extents,
				Resume: c.String("resume"), Workers: s.ioWorkers(), Logger: e.log, Clock: clock.System,
				AllowEmptyHints: c.Bool("hints-allow-empty"),
			}
			if extents == nil && c.IsSet("hints") {
				opts.Hints = []hints.Extent{}
			}
			if from := c.String("from"); from != "" {
				if opts.Base, err = s.db.Version(from); err != nil {
					return fmt.Errorf("--from: %w", err)
				}
			}
			prog := ui.NewProgress(os.Stderr, "backup")
			opts.Progress = func(p backup.Progress) { prog.Update(p.Done, p.Total) }
			v, err := backup.Run(c.Context, bst, s.db, src, opts)
			prog.Done()
			if err != nil {
				if v != nil && v.UID != "" && errors.Is(err, backup.ErrSourceChanged) {
					return fmt.Errorf("%w; version %s is left incomplete, labelled %s: 'backy rm %s' removes it, 'backy restore --force %s' restores what it holds",
						err, v.UID, backup.LabelSourceChanged, v.UID, v.UID)
				}
				if v != nil && v.UID != "" && !errors.Is(err, backup.ErrBadResume) {
					return &leftError{err, fmt.Sprintf("version %s is left incomplete: finish it with 'backy backup %s %s --resume %s' or remove it with 'backy rm %s'",
						v.UID, shellQuote(srcSpec), shellQuote(volume), v.UID, v.UID)}
				}
				return err
			}
			e.metrics.bytesProcessed = v.BytesRead
			if expire != nil {
				// Set once the version is valid; until then enforce ignores
				// it, and then it is its volume's newest valid version,
				// which enforce keeps.
				ev, err := versions.SetExpire(s.db, v.UID, expire)
				if err != nil {
					return fmt.Errorf("version %s was made but its expiry date was not set: %w", v.UID, err)
				}
				v = ev
			}
			e.log.Info("backup finished", "version", v.UID, "volume", v.Volume, "snapshot", v.Snapshot, "size", v.Size, "bytes_read", v.BytesRead,
				"bytes_written", v.BytesWritten, "bytes_deduplicated", v.BytesDeduplicated, "bytes_sparse", v.BytesSparse, "seconds", v.DurationSeconds)
			// The version's metadata goes beside its blocks; a failure
			// is reported after the result (the version is complete).
			serr := s.syncMeta(c.Context, v.UID)
			if e.json {
				if err := ui.JSON(e.stdout, v); err != nil {
					return err
				}
			} else if _, err := fmt.Fprintln(e.stdout, v.UID); err != nil {
				return err
			}
			if serr != nil {
				return fmt.Errorf("version %s is complete, but %w", v.UID, serr)
			}
			return nil
		},
	}
}

func parseLabels(in []string) (map[string]string, error) {
	out := map[string]string{}
	for _, l := range in {
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" || strings.ContainsAny(k, " \t\n") {
			return nil, usageErr("--label %q: use KEY=VALUE with a non-empty key without spaces", l)
		}
		if prev, dup := out[k]; dup {
			return nil, usageErr("--label %s is given twice (%q and %q): give each key once", k, k+"="+prev, l)
		}
		out[k] = v
	}
	return out, nil
}

// errHintsNotFound: the --hints file does not exist (exit 66).
var errHintsNotFound = errors.New("hints file not found")

// readHints reads the hints file path ("-" for stdin) of a source of size
// bytes. A FIFO or pipe (--hints <(rbd diff ...)) is read as the stream it
// is, and the wait for its writer or its data ends on Ctrl-C; a directory,
// a device or a socket is refused.
func readHints(ctx context.Context, path string, size int64) ([]hints.Extent, error) {
	if path != "-" {
		st, err := os.Stat(path)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("%w: %s (give the output of 'rbd diff --format=json', or - to read it from stdin)", errHintsNotFound, path)
			}
			return nil, fmt.Errorf("hints file %s: %w", path, err)
		}
		if m := st.Mode(); !m.IsRegular() && m&os.ModeNamedPipe == 0 {
			return nil, usageErr("--hints %s is %s: give a file, a pipe or - for stdin", path, source.DescribeMode(m))
		}
	}
	type result struct {
		ext []hints.Extent
		err error
	}
	// open(2) of a FIFO waits for a writer, and reads of a pipe for its
	// data, whatever the context says: wait for them here instead. On
	// Ctrl-C the goroutine is left behind, blocked, as the process exits.
	done := make(chan result, 1)
	go func() {
		ext, err := parseHintsFile(path, size)
		done <- result{ext, err}
	}()
	select {
	case r := <-done:
		return r.ext, r.err
	case <-ctx.Done():
		return nil, fmt.Errorf("reading hints file %s: %w", path, ctx.Err())
	}
}

func parseHintsFile(path string, size int64) ([]hints.Extent, error) {
	var f *os.File
	if path == "-" {
		f = os.Stdin
	} else {
		var err error
		if f, err = os.Open(path); err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("%w: %s", errHintsNotFound, path)
			}
			return nil, fmt.Errorf("hints file: %w", err)
		}
		defer f.Close()
	}
	ext, err := hints.Parse(f, size)
	if err != nil {
		return nil, fmt.Errorf("hints file %s: %w", path, err)
	}
	if ext == nil {
		ext = []hints.Extent{}
	}
	return ext, nil
}

// shellQuote quotes s for a command line shown to the operator.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./:@%+=,-") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// versionArg fetches the version a command names, with a clear error.
func versionArg(db *metastore.DB, uid string) (*metastore.Version, error) {
	v, err := db.Version(uid)
	if errors.Is(err, metastore.ErrVersionNotFound) {
		return nil, fmt.Errorf("%w: %s (list versions with 'backy ls')", metastore.ErrVersionNotFound, uid)
	}
	return v, err
}
