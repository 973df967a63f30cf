// Package s3test runs a real S3 server for tests: versitygw (Apache-2.0),
// built once with `go install` at a pinned version and cached in the
// user's cache directory (~/.cache/backy-test), started on 127.0.0.1 with
// a temporary directory, and stopped when the test ends.
//
// The tests that use it never skip on their own: if the server cannot be
// built or started they fail, naming the cause. Only BACKY_TEST_S3=skip,
// set on purpose (an offline laptop), skips them, loudly.
package s3test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	s3be "github.com/backy/backy/blockstore/backend/s3"
	"github.com/backy/backy/internal/clock"
)

// Module and Version name the server that is built.
const (
	Module  = "github.com/versity/versitygw/cmd/versitygw"
	Version = "v1.8.0"
)

// Credentials of the server's root account.
const (
	AccessKey = "backytestaccess"
	SecretKey = "backytestsecret0123456789"
	Region    = "us-east-1"
)

// Server is a running S3 server.
type Server struct {
	// Endpoint is its URL, http://127.0.0.1:PORT.
	Endpoint string
	addr     string
	dir      string // the server's data
	bin      string
	mu       sync.Mutex
	cmd      *exec.Cmd
	exited   chan struct{}
	logs     *bytes.Buffer
}

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// Binary returns the path of the server binary, building it on first use
// ($BACKY_S3_SERVER names a binary to use instead).
func Binary(t testing.TB) string {
	t.Helper()
	if os.Getenv("BACKY_TEST_S3") == "skip" {
		t.Skip("S3 tests skipped: BACKY_TEST_S3=skip is set (CI never sets it)")
	}
	binOnce.Do(func() { binPath, binErr = install() })
	if binErr != nil {
		t.Fatalf("cannot get the S3 test server %s@%s: %v\n(set BACKY_S3_SERVER to a versitygw binary, or BACKY_TEST_S3=skip to skip the S3 tests)", Module, Version, binErr)
	}
	return binPath
}

func install() (string, error) {
	if p := os.Getenv("BACKY_S3_SERVER"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("BACKY_S3_SERVER: %w", err)
		}
		return p, nil
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "backy-test", "versitygw-"+Version)
	bin := filepath.Join(dir, "versitygw")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	// Test binaries of several packages run at once: one builds, the
	// others wait for it.
	lock, err := os.OpenFile(filepath.Join(dir, "install.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", fmt.Errorf("locking %s: %w", lock.Name(), err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	tmp, err := os.MkdirTemp(dir, ".build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	// The go command of the toolchain running the tests ($GOROOT is set
	// by go test), else the one on $PATH.
	goBin := "go"
	if root := os.Getenv("GOROOT"); root != "" {
		if p := filepath.Join(root, "bin", "go"); fileExists(p) {
			goBin = p
		}
	}
	cmd := exec.Command(goBin, "install", Module+"@"+Version)
	cmd.Env = append(os.Environ(), "GOBIN="+tmp, "GOFLAGS=", "CGO_ENABLED=0")
	start := clock.System.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go install %s@%s: %w\n%s", Module, Version, err, out)
	}
	fmt.Fprintf(os.Stderr, "s3test: built %s@%s in %.0fs, cached in %s\n", Module, Version, clock.System.Since(start).Seconds(), dir)
	if err := os.Rename(filepath.Join(tmp, "versitygw"), bin); err != nil {
		return "", err
	}
	return bin, nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// Start starts a server for the test and stops it when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s, err := Launch(Binary(t), t.TempDir())
	if err != nil {
		t.Fatalf("starting the S3 test server: %v", err)
	}
	t.Cleanup(func() { s.Kill() })
	return s
}

// Install returns the path of the server binary, building and caching it
// if need be (see Binary; this is the form for programs, such as the
// benchmark, that have no testing.TB).
func Install() (string, error) {
	binOnce.Do(func() { binPath, binErr = install() })
	return binPath, binErr
}

// Launch starts the server binary bin on a free port of 127.0.0.1 with its
// data in dir. The caller stops it with Kill.
func Launch(bin, dir string) (*Server, error) {
	s := &Server{bin: bin, dir: dir}
	for _, d := range []string{"root", "sidecar"} {
		if err := os.MkdirAll(filepath.Join(s.dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	var err error
	for range 5 { // a port picked free may be taken before the server binds it
		if s.addr, err = freePort(); err != nil {
			return nil, err
		}
		if err = s.start(); err == nil {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	s.Endpoint = "http://" + s.addr
	return s, nil
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// start runs the server and waits until it answers HTTP.
func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.logs = new(bytes.Buffer)
	cmd := exec.Command(s.bin,
		"--access", AccessKey, "--secret", SecretKey, "--region", Region,
		"--port", s.addr, "--quiet",
		"posix", "--sidecar", filepath.Join(s.dir, "sidecar"), filepath.Join(s.dir, "root"))
	cmd.Stdout, cmd.Stderr = s.logs, s.logs
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	s.cmd, s.exited = cmd, exited
	// A real server starting: the real clock.
	deadline := clock.System.Now().Add(30 * time.Second)
	for clock.System.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("the server exited at once: %s", strings.TrimSpace(s.logs.String()))
		default:
		}
		resp, err := http.Get("http://" + s.addr + "/")
		if err == nil {
			resp.Body.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = cmd.Process.Kill()
	<-exited
	return fmt.Errorf("the server did not answer on %s within 30 s: %s", s.addr, s.logs.String())
}

// Kill stops the server at once (SIGKILL), as a crash would.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.exited
	s.cmd = nil
}

// Restart starts a killed server again on the same address and data.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Kill()
	var err error
	for range 50 { // the port may linger for a moment
		if err = s.start(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("restarting the S3 test server: %v", err)
}

// Client returns an S3 client of the server's root account.
func (s *Server) Client() *s3.Client {
	return s3.New(s3.Options{
		Region:       Region,
		BaseEndpoint: aws.String(s.Endpoint),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(AccessKey, SecretKey, ""),
	})
}

// NewBucket creates a bucket with a fresh name.
func (s *Server) NewBucket(t testing.TB) string {
	t.Helper()
	name, err := s.CreateBucket(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return name
}

// CreateBucket creates a bucket with a fresh name.
func (s *Server) CreateBucket(ctx context.Context) (string, error) {
	var r [6]byte
	_, _ = rand.Read(r[:])
	name := "backy-test-" + hex.EncodeToString(r[:])
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if _, err := s.Client().CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(name)}); err != nil {
		return "", fmt.Errorf("creating bucket %s: %w", name, err)
	}
	return name, nil
}

// Options returns backend options for bucket on this server with fast
// retries, for tests.
func (s *Server) Options(bucket string) s3be.Options {
	return s3be.Options{
		Bucket:          bucket,
		Region:          Region,
		Endpoint:        s.Endpoint,
		PathStyle:       true,
		AccessKeyID:     AccessKey,
		SecretAccessKey: SecretKey,
		ConnectTimeout:  5 * time.Second,
		RequestTimeout:  time.Minute,
		MaxAttempts:     4,
		BaseBackoff:     10 * time.Millisecond,
		MaxBackoff:      200 * time.Millisecond,
	}
}

// Dir is the directory holding the buckets (bucket B's objects are files
// below Dir()/B), for tests that damage objects behind the server's back.
func (s *Server) Dir() string { return filepath.Join(s.dir, "root") }
