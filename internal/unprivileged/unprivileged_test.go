package unprivileged_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/backy/backy/internal/unprivileged"
)

// TestRun: the body of a test that calls Run runs as an unprivileged
// user, whom permissions restrict, even when the tests run as root.
func TestRun(t *testing.T) {
	if unprivileged.Run(t) {
		return
	}
	if os.Geteuid() == 0 {
		t.Fatal("the body runs as root")
	}
	p := filepath.Join(t.TempDir(), "x")
	if err := os.WriteFile(p, []byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := os.ReadFile(p); !os.IsPermission(err) {
		t.Errorf("reading a file of mode 0: %v, want permission denied", err)
	}
	t.Run("subtest", func(t *testing.T) {
		if unprivileged.Run(t) {
			return
		}
		if os.Geteuid() == 0 {
			t.Fatal("the body runs as root")
		}
	})
}
