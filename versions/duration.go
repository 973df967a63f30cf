package versions

import (
	"strconv"
	"time"
)

// FormatDuration writes d for people, as ages, minimum ages and ETAs are
// shown: its largest whole unit and, when not zero, the next one ("3d",
// "3d 4h", "5h 12m", "12m 5s", "42s"; under a second "0s"). A negative
// duration gets a leading "-".
func FormatDuration(d time.Duration) string {
	if d < 0 {
		return "-" + FormatDuration(-d)
	}
	units := []struct {
		name string
		size time.Duration
	}{{"d", 24 * time.Hour}, {"h", time.Hour}, {"m", time.Minute}, {"s", time.Second}}
	for i, u := range units {
		if d < u.size && i < len(units)-1 {
			continue
		}
		n := d / u.size
		s := strconv.FormatInt(int64(n), 10) + u.name
		if i+1 < len(units) {
			if m := (d - n*u.size) / units[i+1].size; m > 0 {
				s += " " + strconv.FormatInt(int64(m), 10) + units[i+1].name
			}
		}
		return s
	}
	return "0s" // not reached
}
