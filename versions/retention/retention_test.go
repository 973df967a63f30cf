package retention_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
	_ "time/tzdata" // the zones below, on machines without zoneinfo

	"github.com/backy/backy/metastore"
	"github.com/backy/backy/versions/retention"
)

// spec is a version in a test case: its date (RFC 3339) and flags in
// the form "date flag flag...": p = protected, i = incomplete, x = invalid,
// r = removing, e=DATE = expiry, vol=NAME = volume (default "vol").
type spec string

func build(t *testing.T, specs []spec) []*metastore.Version {
	t.Helper()
	var vs []*metastore.Version
	for n, s := range specs {
		f := strings.Fields(string(s))
		d, err := time.Parse(time.RFC3339, f[0])
		if err != nil {
			t.Fatal(err)
		}
		v := &metastore.Version{UID: fmt.Sprintf("V%02d", n), Volume: "vol", Date: d, Status: metastore.StatusValid}
		for _, fl := range f[1:] {
			switch {
			case fl == "p":
				v.Protected = true
			case fl == "i":
				v.Status = metastore.StatusIncomplete
			case fl == "x":
				v.Status = metastore.StatusInvalid
			case fl == "r":
				v.Removing = true
			case strings.HasPrefix(fl, "e="):
				e, err := time.Parse(time.RFC3339, fl[2:])
				if err != nil {
					t.Fatal(err)
				}
				v.Expire = &e
			case strings.HasPrefix(fl, "vol="):
				v.Volume = fl[4:]
			default:
				t.Fatalf("bad flag %q", fl)
			}
		}
		vs = append(vs, v)
	}
	return vs
}

