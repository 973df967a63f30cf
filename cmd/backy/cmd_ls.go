package main

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/backy/backy/cmd/backy/internal/ui"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/versions"
)

func cmdLs(e *env) *cli.Command {
	return &cli.Command{
		Name:      "ls",
		Usage:     "list versions, oldest first",
		ArgsUsage: "[VOLUME]",
		Action: func(c *cli.Context) error {
			if err := args(c, 0, 1, "at most one VOLUME"); err != nil {
				return err
			}
			s, err := e.openStore(c.Context)
			if err != nil {
				return err
			}
			defer s.Close()
			vs, err := versions.List(s.db, c.Args().First())
			if err != nil {
				return err
			}
			if vs == nil {
				vs = []*metastore.Version{}
			}
			if e.json {
				return ui.JSON(e.stdout, vs)
			}
			rows := make([][]string, 0, len(vs))
			for _, v := range vs {
				prot := ""
				if v.Protected {
					prot = "yes"
				}
				rows = append(rows, []string{v.UID, v.Date.UTC().Format(time.DateTime), v.Volume, v.Snapshot,
					ui.Bytes(v.Size), string(v.Status), prot, labelString(v.Labels)})
			}
			return ui.Table(e.stdout, []string{"UID", "DATE (UTC)", "VOLUME", "SNAPSHOT", "SIZE", "STATUS", "PROTECTED", "LABELS"}, rows)
		},
	}
}

func labelString(l map[string]string) string {
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + l[k]
	}
	return strings.Join(parts, ",")
}

func cmdRm(e *env) *cli.Command {
	return &cli.Command{
		Name:      "rm",
		Usage:     "remove versions (metadata only; 'backy cleanup' frees their blocks)",
		ArgsUsage: "VERSION...",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "force", Usage: "remove versions younger than disallow_rm_when_younger_than_days"},
		},
		Action: func(c *cli.Context) error {
			if err := args(c, 1, -1, "one or more VERSIONs"); err != nil {
				return err
			}
			s, err := e.openStore(c.Context)
			if err != nil {
				return err
			}
			defer s.Close()
			days := min(e.cfg.Defaults.DisallowRmWhenYoungerThanDays, 100*365)
			o := versions.RemoveOptions{Force: c.Bool("force"), MinAge: time.Duration(days) * 24 * time.Hour, Now: time.Now()}
			var removed []string
			var firstErr error
			for _, uid := range c.Args().Slice() {
				if _, err := versionArg(s.db, uid); err != nil {
					firstErr = keepFirst(firstErr, err)
					e.log.Error("not removed", "version", uid, "err", err)
					continue
				}
				if err := versions.Remove(s.db, uid, o); err != nil {
					firstErr = keepFirst(firstErr, err)
					e.log.Error("not removed", "version", uid, "err", err)
					continue
				}
				removed = append(removed, uid)
			}
			if e.json {
				if removed == nil {
					removed = []string{}
				}
				if err := ui.JSON(e.stdout, map[string]any{"removed": removed}); err != nil {
					return err
				}
			} else {
				for _, uid := range removed {
					fmt.Fprintf(e.stdout, "removed %s\n", uid)
				}
			}
			return firstErr
		},
	}
}

func keepFirst(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

func cmdProtect(e *env, protect bool) *cli.Command {
	name, usage := "protect", "protect versions from rm and retention"
	if !protect {
		name, usage = "unprotect", "remove the protection of versions"
	}
	return &cli.Command{
		Name:      name,
		Usage:     usage,
		ArgsUsage: "VERSION...",
		Action: func(c *cli.Context) error {
			if err := args(c, 1, -1, "one or more VERSIONs"); err != nil {
				return err
			}
			s, err := e.openStore(c.Context)
			if err != nil {
				return err
			}
			defer s.Close()
			var out []*metastore.Version
			for _, uid := range c.Args().Slice() {
				if _, err := versionArg(s.db, uid); err != nil {
					return err
				}
				v, err := versions.SetProtected(s.db, uid, protect)
				if err != nil {
					return err
				}
				out = append(out, v)
			}
			if e.json {
				return ui.JSON(e.stdout, out)
			}
			for _, v := range out {
				fmt.Fprintf(e.stdout, "%s protected=%v\n", v.UID, v.Protected)
			}
			return nil
		},
	}
}

func cmdStats(e *env) *cli.Command {
	return &cli.Command{
		Name:      "stats",
		Usage:     "show the statistics of a version, or of the whole store",
		ArgsUsage: "[VERSION]",
		Action: func(c *cli.Context) error {
			if err := args(c, 0, 1, "at most one VERSION"); err != nil {
				return err
			}
			s, err := e.openStore(c.Context)
			if err != nil {
				return err
			}
			defer s.Close()
			if uid := c.Args().First(); uid != "" {
				v, err := versionArg(s.db, uid)
				if err != nil {
					return err
				}
				if e.json {
					return ui.JSON(e.stdout, v)
				}
				rate := "-"
				if v.DurationSeconds > 0 {
					rate = ui.Bytes(int64(float64(v.Size)/v.DurationSeconds)) + "/s"
				}
				return ui.Table(e.stdout, []string{"FIELD", "VALUE"}, [][]string{
					{"uid", v.UID}, {"volume", v.Volume}, {"status", string(v.Status)}, {"size", fmt.Sprintf("%s (%d)", ui.Bytes(v.Size), v.Size)},
					{"block size", ui.Bytes(v.BlockSize)}, {"bytes read", ui.Bytes(v.BytesRead)}, {"bytes written", ui.Bytes(v.BytesWritten)},
					{"bytes deduplicated", ui.Bytes(v.BytesDeduplicated)}, {"bytes sparse", ui.Bytes(v.BytesSparse)},
					{"duration", fmt.Sprintf("%.2fs (%s)", v.DurationSeconds, rate)},
				})
			}
			st, err := s.db.Stats()
			if err != nil {
				return err
			}
			if e.json {
				return ui.JSON(e.stdout, st)
			}
			return ui.Table(e.stdout, []string{"FIELD", "VALUE"}, [][]string{
				{"versions", fmt.Sprint(st.Versions)}, {"stored blocks", fmt.Sprint(st.Blocks)},
				{"stored bytes", ui.Bytes(st.StoredBytes)}, {"plain bytes", ui.Bytes(st.PlainBytes)},
				{"unreferenced blocks", fmt.Sprint(st.Unreferenced)}, {"block size", ui.Bytes(st.BlockSize)}, {"created", st.Created},
			})
		},
	}
}
