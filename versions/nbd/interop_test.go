package nbd

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestInterop drives the server with independent NBD clients when they
// are installed: nbdinfo and nbdcopy (libnbd) and qemu-img (QEMU's NBD
// client). Each part is skipped when its tool is missing.
func TestInterop(t *testing.T) {
	// Real clients (libnbd-bin, qemu-utils; .ci/install-test-tools): a
	// missing one fails the test, unless BACKY_TEST_NBD=skip (never in CI).
	if os.Getenv("BACKY_TEST_NBD") == "skip" {
		t.Skip("NBD client tests skipped: BACKY_TEST_NBD=skip is set (CI never sets it)")
	}
	look := func(name, pkg string) string {
		p, err := exec.LookPath(name)
		if err != nil {
			t.Fatalf("%s not found: install %s (as root: .ci/install-test-tools), or set BACKY_TEST_NBD=skip", name, pkg)
		}
		return p
	}
	nbdinfo, nbdcopy, qemuImg := look("nbdinfo", "libnbd-bin"), look("nbdcopy", "libnbd-bin"), look("qemu-img", "qemu-utils")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	x := newMemExports()
	const size = 4 << 20
	x.add("disk", size, false, "writable disk")
	ro := x.add("ro", 1<<20, true, "read-only disk")
	copy(ro.data[8192:], "hello from the read-only export")
	ro.alloc[2] = true
	logs := &logBuffer{}
	srv := NewServer(x, Options{Logger: newTextLogger(logs)})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	defer func() {
		cancel()
		<-done
		if t.Failed() {
			t.Logf("server log:\n%s", logs)
		}
	}()
	uri := "nbd://" + ln.Addr().String()
	run := func(name string, args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %q: %v\n%s", filepath.Base(name), args, err, out)
		}
		return string(out)
	}

	{
		t.Run("nbdinfo", func(t *testing.T) {
			out := run(nbdinfo, "--list", uri)
			for _, want := range []string{"export=", "disk", "ro", "writable disk", "read-only disk"} {
				if !strings.Contains(out, want) {
					t.Errorf("nbdinfo --list lacks %q:\n%s", want, out)
				}
			}
			var info struct {
				Exports []struct {
					Name      string   `json:"export-name"`
					Size      int64    `json:"export-size"`
					ReadOnly  bool     `json:"is_read_only"`
					MultiConn bool     `json:"can_multi_conn"`
					Flush     bool     `json:"can_flush"`
					FUA       bool     `json:"can_fua"`
					Trim      bool     `json:"can_trim"`
					Zero      bool     `json:"can_zero"`
					DF        bool     `json:"can_df"`
					MaxBlock  int64    `json:"block_size_maximum"`
					PrefBlock int64    `json:"block_size_preferred"`
					Contexts  []string `json:"contexts"`
				} `json:"exports"`
				Protocol   string `json:"protocol"`
				Structured bool   `json:"structured"`
			}
			out = run(nbdinfo, "--json", uri+"/disk")
			if err := json.Unmarshal([]byte(out), &info); err != nil || len(info.Exports) != 1 {
				t.Fatalf("nbdinfo --json: %v\n%s", err, out)
			}
			e := info.Exports[0]
			if info.Protocol != "newstyle-fixed" || e.Size != size || e.ReadOnly || !e.Flush || !e.FUA || !e.Trim || !e.Zero || !e.DF || !info.Structured || len(e.Contexts) != 1 || e.MaxBlock != 32<<20 || e.PrefBlock != 64<<10 {
				t.Errorf("nbdinfo --json disk: %+v\n%s", info, out)
			}
			out = run(nbdinfo, "--json", uri+"/ro")
			if err := json.Unmarshal([]byte(out), &info); err != nil || len(info.Exports) != 1 {
				t.Fatalf("nbdinfo --json: %v\n%s", err, out)
			}
			if e := info.Exports[0]; !e.ReadOnly || !e.MultiConn || e.Size != 1<<20 {
				t.Errorf("nbdinfo --json ro: %+v\n%s", e, out)
			}
			out = run(nbdinfo, "--map", uri+"/ro")
			if !strings.Contains(out, "8192") || !strings.Contains(out, "hole,zero") || !strings.Contains(out, "data") {
				t.Errorf("nbdinfo --map:\n%s", out)
			}
		})
	}
	{
		t.Run("qemu-img", func(t *testing.T) {
			dir := t.TempDir()
			src := filepath.Join(dir, "src.raw")
			img := make([]byte, size)
			copy(img[100:], "start")
			copy(img[size/2:], bytes.Repeat([]byte("middle"), 5000))
			copy(img[size-10:], "end")
			if err := os.WriteFile(src, img, 0o644); err != nil {
				t.Fatal(err)
			}
			target := uri + "/disk"
			run(qemuImg, "convert", "-n", "-f", "raw", "-O", "raw", src, target)
			if got := x.stores["disk"].snapshot(); !bytes.Equal(got, img) {
				t.Fatal("export differs from the image qemu-img wrote")
			}
			out := run(qemuImg, "compare", "-f", "raw", "-F", "raw", src, target)
			if !strings.Contains(out, "identical") {
				t.Errorf("qemu-img compare: %s", out)
			}
			back := filepath.Join(dir, "back.raw")
			run(qemuImg, "convert", "-f", "raw", "-O", "raw", target, back)
			if got, err := os.ReadFile(back); err != nil || !bytes.Equal(got, img) {
				t.Fatalf("image read back differs: %v", err)
			}
			out = run(qemuImg, "map", "--output=json", "-f", "raw", uri+"/ro")
			if !strings.Contains(out, `"data": true`) || !strings.Contains(out, `"zero": true`) {
				t.Errorf("qemu-img map:\n%s", out)
			}
			if out := run(qemuImg, "info", "-f", "raw", uri+"/ro"); !strings.Contains(out, fmt.Sprint(1<<20)) {
				t.Errorf("qemu-img info:\n%s", out)
			}
		})
	}
	{
		t.Run("nbdcopy", func(t *testing.T) {
			dir := t.TempDir()
			src := filepath.Join(dir, "src.raw")
			img := make([]byte, size)
			for i := 0; i < size; i += 64 << 10 {
				copy(img[i:], fmt.Sprintf("block at %d", i)) // sparse-ish
			}
			if err := os.WriteFile(src, img, 0o644); err != nil {
				t.Fatal(err)
			}
			// Several connections and requests in flight at once.
			run(nbdcopy, "--connections=4", "--requests=16", src, uri+"/disk")
			if got := x.stores["disk"].snapshot(); !bytes.Equal(got, img) {
				t.Fatal("export differs from the image nbdcopy wrote")
			}
			back := filepath.Join(dir, "back.raw")
			run(nbdcopy, uri+"/ro", back)
			if got, err := os.ReadFile(back); err != nil || !bytes.Equal(got, ro.snapshot()) {
				t.Fatalf("read-only export copied wrong: %v", err)
			}
		})
	}
}