func TestEvaluate(t *testing.T) {
	cases := []struct {
		name  string
		rules string
		zone  string // "" = UTC
		now   string
		vs    []spec
		keep  []int // indices into vs of the versions kept
	}{
		{
			name: "latest counts newest first", rules: "latest2", now: "2025-06-01T12:00:00Z",
			vs:   []spec{"2025-05-01T00:00:00Z", "2025-05-03T00:00:00Z", "2025-05-02T00:00:00Z", "2025-05-04T00:00:00Z"},
			keep: []int{1, 3},
		},
		{
			name: "nothing fits: only the newest valid version stays", rules: "hours1", now: "2025-06-01T12:00:00Z",
			vs:   []spec{"2025-05-01T00:00:00Z", "2025-05-03T00:00:00Z"},
			keep: []int{1},
		},
		{
			name: "hours24 has 25 buckets", rules: "hours24", now: "2025-06-02T12:30:00Z",
			vs: []spec{
				"2025-06-01T11:59:00Z", // 25 h: out
				"2025-06-01T12:00:00Z", // 24 h
				"2025-06-01T12:59:00Z", // 24 h, not the oldest
				"2025-06-02T12:05:00Z", // 0 h
				"2025-06-02T12:10:00Z", // 0 h, newest
			},
			keep: []int{1, 3, 4},
		},
		{
			name: "month ends: Jan 31, Feb 28, Mar 1", rules: "months2", now: "2025-03-01T12:00:00Z",
			vs: []spec{
				"2024-12-31T23:00:00Z", // 3 months: out
				"2025-01-31T00:00:00Z", // month 2
				"2025-02-01T00:00:00Z", // month 1, oldest
				"2025-02-28T23:59:59Z", // month 1
				"2025-03-01T00:00:00Z", // month 0
				"2025-03-01T11:00:00Z", // month 0, newest
			},
			keep: []int{1, 2, 4, 5},
		},
		{
			name: "leap day 2024 is a day of its own", rules: "days2", now: "2024-03-01T10:00:00Z",
			vs: []spec{
				"2024-02-27T23:00:00Z", // 3 days: out
				"2024-02-28T23:00:00Z", // day 2
				"2024-02-29T01:00:00Z", // day 1
				"2024-02-29T22:00:00Z", // day 1
				"2024-03-01T01:00:00Z", // day 0
				"2024-03-01T09:00:00Z", // day 0, newest
			},
			keep: []int{1, 2, 4, 5},
		},
		{
			name: "leap day 2028: Feb 28 is two days before Mar 1", rules: "days1", now: "2028-03-01T10:00:00Z",
			vs:   []spec{"2028-02-28T12:00:00Z", "2028-02-29T12:00:00Z", "2028-03-01T09:00:00Z"},
			keep: []int{1, 2},
		},
		{
			name: "no leap day 2027: Feb 28 is the day before Mar 1", rules: "days1", now: "2027-03-01T10:00:00Z",
			vs:   []spec{"2027-02-27T12:00:00Z", "2027-02-28T12:00:00Z", "2027-03-01T09:00:00Z"},
			keep: []int{1, 2},
		},
		{
			name: "years from a leap day", rules: "years1", now: "2028-02-29T12:00:00Z",
			vs: []spec{
				"2026-12-31T23:59:59Z", // 2 years: out
				"2027-02-28T00:00:00Z", // year 1, oldest
				"2027-12-31T23:59:59Z", // year 1
				"2028-01-01T00:00:00Z", // year 0, oldest
				"2028-02-29T11:00:00Z", // year 0, newest
			},
			keep: []int{1, 3, 4},
		},
		{
			name: "year boundary in days", rules: "days1", now: "2025-01-01T00:30:00Z",
			vs:   []spec{"2024-12-30T23:59:00Z", "2024-12-31T00:10:00Z", "2024-12-31T23:59:00Z", "2025-01-01T00:10:00Z"},
			keep: []int{1, 3},
		},
		{
			// Monday 2024-12-30 starts the week of 2025-01-01 (ISO week
			// 2025-W01): one bucket across the year boundary.
			name: "weeks are Monday to Sunday, across the year boundary", rules: "weeks1", now: "2025-01-01T12:00:00Z",
			vs: []spec{
				"2024-12-22T23:59:00Z", // Sunday of two weeks ago: out
				"2024-12-23T00:00:00Z", // Monday of last week
				"2024-12-29T23:59:00Z", // Sunday of last week
				"2024-12-30T00:00:00Z", // Monday of this week
				"2024-12-31T12:00:00Z", // this week
				"2025-01-01T11:00:00Z", // this week, newest
			},
			keep: []int{1, 3, 5},
		},
		{
			name: "categories youngest first, whatever the order written", rules: "days2,hours1,latest1", now: "2025-06-10T12:30:00Z",
			vs: []spec{
				"2025-06-08T01:00:00Z", // day 2
				"2025-06-08T23:00:00Z", // day 2
				"2025-06-10T00:00:00Z", // day 0 (12 h: too old for hours1)
				"2025-06-10T11:10:00Z", // hour 1
				"2025-06-10T11:20:00Z", // hour 1
				"2025-06-10T12:10:00Z", // hour 0
				"2025-06-10T12:20:00Z", // latest1
			},
			keep: []int{0, 2, 3, 5, 6},
		},
		{
			// 2024-03-31 02:00 CET becomes 03:00 CEST (01:00 UTC). From
			// 04:40 CEST, 01:30 CET is two elapsed hours back (a
			// wall-clock count would say three).
			name: "DST spring: hours across the skipped hour", rules: "hours2", zone: "Europe/Berlin", now: "2024-03-31T02:40:00Z",
			vs: []spec{
				"2024-03-30T23:59:00Z", // 00:59 CET: 3 h
				"2024-03-31T00:30:00Z", // 01:30 CET: 2 h
				"2024-03-31T01:30:00Z", // 03:30 CEST: 1 h
				"2024-03-31T01:45:00Z", // 03:45 CEST: 1 h
				"2024-03-31T02:30:00Z", // 04:30 CEST: 0 h
			},
			keep: []int{1, 2, 4},
		},
		{
			// 2024-10-27 03:00 CEST becomes 02:00 CET (01:00 UTC): the hour
			// 02:00-03:00 happens twice and makes two buckets.
			name: "DST autumn: the repeated hour is two buckets", rules: "hours2", zone: "Europe/Berlin", now: "2024-10-27T02:05:00Z",
			vs: []spec{
				"2024-10-27T00:10:00Z", // 02:10 CEST: 2 h
				"2024-10-27T00:50:00Z", // 02:50 CEST: 2 h
				"2024-10-27T01:10:00Z", // 02:10 CET: 1 h
				"2024-10-27T01:50:00Z", // 02:50 CET: 1 h
				"2024-10-27T02:01:00Z", // 03:01 CET: 0 h
			},
			keep: []int{0, 2, 4},
		},
		{
			// 2024-03-31 is 23 hours long in Berlin; days start at local
			// midnight.
			name: "DST spring: days at local midnight", rules: "days1", zone: "Europe/Berlin", now: "2024-03-31T10:00:00Z",
			vs: []spec{
				"2024-03-29T22:30:00Z", // Mar 29 23:30 CET: day 2
				"2024-03-29T23:30:00Z", // Mar 30 00:30 CET: day 1
				"2024-03-30T12:00:00Z", // Mar 30: day 1
				"2024-03-30T22:30:00Z", // Mar 30 23:30 CET: day 1
				"2024-03-30T23:30:00Z", // Mar 31 00:30 CET: day 0
				"2024-03-31T09:00:00Z", // Mar 31 11:00 CEST: day 0
			},
			keep: []int{1, 4, 5},
		},
		{
			name: "the same versions in UTC", rules: "days1", now: "2024-03-31T10:00:00Z",
			vs: []spec{
				"2024-03-29T22:30:00Z", // day 2
				"2024-03-29T23:30:00Z", // day 2
				"2024-03-30T12:00:00Z", // day 1
				"2024-03-30T22:30:00Z", // day 1
				"2024-03-30T23:30:00Z", // day 1
				"2024-03-31T09:00:00Z", // day 0
			},
			keep: []int{2, 5},
		},
		{
			// 2024-10-27 is 25 hours long in Berlin.
			name: "DST autumn: days at local midnight", rules: "days1", zone: "Europe/Berlin", now: "2024-10-27T23:30:00Z",
			vs: []spec{
				"2024-10-25T22:30:00Z", // Oct 26 00:30 CEST: day 2
				"2024-10-26T21:50:00Z", // Oct 26 23:50 CEST: day 2
				"2024-10-26T22:10:00Z", // Oct 27 00:10 CEST: day 1
				"2024-10-27T22:50:00Z", // Oct 27 23:50 CET: day 1
				"2024-10-27T23:10:00Z", // Oct 28 00:10 CET: day 0
			},
			keep: []int{2, 4},
		},
		{
			name: "a zone west of UTC: New York's day", rules: "days1", zone: "America/New_York", now: "2025-01-02T03:00:00Z",
			vs: []spec{
				"2024-12-31T04:59:00Z", // Dec 30 23:59 EST: day 2
				"2024-12-31T05:00:00Z", // Dec 31 00:00 EST: day 1
				"2025-01-01T04:00:00Z", // Dec 31 23:00 EST: day 1
				"2025-01-02T02:00:00Z", // Jan 1 21:00 EST: day 0
			},
			keep: []int{1, 3},
		},
		{
			name: "future-dated versions are kept and count for nothing", rules: "latest1", now: "2025-06-01T12:00:00Z",
			vs:   []spec{"2025-05-01T00:00:00Z", "2025-05-02T00:00:00Z", "2025-06-01T12:00:01Z", "2026-01-01T00:00:00Z"},
			keep: []int{1, 2, 3},
		},
		{
			name: "future-dated versions fill no bucket", rules: "days1", now: "2025-06-01T12:00:00Z",
			vs:   []spec{"2025-06-01T01:00:00Z", "2025-06-01T02:00:00Z", "2025-06-01T03:00:00Z", "2025-06-01T13:00:00Z"},
			keep: []int{0, 2, 3},
		},
		{
			name: "protected, incomplete and removing versions are untouched and count for nothing", rules: "latest1", now: "2025-06-01T12:00:00Z",
			vs: []spec{
				"2020-01-01T00:00:00Z p",
				"2020-01-02T00:00:00Z i",
				"2020-01-03T00:00:00Z r",
				"2025-05-01T00:00:00Z",
				"2025-05-02T00:00:00Z",
				"2025-05-03T00:00:00Z p",
				"2025-05-04T00:00:00Z i",
				"2025-05-05T00:00:00Z r",
				"2020-01-04T00:00:00Z p e=2021-01-01T00:00:00Z",
			},
			keep: []int{0, 1, 2, 4, 5, 6, 7, 8},
		},
		{
			name: "expired versions go whatever the rules", rules: "latest5", now: "2025-06-01T12:00:00Z",
			vs: []spec{
				"2025-05-01T00:00:00Z",
				"2025-05-02T00:00:00Z e=2025-06-01T12:00:00Z", // expires now: goes
				"2025-05-03T00:00:00Z e=2025-06-01T12:00:01Z",
				"2025-05-04T00:00:00Z e=2020-01-01T00:00:00Z",   // expired, but the newest valid: stays
				"2025-05-05T00:00:00Z x e=2020-01-01T00:00:00Z", // expired and invalid: goes
			},
			keep: []int{0, 2, 3},
		},
		{
			name: "the newest valid version stays even when expired", rules: "latest1", now: "2025-06-01T12:00:00Z",
			vs:   []spec{"2025-05-01T00:00:00Z", "2025-05-02T00:00:00Z", "2025-05-03T00:00:00Z e=2025-05-20T00:00:00Z"},
			keep: []int{1, 2},
		},
		{
			name: "only expired versions: the newest stays", rules: "days7", now: "2025-06-01T12:00:00Z",
			vs:   []spec{"2025-05-01T00:00:00Z e=2025-05-10T00:00:00Z", "2025-05-02T00:00:00Z e=2025-05-10T00:00:00Z"},
			keep: []int{1},
		},
		{
			name: "an expired version older than the newest valid one goes", rules: "days7", now: "2025-06-01T12:00:00Z",
			vs:   []spec{"2025-05-31T00:00:00Z", "2025-05-31T01:00:00Z e=2025-06-01T00:00:00Z", "2025-05-31T02:00:00Z"},
			keep: []int{0, 2},
		},
		{
			// Protected versions take no part, as for the rules.
			name: "an expired version older only than a protected one stays", rules: "latest1", now: "2025-06-01T12:00:00Z",
			vs:   []spec{"2025-05-01T00:00:00Z", "2025-05-02T00:00:00Z e=2025-05-10T00:00:00Z", "2025-05-03T00:00:00Z p"},
			keep: []int{0, 1, 2},
		},
		{
			name: "an expired version older than a future-dated one stays", rules: "latest1", now: "2025-06-01T12:00:00Z",
			vs:   []spec{"2025-05-02T00:00:00Z e=2025-05-10T00:00:00Z", "2025-07-03T00:00:00Z"},
			keep: []int{0, 1},
		},
		{
			name: "an expired version holds no bucket", rules: "days1", now: "2025-06-01T12:00:00Z",
			vs:   []spec{"2025-05-31T01:00:00Z e=2025-06-01T00:00:00Z", "2025-05-31T02:00:00Z", "2025-05-31T03:00:00Z", "2025-06-01T11:00:00Z"},
			keep: []int{1, 3},
		},
		{
			name: "a future expiry keeps a version the rules drop", rules: "latest1", now: "2025-06-01T12:00:00Z",
			vs:   []spec{"2025-05-01T00:00:00Z e=2025-07-01T00:00:00Z", "2025-05-02T00:00:00Z", "2025-05-03T00:00:00Z"},
			keep: []int{0, 2},
		},
		{
			name: "a version with a future expiry may hold its bucket", rules: "days1", now: "2025-06-01T12:00:00Z",
			vs:   []spec{"2025-05-31T01:00:00Z e=2025-07-01T00:00:00Z", "2025-05-31T02:00:00Z", "2025-06-01T11:00:00Z"},
			keep: []int{0, 2},
		},
		{
			name: "an older invalid version does not push out a valid one", rules: "days1", now: "2025-06-01T12:00:00Z",
			vs:   []spec{"2025-05-31T01:00:00Z x", "2025-05-31T02:00:00Z x", "2025-05-31T03:00:00Z", "2025-05-31T04:00:00Z", "2025-06-01T11:00:00Z"},
			keep: []int{0, 2, 4},
		},
		{
			name: "a newer invalid version goes when a valid one holds the bucket", rules: "days1", now: "2025-06-01T12:00:00Z",
			vs:   []spec{"2025-05-31T01:00:00Z", "2025-05-31T02:00:00Z x", "2025-06-01T11:00:00Z"},
			keep: []int{0, 2},
		},
		{
			name: "latest counts valid versions; newer invalid ones stay too", rules: "latest2", now: "2025-06-01T12:00:00Z",
			vs:   []spec{"2025-05-01T00:00:00Z", "2025-05-02T00:00:00Z", "2025-05-03T00:00:00Z", "2025-05-04T00:00:00Z x", "2025-05-05T00:00:00Z"},
			keep: []int{2, 3, 4},
		},
		{
			name: "only invalid versions", rules: "latest1", now: "2025-06-01T12:00:00Z",
			vs:   []spec{"2025-05-01T00:00:00Z x", "2025-05-02T00:00:00Z x"},
			keep: []int{1},
		},
		{
			name: "volumes are separate", rules: "latest1", now: "2025-06-01T12:00:00Z",
			vs: []spec{
				"2025-05-01T00:00:00Z vol=a", "2025-05-02T00:00:00Z vol=b", "2025-05-03T00:00:00Z vol=a",
				"2025-05-04T00:00:00Z vol=b", "2025-05-05T00:00:00Z vol=c",
			},
			keep: []int{2, 3, 4},
		},
		{
			name: "equal dates: the smaller uid is the older", rules: "latest1,days1", now: "2025-06-01T12:00:00Z",
			vs:   []spec{"2025-05-31T01:00:00Z", "2025-05-31T01:00:00Z", "2025-05-31T01:00:00Z", "2025-06-01T11:00:00Z"},
			keep: []int{0, 3},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rules, err := retention.ParseRules(c.rules)
			if err != nil {
				t.Fatal(err)
			}
			now, err := time.Parse(time.RFC3339, c.now)
			if err != nil {
				t.Fatal(err)
			}
			o := retention.Options{Now: now}
			if c.zone != "" {
				o.Location = mustLoc(t, c.zone)
			}
			vs := build(t, c.vs)
			ds := retention.Evaluate(vs, rules, o)
			var keep []int
			for i, d := range ds {
				if d.Version != vs[i] {
					t.Fatalf("decision %d is about %s, not %s", i, d.Version.UID, vs[i].UID)
				}
				if !d.Remove {
					keep = append(keep, i)
				}
				if d.Reason == "" {
					t.Errorf("%s: no reason", vs[i].UID)
				}
			}
			if !slices.Equal(keep, c.keep) {
				var b strings.Builder
				loc := o.Location
				if loc == nil {
					loc = time.UTC
				}
				for i, d := range ds {
					fmt.Fprintf(&b, "\n  %d %s %s remove=%v: %s", i, c.vs[i], d.Version.Date.In(loc).Format(time.RFC3339), d.Remove, d.Reason)
				}
				t.Errorf("kept %v, want %v:%s", keep, c.keep, b.String())
			}
		})
	}
}

