package main

import (
	"fmt"
	"strings"
	"testing"
)

// TestIssue13ConfigRanges: every count and size of the configuration is
// bounded; a value out of range exits 78 with one line naming the key and
// its range in units, before anything is allocated or written. The
// command-line flags that take counts or sizes exit 64 the same way.
func TestIssue13ConfigRanges(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	img := b.path("disk.img")
	e2eRandomFile(t, img, 1*e2eMiB, 1301)
	cfg := func(name, defaults, data string) string {
		path := b.path(name + ".cfg")
		e2eWriteFile(t, path, []byte(fmt.Sprintf("[DEFAULTS]\n%s\n[MetaBackend]\npath = %s/backy.db\n[DataBackend]\npath = %s/data\n%s\n",
			defaults, b.path(name), b.path(name), data)))
		return path
	}
	for _, tc := range []struct {
		name, defaults, data string
		want                 []string
	}{
		{"workers", "workers = 1000000", "", []string{`[DEFAULTS] workers: "1000000" is out of range`, "workers must be between 0 and 256"}},
		{"block-size", "block_size = 1GiB", "", []string{"block_size must be between 64KiB and 64MiB"}},
		{"compression", "compression_level = 22", "", []string{"compression_level must be between 1 and 4"}},
		{"days", "disallow_rm_when_younger_than_days = 99999999", "", []string{"must be between 0 and 36500"}},
		{"writes", "", "simultaneous_writes = 100000", []string{"[DataBackend] simultaneous_writes", "between 1 and 1024"}},
		{"reads", "", "simultaneous_reads = 100000", []string{"[DataBackend] simultaneous_reads", "between 1 and 1024"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := b.with(t)
			c := cfg(tc.name, tc.defaults, tc.data)
			for _, args := range [][]string{{"-c", c, "init"}, {"-c", c, "backup", img, "vol"}} {
				r := b.fail(78, args...)
				for _, w := range tc.want {
					if !strings.Contains(r.stderr, w) {
						t.Errorf("the message should say %q:\n%v", w, r)
					}
				}
			}
		})
	}

	b.ok("init")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"block-size", []string{"-c", cfg("bs", "", ""), "init", "--block-size", "1000"}, "--block-size must be between 64KiB and 64MiB"},
		{"block-size-align", []string{"-c", cfg("bs2", "", ""), "init", "--block-size", "65537"}, "--block-size must be a multiple of 4KiB"},
		{"cache-mib-zero", []string{"nbd", "--cache-mib", "0"}, "--cache-mib must be between 1 and 65536"},
		{"cache-mib-huge", []string{"nbd", "--cache-mib", "100000000"}, "up to 64GiB"},
		{"cache-size-small", []string{"nbd", "--cache-size", "64KiB"}, "--cache-size must be between 1MiB and 64GiB"},
		{"cache-size-huge", []string{"nbd", "--cache-size", "1TiB"}, "--cache-size must be between 1MiB and 64GiB"},
		{"percent", []string{"scrub", "--all", "--percent", "1000"}, "--percent"},
	} {
		t.Run("flag-"+tc.name, func(t *testing.T) {
			b := b.with(t)
			r := b.fail(64, tc.args...)
			if !strings.Contains(r.stderr, tc.want) {
				t.Errorf("the message should say %q:\n%v", tc.want, r)
			}
		})
	}
}
