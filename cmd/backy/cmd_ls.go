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
				if err := volumeListed(vs, c.Args().First(), "in the data backend"); err != nil {
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
			if err := volumeListed(vs, c.Args().First(), "in this store"); err != nil {
				return err
			}
			return printVersions(e, vs)
		},
	}
}

// volumeListed fails with errNoSuchVolume when a named volume has no
// versions: a volume exists as long as one of its versions does, so a
// mistyped name (or a volume whose last version was removed) is not an
// empty listing that looks like success.
func volumeListed(vs []*metastore.Version, volume, where string) error {
	if volume == "" || len(vs) > 0 {
		return nil
	}
	return fmt.Errorf("%w: %q has no versions %s (list them all with 'backy ls')", errNoSuchVolume, volume, where)
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
		expire := ""
		if v.Expire != nil {
			expire = v.Expire.UTC().Format(time.DateTime)
		}
		rows = append(rows, []string{v.UID, v.Date.UTC().Format(time.DateTime), v.Volume, v.Snapshot,
			ui.Bytes(v.Size), string(v.Status), prot, expire, labelString(v.Labels), lastScrub(v)})
	}
	return ui.Table(e.stdout, []string{"UID", "DATE (UTC)", "VOLUME", "SNAPSHOT", "SIZE", "STATUS", "PROTECTED", "EXPIRES (UTC)", "LABELS", "LAST SCRUB (UTC)"}, rows)
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
