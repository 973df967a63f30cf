package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/cmd/backy/internal/ui"
	"github.com/backy/backy/internal/clock"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/scrub"
	"github.com/backy/backy/versions/catalog"
	"github.com/backy/backy/versions/source"
)

// cmdScrub is 'backy scrub' or (deep) 'backy deep-scrub'.
func cmdScrub(e *env, deep bool) *cli.Command {
	name, usage := "scrub", "check versions' metadata and that every stored block they use exists with its size (reads no data)"
	desc := "Checks each selected version's block map in the metastore (pages, block records, counts) and\n" +
		"that every object it references exists with the stored size its record expects (stat only: no\n" +
		"data and no headers are read, so no keys are needed; a byte flipped inside an object is found by\n" +
		"deep-scrub). A block shared by several versions is checked once."
	flags := []cli.Flag{
		&cli.BoolFlag{Name: "all", Usage: "scrub every version"},
		&cli.StringFlag{Name: "volume", Usage: "scrub every version of `VOLUME`"},
		&cli.Float64Flag{Name: "percent", Value: 100, Usage: "check the next `P` percent of the blocks in a rotation kept per selection, so that 100/P runs check every block once (by block identity, so shared blocks are sampled alike)"},
	}
	if deep {
		name, usage = "deep-scrub", "read and verify every stored block of versions (authentication tag, BLAKE3), optionally against the source"
		desc = "Does what scrub does and reads every (sampled) block, verifying its object header, authentication\n" +
			"tag and BLAKE3 hash. With --source (one version), also compares every sampled block with the\n" +
			"source image, sparse blocks included (they must be zeros there); a difference is reported as\n" +
			"DIFFERS (exit 65) and marks nothing invalid. A block marked invalid that reads back intact is valid again, and so is\n" +
			"every version with no invalid block left. A block shared by several versions is read once.\n" +
			"The keys of every encryption version the blocks use must be configured."
		flags = append(flags, &cli.StringFlag{Name: "source", Usage: "compare the version with the image at `PATH` (file, block device or file:// URL)"})
	}
	desc += "\n\nEvery damaged or missing block is marked invalid with every version using it, and the scrub goes\n" +
		"on; it exits 80 when it found damage. The outcome is recorded per version (see 'backy ls').\n" +
		"Incomplete versions, and versions locked by a running backup or rm, are skipped."
	return &cli.Command{
		Name:        name,
		Usage:       usage,
		ArgsUsage:   "VERSION... | --all | --volume VOLUME",
		Description: desc,
		Flags:       flags,
		Action: func(c *cli.Context) error {
			uids := c.Args().Slice()
			all, volume := c.Bool("all"), c.String("volume")
			n := 0
			for _, set := range []bool{len(uids) > 0, all, c.IsSet("volume")} {
				if set {
					n++
				}
			}
			if n != 1 {
				return usageErr("'backy %s' takes VERSIONs, --all or --volume VOLUME (one of them)", name)
			}
			if c.IsSet("volume") && volume == "" {
				return usageErr("--volume needs a volume name")
			}
			pct := c.Float64("percent")
			if !(pct > 0 && pct <= 100) {
				return usageErr("--percent %v: use a number above 0 and at most 100", pct)
			}
			spec := ""
			if deep {
				spec = c.String("source")
			}
			if spec != "" && len(uids) != 1 {
				return usageErr("--source compares one VERSION with its source: name exactly one")
			}
			s, err := e.openStore(c.Context)
			if err != nil {
				return err
			}
			defer s.Close()
			for _, uid := range uids {
				if _, err := versionArg(s.db, uid); err != nil {
					return err
				}
			}
			o := scrub.Options{
				Deep: deep, UIDs: uids, All: all, Volume: volume, Percent: pct,
				Workers: e.cfg.Defaults.Workers, Logger: e.log, Clock: clock.System,
			}
			if spec != "" {
				src, err := source.Open(spec)
				if err != nil {
					return err
				}
				defer src.Close()
				o.Source = src
			}
			var st *blockstore.Store
			if deep {
				// Reading only: no write version is registered.
				if st, err = s.blocksAt(c.Context, 0); err != nil {
					return err
				}
			} else {
				// Stat only: no keys needed.
				if st, err = blockstore.New(s.be, storeOptions(e.cfg)); err != nil {
					return err
				}
				defer st.Close()
			}
			// Each version's metadata snapshot in the data backend: listed
			// (scrub) or read whole and compared (deep-scrub).
			cat := catalog.New(st, "", e.log)
			o.Snapshot = func(ctx context.Context, uid string) (string, string, error) {
				r, err := cat.Check(ctx, s.db, uid, deep)
				return r.State, r.Reason, err
			}
			prog := ui.NewBlockProgress(os.Stderr, name) // block positions, not bytes
			o.Progress = func(p scrub.Progress) { prog.Update(p.Done, p.Total) }
			res, err := scrub.Run(c.Context, st, s.db, o)
			prog.Done()
			if res == nil {
				return err
			}
			// Versions found damaged or healed changed status, and missing
			// or damaged snapshots were marked stale: all are written now.
			serr := s.syncMeta(c.Context)
			if serr != nil && err == nil {
				err = serr
			}
			out := scrubOutput{Result: res, SnapshotsRewritten: []string{}}
			written := map[string]bool{}
			for _, uid := range s.lastSync.WrittenUIDs {
				written[uid] = true
			}
			for _, uid := range res.SnapshotsBad {
				if written[uid] {
					out.SnapshotsRewritten = append(out.SnapshotsRewritten, uid)
				} else {
					out.SnapshotsNotRewritten = append(out.SnapshotsNotRewritten, uid)
				}
			}
			if len(out.SnapshotsNotRewritten) > 0 {
				e.log.Warn("the metadata of these versions could not be written to the data backend again; the next command that reaches it does (or run the scrub again)",
					"versions", out.SnapshotsNotRewritten)
			}
			e.metrics.bytesProcessed, e.metrics.blocksChecked = res.BytesVerified, res.BlocksChecked
			e.log.Info(res.Kind+" finished", "versions", len(res.Versions), "skipped", len(res.Skipped), "percent", res.Percent, "blocks_checked", res.BlocksChecked,
				"bytes_verified", res.BytesVerified, "problems", res.FailuresTotal, "differences", res.DifferencesTotal, "invalid_now", res.InvalidVersions,
				"blocks_healed", res.BlocksHealed, "valid_again", res.ValidVersions, "seconds", res.DurationSeconds)
			if e.json {
				if jerr := ui.JSON(e.stdout, out); jerr != nil {
					return jerr
				}
				return err
			}
			printScrub(e, &out)
			return err
		},
	}
}

