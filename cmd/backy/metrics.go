package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/backy/backy/internal/atomicfile"
	"github.com/backy/backy/metastore"
)

// metrics is what a command reports for --metrics-file.
type metrics struct {
	file    string // --metrics-file, "" = none
	command string
	// volume labels the samples of a per-volume command (backup).
	volume string
	start  time.Time
	// Set by commands that process data.
	bytesProcessed int64
	blocksChecked  int64
}

// metricDefs lists the metrics backy writes, with their help texts, in
// the order they appear in the file.
var metricDefs = []struct{ name, typ, help string }{
	{"backy_command_success", "gauge", "1 if the last run of the command succeeded, else 0."},
	{"backy_command_exit_code", "gauge", "Exit code of the last run of the command."},
	{"backy_command_last_run_timestamp_seconds", "gauge", "Unix time at which the last run of the command ended."},
	{"backy_command_duration_seconds", "gauge", "Wall time of the last run of the command."},
	{"backy_command_bytes_processed", "gauge", "Bytes the last run of the command read (backup), wrote (restore, migrate-encryption), stored in the target (copy), verified (deep-scrub) or freed (cleanup)."},
	{"backy_command_blocks_checked", "gauge", "Blocks the last run of the command checked (scrub, deep-scrub), examined (migrate-encryption), sent (copy) or deleted (cleanup)."},
	{"backy_store_versions", "gauge", "Versions in the store."},
	{"backy_store_invalid_versions", "gauge", "Versions in the store with a damaged or missing block."},
	{"backy_store_incomplete_versions", "gauge", "Versions in the store whose backup has not finished."},
	{"backy_store_blocks", "gauge", "Distinct blocks stored."},
	{"backy_store_stored_bytes", "gauge", "Bytes stored in the data backend (objects, after compression and encryption)."},
	{"backy_store_plain_bytes", "gauge", "Bytes of the distinct blocks before compression."},
}

// writeMetrics updates the metrics file after a command: the samples of
// this command (label command="...", and volume="..." for a backup) and
// the store-wide gauges are replaced, samples of other commands are kept,
// so that one file can serve the nightly backup, scrub, enforce and
// cleanup jobs. The file is replaced atomically (temp file, fsync,
// rename), as node_exporter's textfile collector requires, under a lock
// that serialises concurrent backy processes.
//
// node_exporter refuses a series that two files repeat. A backup writes
// the store-wide gauges only into a file that a store-wide command (any
// other) writes too, as one file for all jobs (backy.cron) is; into a file
// of its own (one per volume, as the systemd units have) it writes only
// its volume's samples, and drops store gauges and unlabelled backup
// samples that an older backy left there.
func (e *env) writeMetrics(code int) error {
	m := e.metrics
	if m.file == "" || m.command == "" {
		return nil
	}
	lk, err := lockMetrics(m.file)
	if err != nil {
		return err
	}
	defer lk.Close()
	samples := map[string]map[string]string{} // metric -> labels -> value
	if old, err := os.ReadFile(m.file); err == nil {
		parseSamples(old, samples)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("metrics file: %w", err)
	}
	set := func(name, labels string, v any) {
		if samples[name] == nil {
			samples[name] = map[string]string{}
		}
		samples[name][labels] = fmt.Sprint(v)
	}
	lbl := fmt.Sprintf(`{command=%q}`, m.command)
	storeWide := true
	if m.volume != "" {
		lbl = fmt.Sprintf(`{command=%q,volume="%s"}`, m.command, promEscape(m.volume))
		// Unlabelled samples of this command are an older backy's.
		legacy := fmt.Sprintf(`{command=%q}`, m.command)
		for _, vals := range samples {
			delete(vals, legacy)
		}
		storeWide = false
		for k := range samples["backy_command_success"] {
			if !strings.Contains(k, `,volume="`) {
				storeWide = true // a store-wide command writes this file too
			}
		}
		if !storeWide {
			for _, d := range metricDefs {
				if strings.HasPrefix(d.name, "backy_store_") {
					delete(samples, d.name)
				}
			}
		}
	}
	set("backy_command_success", lbl, btoi(code == exitOK))
	set("backy_command_exit_code", lbl, code)
	set("backy_command_last_run_timestamp_seconds", lbl, time.Now().Unix())
	set("backy_command_duration_seconds", lbl, fmt.Sprintf("%.3f", time.Since(m.start).Seconds()))
	set("backy_command_bytes_processed", lbl, m.bytesProcessed)
	set("backy_command_blocks_checked", lbl, m.blocksChecked)
	if e.cfg != nil && storeWide {
		if st, err := storeGauges(e.cfg.Meta.Path); err == nil {
			for name, v := range st {
				set(name, "", v)
			}
		} else if errors.Is(err, fs.ErrNotExist) {
			e.log.Debug("metrics: no store yet, no store figures", "err", err)
		} else {
			// The command's own samples are still written; the operator
			// learns why the store gauges are stale.
			e.log.Warn("metrics: store figures not updated", "err", err)
		}
	}
	var b bytes.Buffer
	for _, d := range metricDefs {
		vals := samples[d.name]
		if len(vals) == 0 {
			continue
		}
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", d.name, d.help, d.name, d.typ)
		keys := make([]string, 0, len(vals))
		for k := range vals {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(&b, "%s%s %s\n", d.name, k, vals[k])
		}
	}
	return atomicWrite(m.file, b.Bytes())
}

