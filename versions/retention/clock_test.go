package retention_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/backy/backy/internal/clock"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/versions/retention"
)

// TestRetentionAcrossDST (issue 14 item 4): a scheduler's day, on a Fake
// clock: a backup every hour and an enforce after each, for days that
// cross both daylight-saving changes of Europe/Berlin (a day of 23 hours,
// one of 25). Evaluate reads the time from Options.Clock alone (no Now).
// After every run the versions kept are exactly those of a model of the
// rules: the ones at most 6 elapsed hours old, and for each of the last 3
// local calendar days (today included) the oldest backup of that day that
// is older than that. Enforcing again at the same instant removes nothing.
func TestRetentionAcrossDST(t *testing.T) {
	loc, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	rules := retention.Rules{Hours: 6, Days: 3}
	// Far from today, so that a clock that is not the Fake one would
	// find every version dated in the future (or long gone).
	for _, start := range []time.Time{
		time.Date(2031, 3, 27, 0, 30, 0, 0, loc),  // summer time begins Sunday 30 March 2031
		time.Date(2031, 10, 23, 0, 30, 0, 0, loc), // and ends Sunday 26 October 2031
	} {
		t.Run(start.Format("2006-01"), func(t *testing.T) {
			clk := clock.NewFake(start)
			var vs []*metastore.Version
			dayLen := map[string]int{} // backups per local day: 23, 24 or 25
			for step := range 6 * 24 {
				now := clk.Now()
				vs = append(vs, &metastore.Version{UID: fmt.Sprintf("V%04d", step), Volume: "vm", Date: now, Status: metastore.StatusValid})
				dayLen[now.In(loc).Format(time.DateOnly)]++

				var kept []*metastore.Version
				for _, d := range retention.Evaluate(vs, rules, retention.Options{Clock: clk, Location: loc}) {
					if !d.Remove {
						kept = append(kept, d.Version)
					}
				}
				if want := model(vs, now, loc, rules); !slices.Equal(uids(kept), uids(want)) {
					t.Fatalf("at %s (step %d): kept %v, want %v", now.In(loc).Format(time.RFC3339), step, uids(kept), uids(want))
				}
				vs = kept
				for _, d := range retention.Evaluate(vs, rules, retention.Options{Clock: clk, Location: loc}) {
					if d.Remove {
						t.Fatalf("at %s: a second enforce removes %s (%s)", now.In(loc).Format(time.RFC3339), d.Version.UID, d.Reason)
					}
				}
				clk.Advance(time.Hour)
			}
			if !slices.ContainsFunc(mapValues(dayLen), func(n int) bool { return n == 23 || n == 25 }) {
				t.Fatalf("no daylight-saving day in the run: %v", dayLen)
			}
		})
	}
}

// model is what hours6,days3 keep of hourly backups vs at now, computed
// from the definitions: elapsed hours, local calendar days.
func model(vs []*metastore.Version, now time.Time, loc *time.Location, r retention.Rules) []*metastore.Version {
	day := func(t time.Time) time.Time {
		y, m, d := t.In(loc).Date()
		return time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
	}
	var keep []*metastore.Version
	oldestOfDay := map[time.Time]*metastore.Version{}
	for _, v := range vs {
		if now.Sub(v.Date) <= time.Duration(r.Hours)*time.Hour {
			keep = append(keep, v)
			continue
		}
		if days := int(day(now).Sub(day(v.Date)) / (24 * time.Hour)); days <= r.Days {
			if o := oldestOfDay[day(v.Date)]; o == nil || v.Date.Before(o.Date) {
				oldestOfDay[day(v.Date)] = v
			}
		}
	}
	for _, v := range oldestOfDay {
		keep = append(keep, v)
	}
	return keep
}

func uids(vs []*metastore.Version) []string {
	var out []string
	for _, v := range vs {
		out = append(out, v.UID)
	}
	slices.Sort(out)
	return out
}

func mapValues(m map[string]int) []int {
	var out []int
	for _, n := range m {
		out = append(out, n)
	}
	return out
}
