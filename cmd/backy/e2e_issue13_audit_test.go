package main

// Issue 13 item 28: log_file is an audit trail. Every command that changes
// a store logs what it did in one line at INFO (with uids and figures),
// and every failure logs its error at ERROR in log_file, while stderr
// keeps its one 'backy:' line.

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// e2eAuditLog returns the lines of the log file added since it had n.
func e2eAuditLog(t *testing.T, path string, n *int) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := e2eLines(string(data))
	out := lines[*n:]
	*n = len(lines)
	return out
}

// e2eAuditWant checks that one of lines is at level and holds every part.
func e2eAuditWant(t *testing.T, what string, lines []string, level string, parts ...string) {
	t.Helper()
	for _, l := range lines {
		if !strings.Contains(l, "level="+level+" ") {
			continue
		}
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(l, p)
		}
		if ok {
			return
		}
	}
	t.Errorf("%s: no %s line with %q in the log file:\n%s", what, level, parts, strings.Join(lines, "\n"))
}

func TestAuditLog(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	logf := b.path("log/backy.log")
	if err := os.MkdirAll(filepath.Dir(logf), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := e2eEncConf(t, b.path("backy.cfg"), b.path("store"), "log_file = "+logf)
	key := e2eEncNewMat(t, b.dir, "key_file", 130)
	enc := e2eEncConf(t, b.path("enc.cfg"), b.path("store"), "log_file = "+logf, "encryption_version = 1", key.line())
	offsite := e2eEncConf(t, b.path("offsite.cfg"), b.path("offsite"))
	n := 0
	step := func(what, level string, r e2eRes, parts ...string) {
		t.Helper()
		e2eAuditWant(t, what, e2eAuditLog(t, logf, &n), level, parts...)
		if level == "INFO" && strings.Contains(r.stderr, "level=INFO") {
			t.Errorf("%s: INFO lines on stderr:\n%v", what, r)
		}
	}
	r := b.ok("-c", cfg, "init", "--block-size", "65536")
	step("init", "INFO", r, `msg="store created"`, "block_size=65536")
	img := b.path("disk.img")
	e2eRandomFile(t, img, 6*65536, 131)
	var uids []string
	for i := range 3 {
		r = b.ok("-c", cfg, "backup", img, "vol", "--snapshot", "s"+string(rune('0'+i)), "--json")
		v := e2eDecode[e2eVersion](t, r)
		uids = append(uids, v.UID)
		step("backup", "INFO", r, `msg="backup finished"`, "version="+v.UID, "volume=vol", "size=393216", "bytes_read=393216", "bytes_written=")
	}
	r = b.ok("-c", cfg, "protect", uids[0])
	step("protect", "INFO", r, `msg="version protected"`, "version="+uids[0], "protected=true")
	r = b.ok("-c", cfg, "unprotect", uids[0])
	step("unprotect", "INFO", r, `msg="version unprotected"`, "version="+uids[0], "protected=false")
	r = b.ok("-c", cfg, "expire", uids[1], "2099-01-01T00:00:00Z")
	step("expire", "INFO", r, `msg="expiry date set"`, "version="+uids[1], "expire=2099-01-01T00:00:00Z")
	r = b.ok("-c", cfg, "restore", uids[2], b.path("back.img"))
	step("restore", "INFO", r, `msg="version restored"`, "version="+uids[2], "target="+b.path("back.img"), "bytes_written=393216")
	r = b.ok("-c", cfg, "scrub", "--all")
	step("scrub", "INFO", r, `msg="scrub finished"`, "versions=3", "blocks_checked=6", "problems=0")
	r = b.ok("-c", cfg, "deep-scrub", "--all", "--percent", "50")
	step("deep-scrub", "INFO", r, `msg="deep-scrub finished"`, "versions=3", "percent=50", "bytes_verified=")
	b.ok("-c", offsite, "init", "--block-size", "65536")
	n = len(e2eLines(string(e2eReadFile(t, logf)))) // offsite has no log_file
	r = b.ok("-c", cfg, "copy", uids[2], "--to", offsite)
	step("copy", "INFO", r, `msg="copy finished"`, uids[2]+"=copied", "blocks_sent=6")
	exp := b.path("v0.bkym")
	b.ok("-c", cfg, "export", uids[0], "-o", exp)
	e2eAuditLog(t, logf, &n)
	r = b.ok("-c", cfg, "rm", uids[0])
	step("rm", "INFO", r, `msg="versions removed"`, "versions=["+uids[0]+"]")
	r = b.ok("-c", cfg, "import", exp)
	step("import", "INFO", r, `msg="versions imported"`, "versions=["+uids[0]+"]")
	b.ok("-c", cfg, "enforce", "latest1")
	lines := e2eAuditLog(t, logf, &n)
	e2eAuditWant(t, "enforce", lines, "INFO", `msg="enforce: version removed"`, "version="+uids[0], "volume=vol")
	if strings.Contains(strings.Join(lines, "\n"), uids[1]) {
		t.Errorf("enforce logged %s, which it keeps until its expiry date:\n%s", uids[1], strings.Join(lines, "\n"))
	}
	b.ok("-c", cfg, "cleanup", "--orphans")
	lines = e2eAuditLog(t, logf, &n)
	e2eAuditWant(t, "cleanup", lines, "INFO", `msg="cleanup finished"`, "blocks_deleted=0", "bytes_freed=0")
	e2eAuditWant(t, "cleanup --orphans", lines, "INFO", `msg="cleanup: orphan sweep"`, "objects_listed=")
	r = b.ok("-c", enc, "migrate-encryption", "--all")
	step("migrate-encryption", "INFO", r, `msg="migrate-encryption finished"`, "target=1", "blocks_migrated=6")
	r = b.ok("-c", enc, "rebuild-metastore", "--force")
	step("rebuild-metastore", "INFO", r, `msg="metastore rebuilt"`, "versions=2", "kept_aside="+b.path("store/backy.db.replaced-"))

	// Failures: one line on stderr as ever, and an ERROR line in log_file.
	r = b.fail(exitNotFound, "-c", cfg, "rm", "Vnosuch")
	step("failed rm", "ERROR", r, `msg="command failed"`, "command=rm", "exit_code=66", "Vnosuch")
	r = b.fail(exitUsage, "-c", cfg, "--log-level", "error", "enforce", "bogus7")
	step("failed enforce", "ERROR", r, `msg="command failed"`, "command=enforce", "exit_code=64", "bogus7")
	if r = b.run("-c", cfg, "backup", b.path("missing.img"), "vol", "--json"); r.code != exitNotFound {
		t.Errorf("backup of a missing source:\n%v", r)
	}
	step("failed backup", "ERROR", r, `msg="command failed"`, "command=backup", "exit_code=66", "missing.img")
}
