package config

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestFormatSize(t *testing.T) {
	for _, tc := range []struct {
		n    int64
		want string
	}{
		{0, "0 bytes"},
		{1, "1 byte"},
		{512, "512 bytes"},
		{1023, "1023 bytes"},
		{1024, "1KiB"},
		{4096, "4KiB"},
		{65535, "65535 bytes"},
		{65536, "64KiB"},
		{65537, "65537 bytes"},
		{1536 << 10, "1536KiB"},
		{4 << 20, "4MiB"},
		{64 << 20, "64MiB"},
		{1 << 30, "1GiB"},
		{1025 << 30, "1025GiB"},
		{1 << 40, "1TiB"},
		{1 << 62, "4EiB"},
		{-5, "-5 bytes"},
	} {
		if got := FormatSize(tc.n); got != tc.want {
			t.Errorf("FormatSize(%d) = %q, want %q", tc.n, got, tc.want)
		}
	}
}

func TestCheckBlockSize(t *testing.T) {
	for _, tc := range []struct {
		n    int64
		want string
	}{
		{64 << 10, ""},
		{4 << 20, ""},
		{64 << 20, ""},
		{69632, ""},
		{32 << 10, "--block-size must be between 64KiB and 64MiB (e.g. 4MiB)"},
		{128 << 20, "--block-size must be between 64KiB and 64MiB (e.g. 4MiB)"},
		{0, "--block-size must be between 64KiB and 64MiB (e.g. 4MiB)"},
		{-1, "--block-size must be between 64KiB and 64MiB (e.g. 4MiB)"},
		{65537, "--block-size must be a multiple of 4KiB (e.g. 4MiB)"},
	} {
		if got := CheckBlockSize("--block-size", tc.n); got != tc.want {
			t.Errorf("CheckBlockSize(%d) = %q, want %q", tc.n, got, tc.want)
		}
	}
}

// TestCountsBounded: every count and size key of the configuration has an
// upper bound, and a value above it is an error (exit 78 in the CLI)
// naming the key and its range in units.
func TestCountsBounded(t *testing.T) {
	const meta = "[MetaBackend]\npath = /m/backy.db\n"
	for _, tc := range []struct {
		section, key, value string
		want                string
	}{
		{"DEFAULTS", "workers", "1000000", "workers must be between 0 and 256 (0 = one per CPU)"},
		{"DEFAULTS", "workers", "9223372036854775807", "workers must be between 0 and 256"},
		{"DEFAULTS", "block_size", "1G", "block_size must be between 64KiB and 64MiB"},
		{"DEFAULTS", "compression_level", "100", "compression_level must be between 1 and 4"},
		{"DEFAULTS", "disallow_rm_when_younger_than_days", "1000000000", "disallow_rm_when_younger_than_days must be between 0 and 36500"},
		{"DataBackend", "simultaneous_writes", "1000000", "simultaneous_writes must be between 1 and 1024"},
		{"DataBackend", "simultaneous_reads", "1000000", "simultaneous_reads must be between 1 and 1024"},
	} {
		t.Run(tc.key+"="+tc.value, func(t *testing.T) {
			var in string
			if tc.section == "DataBackend" {
				in = meta + "[DataBackend]\npath = /d\n" + tc.key + " = " + tc.value + "\n"
			} else {
				in = meta + "[DataBackend]\npath = /d\n[" + tc.section + "]\n" + tc.key + " = " + tc.value + "\n"
			}
			_, err := Parse("backy.cfg", []byte(in))
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Parse accepted %s = %s (err %v)", tc.key, tc.value, err)
			}
			msg := err.Error()
			if !strings.Contains(msg, fmt.Sprintf("[%s] %s: ", tc.section, tc.key)) || !strings.Contains(msg, tc.want) {
				t.Errorf("message %q should name [%s] %s and say %q", msg, tc.section, tc.key, tc.want)
			}
		})
	}
}
