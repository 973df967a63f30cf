package retention_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/backy/backy/versions/retention"
)

func TestParseRules(t *testing.T) {
	good := []struct {
		in   string
		want retention.Rules
		str  string
	}{
		{"latest3", retention.Rules{Latest: 3}, "latest3"},
		{"days30,latest3", retention.Rules{Latest: 3, Days: 30}, "latest3,days30"},
		{"years2,months3,weeks4,days5,hours6,latest7", retention.Rules{7, 6, 5, 4, 3, 2}, "latest7,hours6,days5,weeks4,months3,years2"},
		{"hours024", retention.Rules{Hours: 24}, "hours24"},
		{"years1000000", retention.Rules{Years: 1000000}, "years1000000"},
	}
	for _, c := range good {
		r, err := retention.ParseRules(c.in)
		if err != nil || r != c.want || r.String() != c.str {
			t.Errorf("ParseRules(%q) = %+v %q, %v; want %+v %q", c.in, r, r.String(), err, c.want, c.str)
		}
	}
	bad := []struct{ in, msg string }{
		{"", "empty"},
		{",", "empty rule"},
		{"latest3,", "empty rule"},
		{"latest0", "at least 1"},
		{"latest", "lacks its count"},
		{"latest-1", "must be a number"},
		{"latest 3", "must be a number"},
		{" latest3", "unknown rule"},
		{"Latest3", "unknown rule"},
		{"minutes5", "unknown rule"},
		{"3days", "unknown rule"},
		{"days3,days4", "appears twice"},
		{"days1000001", "larger than"},
		{"days99999999999999999999999", "larger than"},
		{"days3x", "must be a number"},
		{"days3;hours2", "must be a number"},
		{"days\n3", "must be a number"},
	}
	for _, c := range bad {
		_, err := retention.ParseRules(c.in)
		if !errors.Is(err, retention.ErrInvalidRules) || !strings.Contains(err.Error(), c.msg) || strings.Contains(err.Error(), "\n") {
			t.Errorf("ParseRules(%q) = %v; want ErrInvalidRules, one line, mentioning %q", c.in, err, c.msg)
		}
	}
}

func FuzzParseRules(f *testing.F) {
	for _, s := range []string{"latest3", "latest3,hours24,days30,weeks8,months12,years5", "days0", "days3,days3", "", ",", "hours-1", "years1000001"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := retention.ParseRules(s)
		if err != nil {
			if !errors.Is(err, retention.ErrInvalidRules) || strings.ContainsAny(err.Error(), "\n\r") || r != (retention.Rules{}) {
				t.Fatalf("ParseRules(%q): bad error %v (rules %+v)", s, err, r)
			}
			return
		}
		if r == (retention.Rules{}) {
			t.Fatalf("ParseRules(%q) accepted no rule", s)
		}
		for _, n := range []int{r.Latest, r.Hours, r.Days, r.Weeks, r.Months, r.Years} {
			if n < 0 || n > retention.MaxCount {
				t.Fatalf("ParseRules(%q) = %+v: count out of range", s, r)
			}
		}
		r2, err := retention.ParseRules(r.String())
		if err != nil || r2 != r {
			t.Fatalf("ParseRules(%q) = %+v, but its String %q parses to %+v, %v", s, r, r.String(), r2, err)
		}
	})
}

func TestParseExpiry(t *testing.T) {
	berlin := mustLoc(t, "Europe/Berlin")
	cases := []struct {
		in   string
		loc  *time.Location
		want string // RFC 3339 UTC; "" = nil
	}{
		{"never", nil, ""},
		{"2026-12-31", nil, "2026-12-31T00:00:00Z"},
		{"2026-12-31", berlin, "2026-12-30T23:00:00Z"},
		{"2026-07-01", berlin, "2026-06-30T22:00:00Z"},
		{"2026-12-31T18:00:00+01:00", berlin, "2026-12-31T17:00:00Z"},
		{"2026-12-31T18:00:00Z", nil, "2026-12-31T18:00:00Z"},
	}
	for _, c := range cases {
		got, err := retention.ParseExpiry(c.in, c.loc)
		if err != nil {
			t.Errorf("ParseExpiry(%q): %v", c.in, err)
			continue
		}
		if (got == nil) != (c.want == "") || (got != nil && got.Format(time.RFC3339) != c.want) {
			t.Errorf("ParseExpiry(%q, %v) = %v, want %q", c.in, c.loc, got, c.want)
		}
	}
	for _, in := range []string{"", "tomorrow", "2026-13-01", "2026-02-30", "31.12.2026", "2026-12-31 18:00", "Never"} {
		if _, err := retention.ParseExpiry(in, nil); !errors.Is(err, retention.ErrInvalidDate) {
			t.Errorf("ParseExpiry(%q) = %v, want ErrInvalidDate", in, err)
		}
	}
}

func mustLoc(t testing.TB, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}