// TestExpiredNewestReported: an expired newest valid version is kept, and
// the decision says so (enforce reports it).
func TestExpiredNewestReported(t *testing.T) {
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	vs := build(t, []spec{"2025-05-01T00:00:00Z e=2025-05-10T00:00:00Z", "2025-05-02T00:00:00Z e=2025-05-10T00:00:00Z"})
	ds := retention.Evaluate(vs, retention.Rules{Latest: 3}, retention.Options{Now: now})
	if !ds[0].Remove || ds[0].KeptExpired {
		t.Errorf("the older expired version: remove=%v keptExpired=%v (%s)", ds[0].Remove, ds[0].KeptExpired, ds[0].Reason)
	}
	if d := ds[1]; d.Remove || !d.KeptExpired || d.Reason != "expired 2025-05-10T00:00:00Z; kept: the newest valid version of its volume" {
		t.Errorf("the newest: remove=%v keptExpired=%v reason %q", d.Remove, d.KeptExpired, d.Reason)
	}
}

func TestMinAge(t *testing.T) {
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	vs := build(t, []spec{
		"2025-05-01T00:00:00Z",
		"2025-05-30T00:00:00Z",
		"2025-05-31T00:00:00Z e=2025-06-01T00:00:00Z",
		"2025-06-01T00:00:00Z",
	})
	ds := retention.Evaluate(vs, retention.Rules{Latest: 1}, retention.Options{Now: now, MinAge: 7 * 24 * time.Hour})
	want := []struct{ remove, young bool }{{true, false}, {false, true}, {false, true}, {false, false}}
	for i, d := range ds {
		if d.Remove != want[i].remove || d.TooYoung != want[i].young {
			t.Errorf("%d: remove=%v tooYoung=%v (%s), want %v %v", i, d.Remove, d.TooYoung, d.Reason, want[i].remove, want[i].young)
		}
	}
	if !strings.Contains(ds[1].Reason, "disallow_rm_when_younger_than_days") {
		t.Errorf("reason %q does not name the setting", ds[1].Reason)
	}
}

