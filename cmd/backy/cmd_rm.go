package main

import (
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/backy/backy/cmd/backy/internal/ui"
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
		}),
	}
}

func keepFirst(first, err error) error {
	if first != nil {
		return first
	}
	return err
}
