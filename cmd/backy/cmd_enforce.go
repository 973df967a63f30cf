package main

import (
	"errors"
	"fmt"
	"slices"
	"time"
	_ "time/tzdata" // --timezone works on machines without zoneinfo

	"github.com/urfave/cli/v2"

	"github.com/backy/backy/cmd/backy/internal/ui"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/versions"
	"github.com/backy/backy/versions/retention"
)

// timezoneFlag selects the zone of retention's calendar buckets and of
// YYYY-MM-DD dates.
func timezoneFlag(usage string) *cli.StringFlag {
	return &cli.StringFlag{Name: "timezone", Usage: usage + " (IANA `ZONE` name such as Europe/Berlin, or Local; default: timezone of the configuration, UTC)"}
}

func loadZone(c *cli.Context, e *env) (*time.Location, error) {
	name := c.String("timezone")
	if !c.IsSet("timezone") {
		// Validated by the configuration parser.
		return time.LoadLocation(e.cfg.Defaults.Timezone)
	}
	loc, err := time.LoadLocation(name)
	if err != nil || name == "" {
		return nil, usageErr("--timezone %q: not a time zone; use an IANA name such as UTC or Europe/Berlin", name)
	}
	return loc, nil
}

func cmdEnforce(e *env) *cli.Command {
	return &cli.Command{
		Name:      "enforce",
		Usage:     "remove the versions a retention policy and expiry dates let go (metadata only; 'backy cleanup' frees their blocks)",
		ArgsUsage: "RULES [VOLUME...]",
		Description: "RULES is latestN,hoursN,daysN,weeksN,monthsN,yearsN (any subset, e.g. latest3,days7,weeks4,months12),\n" +
			"applied to each volume (all volumes when none is named) with Benji's calendar buckets: every bucket\n" +
			"keeps its oldest version. Protected, incomplete and future-dated versions and the newest valid version\n" +
			"of each volume stay (that one even when expired: it is listed as kept); versions whose expiry date has\n" +
			"passed go (unless protected). See README \"Retention\".",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "dry-run", Aliases: []string{"n"}, Usage: "list what would be removed, remove nothing"},
			&cli.BoolFlag{Name: "force", Usage: "remove versions younger than disallow_rm_when_younger_than_days too"},
			timezoneFlag("time zone of the calendar buckets"),
		},
		Action: func(c *cli.Context) error {
			if err := args(c, 1, -1, "RULES [VOLUME...]"); err != nil {
				return err
			}
			rules, err := retention.ParseRules(c.Args().First())
			if err != nil {
				return usageErr("%v", err)
			}
			loc, err := loadZone(c, e)
			if err != nil {
				return err
			}
			s, err := e.openStore(c.Context)
			if err != nil {
				return err
			}
			defer s.Close()
			return enforce(c, e, s, rules, loc, c.Args().Tail())
		},
	}
}