// TestProperties evaluates random version sets with random rules in a few
// zones and checks what must always hold.
func TestProperties(t *testing.T) {
	zones := []*time.Location{time.UTC, mustLoc(t, "Europe/Berlin"), mustLoc(t, "America/New_York"), mustLoc(t, "Asia/Kolkata"), mustLoc(t, "Australia/Lord_Howe")}
	rng := rand.New(rand.NewPCG(1, 2))
	iters := 3000
	if testing.Short() {
		iters = 300
	}
	for it := 0; it < iters; it++ {
		now := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(rng.Int64N(int64(3 * 365 * 24 * time.Hour))))
		var rules retention.Rules
		for rules == (retention.Rules{}) {
			for _, f := range []*int{&rules.Latest, &rules.Hours, &rules.Days, &rules.Weeks, &rules.Months, &rules.Years} {
				if rng.IntN(2) == 0 {
					*f = 1 + rng.IntN(30)
				}
			}
		}
		loc := zones[rng.IntN(len(zones))]
		span := []time.Duration{6 * time.Hour, 10 * 24 * time.Hour, 400 * 24 * time.Hour, 5 * 365 * 24 * time.Hour}[rng.IntN(4)]
		var vs []*metastore.Version
		for n := rng.IntN(60); n >= 0; n-- {
			v := &metastore.Version{
				UID:    fmt.Sprintf("V%04d", len(vs)),
				Volume: []string{"a", "b", "c"}[rng.IntN(3)],
				Date:   now.Add(-time.Duration(rng.Int64N(int64(span)))),
				Status: metastore.StatusValid,
			}
			if rng.IntN(20) == 0 {
				v.Date = now.Add(time.Duration(rng.Int64N(int64(48 * time.Hour))))
			}
			if rng.IntN(8) == 0 && len(vs) > 0 { // equal dates
				v.Date = vs[rng.IntN(len(vs))].Date
			}
			switch rng.IntN(12) {
			case 0:
				v.Status = metastore.StatusInvalid
			case 1:
				v.Status = metastore.StatusIncomplete
			case 2:
				v.Removing = true
			}
			v.Protected = rng.IntN(10) == 0
			if rng.IntN(8) == 0 {
				e := now.Add(time.Duration(rng.Int64N(int64(60*24*time.Hour))) - 30*24*time.Hour)
				v.Expire = &e
			}
			vs = append(vs, v)
		}
		o := retention.Options{Now: now, Location: loc}
		ds := retention.Evaluate(vs, rules, o)
		ctx := fmt.Sprintf("iteration %d, rules %s, zone %s, now %s", it, rules, loc, now.Format(time.RFC3339))
		newest := map[string]*metastore.Version{}
		for _, v := range vs {
			if v.Status == metastore.StatusValid && !v.Protected && !v.Removing && !v.Date.After(now) {
				if n := newest[v.Volume]; n == nil || v.Date.After(n.Date) || (v.Date.Equal(n.Date) && v.UID > n.UID) {
					newest[v.Volume] = v
				}
			}
		}
		var kept []*metastore.Version
		for _, d := range ds {
			v := d.Version
			switch {
			case d.Remove && (v.Protected || v.Status == metastore.StatusIncomplete || v.Removing):
				t.Fatalf("%s: %s removed (protected %v, status %s, removing %v)", ctx, v.UID, v.Protected, v.Status, v.Removing)
			case d.Remove && v.Date.After(now) && (v.Expire == nil || v.Expire.After(now)):
				t.Fatalf("%s: future-dated %s removed", ctx, v.UID)
			case d.Remove && v.Expire != nil && v.Expire.After(now):
				t.Fatalf("%s: %s removed before its expiry", ctx, v.UID)
			case !d.Remove && !v.Protected && v.Expire != nil && !v.Expire.After(now) && v.Status != metastore.StatusIncomplete && !v.Removing &&
				newest[v.Volume] != v:
				t.Fatalf("%s: expired %s kept", ctx, v.UID)
			case d.KeptExpired != (!d.Remove && v.Expire != nil && !v.Expire.After(now) && newest[v.Volume] == v):
				t.Fatalf("%s: %s: KeptExpired %v (%s)", ctx, v.UID, d.KeptExpired, d.Reason)
			case d.Remove && newest[v.Volume] == v:
				t.Fatalf("%s: the newest valid version %s of %s removed", ctx, v.UID, v.Volume)
			}
			if !d.Remove {
				kept = append(kept, v)
			}
		}
		// Idempotent: nothing more goes the second time.
		for _, d := range retention.Evaluate(kept, rules, o) {
			if d.Remove {
				t.Fatalf("%s: the second run removes %s (%s)", ctx, d.Version.UID, d.Reason)
			}
		}
		// The order of the input does not matter.
		shuffled := slices.Clone(vs)
		rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		removed := map[string]bool{}
		for _, d := range ds {
			removed[d.Version.UID] = d.Remove
		}
		for _, d := range retention.Evaluate(shuffled, rules, o) {
			if removed[d.Version.UID] != d.Remove {
				t.Fatalf("%s: %s: the decision depends on the input order", ctx, d.Version.UID)
			}
		}
	}
}
