package main

// Issue 13 item 15: an S3 outage. Metadata-only commands (ls, stats)
// work while the server is down, with one warning that the backend was
// not checked; protect, unprotect and expire record their change in the
// metastore, say that its metadata is written by the next command that
// reaches the backend, exit 0, and that command brings the backend's copy
// up to date. A backup started during a short outage rides it out
// (retry_for) instead of failing.

import (
	"strings"
	"testing"
	"time"

	"github.com/backy/backy/blockstore/backend/s3/s3test"
)

// e2eWarnings returns the lines of stderr at level WARN.
func e2eWarnings(stderr string) []string {
	var out []string
	for _, l := range e2eLines(stderr) {
		if strings.Contains(l, "level=WARN") || strings.Contains(l, "warning") {
			out = append(out, l)
		}
	}
	return out
}

func TestIssue13S3Unreachable(t *testing.T) {
	t.Parallel()
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)
	b := e2eNewBox(t)
	b.useS3(srv, bucket, "backy", "", "")
	b.ok("init")
	img := b.path("a.img")
	e2eRandomFile(t, img, 6*e2eMiB+7, 1501)
	v1 := b.backup(img, "vol-a")
	v2 := b.backup(img, "vol-b")

	srv.Kill()
	for _, args := range [][]string{{"ls"}, {"ls", "vol-a"}, {"stats"}, {"stats", v1.UID}} {
		r := b.run(args...)
		if r.code != 0 {
			t.Fatalf("with the S3 server down: want exit 0\n%v", r)
		}
		if w := e2eWarnings(r.stderr); len(w) != 1 || !strings.Contains(w[0], "not checked") || len(e2eLines(r.stderr)) != 1 {
			t.Errorf("want exactly one line on stderr, a warning that the backend was not checked:\n%v", r)
		}
		if args[0] == "ls" && !strings.Contains(r.stdout, v1.UID) {
			t.Errorf("ls does not list %s:\n%v", v1.UID, r)
		}
	}
	vs := b.ls()
	if len(vs) != 2 {
		t.Fatalf("ls --json lists %d versions with the server down", len(vs))
	}
	st := e2eDecode[e2eStats](t, b.ok("stats", "--json"))
	if st.Versions != 2 {
		t.Errorf("stats --json with the server down: %+v", st)
	}

	const later = "will be written to the data backend by the next command that reaches it"
	for _, args := range [][]string{{"protect", v1.UID, v2.UID}, {"expire", v1.UID, "2031-01-01"}, {"unprotect", v2.UID}} {
		r := b.run(args...)
		if r.code != 0 {
			t.Fatalf("with the S3 server down: want exit 0\n%v", r)
		}
		if !strings.Contains(r.stderr, later) {
			t.Errorf("the command does not say its metadata is written later:\n%v", r)
		}
	}
	if got := b.version(v1.UID); !got.Protected {
		t.Errorf("protect during the outage was not recorded: %+v", got)
	}

	// Back: the next command that syncs brings the backend's copy up to
	// date, saying nothing about the outage.
	srv.Restart(t)
	r := b.ok("cleanup")
	if strings.Contains(r.stderr, later) {
		t.Errorf("cleanup with the server back still warns:\n%v", r)
	}
	type fromBackend struct {
		UID       string  `json:"uid"`
		Protected bool    `json:"protected"`
		Expire    *string `json:"expire"`
	}
	got := map[string]fromBackend{}
	for _, v := range e2eDecode[[]fromBackend](t, b.ok("ls", "--from-backend", "--json")) {
		got[v.UID] = v
	}
	if g := got[v1.UID]; !g.Protected || g.Expire == nil || !strings.HasPrefix(*g.Expire, "2031-01-01T") {
		t.Errorf("the backend's metadata of v1 after the outage: %+v, want protected, expiring 2031-01-01", g)
	}
	if g, ok := got[v2.UID]; !ok || g.Protected {
		t.Errorf("the backend's metadata of v2 after the outage: %+v, want listed, unprotected", g)
	}
	b.ok("scrub", "--all")
}

// TestIssue13S3ShortOutageBackup: a backup that meets a server that is
// down for a few seconds finishes once it is back (no max_attempts cap,
// the default retry_for).
func TestIssue13S3ShortOutageBackup(t *testing.T) {
	t.Parallel()
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)
	b := e2eNewBox(t)
	cfg := b.s3Config("nocap.cfg", srv, bucket, "backy", "", "")
	// The shared helper caps the attempts at 3; this store does not.
	data := strings.Replace(string(e2eReadFile(t, cfg)), "max_attempts = 3\n", "", 1)
	e2eWriteFile(t, cfg, []byte(data))
	b.env = append(b.env, "BACKY_CONFIG="+cfg)
	b.ok("init")
	img := b.path("a.img")
	e2eRandomFile(t, img, 9*e2eMiB, 1502)

	srv.Kill()
	p := b.start("backup", img, "vol", "--json")
	time.Sleep(2 * time.Second)
	if p.exited() {
		t.Fatalf("the backup gave up while the server was down for 2 s:\n%v", p.wait(t))
	}
	srv.Restart(t)
	r := p.wait(t)
	if r.code != 0 {
		t.Fatalf("backup across a 2 s outage: want exit 0\n%v", r)
	}
	v := e2eDecode[e2eVersion](t, r)
	b.restore(v.UID, img)
}
