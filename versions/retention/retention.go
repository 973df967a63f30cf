// Package retention decides which versions a retention policy removes
// ('backy enforce'). It only decides; the caller removes through
// versions.Remove, which locks each version and re-checks it.
//
// # Rules
//
// "latestN,hoursN,daysN,weeksN,monthsN,yearsN" (ParseRules): any subset,
// any order, each category at most once, N >= 1. The algorithm is Benji's
// calendar-bucket algorithm, evaluated per volume:
//
//  1. The versions of the volume that retention may consider (see below)
//     are sorted newest first. latestN keeps the first N.
//  2. Every other version gets a calendar distance from now in each
//     category: hours = whole hours between the starts of the two local
//     hours; days = difference of the local calendar dates; weeks =
//     difference of the Mondays starting the two weeks, divided by 7
//     (Monday-to-Sunday weeks as in ISO 8601; ISO week numbers and week
//     years are not used, so a year boundary inside a week does not split
//     it); months = difference of (year*12 + month); years = difference of
//     the calendar years.
//  3. Categories are tried youngest first (hours, days, weeks, months,
//     years); the first configured category whose distance d satisfies
//     d <= N puts the version in bucket (category, d). So hours24 has the 25
//     buckets 0..24, as in Benji. A version no category takes is removed.
//  4. Each bucket keeps its oldest version; the others in it are removed.
//     The oldest version of a bucket thus stays until it ages into the next
//     category.
//
// Calendar distances are computed in a time zone (Options.Location, UTC
// when nil). Hour buckets follow elapsed hours, so in a zone with daylight
// saving time the skipped hour in spring has no bucket and the repeated
// hour in autumn gives two buckets; day buckets start at local midnight
// whatever the length of the day. Use the same zone for every enforce run
// of a store, or buckets shift.
//
// # What retention never touches, and expiry dates
//
//   - Protected versions are never removed (not even when expired), and
//     they do not take part: they fill no bucket and do not count for
//     latestN. Incomplete versions (backups running or killed) and versions
//     whose removal has started are likewise left alone: 'backy rm' and
//     'backy backup --resume' deal with them.
//   - A version whose expiry date (Version.Expire) is at or before now is
//     removed whatever the rules say (unless protected): the operator set
//     that date on purpose. It takes no part in the rules, so it does not
//     hold a bucket that would then be left empty.
//   - A version whose expiry date is in the future is kept at least until
//     then. It takes part in the rules like any other version (it may hold
//     a bucket, so a bucket it holds keeps no second version), and is kept
//     even when the rules would remove it.
//   - A version dated after now (a clock set wrong when it was made) is
//     kept (unless expired) and takes no part: it fills no bucket and does not count for
//     latestN, so it cannot push real recent versions out.
//   - The newest valid version of a volume is always kept, even when it
//     has expired (Decision.KeptExpired says so; it goes once a newer valid
//     version exists): with only "days7", Benji keeps the oldest version of
//     today and removes a backup made a minute ago; backy keeps that one
//     too, and an expiry date never leaves a volume without a valid
//     version. Protected, incomplete, future-dated and removing versions
//     are not candidates.
//   - Invalid versions (known damaged blocks) never take the place of a
//     valid one: the rules are applied to the valid versions alone, then to
//     valid and invalid versions together, and an invalid version is kept
//     only if the second pass keeps it. So a bucket may keep its oldest
//     valid version and, if older, its oldest invalid one; an invalid
//     version never causes a valid one to be removed.
//   - Options.MinAge (disallow_rm_when_younger_than_days) keeps versions
//     younger than it, expired or not; such a decision has TooYoung set.
//
// For fixed inputs the result is idempotent: applying it and evaluating
// again at the same time removes nothing more.
package retention

import (
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/backy/backy/internal/clock"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/versions"
)

