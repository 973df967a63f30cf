package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/urfave/cli/v2"

	"github.com/backy/backy/blockstore/object"
	"github.com/backy/backy/cmd/backy/internal/ui"
	"github.com/backy/backy/metastore"
)

func cmdVersion(e *env) *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print backy's version and the formats it reads and writes",
		Action: func(c *cli.Context) error {
			info := map[string]any{
				"version":          backyVersion(),
				"go":               runtime.Version(),
				"metastore_schema": metastore.CurrentSchema,
				"object_format":    object.FormatVersion,
			}
			bi, _ := debug.ReadBuildInfo()
			from := buildVersion(bi)
			built := ""
			if from.commit != "" {
				info["commit"], info["commit_time"], info["modified"] = from.commit, from.time, from.modified
				built = ", commit " + from.commit[:min(12, len(from.commit))] + " of " + from.time
				if from.modified {
					built += " with local changes"
				}
			}
			if e.json {
				return ui.JSON(e.stdout, info)
			}
			_, err := fmt.Fprintf(e.stdout, "backy %s (%s%s, metastore schema %d, object format %d)\n",
				backyVersion(), runtime.Version(), built, metastore.CurrentSchema, object.FormatVersion)
			return err
		},
	}
}
