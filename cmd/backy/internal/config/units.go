package config

import "strconv"

// FormatSize writes n bytes in the size syntax of the configuration, in
// the largest binary unit that holds it exactly ("4MiB", "64KiB", "1GiB";
// "1000 bytes" when no unit does), for messages naming sizes and ranges.
func FormatSize(n int64) string {
	for _, u := range []struct {
		name  string
		shift uint
	}{{"GiB", 30}, {"MiB", 20}, {"KiB", 10}} {
		if n != 0 && n%(1<<u.shift) == 0 {
			return strconv.FormatInt(n>>u.shift, 10) + u.name
		}
	}
	if n == 1 {
		return "1 byte"
	}
	return strconv.FormatInt(n, 10) + " bytes"
}
