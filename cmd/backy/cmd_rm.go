package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/backy/backy/cmd/backy/internal/ui"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/versions"
)

func cmdRm(e *env) *cli.Command {
	return &cli.Command{
		Name:      "rm",
		Usage:     "remove versions (metadata only; 'backy cleanup' frees their blocks)",
		ArgsUsage: "VERSION...",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "force", Usage: "remove versions younger than disallow_rm_when_younger_than_days"},
		},
		Action: e.withStore(1, -1, "one or more VERSIONs", func(c *cli.Context, s *store) error {
			days := min(e.cfg.Defaults.DisallowRmWhenYoungerThanDays, 100*365)
			o := versions.RemoveOptions{Force: c.Bool("force"), MinAge: time.Duration(days) * 24 * time.Hour, Now: time.Now(),
				Check:        func(v *metastore.Version) error { return s.nbdWaiting(v.UID) },
				BeforeRemove: func(v *metastore.Version) error { return s.deleteMeta(c.Context, v.UID) }}
			var removed []string
			var failed multiError
			for _, uid := range c.Args().Slice() {
				_, err := versionArg(s.db, uid)
				if err == nil {
					err = versions.Remove(s.db, uid, o)
				}
				if err != nil {
					failed = append(failed, err)
					continue
				}
				removed = append(removed, uid)
			}
			if len(removed) > 0 {
				e.log.Info("versions removed", "versions", removed, "not_removed", len(failed))
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
			if len(failed) > 0 {
				return fmt.Errorf("%d of %d version(s) not removed: %w", len(failed), c.NArg(), failed)
			}
			return nil
		}),
	}
}

// multiError joins errors on one line; errors.Is and errors.As see each.
type multiError []error

func (m multiError) Error() string {
	parts := make([]string, len(m))
	for i, err := range m {
		parts[i] = err.Error()
	}
	return strings.Join(parts, "; ")
}

func (m multiError) Unwrap() []error { return m }
