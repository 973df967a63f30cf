package main

// Issue 13 item 23: the metrics files that a documented setup writes (the
// systemd units: one file per volume and one for the maintenance; the
// cron file) never repeat a series, as node_exporter's textfile collector
// requires, and per-volume series carry the volume.

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// e2eGatherTextfiles reads every *.prom file of dir as node_exporter's
// textfile collector does and returns series -> value (labels sorted,
// empty ones dropped, as Prometheus treats them), and every problem the
// collector would refuse: a file that does not parse, a series that two
// files (or one file twice) hold, a metric with different help or type in
// two files.
func e2eGatherTextfiles(t *testing.T, dir string) (map[string]float64, []string) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.prom"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no *.prom files in %s (%v)", dir, err)
	}
	series := map[string]float64{}
	from := map[string]string{}
	type meta struct{ help, typ, file string }
	families := map[string]meta{}
	var problems []string
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		p := expfmt.NewTextParser(model.LegacyValidation)
		mfs, err := p.TextToMetricFamilies(fh)
		fh.Close()
		if err != nil {
			problems = append(problems, filepath.Base(f)+": "+err.Error())
			continue
		}
		for name, mf := range mfs {
			m := meta{mf.GetHelp(), mf.GetType().String(), filepath.Base(f)}
			if old, ok := families[name]; ok && (old.help != m.help || old.typ != m.typ) {
				problems = append(problems, name+": help or type differ between "+old.file+" and "+m.file)
			} else if !ok {
				families[name] = m
			}
			for _, met := range mf.GetMetric() {
				key := name + e2eLabelString(met.GetLabel())
				if old, ok := from[key]; ok {
					problems = append(problems, key+" is in "+old+" and in "+filepath.Base(f))
					continue
				}
				from[key] = filepath.Base(f)
				switch {
				case met.GetGauge() != nil:
					series[key] = met.GetGauge().GetValue()
				case met.GetUntyped() != nil:
					series[key] = met.GetUntyped().GetValue()
				}
			}
		}
	}
	return series, problems
}

func e2eLabelString(ls []*dto.LabelPair) string {
	var parts []string
	for _, l := range ls {
		if l.GetValue() != "" {
			parts = append(parts, l.GetName()+`="`+l.GetValue()+`"`)
		}
	}
	if len(parts) == 0 {
		return ""
	}
	sort.Strings(parts)
	return "{" + strings.Join(parts, ",") + "}"
}

// e2eMetricsSetup is a store with a configuration file and a textfile
// directory, as a documented setup has them.
type e2eMetricsSetup struct {
	b        *e2eBox
	cfg      string
	textfile string
}

func e2eNewMetricsSetup(t *testing.T) *e2eMetricsSetup {
	t.Helper()
	b := e2eNewBox(t)
	s := &e2eMetricsSetup{b: b, cfg: e2eEncConf(t, b.path("etc/backy.cfg"), b.path("store")), textfile: b.path("textfile")}
	if err := os.MkdirAll(s.textfile, 0o755); err != nil {
		t.Fatal(err)
	}
	b.ok("-c", s.cfg, "init", "--block-size", "65536")
	return s
}

// subst replaces the paths of the documented setup by the sandbox's.
func (s *e2eMetricsSetup) subst(w string, vol, src string) string {
	w = strings.ReplaceAll(w, "/usr/local/bin/backy", e2eBin)
	w = strings.ReplaceAll(w, "/etc/backy/backy.cfg", s.cfg)
	w = strings.ReplaceAll(w, "/var/lib/node_exporter/textfile", s.textfile)
	w = strings.ReplaceAll(w, "%i", vol)
	return strings.ReplaceAll(w, "${SOURCE}", src)
}

// unit runs the ExecStart= lines of a shipped unit (instance vol, source
// src) as systemd would, each to its exit code; a line without a leading
// "-" that fails stops the unit. It returns the last exit code.
func (s *e2eMetricsSetup) unit(t *testing.T, name, vol, src string) int {
	t.Helper()
	u := e2eParseUnit(t, filepath.Join(e2eSystemdDir, name))
	code := 0
	for _, x := range u["Service"]["ExecStart"] {
		w, ign := e2eSystemdWords(t, x)
		for i := range w {
			w[i] = s.subst(w[i], vol, src)
		}
		if w[0] == e2eBin {
			code = s.b.run(w[1:]...).code
		} else {
			code = 0
			if err := exec.Command(w[0], w[1:]...).Run(); err != nil {
				var ee *exec.ExitError
				if !errors.As(err, &ee) {
					t.Fatalf("%q: %v", w, err)
				}
				code = ee.ExitCode()
			}
		}
		if code != 0 && !ign {
			return code
		}
	}
	return code
}

