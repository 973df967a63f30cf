package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/backy/backy/cmd/backy/internal/ui"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/versions"
)

func cmdProtect(e *env, protect bool) *cli.Command {
	name, usage := "protect", "protect versions from rm and retention"
	if !protect {
		name, usage = "unprotect", "remove the protection of versions"
	}
	return &cli.Command{
		Name:      name,
		Usage:     usage,
		ArgsUsage: "VERSION...",
		Action: e.withMetaStore(1, -1, "one or more VERSIONs", func(c *cli.Context, s *store) error {
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
				e.log.Info("version "+name+"ed", "version", uid, "protected", v.Protected)
			}
			serr := s.syncMeta(c.Context, c.Args().Slice()...)
			if e.json {
				if err := ui.JSON(e.stdout, out); err != nil {
					return err
				}
			} else {
				for _, v := range out {
					fmt.Fprintf(e.stdout, "%s protected=%v\n", v.UID, v.Protected)
				}
			}
			return serr
		}),
	}
}
