package main

// Tests of the shipped systemd units and cron file (docs/systemd): they
// pass systemd-analyze verify (as on Debian 12's systemd 252), their
// retries cover exactly the transient exit codes, and the maintenance
// unit's final check gives the unit the right result.

import (
	"bufio"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// e2eSystemdDir is docs/systemd, relative to this package.
const e2eSystemdDir = "../../docs/systemd"

// e2eUnit is a parsed unit file: section -> key -> values, in order.
type e2eUnit map[string]map[string][]string

func e2eParseUnit(t *testing.T, path string) e2eUnit {
	t.Helper()
	u := e2eUnit{}
	sec := ""
	var cont string
	sc := bufio.NewScanner(strings.NewReader(string(e2eReadFile(t, path))))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if cont != "" {
			line = cont + " " + line
			cont = ""
		}
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if strings.HasSuffix(line, "\\") {
			cont = strings.TrimSuffix(line, "\\")
			continue
		}
		if line[0] == '[' {
			sec = strings.Trim(line, "[]")
			if u[sec] == nil {
				u[sec] = map[string][]string{}
			}
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || sec == "" {
			t.Fatalf("%s: line %q is not KEY=VALUE in a section", path, line)
		}
		u[sec][k] = append(u[sec][k], v)
	}
	return u
}

// get returns the last value of key in section sec ("" if unset).
func (u e2eUnit) get(sec, key string) string {
	vs := u[sec][key]
	if len(vs) == 0 {
		return ""
	}
	return vs[len(vs)-1]
}

// e2eExitCodes returns every exit code constant declared in exit.go.
func e2eExitCodes(t *testing.T) map[string]int {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), "exit.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, d := range f.Decls {
		gd, ok := d.(*ast.GenDecl)
		if !ok || gd.Tok != token.CONST {
			continue
		}
		for _, s := range gd.Specs {
			vs := s.(*ast.ValueSpec)
			for i, n := range vs.Names {
				if !strings.HasPrefix(n.Name, "exit") || i >= len(vs.Values) {
					continue
				}
				lit, ok := vs.Values[i].(*ast.BasicLit)
				if !ok {
					continue
				}
				c, err := strconv.Atoi(lit.Value)
				if err != nil {
					t.Fatalf("exit.go: %s = %s", n.Name, lit.Value)
				}
				out[n.Name] = c
			}
		}
	}
	if len(out) < 10 {
		t.Fatalf("exit.go: found only %v", out)
	}
	return out
}

// e2eSystemdCopy copies the shipped units into a temp dir with backy's
// path replaced by the binary under test (verify refuses a unit whose
// executable does not exist).
func e2eSystemdCopy(t *testing.T) (dir string, units []string) {
	t.Helper()
	dir = t.TempDir()
	ents, err := os.ReadDir(e2eSystemdDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		data := e2eReadFile(t, filepath.Join(e2eSystemdDir, e.Name()))
		data = []byte(strings.ReplaceAll(string(data), "/usr/local/bin/backy", e2eBin))
		e2eWriteFile(t, filepath.Join(dir, e.Name()), data)
		switch filepath.Ext(e.Name()) {
		case ".service", ".timer":
			units = append(units, e.Name())
		}
	}
	if len(units) < 4 {
		t.Fatalf("only %v in %s", units, e2eSystemdDir)
	}
	return dir, units
}

