package migrate

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"slices"
	"syscall"
	"testing"

	"github.com/backy/backy/metastore"
)

const (
	crashPathEnv  = "BACKY_MIGRATE_CRASH_PATH"
	crashStageEnv = "BACKY_MIGRATE_CRASH_STAGE"
)

// TestCrashHelper is the upgrade that TestUpgradeCrash runs in a child
// process and kills with SIGKILL at the named stage.
func TestCrashHelper(t *testing.T) {
	path, stage := os.Getenv(crashPathEnv), os.Getenv(crashStageEnv)
	if path == "" {
		t.Skip("the child process of TestUpgradeCrash")
	}
	_, err := Upgrade(context.Background(), path, Options{Hook: func(s string) {
		if s == stage {
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
	}})
	t.Fatalf("the upgrade ended (err %v) without reaching stage %q", err, stage)
}

// TestUpgradeCrash kills an upgrade at every stage in turn and checks that
// the database is then either the untouched old one or the complete new
// one, and that the next upgrade finishes the job.
func TestUpgradeCrash(t *testing.T) {
	if os.Getenv(crashPathEnv) != "" {
		t.Skip("in the child process")
	}
	// The stages an upgrade of the fixture goes through.
	path, orig := copyFixture(t)
	var stages []string
	if _, err := Upgrade(context.Background(), path, Options{Hook: func(s string) { stages = append(stages, s) }}); err != nil {
		t.Fatal(err)
	}
	assertUpgraded(t, path, orig)
	renamed := slices.Index(stages, "renamed")
	if renamed < 0 || len(stages) < 9 {
		t.Fatalf("stages %q", stages)
	}
	t.Logf("stages: %q", stages)

	for i, stage := range stages {
		t.Run(stage, func(t *testing.T) {
			path, orig := copyFixture(t)
			cmd := exec.Command(os.Args[0], "-test.run=^TestCrashHelper$", "-test.count=1")
			cmd.Env = append(os.Environ(), crashPathEnv+"="+path, crashStageEnv+"="+stage)
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || !ee.Sys().(syscall.WaitStatus).Signaled() ||
				ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("the child was not killed at %q: %v\n%s", stage, err, out)
			}
			want := Result{From: 1, To: metastore.CurrentSchema, Backup: backupPath(path, Target)}
			if i < renamed {
				assertOld(t, path, orig)
			} else {
				// Already complete: nothing left to clean up either.
				assertUpgraded(t, path, orig)
				want = Result{From: metastore.CurrentSchema, To: metastore.CurrentSchema}
			}
			// The next command (after the child died, so its locks are
			// gone) upgrades, or finds nothing to do.
			res, err := Upgrade(context.Background(), path, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if res != want {
				t.Errorf("Upgrade after the crash = %+v, want %+v", res, want)
			}
			assertUpgraded(t, path, orig)
		})
	}
}
