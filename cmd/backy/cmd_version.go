package main

import (
	"fmt"
	"runtime"

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
			if e.json {
				return ui.JSON(e.stdout, info)
			}
			_, err := fmt.Fprintf(e.stdout, "backy %s (%s, metastore schema %d, object format %d)\n",
				backyVersion(), runtime.Version(), metastore.CurrentSchema, object.FormatVersion)
			return err
		},
	}
}
