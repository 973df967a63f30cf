package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/cmd/backy/internal/ui"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/scrub"
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
		&cli.Float64Flag{Name: "percent", Value: 100, Usage: "check a sample of `P` percent of the blocks (by block identity, so shared blocks are sampled alike)"},
	}
	if deep {
		name, usage = "deep-scrub", "read and verify every stored block of versions (authentication tag, BLAKE3), optionally against the source"
		desc = "Does what scrub does and reads every (sampled) block, verifying its object header, authentication\n" +
			"tag and BLAKE3 hash. With --source (one version), also compares every sampled block with the\n" +
			"source image, sparse blocks included (they must be zeros there); a mismatch is reported, and\n" +
			"marks nothing invalid. A block marked invalid that reads back intact is valid again, and so is\n" +
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
				Workers: e.cfg.Defaults.Workers, Logger: e.log,
			}
			if spec != "" {
				src, err := source.Open(spec)
				if err != nil {
					return err
				}
				defer src.Close()
				o.Source = src
			}
			var st scrub.BlockStore
			if deep {
				// Reading only: no write version is registered.
				if st, err = s.blocksAt(c.Context, 0); err != nil {
					return err
				}
			} else {
				// Stat only: no keys needed.
				bst, err := blockstore.New(s.be, storeOptions(e.cfg))
				if err != nil {
					return err
				}
				defer bst.Close()
				st = bst
			}
			prog := ui.NewBlockProgress(os.Stderr, name) // block positions, not bytes
			o.Progress = func(p scrub.Progress) { prog.Update(p.Done, p.Total) }
			res, err := scrub.Run(c.Context, st, s.db, o)
			prog.Done()
			if res == nil {
				return err
			}
			// Versions found damaged or healed changed status.
			if serr := s.syncMeta(c.Context); serr != nil && err == nil {
				err = serr
			}
			e.metrics.bytesProcessed, e.metrics.blocksChecked = res.BytesVerified, res.BlocksChecked
			if e.json {
				if jerr := ui.JSON(e.stdout, res); jerr != nil {
					return jerr
				}
				return err
			}
			printScrub(e, res)
			return err
		},
	}
}

func printScrub(e *env, res *scrub.Result) {
	rows := make([][]string, 0, len(res.Versions))
	for _, v := range res.Versions {
		result := "ok"
		if !v.OK {
			result = "DAMAGED"
		}
		rows = append(rows, []string{v.UID, v.Volume, fmt.Sprint(v.BlocksChecked), fmt.Sprint(v.BlocksBad), result, string(v.Status)})
	}
	for _, sk := range res.Skipped {
		rows = append(rows, []string{sk.UID, "", "", "", "skipped: " + sk.Reason, ""})
	}
	_ = ui.Table(e.stdout, []string{"UID", "VOLUME", "CHECKED", "BAD", "RESULT", "STATUS"}, rows)
	if len(res.Failures) > 0 {
		fmt.Fprintln(e.stdout)
		frows := make([][]string, 0, len(res.Failures))
		for _, f := range res.Failures {
			idx := fmt.Sprint(f.Index)
			if f.Index < 0 {
				idx = "map"
			}
			id := f.ID
			if len(id) > 12 {
				id = id[:12]
			}
			frows = append(frows, []string{f.Version, idx, id, f.Kind, f.Reason})
		}
		_ = ui.Table(e.stdout, []string{"VERSION", "BLOCK", "ID", "KIND", "REASON"}, frows)
		if res.FailuresTotal > int64(len(res.Failures)) {
			fmt.Fprintf(e.stdout, "... and %d more\n", res.FailuresTotal-int64(len(res.Failures)))
		}
	}
	pct := ""
	if res.Percent < 100 {
		pct = fmt.Sprintf(" (%g%% sample, seed %d)", res.Percent, res.Seed)
	}
	line := fmt.Sprintf("%s: %d distinct block(s) checked%s", res.Kind, res.BlocksChecked, pct)
	if res.BytesVerified > 0 {
		line += fmt.Sprintf(", %s verified", ui.Bytes(res.BytesVerified))
	}
	line += fmt.Sprintf(", %d problem(s) in %s", res.FailuresTotal, (time.Duration(res.DurationSeconds * float64(time.Second))).Round(time.Millisecond))
	if len(res.InvalidVersions) > 0 {
		line += fmt.Sprintf("; invalid now: %s", strings.Join(res.InvalidVersions, " "))
	}
	if res.BlocksHealed > 0 || len(res.ValidVersions) > 0 {
		line += fmt.Sprintf("; %d block(s) healed, valid again: %s", res.BlocksHealed, strings.Join(res.ValidVersions, " "))
	}
	fmt.Fprintln(e.stdout, line)
}

// lastScrub formats a version's last scrub for 'ls'.
func lastScrub(r *metastore.ScrubRecord) string {
	if r == nil {
		return ""
	}
	s := r.Kind
	if r.Percent < 100 {
		s += fmt.Sprintf(" %g%%", r.Percent)
	}
	s += " " + r.At.UTC().Format("2006-01-02 15:04")
	if r.OK {
		return s + " ok"
	}
	return s + fmt.Sprintf(" %d bad", r.BlocksBad)
}
