package main

// Helpers of the issue 13 tests of the command line (e2e_issue13_*_test.go).

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"slices"
	"time"
)

// runWith runs program (backy wrapped in another command) with args in
// the sandbox, as run runs backy.
func (b *e2eBox) runWith(program string, args []string) e2eRes {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), e2eCmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, program, args...)
	cmd.Dir = b.dir
	cmd.Env = slices.Clone(b.env)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	start := time.Now()
	err := cmd.Run()
	r := e2eRes{args: args, stdout: so.String(), stderr: se.String(), dur: time.Since(start)}
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			b.t.Fatalf("running %s %q: %v", program, args, err)
		}
		r.code = ee.ExitCode()
		if ctx.Err() != nil {
			b.t.Fatalf("%s %q did not finish within %s", program, args, e2eCmdTimeout)
		}
	}
	e2eCheckRace(b.t, r)
	return r
}

// e2eBackupIn backs up src as a new version of volume in the store of
// configuration cfg ("-c cfg" before the command), which must succeed.
func (b *e2eBox) e2eBackupIn(cfg, src, volume string, extra ...string) e2eVersion {
	b.t.Helper()
	r := b.ok(append([]string{"-c", cfg, "backup", src, volume, "--json"}, extra...)...)
	v := e2eDecode[e2eVersion](b.t, r)
	if v.Status != "valid" {
		b.t.Fatalf("backup made %+v:\n%v", v, r)
	}
	return v
}
