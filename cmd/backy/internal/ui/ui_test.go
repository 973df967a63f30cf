package ui

import (
	"strings"
	"testing"
	"time"
)

func TestProgressLine(t *testing.T) {
	const MiB = 1 << 20
	cases := []struct {
		name        string
		blocks      bool
		done, total int64
		elapsed     time.Duration
		want        string
	}{
		{"bytes, 90 s to go", false, 100 * MiB, 1000 * MiB, 10 * time.Second, "backup  10.0%  100.0 MiB / 1000.0 MiB  10.0 MiB/s  ETA 1m 30s"},
		{"bytes, hours to go", false, 1 * MiB, 10000 * MiB, 2 * time.Second, "backup   0.0%  1.0 MiB / 9.8 GiB  512.0 KiB/s  ETA 5h 33m"},
		{"nothing done yet", false, 0, 1000 * MiB, time.Second, "backup   0.0%  0 B / 1000.0 MiB  0 B/s  ETA --"},
		{"finished", false, 1000 * MiB, 1000 * MiB, 5 * time.Second, "backup 100.0%  1000.0 MiB / 1000.0 MiB  200.0 MiB/s  ETA --"},
		{"blocks", true, 250, 1000, 5 * time.Second, "backup  25.0%  250 / 1000 blocks  50 blocks/s  ETA 15s"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := newProgress(nil, "backup", c.blocks, time.Now)
			if got := p.line(c.done, c.total, c.elapsed); got != c.want {
				t.Errorf("got  %q\nwant %q", got, c.want)
			}
		})
	}
}

func TestProgressUpdate(t *testing.T) {
	var out strings.Builder
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := t0
	p := newProgress(&out, "deep-scrub", true, func() time.Time { return now })
	now = t0.Add(4 * time.Second)
	p.Update(100, 300)
	now = now.Add(100 * time.Millisecond) // too soon: not drawn
	p.Update(101, 300)
	p.Done()
	if want := "\r\033[Kdeep-scrub  33.3%  100 / 300 blocks  25 blocks/s  ETA 8s\r\033[K"; out.String() != want {
		t.Errorf("drew %q, want %q", out.String(), want)
	}
	var nilp *Progress
	nilp.Update(1, 2)
	nilp.Done()
}
