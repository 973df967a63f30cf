package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// e2eMetrics parses a Prometheus text file into series -> value.
func e2eMetrics(t *testing.T, path string) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for _, line := range strings.Split(string(e2eReadFile(t, path)), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		sp := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[sp+1:], 64)
		if sp < 0 || err != nil {
			t.Fatalf("metrics line %q does not parse", line)
		}
		out[line[:sp]] = v
	}
	return out
}

// TestMetricsFile: --metrics-file (global or after the command) keeps one
// set of samples per command, updated atomically, with the store gauges.
func TestMetricsFile(t *testing.T) {
	b := e2eNewBox(t)
	prom := b.path("node/backy.prom")
	if err := os.MkdirAll(filepath.Dir(prom), 0o755); err != nil {
		t.Fatal(err)
	}
	src := b.path("src.img")
	e2eRandomFile(t, src, 3<<20, 7)
	b.ok("--metrics-file", prom, "init", "--block-size", "65536")
	v := b.backup(src, "vol", "--metrics-file", prom)
	m := e2eMetrics(t, prom)
	for series, want := range map[string]float64{
		`backy_command_success{command="init"}`:                        1,
		`backy_command_success{command="backup",volume="vol"}`:         1,
		`backy_command_exit_code{command="backup",volume="vol"}`:       0,
		`backy_command_bytes_processed{command="backup",volume="vol"}`: 3 << 20,
		`backy_store_versions`:                                         1,
		`backy_store_invalid_versions`:                                 0,
		`backy_store_blocks`:                                           48,
	} {
		if got, ok := m[series]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", series, got, ok, want)
		}
	}
	if m[`backy_command_last_run_timestamp_seconds{command="backup",volume="vol"}`] == 0 || m[`backy_command_duration_seconds{command="backup",volume="vol"}`] <= 0 {
		t.Errorf("no time figures for backup: %v", m)
	}
	// A failing command records its exit code; the others stay.
	b.fail(exitNotFound, "--metrics-file", prom, "restore", "Vnosuch", b.path("x.img"))
	b.restore(v.UID, src, "--metrics-file", prom)
	m = e2eMetrics(t, prom)
	if m[`backy_command_success{command="restore"}`] != 1 || m[`backy_command_success{command="backup",volume="vol"}`] != 1 {
		t.Errorf("after a failed and a good restore: %v", m)
	}
	if m[`backy_command_bytes_processed{command="restore"}`] != 3<<20 {
		t.Errorf("restore bytes = %v", m[`backy_command_bytes_processed{command="restore"}`])
	}
	b.fail(exitNotFound, "rm", "Vnosuch", "--metrics-file", prom)
	m = e2eMetrics(t, prom)
	if m[`backy_command_success{command="rm"}`] != 0 || m[`backy_command_exit_code{command="rm"}`] != exitNotFound {
		t.Errorf("failed rm: %v", m)
	}
	// Nothing but the file (and its lock) is left in the directory: no
	// temporary files for the textfile collector to trip over.
	ents, _ := os.ReadDir(filepath.Dir(prom))
	for _, e := range ents {
		if n := e.Name(); n != "backy.prom" && n != "backy.prom.lock" {
			t.Errorf("left in the metrics directory: %s", n)
		}
	}
	// An unwritable metrics file fails an otherwise good command.
	r := b.run("--metrics-file", b.path("no/such/dir/backy.prom"), "ls")
	if r.code == 0 || !strings.Contains(r.stderr, "metrics file") {
		t.Errorf("unwritable metrics file:\n%v", r)
	}
}
