package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// e2eReadmeBlock returns the first ```sh block after heading in README.md.
func e2eReadmeBlock(t *testing.T, heading string) string {
	t.Helper()
	readme := string(e2eReadFile(t, filepath.Join("..", "..", "README.md")))
	_, after, ok := strings.Cut(readme, "\n"+heading+"\n")
	if !ok {
		t.Fatalf("README.md has no %q", heading)
	}
	_, block, ok := strings.Cut(after, "```sh\n")
	if !ok {
		t.Fatalf("README.md has no sh block after %q", heading)
	}
	block, _, _ = strings.Cut(block, "```")
	return strings.TrimSpace(block)
}

// TestIssue13QuickStart runs the README's quick start as a new user would,
// in a shell whose PATH lacks Go's bin directory, and then the follow-up
// commands the README names (backy ls, backy restore UID copy.img): they
// must find backy.
func TestIssue13QuickStart(t *testing.T) {
	t.Parallel()
	cmdLine := e2eReadmeBlock(t, "## Quick start")
	if strings.Contains(cmdLine, "\n") {
		t.Fatalf("the quick start is not one command:\n%s", cmdLine)
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	e2eRandomFile(t, img, 5*e2eMiB, 1340)
	// Reuse this machine's module and build caches (no network), nothing else.
	cache := map[string]string{}
	for _, k := range []string{"GOMODCACHE", "GOCACHE"} {
		out, err := exec.Command(goBin, "env", k).Output()
		if err != nil {
			t.Fatal(err)
		}
		cache[k] = strings.TrimSpace(string(out))
	}
	script := strings.Replace(cmdLine, " disk.img ", " "+img+" ", 1) +
		` && backy ls && uid=$(backy ls --json | sed -n 's/.*"uid": "\(V[0-9a-f]*\)".*/\1/p') && backy restore "$uid" ` + filepath.Join(dir, "copy.img")
	cmd := exec.Command("sh", "-c", script)
	cmd.Dir = filepath.Join("..", "..")
	cmd.Env = []string{
		"PATH=" + filepath.Dir(goBin) + ":/usr/bin:/bin",
		"HOME=" + dir,
		"GOPATH=" + filepath.Join(dir, "go"),
		"GOMODCACHE=" + cache["GOMODCACHE"],
		"GOCACHE=" + cache["GOCACHE"],
		"GOFLAGS=-mod=readonly",
		"GOTOOLCHAIN=local",
		"BACKY_HOME=" + filepath.Join(dir, "store"),
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the quick start and its follow-up commands failed (%v):\n$ %s\n%s", err, script, out)
	}
	e2eSameFile(t, filepath.Join(dir, "copy.img"), img)
	if _, err := os.Stat(filepath.Join(dir, "go", "bin", "backy")); err != nil {
		t.Errorf("backy is not installed where the README says: %v", err)
	}
}