// TestSystemdUnitsVerify: every shipped unit passes systemd-analyze verify
// without a word of complaint (Debian 12's systemd 252 refused
// RestartForceExitStatus= in a Type=oneshot unit). CI installs systemd
// (.ci/install-test-tools); no running systemd is needed.
func TestSystemdUnitsVerify(t *testing.T) {
	tool, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatalf("systemd-analyze is needed to check the shipped units: run .ci/install-test-tools as root (Debian package systemd): %v", err)
	}
	dir, units := e2eSystemdCopy(t)
	for _, u := range units {
		name := u
		if strings.Contains(u, "@.") {
			name = strings.Replace(u, "@.", "@vm-101.", 1) // an instance of the template
		}
		t.Run(name, func(t *testing.T) {
			cmd := exec.Command(tool, "verify", "--man=no", "--generators=no", filepath.Join(dir, name))
			cmd.Dir = dir
			out, err := cmd.CombinedOutput()
			if err != nil || len(strings.TrimSpace(string(out))) > 0 {
				t.Errorf("systemd-analyze verify %s: %v\n%s", name, err, out)
			}
		})
	}
}

// e2eCodeSet parses a list of exit statuses.
func e2eCodeSet(t *testing.T, s string) map[int]bool {
	t.Helper()
	out := map[int]bool{}
	for _, f := range strings.Fields(s) {
		c, err := strconv.Atoi(f)
		if err != nil {
			t.Fatalf("exit status %q in %q", f, s)
		}
		out[c] = true
	}
	return out
}

// TestSystemdUnitsRetry: the units retry exactly the transient failures,
// exit 74 (I/O error, backend unreachable) and 75 (locked), a bounded
// number of times, and fail for good on every other documented code.
func TestSystemdUnitsRetry(t *testing.T) {
	codes := e2eExitCodes(t)
	transient := map[int]bool{exitIOErr: true, exitLocked: true}
	bk := e2eParseUnit(t, filepath.Join(e2eSystemdDir, "backy-backup@.service"))
	if bk.get("Service", "Type") != "oneshot" || bk.get("Service", "Restart") != "on-failure" {
		t.Errorf("backy-backup@.service: Type=%s Restart=%s, want oneshot and on-failure", bk.get("Service", "Type"), bk.get("Service", "Restart"))
	}
	prevent := e2eCodeSet(t, strings.Join(bk["Service"]["RestartPreventExitStatus"], " "))
	for name, c := range codes {
		if c == exitOK {
			continue
		}
		if transient[c] == prevent[c] {
			t.Errorf("backy-backup@.service: exit %d (%s) retried = %v, want %v", c, name, !prevent[c], transient[c])
		}
	}
	if !prevent[2] {
		t.Errorf("backy-backup@.service: exit 2 (a Go panic) is retried")
	}
	for _, f := range []string{"backy-backup@.service", "backy-maintenance.service"} {
		u := e2eParseUnit(t, filepath.Join(e2eSystemdDir, f))
		burst, _ := strconv.Atoi(u.get("Unit", "StartLimitBurst"))
		if u.get("Service", "RestartSec") == "" || burst < 2 || burst > 10 || u.get("Unit", "StartLimitIntervalSec") == "" {
			t.Errorf("%s: RestartSec=%q StartLimitBurst=%q StartLimitIntervalSec=%q: want a bounded number of retries", f,
				u.get("Service", "RestartSec"), u.get("Unit", "StartLimitBurst"), u.get("Unit", "StartLimitIntervalSec"))
		}
		if len(u["Service"]["RestartForceExitStatus"]) > 0 {
			t.Errorf("%s: RestartForceExitStatus= is refused with Type=oneshot before systemd 256", f)
		}
	}
}

// e2eSystemdWords splits an ExecStart= value as systemd does for the
// simple quoting the units use: words, '...' and "..." quotes, "$$" for
// "$", and a leading "-" (failure ignored) reported separately.
func e2eSystemdWords(t *testing.T, s string) (words []string, ignoreFailure bool) {
	t.Helper()
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "-") {
		ignoreFailure, s = true, s[1:]
	}
	var cur strings.Builder
	in := false
	var quote byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0 && c == quote:
			quote = 0
		case quote == 0 && (c == '\'' || c == '"'):
			quote, in = c, true
		case quote == 0 && (c == ' ' || c == '\t'):
			if in {
				words = append(words, cur.String())
				cur.Reset()
				in = false
			}
		case c == '$' && i+1 < len(s) && s[i+1] == '$':
			cur.WriteByte('$')
			in = true
			i++
		case c == '\\':
			t.Fatalf("backslash in %q: this splitter does not handle escapes", s)
		default:
			cur.WriteByte(c)
			in = true
		}
	}
	if quote != 0 {
		t.Fatalf("unterminated quote in %q", s)
	}
	if in {
		words = append(words, cur.String())
	}
	return words, ignoreFailure
}

