package main

import (
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/backy/backy/cmd/backy/internal/ui"
	"github.com/backy/backy/versions"
	"github.com/backy/backy/versions/retention"
)

func cmdExpire(e *env) *cli.Command {
	return &cli.Command{
		Name:      "expire",
		Usage:     "set the date from which 'backy enforce' removes a version (never: clear it)",
		ArgsUsage: "VERSION DATE",
		Description: "DATE is RFC 3339 (2026-12-31T18:00:00+01:00), YYYY-MM-DD (midnight at the start of that day in\n" +
			"the time zone: --timezone, else timezone of the configuration, else UTC), or never. Until that date\n" +
			"enforce keeps the version whatever its rules say; from then on it removes it whatever they say, unless\n" +
			"the version is protected (or the newest valid version of its volume).",
		Flags: []cli.Flag{timezoneFlag("time zone of a YYYY-MM-DD date")},
		Action: e.withMetaStore(2, 2, "VERSION DATE", func(c *cli.Context, s *store) error {
			uid := c.Args().Get(0)
			at, err := dateArg(c, e, "DATE", c.Args().Get(1))
			if err != nil {
				return err
			}
			if _, err := versionArg(s.db, uid); err != nil {
				return err
			}
			v, err := versions.SetExpire(s.db, uid, at)
			if err != nil {
				return err
			}
			e.log.Info("expiry date set", "version", v.UID, "expire", expireString(v.Expire))
			serr := s.syncMeta(c.Context, uid)
			if e.json {
				err = ui.JSON(e.stdout, v)
			} else {
				_, err = fmt.Fprintf(e.stdout, "%s expire=%s\n", v.UID, expireString(v.Expire))
			}
			if err != nil {
				return err
			}
			return serr
		}),
	}
}

func expireString(t *time.Time) string {
	if t == nil {
		return "never"
	}
	return t.UTC().Format(time.RFC3339)
}

// dateArg parses a date argument (what names it in errors): every command
// parses its dates here, by one rule (retention.ParseExpiry: RFC 3339, or
// YYYY-MM-DD = midnight in the zone of --timezone, else the
// configuration's timezone, else UTC), so that one date means one instant
// whichever command is given it. "never" is nil.
func dateArg(c *cli.Context, e *env, what, s string) (*time.Time, error) {
	loc, err := loadZone(c, e)
	if err != nil {
		return nil, err
	}
	at, err := retention.ParseExpiry(s, loc)
	if err != nil {
		return nil, usageErr("%s: %v", what, err)
	}
	return at, nil
}

// parseBackupExpire parses backup's --expire: a date in the future.
func parseBackupExpire(c *cli.Context, e *env, now time.Time) (*time.Time, error) {
	s := c.String("expire")
	at, err := dateArg(c, e, "--expire", s)
	if err != nil {
		return nil, err
	}
	if at != nil && !at.After(now) {
		return nil, usageErr("--expire %s (%s) is not in the future", s, at.UTC().Format(time.RFC3339))
	}
	return at, nil
}