// Options of Evaluate.
type Options struct {
	// Now is the reference time; when zero, Clock.Now(). A caller that
	// removes what Evaluate decides passes the same Now to
	// versions.Remove.
	Now time.Time
	// Clock gives the reference time when Now is zero; clock.System when
	// nil.
	Clock clock.Clock
	// Location is the time zone of the calendar buckets; nil = UTC.
	Location *time.Location
	// MinAge keeps versions younger than it (0 = none).
	MinAge time.Duration
}

// Decision is what the policy does with one version.
type Decision struct {
	Version *metastore.Version
	// Remove: the version goes.
	Remove bool
	// TooYoung: the version would go but is younger than MinAge.
	TooYoung bool
	// KeptExpired: the version's expiry date has passed, but it is kept
	// because it is the newest valid version of its volume (it goes once a
	// newer valid version exists).
	KeptExpired bool
	// Reason says why, in a few words ("latest3", "days30: oldest of day
	// 2", "expired 2026-01-01T00:00:00Z", "protected", ...).
	Reason string
}

// Evaluate applies rules to vs (any volumes, any order) and returns one
// decision per version, in the order of vs.
func Evaluate(vs []*metastore.Version, rules Rules, o Options) []Decision {
	loc := o.Location
	if loc == nil {
		loc = time.UTC
	}
	now := o.Now
	if now.IsZero() {
		now = clock.Or(o.Clock).Now()
	}
	out := make([]Decision, len(vs))
	byVolume := map[string][]int{}
	var volumes []string
	for i, v := range vs {
		out[i].Version = v
		if _, ok := byVolume[v.Volume]; !ok {
			volumes = append(volumes, v.Volume)
		}
		byVolume[v.Volume] = append(byVolume[v.Volume], i)
	}
	for _, vol := range volumes {
		evalVolume(vs, byVolume[vol], out, rules, now, loc)
	}
	if o.MinAge > 0 {
		for i := range out {
			d := &out[i]
			if d.Remove && now.Sub(d.Version.Date) < o.MinAge {
				d.Remove, d.TooYoung = false, true
				d.Reason += fmt.Sprintf("; kept: younger than %s (disallow_rm_when_younger_than_days)", versions.FormatDuration(o.MinAge))
			}
		}
	}
	return out
}

func evalVolume(vs []*metastore.Version, idx []int, out []Decision, rules Rules, now time.Time, loc *time.Location) {
	var eligible, expired []int
	for _, i := range idx {
		v := vs[i]
		d := &out[i]
		switch {
		case v.Protected:
			d.Reason = "protected"
		case v.Status == metastore.StatusIncomplete:
			d.Reason = "incomplete"
		case v.Removing:
			d.Reason = "being removed"
		case v.Expire != nil && !v.Expire.After(now):
			d.Remove, d.Reason = true, "expired "+v.Expire.UTC().Format(time.RFC3339)
			if v.Status == metastore.StatusValid && !v.Date.After(now) {
				expired = append(expired, i)
			}
		case v.Date.After(now):
			d.Reason = "future-dated"
		default:
			eligible = append(eligible, i)
		}
	}
	// Newest first; ties by uid so that the result is deterministic.
	sort.Slice(eligible, func(a, b int) bool { return newer(vs[eligible[a]], vs[eligible[b]]) })
	var valid []int
	for _, i := range eligible {
		if vs[i].Status == metastore.StatusValid {
			valid = append(valid, i)
		}
	}
	keepValid := apply(vs, valid, rules, now, loc)
	keepAll := apply(vs, eligible, rules, now, loc)
	for _, i := range eligible {
		v, d := vs[i], &out[i]
		r := keepAll[i]
		if v.Status == metastore.StatusValid {
			r = keepValid[i]
		}
		d.Remove, d.Reason = !r.keep, r.reason
		if d.Remove && v.Expire != nil {
			d.Remove, d.Reason = false, "expires "+v.Expire.UTC().Format(time.RFC3339)+" ("+r.reason+")"
		}
	}
	// The newest valid version stays, expired or not.
	newest := -1
	if len(valid) > 0 {
		newest = valid[0]
	}
	for _, i := range expired {
		if newest < 0 || newer(vs[i], vs[newest]) {
			newest = i
		}
	}
	if newest < 0 {
		return
	}
	switch d := &out[newest]; {
	case d.Remove && slices.Contains(expired, newest):
		d.Remove, d.KeptExpired = false, true
		d.Reason += "; kept: the newest valid version of its volume"
	case d.Remove:
		d.Remove, d.Reason = false, "newest valid version ("+d.Reason+")"
	}
}