// e2eSystemdCommand returns the backy command of a command line (after the
// global flags), checking that its metrics go to prom.
func e2eSystemdCommand(t *testing.T, w []string, prom string) string {
	t.Helper()
	metrics := ""
	for i := 1; i < len(w); i++ {
		switch a := w[i]; {
		case a == "-c" || a == "--config" || a == "--log-level" || a == "--metrics-file":
			if i+1 < len(w) && a == "--metrics-file" {
				metrics = w[i+1]
			}
			i++
		case strings.HasPrefix(a, "-"):
		default:
			if metrics != prom {
				t.Errorf("%q: --metrics-file %q, want %q", w, metrics, prom)
			}
			return a
		}
	}
	t.Errorf("%q: no command", w)
	return ""
}

// TestSystemdMaintenanceResult: the maintenance unit's steps each run
// whatever the others did, and its last step gives the unit its result
// from the exit codes the steps recorded: 0 when all succeeded, 75 (which
// the unit retries) when every failure was transient, else 1 (not
// retried). Samples of commands the unit does not run do not count.
func TestSystemdMaintenanceResult(t *testing.T) {
	const textfile = "/var/lib/node_exporter/textfile"
	u := e2eParseUnit(t, filepath.Join(e2eSystemdDir, "backy-maintenance.service"))
	execs := u["Service"]["ExecStart"]
	if len(execs) < 2 {
		t.Fatalf("ExecStart = %q", execs)
	}
	var steps []string
	for _, x := range execs[:len(execs)-1] {
		w, ign := e2eSystemdWords(t, x)
		if !ign || w[0] != "/usr/local/bin/backy" {
			t.Errorf("step %q: want -/usr/local/bin/backy ... (a failing step must not stop the others)", x)
			continue
		}
		steps = append(steps, e2eSystemdCommand(t, w, textfile+"/backy.prom"))
	}
	if len(u["Service"]["ExecStartPost"]) > 0 {
		t.Errorf("ExecStartPost = %q: the result comes from the last ExecStart (ExecStartPost's code does not drive Restart=)", u["Service"]["ExecStartPost"])
	}
	check, ign := e2eSystemdWords(t, execs[len(execs)-1])
	if ign {
		t.Fatalf("the last ExecStart must not ignore its failure: %q", execs[len(execs)-1])
	}
	if u.get("Service", "Restart") != "on-failure" || !e2eCodeSet(t, u.get("Service", "RestartPreventExitStatus"))[1] ||
		e2eCodeSet(t, u.get("Service", "RestartPreventExitStatus"))[exitLocked] {
		t.Errorf("Restart=%q RestartPreventExitStatus=%q: want on-failure, preventing 1 and not 75",
			u.get("Service", "Restart"), u.get("Service", "RestartPreventExitStatus"))
	}
	slices.Sort(steps)
	if want := []string{"cleanup", "deep-scrub", "enforce", "scrub"}; !slices.Equal(steps, want) {
		t.Errorf("steps %q, want %q", steps, want)
	}
	dir := t.TempDir()
	for i, a := range check {
		check[i] = strings.ReplaceAll(a, textfile, dir)
	}
	if _, err := os.Stat(check[0]); err != nil {
		t.Fatalf("the check's program: %v", err)
	}
	prom := filepath.Join(dir, "backy.prom")
	for _, tt := range []struct {
		name  string
		codes map[string]int // command -> exit code
		want  int
	}{
		{"all ok", map[string]int{"enforce": 0, "cleanup": 0, "scrub": 0, "deep-scrub": 0}, 0},
		{"unreachable backend", map[string]int{"enforce": 74, "cleanup": 74, "scrub": 0, "deep-scrub": 74}, exitLocked},
		{"locked", map[string]int{"enforce": 75, "cleanup": 0, "scrub": 0, "deep-scrub": 0}, exitLocked},
		{"damage", map[string]int{"enforce": 0, "cleanup": 0, "scrub": 0, "deep-scrub": 80}, 1},
		{"damage and locked", map[string]int{"enforce": 75, "cleanup": 0, "scrub": 80, "deep-scrub": 0}, 1},
		{"config", map[string]int{"enforce": 78, "cleanup": 78, "scrub": 78, "deep-scrub": 78}, 1},
		{"another command failed", map[string]int{"enforce": 0, "cleanup": 0, "scrub": 0, "deep-scrub": 0, "restore": 66}, 0},
	} {
		var b strings.Builder
		b.WriteString("# HELP backy_command_exit_code Exit code of the last run of the command.\n# TYPE backy_command_exit_code gauge\n")
		for c, code := range tt.codes {
			b.WriteString(`backy_command_exit_code{command="` + c + `"} ` + strconv.Itoa(code) + "\n")
		}
		b.WriteString("# HELP backy_command_success x\n# TYPE backy_command_success gauge\n")
		for c, code := range tt.codes {
			b.WriteString(`backy_command_success{command="` + c + `"} ` + strconv.Itoa(btoi(code == 0)) + "\n")
		}
		e2eWriteFile(t, prom, []byte(b.String()))
		out, err := exec.Command(check[0], check[1:]...).CombinedOutput()
		got := 0
		if ee, ok := err.(*exec.ExitError); ok {
			got = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if got != tt.want {
			t.Errorf("%s: the check exits %d, want %d\n%s", tt.name, got, tt.want, out)
		}
	}
	if err := os.Remove(prom); err != nil {
		t.Fatal(err)
	}
	if err := exec.Command(check[0], check[1:]...).Run(); err == nil {
		t.Errorf("the check succeeds without a metrics file")
	}
}

// e2eCron is a parsed /etc/cron.d file: its environment and its jobs'
// commands (after the five time fields and the user).
type e2eCron struct {
	env  map[string]string
	jobs []string
}

func e2eParseCron(t *testing.T, path string) e2eCron {
	t.Helper()
	c := e2eCron{env: map[string]string{}}
	for _, line := range strings.Split(string(e2eReadFile(t, path)), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		if k, v, ok := strings.Cut(line, "="); ok && !strings.ContainsAny(k, " \t*") {
			c.env[strings.TrimSpace(k)] = strings.Trim(strings.TrimSpace(v), `"'`)
			continue
		}
		f := strings.Fields(line)
		if len(f) < 7 || f[5] != "root" {
			t.Fatalf("%s: line %q is not MIN HOUR DOM MON DOW root COMMAND", path, line)
		}
		if strings.Contains(line, "%") {
			t.Errorf("%s: unescaped %% in %q", path, line)
		}
		rest := line
		for range 6 {
			rest = strings.TrimSpace(rest)
			rest = rest[strings.IndexAny(rest, " \t"):]
		}
		c.jobs = append(c.jobs, strings.TrimSpace(rest))
	}
	return c
}

// e2eCronRun runs a cron job's command with /bin/sh as cron does, with
// env over the file's environment; "sleep N" is cut short.
func e2eCronRun(t *testing.T, c e2eCron, job string, env map[string]string) (int, string) {
	t.Helper()
	job = strings.ReplaceAll(job, "sleep 900", "sleep 0")
	cmd := exec.Command("/bin/sh", "-c", job)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}
	for k, v := range c.env {
		if _, ok := env[k]; !ok {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
	}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), string(out)
	} else if err != nil {
		t.Fatal(err)
	}
	return 0, string(out)
}

