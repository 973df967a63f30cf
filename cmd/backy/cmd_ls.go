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
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "from-backend", Usage: "use no metastore: list the versions whose metadata the data backend holds (what rebuild-metastore and restore --from-backend can get back)"},
		},
		Action: func(c *cli.Context) error {
			if err := args(c, 0, 1, "at most one VOLUME"); err != nil {
				return err
			}
			if c.Bool("from-backend") {
				vs, err := lsFromBackend(c.Context, e, c.Args().First())
				if err != nil {
					return err
				}
				return printVersions(e, vs)
			}
			// Metadata only: works while the data backend is unreachable.
			e.metaOnly = true
			s, err := e.openStore(c.Context)
			if err != nil {
				return err
			}
			defer s.Close()
			vs, err := versions.List(s.db, c.Args().First())
			if err != nil {
				return err
			}
			return printVersions(e, vs)
		},
	}
}

// printVersions prints versions as a table, or as JSON.
func printVersions(e *env, vs []*metastore.Version) error {
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
			ui.Bytes(v.Size), string(v.Status), prot, labelString(v.Labels), lastScrub(v)})
	}
	return ui.Table(e.stdout, []string{"UID", "DATE (UTC)", "VOLUME", "SNAPSHOT", "SIZE", "STATUS", "PROTECTED", "LABELS", "LAST SCRUB (UTC)"}, rows)
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