// TestMetricsSystemdSetup: the backups of two volumes (one of whose files
// an older backy wrote, one failing) and the maintenance, as the shipped
// units run them, write files whose series node_exporter can gather
// together: none repeats, the backup series carry the volume, the store
// series come from the maintenance's file only.
func TestMetricsSystemdSetup(t *testing.T) {
	t.Parallel()
	s := e2eNewMetricsSetup(t)
	// What an older backy left in a volume's file: unlabelled backup and
	// store series, which every other volume's file repeated.
	legacy := "# HELP backy_command_success 1 if the last run of the command succeeded, else 0.\n# TYPE backy_command_success gauge\n" +
		"backy_command_success{command=\"backup\"} 1\n" +
		"# HELP backy_store_versions Versions in the store.\n# TYPE backy_store_versions gauge\nbacky_store_versions 7\n"
	e2eWriteFile(t, filepath.Join(s.textfile, "backy-vm-2.prom"), []byte(legacy))
	for i, vol := range []string{"vm-1", "vm-2"} {
		img := s.b.path(vol + ".img")
		e2eRandomFile(t, img, 8*65536, uint64(100+i))
		if code := s.unit(t, "backy-backup@.service", vol, img); code != 0 {
			t.Fatalf("backy-backup@%s: exit %d", vol, code)
		}
	}
	if code := s.unit(t, "backy-backup@.service", "vm-3", s.b.path("missing.img")); code != exitNotFound {
		t.Fatalf("backy-backup@vm-3 of a missing source: exit %d", code)
	}
	if code := s.unit(t, "backy-maintenance.service", "", ""); code != 0 {
		t.Fatalf("backy-maintenance: exit %d", code)
	}
	series, problems := e2eGatherTextfiles(t, s.textfile)
	for _, p := range problems {
		t.Error(p)
	}
	for k, want := range map[string]float64{
		`backy_command_success{command="backup",volume="vm-1"}`:   1,
		`backy_command_success{command="backup",volume="vm-2"}`:   1,
		`backy_command_success{command="backup",volume="vm-3"}`:   0,
		`backy_command_exit_code{command="backup",volume="vm-3"}`: exitNotFound,
		`backy_command_success{command="deep-scrub"}`:             1,
		`backy_command_success{command="enforce"}`:                1,
		`backy_store_versions`:                                    2,
	} {
		if got, ok := series[k]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", k, got, ok, want)
		}
	}
	for k := range series {
		if strings.HasPrefix(k, "backy_command_") && strings.Contains(k, `command="backup"`) && !strings.Contains(k, "volume=") {
			t.Errorf("unlabelled backup series %s", k)
		}
	}
	for _, f := range []string{"backy-vm-1.prom", "backy-vm-2.prom", "backy-vm-3.prom"} {
		if data := string(e2eReadFile(t, filepath.Join(s.textfile, f))); strings.Contains(data, "backy_store_") {
			t.Errorf("%s holds store series:\n%s", f, data)
		}
	}
}

// TestMetricsCronSetup: backy.cron's jobs (backups of two volumes and the
// maintenance) write files that never repeat a series either.
func TestMetricsCronSetup(t *testing.T) {
	t.Parallel()
	s := e2eNewMetricsSetup(t)
	c := e2eParseCron(t, filepath.Join(e2eSystemdDir, "backy.cron"))
	env := map[string]string{"BACKY": e2eBin + " -c " + s.cfg, "PROM": s.textfile, "GORACE": "exitcode=86 atexit_sleep_ms=0"}
	for i, vol := range []string{"vm-101", "vm-102"} {
		img := s.b.path(vol + ".img")
		e2eRandomFile(t, img, 8*65536, uint64(110+i))
		job := strings.ReplaceAll(c.jobs[0], "/dev/vg0/vm-101-snap", img)
		job = strings.ReplaceAll(job, "vm-101", vol)
		if code, out := e2eCronRun(t, c, job, env); code != 0 {
			t.Fatalf("backup job of %s: exit %d\n%s", vol, code, out)
		}
	}
	if code, out := e2eCronRun(t, c, c.jobs[1], env); code != 0 {
		t.Fatalf("maintenance job: exit %d\n%s", code, out)
	}
	series, problems := e2eGatherTextfiles(t, s.textfile)
	for _, p := range problems {
		t.Error(p)
	}
	var got []string
	for k := range series {
		if strings.HasPrefix(k, "backy_command_success") {
			got = append(got, k)
		}
	}
	slices.Sort(got)
	want := []string{
		`backy_command_success{command="backup",volume="vm-101"}`, `backy_command_success{command="backup",volume="vm-102"}`,
		`backy_command_success{command="cleanup"}`, `backy_command_success{command="deep-scrub"}`,
		`backy_command_success{command="enforce"}`, `backy_command_success{command="scrub"}`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("success series %q, want %q", got, want)
	}
	if series["backy_store_versions"] != 2 {
		t.Errorf("backy_store_versions = %v, want 2", series["backy_store_versions"])
	}
}

// TestMetricsSharedFile: a backup into a file that store-wide commands
// write too (one file for all jobs) keeps the store series there up to
// date, and a volume name that needs escaping stays one valid series.
func TestMetricsSharedFile(t *testing.T) {
	t.Parallel()
	s := e2eNewMetricsSetup(t)
	prom := filepath.Join(s.textfile, "backy.prom")
	img := s.b.path("a.img")
	e2eRandomFile(t, img, 4*65536, 120)
	s.b.ok("-c", s.cfg, "--metrics-file", prom, "scrub", "--all")
	for _, vol := range []string{"a", `odd "vol" \ x`} {
		s.b.ok("-c", s.cfg, "--metrics-file", prom, "backup", img, vol)
	}
	series, problems := e2eGatherTextfiles(t, s.textfile)
	for _, p := range problems {
		t.Error(p)
	}
	if series["backy_store_versions"] != 2 || series[`backy_command_success{command="backup",volume="a"}`] != 1 ||
		series[`backy_command_success{command="scrub"}`] != 1 || series[`backy_command_success{command="backup",volume="odd "vol" \ x"}`] != 1 {
		t.Errorf("shared file: %v", series)
	}
}