func enforce(c *cli.Context, e *env, s *store, rules retention.Rules, loc *time.Location, volumes []string) error {
	dry := c.Bool("dry-run")
	type row struct {
		v      *metastore.Version
		action string
		reason string
	}
	var rows []row
	gone := []*metastore.Version{}
	var failed multiError
	// First the removals an enforce or rm killed midway left behind (a
	// removal is never left to wait for a later run's decision).
	if !dry {
		done, busy, err := versions.FinishRemovals(s.db,
			func(v *metastore.Version) bool { return len(volumes) == 0 || slices.Contains(volumes, v.Volume) },
			func(v *metastore.Version) error { return s.deleteMeta(c.Context, v.UID) })
		for _, v := range done {
			e.log.Info("enforce: finished an interrupted removal", "version", v.UID, "volume", v.Volume)
			gone = append(gone, v)
			rows = append(rows, row{v, "removed", "finished an interrupted removal"})
		}
		if len(busy) > 0 {
			e.log.Info("enforce: versions being removed by another process", "versions", busy)
		}
		if err != nil {
			failed = append(failed, err)
		}
	}
	all, err := versions.List(s.db, "")
	if err != nil {
		return err
	}
	vs := all
	if len(volumes) > 0 {
		vs = nil
		for _, vol := range volumes {
			if !slices.ContainsFunc(all, func(v *metastore.Version) bool { return v.Volume == vol }) {
				return fmt.Errorf("%w: %q has no versions (list them with 'backy ls')", errNoSuchVolume, vol)
			}
		}
		for _, v := range all {
			if slices.Contains(volumes, v.Volume) {
				vs = append(vs, v)
			}
		}
	}
	days := min(e.cfg.Defaults.DisallowRmWhenYoungerThanDays, 100*365)
	minAge := time.Duration(days) * 24 * time.Hour
	force := c.Bool("force")
	now := time.Now()
	o := retention.Options{Now: now, Location: loc}
	if !force {
		o.MinAge = minAge
	}
	ds := retention.Evaluate(vs, rules, o)
	for _, d := range ds {
		v := d.Version
		if d.TooYoung {
			e.log.Info("enforce: too young to remove, kept", "version", v.UID, "volume", v.Volume, "reason", d.Reason)
			rows = append(rows, row{v, "kept (too young)", d.Reason})
			continue
		}
		if d.KeptExpired {
			e.log.Warn("enforce: an expired version is kept: it is the newest valid version of its volume (it goes once a newer valid version exists)",
				"version", v.UID, "volume", v.Volume, "expire", expireString(v.Expire))
			rows = append(rows, row{v, "kept (newest valid)", d.Reason})
			continue
		}
		if !d.Remove {
			continue
		}
		if dry {
			gone = append(gone, v)
			rows = append(rows, row{v, "would remove", d.Reason})
			continue
		}
		if err := c.Context.Err(); err != nil {
			failed = append(failed, fmt.Errorf("%w before %s", errInterrupted, v.UID))
			break
		}
		planned := v.Expire
		err := versions.Remove(s.db, v.UID, versions.RemoveOptions{
			Force: force, MinAge: minAge, Now: now,
			BeforeRemove: func(cur *metastore.Version) error { return s.deleteMeta(c.Context, cur.UID) },
			// The version may have changed since it was listed.
			Check: func(cur *metastore.Version) error {
				if cur.Status == metastore.StatusIncomplete || cur.Removing || !sameTime(cur.Expire, planned) || !cur.Date.Equal(v.Date) {
					return fmt.Errorf("%w: %s changed while enforce ran; kept", errChanged, v.UID)
				}
				return s.nbdWaiting(cur.UID)
			},
		})
		switch {
		case err == nil:
			e.log.Info("enforce: version removed", "version", v.UID, "volume", v.Volume, "date", v.Date, "reason", d.Reason)
			gone = append(gone, v)
			rows = append(rows, row{v, "removed", d.Reason})
		case errors.Is(err, metastore.ErrVersionNotFound):
			e.log.Info("enforce: already removed", "version", v.UID)
		case errors.Is(err, versions.ErrTooYoung), errors.Is(err, errChanged), errors.Is(err, versions.ErrProtected):
			e.log.Info("enforce: kept", "version", v.UID, "why", err)
			rows = append(rows, row{v, "kept", err.Error()})
		default:
			e.log.Info("enforce: not removed", "version", v.UID, "err", err)
			failed = append(failed, fmt.Errorf("%s: %w", v.UID, err))
			rows = append(rows, row{v, "FAILED", err.Error()})
		}
	}
	if e.json {
		if err := ui.JSON(e.stdout, gone); err != nil {
			return err
		}
	} else {
		tab := make([][]string, 0, len(rows))
		for _, r := range rows {
			tab = append(tab, []string{r.v.UID, r.v.Date.In(loc).Format("2006-01-02 15:04:05 MST"), r.v.Volume, string(r.v.Status), r.action, r.reason})
		}
		if err := ui.Table(e.stdout, []string{"UID", "DATE", "VOLUME", "STATUS", "ACTION", "REASON"}, tab); err != nil {
			return err
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("enforce: %d version(s) not removed: %w", len(failed), failed)
	}
	return nil
}

// errChanged: a version changed between enforce's decision and its removal.
var errChanged = errors.New("version changed")

func sameTime(a, b *time.Time) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Equal(*b)
}
