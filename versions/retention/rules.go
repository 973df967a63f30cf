package retention

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// ErrInvalidRules: a rules string does not parse.
var ErrInvalidRules = errors.New("invalid retention rules")

// ErrInvalidDate: an expiry date does not parse.
var ErrInvalidDate = errors.New("invalid date")

// MaxCount bounds N in a rule; larger counts are refused, not clamped.
const MaxCount = 1_000_000

// Rules is a parsed retention policy. A zero count means the category is
// absent.
type Rules struct {
	Latest, Hours, Days, Weeks, Months, Years int
}

// categories in evaluation order (youngest first), whatever the order in
// which they were written.
var categories = []string{"latest", "hours", "days", "weeks", "months", "years"}

func (r *Rules) field(cat string) *int {
	switch cat {
	case "latest":
		return &r.Latest
	case "hours":
		return &r.Hours
	case "days":
		return &r.Days
	case "weeks":
		return &r.Weeks
	case "months":
		return &r.Months
	case "years":
		return &r.Years
	}
	return nil
}

const rulesHelp = "use comma-separated latestN,hoursN,daysN,weeksN,monthsN,yearsN, each at most once, N >= 1, e.g. latest3,days7,months12"

// ParseRules parses "latest3,hours24,days30,weeks8,months12,years5": any
// non-empty subset of the categories, in any order, each at most once,
// with 1 <= N <= MaxCount and no spaces. Errors wrap ErrInvalidRules and are
// one line.
func ParseRules(s string) (Rules, error) {
	var r Rules
	bad := func(format string, args ...any) (Rules, error) {
		return Rules{}, fmt.Errorf("%w %q: %s; %s", ErrInvalidRules, s, fmt.Sprintf(format, args...), rulesHelp)
	}
	if s == "" {
		return bad("empty")
	}
	for _, tok := range strings.Split(s, ",") {
		i := strings.IndexFunc(tok, func(c rune) bool { return c < 'a' || c > 'z' })
		if i < 0 {
			i = len(tok)
		}
		cat, num := tok[:i], tok[i:]
		if tok == "" {
			return bad("empty rule")
		}
		f := r.field(cat)
		if f == nil {
			return bad("unknown rule %q", tok)
		}
		if num == "" {
			return bad("%q lacks its count", tok)
		}
		if strings.Trim(num, "0123456789") != "" {
			return bad("%q: the count must be a number", tok)
		}
		n, err := strconv.Atoi(num)
		if err != nil || n > MaxCount {
			return bad("%q: the count is larger than %d", tok, MaxCount)
		}
		if n < 1 {
			return bad("%q: the count must be at least 1", tok)
		}
		if *f != 0 {
			return bad("%q appears twice", cat)
		}
		*f = n
	}
	return r, nil
}

// String returns the rules in canonical form (categories youngest first).
func (r Rules) String() string {
	var parts []string
	for _, c := range categories {
		if n := *r.field(c); n > 0 {
			parts = append(parts, c+strconv.Itoa(n))
		}
	}
	return strings.Join(parts, ",")
}

// ParseExpiry parses an expiry date: RFC 3339 ("2026-12-31T18:00:00+01:00"),
// or YYYY-MM-DD meaning midnight at the start of that day in loc (UTC when
// nil). "never" returns nil (no expiry). Errors wrap ErrInvalidDate.
func ParseExpiry(s string, loc *time.Location) (*time.Time, error) {
	if loc == nil {
		loc = time.UTC
	}
	if s == "never" {
		return nil, nil
	}
	if t, err := time.ParseInLocation(time.DateOnly, s, loc); err == nil {
		t = t.UTC()
		return &t, nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return nil, fmt.Errorf("%w %q: use RFC 3339 (2026-12-31T18:00:00Z), YYYY-MM-DD (midnight in the time zone) or never", ErrInvalidDate, s)
	}
	t = t.UTC()
	return &t, nil
}