// scrubOutput is what scrub prints: the engine's result and what became
// of the metadata snapshots it found missing or damaged.
type scrubOutput struct {
	*scrub.Result
	// SnapshotsRewritten are the versions of SnapshotsBad whose metadata
	// the scrub wrote to the data backend again, from the metastore;
	// SnapshotsNotRewritten those it could not (the next command that
	// syncs writes them).
	SnapshotsRewritten    []string `json:"snapshots_rewritten"`
	SnapshotsNotRewritten []string `json:"snapshots_not_rewritten,omitempty"`
}

func printScrub(e *env, out *scrubOutput) {
	res := out.Result
	rows := make([][]string, 0, len(res.Versions))
	for _, v := range res.Versions {
		result := v.Result
		if result == scrub.ResultDamaged || result == scrub.ResultDiffers {
			result = strings.ToUpper(result)
		}
		snap := v.Snapshot
		switch snap {
		case scrub.SnapshotMissing, scrub.SnapshotDamaged:
			snap = strings.ToUpper(snap)
		case "":
			snap = "-"
		}
		rows = append(rows, []string{v.UID, v.Volume, fmt.Sprint(v.BlocksChecked), fmt.Sprint(v.BlocksBad), result, snap, string(v.Status)})
	}
	for _, sk := range res.Skipped {
		rows = append(rows, []string{sk.UID, "", "", "", "skipped: " + sk.Reason, "", ""})
	}
	// One table, oldest first (uids sort by age), as 'ls' lists them.
	slices.SortStableFunc(rows, func(a, b []string) int { return strings.Compare(a[0], b[0]) })
	_ = ui.Table(e.stdout, []string{"UID", "VOLUME", "CHECKED", "BAD", "RESULT", "METADATA", "STATUS"}, rows)
	printScrubFailures(e, res.Failures, res.FailuresTotal, "KIND")
	printScrubFailures(e, res.Differences, res.DifferencesTotal, "")
	pct := ""
	if w := res.Window; w != nil {
		pct = fmt.Sprintf(" (%g%% sample: %.4g%% to %.4g%% of the rotation)", res.Percent, w.From, w.To)
	}
	line := fmt.Sprintf("%s: %d distinct block(s) checked%s", res.Kind, res.BlocksChecked, pct)
	if res.BytesVerified > 0 {
		line += fmt.Sprintf(", %s verified", ui.Bytes(res.BytesVerified))
	}
	if res.DifferencesTotal > 0 {
		line += fmt.Sprintf(", %d block(s) differ from the source", res.DifferencesTotal)
	}
	line += fmt.Sprintf(", %d problem(s) in %s", res.FailuresTotal, (time.Duration(res.DurationSeconds * float64(time.Second))).Round(time.Millisecond))
	if len(res.InvalidVersions) > 0 {
		line += fmt.Sprintf("; invalid now: %s", strings.Join(res.InvalidVersions, " "))
	}
	if res.BlocksHealed > 0 || len(res.ValidVersions) > 0 {
		line += fmt.Sprintf("; %d block(s) healed, valid again: %s", res.BlocksHealed, strings.Join(res.ValidVersions, " "))
	}
	fmt.Fprintln(e.stdout, line)
	if len(out.SnapshotsRewritten) > 0 {
		fmt.Fprintf(e.stdout, "metadata in the data backend was missing or damaged and is written again from the metastore: %s\n", strings.Join(out.SnapshotsRewritten, " "))
	}
	if len(out.SnapshotsNotRewritten) > 0 {
		fmt.Fprintf(e.stdout, "metadata in the data backend is missing or damaged and could not be written again yet (the next command that reaches the data backend does): %s\n", strings.Join(out.SnapshotsNotRewritten, " "))
	}
}

