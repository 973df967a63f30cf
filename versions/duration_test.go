package versions

import (
	"testing"
	"time"
)

func TestFormatDuration(t *testing.T) {
	for _, c := range []struct {
		d    time.Duration
		want string
	}{
		{0, "0s"}, {999 * time.Millisecond, "0s"}, {time.Second, "1s"}, {42 * time.Second, "42s"}, {90 * time.Second, "1m 30s"},
		{time.Hour, "1h"}, {time.Hour + 5*time.Second, "1h"}, {time.Hour + 12*time.Minute + 5*time.Second, "1h 12m"},
		{72 * time.Hour, "3d"}, {76*time.Hour + 30*time.Minute, "3d 4h"}, {72*time.Hour + 5*time.Minute, "3d"},
		{-90 * time.Second, "-1m 30s"}, {400 * 24 * time.Hour, "400d"},
	} {
		if got := FormatDuration(c.d); got != c.want {
			t.Errorf("FormatDuration(%s) = %q, want %q", c.d, got, c.want)
		}
	}
}
