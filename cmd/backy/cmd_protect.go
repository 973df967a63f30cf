package main

import (
	"errors"
	"fmt"
	"strings"

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
			// All or nothing: every uid is checked before any is changed.
			uids := c.Args().Slice()
			var unknown []string
			for _, uid := range uids {
				if _, err := s.db.Version(uid); errors.Is(err, metastore.ErrVersionNotFound) {
					unknown = append(unknown, uid)
				} else if err != nil {
					return err
				}
			}
			if len(unknown) > 0 {
				return fmt.Errorf("%w: %s (list versions with 'backy ls'); nothing was changed", metastore.ErrVersionNotFound, strings.Join(unknown, " "))
			}
			out := []*metastore.Version{}
			var err error
			for _, uid := range uids {
				var v *metastore.Version
				if v, err = versions.SetProtected(s.db, uid, protect); err != nil {
					// Removed meanwhile, say: the ones before it are changed.
					err = fmt.Errorf("%s: %w; %d of %d version(s) changed before it (listed)", uid, err, len(out), len(uids))
					break
				}
				out = append(out, v)
				e.log.Info("version "+name+"ed", "version", uid, "protected", v.Protected)
			}
			serr := s.syncMeta(c.Context, uids...)
			if err != nil {
				serr = err
			}
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
