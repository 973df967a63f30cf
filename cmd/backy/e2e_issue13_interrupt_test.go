package main

import (
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestIssue13Interrupted: Ctrl-C (SIGINT) or SIGTERM stops a command with
// exit 130 and one line that says "interrupted" and what it left behind,
// not "context canceled".
func TestIssue13Interrupted(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	b.ok("ls") // creates the default store (one line on stderr)
	big := e2eBig(t)
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		volume := "big-" + strings.ToLower(sig.String()[:3])
		p := b.start("backup", big, volume)
		release := e2eThrottle(p.cmd.Process, time.Millisecond, 99*time.Millisecond)
		inc := b.waitVersion(p, func(v e2eVersion) bool { return v.Volume == volume && v.Status == "incomplete" })
		if err := p.cmd.Process.Signal(sig); err != nil {
			t.Fatal(err)
		}
		release()
		r := p.wait(t)
		e2eWantFail(t, r, exitInterrupted)
		name := map[syscall.Signal]string{syscall.SIGINT: "Ctrl-C", syscall.SIGTERM: "SIGTERM"}[sig]
		if !strings.HasPrefix(r.stderr, "backy: interrupted ("+name+"); version "+inc.UID+" is left incomplete") ||
			!strings.Contains(r.stderr, "'backy backup "+big+" "+volume+" --resume "+inc.UID+"'") ||
			!strings.Contains(r.stderr, "'backy rm "+inc.UID+"'") || strings.Contains(r.stderr, "context canceled") {
			t.Errorf("%s: want \"interrupted (%s)\", the version left incomplete and how to resume or remove it:\n%v", sig, name, r)
		}
		// What it says works.
		b.ok("backup", big, volume, "--resume", inc.UID)
		if v := b.version(inc.UID); v.Status != "valid" {
			t.Errorf("the resumed version is %s", v.Status)
		}
	}
}