// TestCronRetry: backy.cron retries what the units retry (exit 74 and 75,
// 15 minutes apart, a backup up to 5 times, the maintenance up to 3), runs
// every maintenance step whatever the others did, and exits as the
// maintenance unit's check does.
func TestCronRetry(t *testing.T) {
	c := e2eParseCron(t, filepath.Join(e2eSystemdDir, "backy.cron"))
	if len(c.jobs) != 2 || !strings.Contains(c.jobs[0], " backup ") || !strings.Contains(c.jobs[1], "deep-scrub") {
		t.Fatalf("jobs %q: want the backup and the maintenance", c.jobs)
	}
	if !strings.HasPrefix(c.env["BACKY"], "/usr/local/bin/backy ") {
		t.Fatalf("BACKY=%q", c.env["BACKY"])
	}
	dir := t.TempDir()
	// A stand-in for backy: exits with the next code of $dir/codes (0 when
	// none is left) and logs its command.
	fake := filepath.Join(dir, "fake-backy")
	e2eWriteFile(t, fake, []byte(`#!/bin/sh
i=$(cat "`+dir+`/n" 2>/dev/null || echo 0); i=$((i+1)); echo $i > "`+dir+`/n"
echo "$*" >> "`+dir+`/calls"
code=$(sed -n "${i}p" "`+dir+`/codes"); exit ${code:-0}
`))
	if err := os.Chmod(fake, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name  string
		job   int
		codes []int
		calls int
		want  int
	}{
		{"backup ok", 0, nil, 1, 0},
		{"backup unreachable then ok", 0, []int{74, 75, 0}, 3, 0},
		{"backup unreachable all night", 0, []int{74, 74, 74, 74, 74, 74, 74}, 5, 74},
		{"backup config error", 0, []int{78}, 1, 78},
		{"backup locked then damaged", 0, []int{75, 70}, 2, 70},
		{"maintenance ok", 1, nil, 4, 0},
		{"maintenance unreachable then ok", 1, []int{74, 0, 74, 74}, 8, 0},
		{"maintenance locked all night", 1, []int{0, 75, 0, 0, 0, 75, 0, 0, 0, 75, 0, 0}, 12, 75},
		{"maintenance damage", 1, []int{0, 0, 0, 80}, 4, 1},
		{"maintenance damage and unreachable", 1, []int{74, 0, 80, 74}, 4, 1},
	} {
		for _, f := range []string{"n", "calls"} {
			os.Remove(filepath.Join(dir, f))
		}
		var codes strings.Builder
		for _, c := range tt.codes {
			codes.WriteString(strconv.Itoa(c) + "\n")
		}
		e2eWriteFile(t, filepath.Join(dir, "codes"), []byte(codes.String()))
		got, out := e2eCronRun(t, c, c.jobs[tt.job], map[string]string{"BACKY": fake, "PROM": dir})
		calls := e2eLines(string(e2eReadFile(t, filepath.Join(dir, "calls"))))
		if got != tt.want || len(calls) != tt.calls {
			t.Errorf("%s: exit %d after %d call(s), want %d after %d\n%s%s", tt.name, got, len(calls), tt.want, tt.calls, strings.Join(calls, "\n"), out)
		}
		if tt.job == 1 && len(calls) >= 4 {
			var steps []string
			for _, call := range calls[:4] {
				steps = append(steps, e2eSystemdCommand(t, append([]string{"backy"}, strings.Fields(call)...), dir+"/backy.prom"))
			}
			if want := []string{"enforce", "cleanup", "scrub", "deep-scrub"}; !slices.Equal(steps, want) {
				t.Errorf("%s: steps %q, want %q", tt.name, steps, want)
			}
		}
	}
}