// promEscape escapes a label value for the text format.
func promEscape(v string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(v)
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// storeGauges reads the store-wide figures; a store that does not exist or
// cannot be opened (newer schema) yields an error and no figures.
func storeGauges(dbPath string) (map[string]int64, error) {
	if _, err := os.Stat(dbPath); err != nil {
		return nil, err
	}
	db, err := metastore.Open(dbPath, metastore.Options{LockTimeout: 10 * time.Second})
	if err != nil {
		return nil, err
	}
	defer db.Close()
	st, err := db.Stats()
	if err != nil {
		return nil, err
	}
	var invalid, incomplete int64
	if _, err := db.Versions(func(v *metastore.Version) bool {
		switch v.Status {
		case metastore.StatusInvalid:
			invalid++
		case metastore.StatusIncomplete:
			incomplete++
		}
		return false
	}); err != nil {
		return nil, err
	}
	return map[string]int64{
		"backy_store_versions": int64(st.Versions), "backy_store_invalid_versions": invalid,
		"backy_store_incomplete_versions": incomplete, "backy_store_blocks": st.Blocks,
		"backy_store_stored_bytes": st.StoredBytes, "backy_store_plain_bytes": st.PlainBytes,
	}, nil
}

// parseSamples reads the samples of backy's metrics from an earlier file
// (comments and metrics backy does not write are dropped).
func parseSamples(data []byte, into map[string]map[string]string) {
	known := map[string]bool{}
	for _, d := range metricDefs {
		known[d.name] = true
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		sp := strings.LastIndexByte(line, ' ')
		if sp < 0 {
			continue
		}
		series, value := line[:sp], line[sp+1:]
		name, labels := series, ""
		if i := strings.IndexByte(series, '{'); i >= 0 {
			name, labels = series[:i], series[i:]
		}
		if !known[name] {
			continue
		}
		if into[name] == nil {
			into[name] = map[string]string{}
		}
		into[name][labels] = value
	}
}

// lockMetrics serialises writers of one metrics file (flock on a lock
// file beside it; released when the process dies).
func lockMetrics(path string) (*os.File, error) {
	f, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("metrics file: %w", err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("metrics file: locking: %w", err)
	}
	return f, nil
}

// atomicWrite replaces path with data, atomically and durably. The
// temporary file is ".<name>.tmp-<hex>", a name node_exporter ignores
// (it reads *.prom only).
func atomicWrite(path string, data []byte) error {
	if err := atomicfile.WriteFile(path, data, atomicfile.Options{Perm: 0o644}); err != nil {
		return fmt.Errorf("metrics file: %w", err)
	}
	return nil
}
