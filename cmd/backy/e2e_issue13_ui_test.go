package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestIssue13HumanWarnings: warnings on stderr read like backy's error
// line ("backy: warning: ..."); the log_file keeps structured lines.
func TestIssue13HumanWarnings(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	logFile := b.path("backy.log")
	cfg := b.path("backy.cfg")
	// A key written in a configuration file others can read: a warning.
	e2eWriteFile(t, cfg, []byte("[DEFAULTS]\nlog_file = "+logFile+"\nlog_level = info\nencryption_version = 1\nencryption_key = "+
		strings.Repeat("ab", 32)+"\n[MetaBackend]\npath = s/backy.db\n[DataBackend]\npath = s/data\n"))
	if err := os.Chmod(cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	b.ok("-c", cfg, "init")
	r := b.ok("-c", cfg, "ls")
	lines := e2eLines(r.stderr)
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "backy: warning: ") || !strings.Contains(lines[0], "chmod 600") ||
		strings.Contains(r.stderr, "level=") || strings.Contains(r.stderr, "time=") {
		t.Errorf("want one human warning line \"backy: warning: ...\":\n%v", r)
	}
	log := string(e2eReadFile(t, logFile))
	if !regexp.MustCompile(`(?m)^time=\S+ level=WARN msg=.*chmod 600`).MatchString(log) {
		t.Errorf("the log_file lacks the structured warning line:\n%s", log)
	}
}

// TestIssue13LsUnknownVolume: ls VOLUME of a volume without versions (a
// typo, or all its versions removed) exits 66 instead of an empty table.
func TestIssue13LsUnknownVolume(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	img := b.path("disk.img")
	e2eRandomFile(t, img, 64*e2eKiB, 1331)
	v := b.backup(img, "vol")
	for _, args := range [][]string{{"ls", "vol-typo"}, {"ls", "vol-typo", "--from-backend"}} {
		r := b.fail(exitNotFound, args...)
		if !strings.Contains(r.stderr, "no such volume") || !strings.Contains(r.stderr, `"vol-typo"`) {
			t.Errorf("%v: want \"no such volume\" naming it:\n%v", args, r)
		}
	}
	if r := b.run("ls", "vol-typo", "--json"); r.code != exitNotFound || r.stdout != "" || !strings.Contains(r.stderr, `"exit_code":66`) {
		t.Errorf("ls vol-typo --json:\n%v", r)
	}
	b.ok("ls", "vol")
	b.ok("rm", v.UID)
	b.fail(exitNotFound, "ls", "vol")
	// ls of the whole store is never an error, even when empty.
	if r := b.ok("ls", "--json"); strings.TrimSpace(r.stdout) != "[]" {
		t.Errorf("ls --json of an empty store:\n%v", r)
	}
}