// printScrubFailures lists failures (kind column named kindCol) or,
// with kindCol "", differences from the source.
func printScrubFailures(e *env, fs []scrub.Failure, total int64, kindCol string) {
	if len(fs) == 0 {
		return
	}
	fmt.Fprintln(e.stdout)
	frows := make([][]string, 0, len(fs))
	for _, f := range fs {
		idx := fmt.Sprint(f.Index)
		switch {
		case f.Kind == scrub.FailSnapshot:
			idx = "-"
		case f.Index < 0:
			idx = "map"
		}
		id := f.ID
		if len(id) > 12 {
			id = id[:12]
		}
		row := []string{f.Version, idx, id, f.Reason}
		if kindCol != "" {
			row = []string{f.Version, idx, id, f.Kind, f.Reason}
		}
		frows = append(frows, row)
	}
	head := []string{"VERSION", "BLOCK", "ID", "DIFFERENCE FROM THE SOURCE"}
	if kindCol != "" {
		head = []string{"VERSION", "BLOCK", "ID", kindCol, "REASON"}
	}
	_ = ui.Table(e.stdout, head, frows)
	if total > int64(len(fs)) {
		fmt.Fprintf(e.stdout, "... and %d more\n", total-int64(len(fs)))
	}
}

// lastScrub formats a version's last scrub for 'ls', and its last
// deep-scrub when a plain scrub came after it.
func lastScrub(v *metastore.Version) string {
	s := scrubRecord(v.LastScrub)
	if d := v.LastDeepScrub; d != nil && (v.LastScrub == nil || v.LastScrub.Kind != d.Kind || !v.LastScrub.At.Equal(d.At)) {
		s += "; " + scrubRecord(d)
	}
	return strings.TrimPrefix(s, "; ")
}

func scrubRecord(r *metastore.ScrubRecord) string {
	if r == nil {
		return ""
	}
	s := r.Kind
	if r.Percent < 100 {
		s += fmt.Sprintf(" %g%%", r.Percent)
	}
	s += " " + r.At.UTC().Format("2006-01-02 15:04")
	switch {
	case !r.OK:
		return s + fmt.Sprintf(" %d bad", r.BlocksBad)
	case r.BlocksDiffering > 0:
		return s + fmt.Sprintf(" ok, %d differ from the source", r.BlocksDiffering)
	case r.BlocksChecked == 0 && r.Percent < 100:
		return s + " none sampled"
	}
	return s + " ok"
}