// newer orders versions newest first, ties by uid (as evalVolume sorts).
func newer(a, b *metastore.Version) bool {
	if !a.Date.Equal(b.Date) {
		return a.Date.After(b.Date)
	}
	return a.UID > b.UID
}

type verdict struct {
	keep   bool
	reason string
}

type bucketKey struct {
	cat string
	n   int
}

// apply runs the bucket algorithm over the versions at idx (newest first).
func apply(vs []*metastore.Version, idx []int, rules Rules, now time.Time, loc *time.Location) map[int]verdict {
	res := make(map[int]verdict, len(idx))
	ref := now.In(loc)
	type placed struct {
		i int
		k bucketKey
	}
	var rest []placed
	oldest := map[bucketKey]int{}
	for pos, i := range idx {
		if pos < rules.Latest {
			res[i] = verdict{true, fmt.Sprintf("latest%d", rules.Latest)}
			continue
		}
		k, ok := bucket(ref, vs[i].Date.In(loc), rules)
		if !ok {
			res[i] = verdict{false, "no rule keeps it"}
			continue
		}
		rest = append(rest, placed{i, k})
		oldest[k] = i // newest first: the last one wins
	}
	for _, p := range rest {
		name := fmt.Sprintf("%s%d: %s %d", p.k.cat, *rules.field(p.k.cat), unit[p.k.cat], p.k.n)
		if oldest[p.k] == p.i {
			res[p.i] = verdict{true, name + " keeps its oldest version"}
		} else {
			res[p.i] = verdict{false, name + " keeps an older version"}
		}
	}
	return res
}

var unit = map[string]string{"hours": "hour", "days": "day", "weeks": "week", "months": "month", "years": "year"}

// bucket returns the first configured category whose calendar distance from
// ref to t is at most its count.
func bucket(ref, t time.Time, rules Rules) (bucketKey, bool) {
	dist := [...]struct {
		cat string
		n   int
		d   int64
	}{
		{"hours", rules.Hours, hoursBetween(t, ref)},
		{"days", rules.Days, civilDay(ref) - civilDay(t)},
		{"weeks", rules.Weeks, (monday(ref) - monday(t)) / 7},
		{"months", rules.Months, int64(ref.Year()*12+int(ref.Month())) - int64(t.Year()*12+int(t.Month()))},
		{"years", rules.Years, int64(ref.Year() - t.Year())},
	}
	for _, c := range dist {
		if c.n > 0 && c.d >= 0 && c.d <= int64(c.n) {
			return bucketKey{c.cat, int(c.d)}, true
		}
	}
	return bucketKey{}, false
}

// hourStart is the start of t's hour in t's location (not t.Truncate,
// which works on absolute time and is off in zones with offsets that are
// not whole hours).
func hourStart(t time.Time) time.Time {
	return t.Add(-time.Duration(t.Minute())*time.Minute - time.Duration(t.Second())*time.Second - time.Duration(t.Nanosecond()))
}

func hoursBetween(t, ref time.Time) int64 {
	d := hourStart(ref).Sub(hourStart(t))
	h := int64(d / time.Hour)
	if d%time.Hour < 0 {
		h--
	}
	return h
}

// civilDay numbers t's local calendar date (days since 1970-01-01).
func civilDay(t time.Time) int64 {
	y, m, d := t.Date()
	return time.Date(y, m, d, 0, 0, 0, 0, time.UTC).Unix() / 86400
}

// monday numbers the Monday that starts t's week.
func monday(t time.Time) int64 {
	return civilDay(t) - int64((t.Weekday()+6)%7)
}