// TestIssue13LsColumnsAndJSON: the ls table shows the expiry date; JSON
// dates are whole seconds; ages are humanised.
func TestIssue13LsColumnsAndJSON(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	cfg := b.path("backy.cfg")
	e2eWriteFile(t, cfg, []byte("[DEFAULTS]\ndisallow_rm_when_younger_than_days = 3\n[MetaBackend]\npath = s/backy.db\n[DataBackend]\npath = s/data\n"))
	b.ok("-c", cfg, "init")
	img := b.path("disk.img")
	e2eRandomFile(t, img, 64*e2eKiB, 1332)
	v := b.e2eBackupIn(cfg, img, "vol", "--expire", "2999-03-04T05:06:07Z")
	r := b.ok("-c", cfg, "ls")
	if l := e2eLines(r.stdout); len(l) != 2 || !strings.Contains(l[0], "EXPIRES (UTC)") || !strings.Contains(l[1], "2999-03-04 05:06:07") {
		t.Errorf("the ls table does not show the expiry date:\n%v", r)
	}
	b.ok("-c", cfg, "scrub", "--all")
	r = b.ok("-c", cfg, "ls", "--json")
	m := regexp.MustCompile(`"at": "([^"]*)"`).FindStringSubmatch(r.stdout)
	if m == nil || !regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$`).MatchString(m[1]) {
		t.Errorf("last_scrub.at is not RFC 3339 in whole seconds (UTC):\n%v", r)
	}
	r = b.fail(exitUsage, "-c", cfg, "rm", v.UID)
	if !strings.Contains(r.stderr, "the minimum is 3d") || strings.Contains(r.stderr, "72h0m0s") || strings.Contains(r.stderr, "0m0s") {
		t.Errorf("rm of a young version: want the ages humanised (\"3d\"):\n%v", r)
	}
}

// TestIssue13LabelTwice: a repeated --label key is refused, not silently
// overwritten.
func TestIssue13LabelTwice(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	img := b.path("disk.img")
	e2eRandomFile(t, img, 64*e2eKiB, 1333)
	b.ok("ls")
	r := b.fail(exitUsage, "backup", img, "vol", "--label", "host=a", "--label", "host=")
	if !strings.Contains(r.stderr, "--label host") || !strings.Contains(r.stderr, "twice") {
		t.Errorf("want the repeated key named:\n%v", r)
	}
	if got := b.ls(); len(got) != 0 {
		t.Errorf("a refused backup made versions: %+v", got)
	}
	if v := b.backup(img, "vol", "--label", "host=a", "--label", "rack=1"); v.Labels["host"] != "a" || v.Labels["rack"] != "1" {
		t.Errorf("labels %v", v.Labels)
	}
}

// TestIssue13CopyDryRunSeconds: a dry run copies nothing, so it shows no
// duration ("-"), not "0.0".
func TestIssue13CopyDryRunSeconds(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	src, _ := e2eCopyStore(b, "src", true)
	dst, _ := e2eCopyStore(b, "dst", true)
	img := b.path("disk.img")
	e2eRandomFile(t, img, 256*e2eKiB, 1334)
	v := b.e2eBackupIn(src, img, "vol")
	r := b.ok("-c", src, "copy", v.UID, "--to", dst, "--dry-run")
	l := e2eLines(r.stdout)
	if len(l) < 2 || !strings.HasSuffix(l[0], "SECONDS") || !strings.HasSuffix(l[1], "  -") {
		t.Errorf("copy --dry-run: want SECONDS \"-\":\n%v", r)
	}
	r = b.ok("-c", src, "copy", v.UID, "--to", dst)
	if l := e2eLines(r.stdout); len(l) < 2 || !regexp.MustCompile(`  \d+\.\d$`).MatchString(l[1]) {
		t.Errorf("copy: want the seconds:\n%v", r)
	}
}

// TestIssue13RestoreMode: a restored image is created mode 0600 whatever
// the umask (a deliberate, documented choice: it holds everything the disk
// held); a target written over with --force keeps its mode.
func TestIssue13RestoreMode(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	img := b.path("disk.img")
	e2eRandomFile(t, img, 64*e2eKiB, 1335)
	v := b.backup(img, "vol")
	target := b.path("restored.img")
	r := b.runWith("sh", []string{"-c", `umask 000; exec "$0" "$@"`, e2eBin, "restore", v.UID, target})
	if r.code != 0 {
		t.Fatalf("restore under umask 000:\n%v", r)
	}
	if st, err := os.Stat(target); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("restored image mode %v (%v), want 0600", st.Mode().Perm(), err)
	}
	kept := filepath.Join(b.dir, "kept.img")
	e2eWriteFile(t, kept, make([]byte, 64*e2eKiB))
	if err := os.Chmod(kept, 0o640); err != nil {
		t.Fatal(err)
	}
	b.ok("restore", v.UID, kept, "--force")
	if st, err := os.Stat(kept); err != nil || st.Mode().Perm() != 0o640 {
		t.Errorf("restore --force changed the target's mode to %v (%v)", st.Mode().Perm(), err)
	}
}

// TestIssue13DidYouMean: a mistyped command gets a suggestion.
func TestIssue13DidYouMean(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	r := b.fail(exitUsage, "bakup", "disk.img", "vol")
	if !strings.Contains(r.stderr, `unknown command "bakup" (did you mean 'backup'?)`) {
		t.Errorf("want a suggestion:\n%v", r)
	}
	r = b.fail(exitUsage, "frobnicate")
	if strings.Contains(r.stderr, "did you mean") {
		t.Errorf("a suggestion for a name like no command:\n%v", r)
	}
}
