package main

import (
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
		Action: e.withStore(0, 1, "at most one VOLUME", func(c *cli.Context, s *store) error {
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
					ui.Bytes(v.Size), string(v.Status), prot, labelString(v.Labels), lastScrub(v.LastScrub)})
			}
			return ui.Table(e.stdout, []string{"UID", "DATE (UTC)", "VOLUME", "SNAPSHOT", "SIZE", "STATUS", "PROTECTED", "LABELS", "LAST SCRUB (UTC)"}, rows)
		}),
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
