package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// checkValid reports every validation rule an accepted config breaks.
func checkValid(t *testing.T, c *Config) {
	t.Helper()
	d := c.Defaults
	if d.BlockSize < 64<<10 || d.BlockSize > 64<<20 || d.BlockSize%4096 != 0 {
		t.Errorf("invalid BlockSize %d", d.BlockSize)
	}
	switch d.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		t.Errorf("invalid LogLevel %q", d.LogLevel)
	}
	if d.DisallowRmWhenYoungerThanDays < 0 {
		t.Errorf("invalid DisallowRmWhenYoungerThanDays %d", d.DisallowRmWhenYoungerThanDays)
	}
	if d.Workers < 0 {
		t.Errorf("invalid Workers %d", d.Workers)
	}
	if c.Meta.Type != "bbolt" {
		t.Errorf("invalid Meta.Type %q", c.Meta.Type)
	}
	if c.Data.Type != "file" {
		t.Errorf("invalid Data.Type %q", c.Data.Type)
	}
	if c.Data.SimultaneousWrites < 1 || c.Data.SimultaneousReads < 1 {
		t.Errorf("invalid simultaneous writes/reads %d/%d", c.Data.SimultaneousWrites, c.Data.SimultaneousReads)
	}
	if c.Meta.Path == "" || c.Data.Path == "" {
		t.Errorf("empty path: Meta.Path %q, Data.Path %q", c.Meta.Path, c.Data.Path)
	}
}

// checkParsed checks the rules that hold for configs read from a file on
// top of checkValid: all paths absolute and clean.
func checkParsed(t *testing.T, c *Config) {
	t.Helper()
	checkValid(t, c)
	paths := []string{c.Meta.Path, c.Data.Path, c.File}
	if c.Defaults.LogFile != "" {
		paths = append(paths, c.Defaults.LogFile)
	}
	for _, p := range paths {
		if !filepath.IsAbs(p) || filepath.Clean(p) != p || strings.IndexByte(p, 0) >= 0 {
			t.Errorf("path %q is not absolute and clean", p)
		}
	}
}

func FuzzParse(f *testing.F) {
	if data, err := os.ReadFile(examplePath); err == nil {
		f.Add(string(data))
	} else {
		f.Fatal(err)
	}
	f.Add(required)
	for _, tt := range validTests {
		f.Add(fullInput(tt.in))
	}
	for _, tt := range errorTests {
		f.Add(tt.in)
	}
	f.Fuzz(func(t *testing.T, in string) {
		c, err := Parse("backy.cfg", []byte(in))
		if err != nil {
			if c != nil {
				t.Errorf("config %+v returned with error %v", c, err)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %q does not wrap ErrInvalid", err)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "backy.cfg:") || strings.ContainsAny(msg, "\n\r") {
				t.Errorf("bad message %q", msg)
			}
			return
		}
		checkParsed(t, c)
		// Parsing is deterministic.
		c2, err := Parse("backy.cfg", []byte(in))
		if err != nil || *c2 != *c {
			t.Errorf("second parse differs: %+v, %v", c2, err)
		}
	})
}
