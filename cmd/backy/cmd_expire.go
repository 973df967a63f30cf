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
		Description: "DATE is RFC 3339 (2026-12-31T18:00:00+01:00), YYYY-MM-DD (midnight at the start of that day\n" +
			"in --timezone), or never. Until that date enforce keeps the version whatever its rules say; from then\n" +
			"on it removes it whatever they say, unless the version is protected.",
		Flags: []cli.Flag{timezoneFlag("time zone of a YYYY-MM-DD date")},
		Action: e.withMetaStore(2, 2, "VERSION DATE", func(c *cli.Context, s *store) error {
			uid := c.Args().Get(0)
			loc, err := loadZone(c, e)
			if err != nil {
				return err
			}
			at, err := retention.ParseExpiry(c.Args().Get(1), loc)
			if err != nil {
				return usageErr("%v", err)
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

// parseBackupExpire parses backup's --expire: a date in the future
// (YYYY-MM-DD is midnight UTC).
func parseBackupExpire(s string, now time.Time) (*time.Time, error) {
	at, err := retention.ParseExpiry(s, time.UTC)
	if err != nil {
		return nil, usageErr("--expire: %v", err)
	}
	if at != nil && !at.After(now) {
		return nil, usageErr("--expire %s is not in the future", s)
	}
	return at, nil
}
