// Package unprivileged lets a test that needs an ordinary user's
// permissions run when the tests run as root (as CI does): the test binary
// runs that one test again as an unprivileged user, under setpriv(1)
// (util-linux), and reports its outcome. Tests only.
package unprivileged

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// ID is the uid and gid the test runs as: nobody and nogroup on Debian.
const ID = 65534

// envChild marks the re-executed test binary.
const envChild = "BACKY_TEST_UNPRIVILEGED_CHILD"

// Run makes the calling test run as a user whom file permissions restrict.
// Called first in a test (or subtest) as any user but root, it returns
// false and the caller goes on with its body. As root, it runs a copy of
// the test binary under setpriv as uid and gid 65534 with -test.run
// selecting exactly this test, reports that run as this test's outcome
// (its failure as a failure, its skip as a skip) and returns true: the
// caller returns without running its body. A missing setpriv fails the
// test: a permission test must not go quietly unrun.
func Run(t *testing.T) bool {
	t.Helper()
	if os.Geteuid() != 0 {
		return false
	}
	if os.Getenv(envChild) != "" {
		t.Fatalf("still root after setpriv --reuid=%d: privileges were not dropped", ID)
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Fatalf("this test needs an unprivileged user and runs as root: setpriv (util-linux) is needed to drop root (apt-get install util-linux, or run .ci/install-test-tools): %v", err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// The test binary lives in a directory only root can enter: run a
	// copy in one the user can, with a temp dir of its own.
	dir, err := os.MkdirTemp("", "unprivileged-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, filepath.Base(exe))
	tmp := filepath.Join(dir, "tmp")
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := copyFile(exe, bin); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(tmp, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(tmp, ID, ID); err != nil {
		t.Fatal(err)
	}
	elems := strings.Split(t.Name(), "/")
	for i, e := range elems {
		elems[i] = "^" + regexp.QuoteMeta(e) + "$"
	}
	ctx := context.Background()
	if d, ok := t.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, d.Add(-5*time.Second))
		defer cancel()
	}
	id := strconv.Itoa(ID)
	cmd := exec.CommandContext(ctx, setpriv, "--reuid="+id, "--regid="+id, "--clear-groups", "--",
		bin, "-test.run="+strings.Join(elems, "/"), "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), envChild+"=1", "TMPDIR="+tmp, "HOME="+tmp)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("running %s: %v", strings.Join(cmd.Args, " "), err)
	}
	res := out.String()
	switch {
	case err != nil:
		t.Errorf("as uid %d (%s):\n%s", ID, strings.Join(cmd.Args, " "), res)
	case strings.Contains(res, "--- SKIP: "+t.Name()+" "):
		t.Skipf("skipped as uid %d:\n%s", ID, res)
	case !strings.Contains(res, "--- PASS: "+t.Name()+" "):
		t.Errorf("as uid %d the test did not run (%s):\n%s", ID, strings.Join(cmd.Args, " "), res)
	default:
		t.Logf("passed as uid %d", ID)
	}
	return true
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
