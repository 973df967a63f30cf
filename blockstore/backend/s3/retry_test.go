package s3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/backy/backy/blockstore/backend"
)

// apiErr builds an SDK error as the client returns it for an HTTP answer.
func apiErr(status int, code string) error {
	var err error = &smithy.GenericAPIError{Code: code, Message: "test"}
	return &awshttp.ResponseError{ResponseError: &smithyhttp.ResponseError{
		Response: &smithyhttp.Response{Response: &http.Response{StatusCode: status}}, Err: err}}
}

func TestTransient(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"500", apiErr(500, "InternalError"), true},
		{"503 SlowDown", apiErr(503, "SlowDown"), true},
		{"502 no code", apiErr(502, ""), true},
		{"429", apiErr(429, ""), true},
		{"400 RequestTimeout", apiErr(400, "RequestTimeout"), true},
		{"400 BadDigest", apiErr(400, "BadDigest"), true},
		{"400 XAmzContentSHA256Mismatch", apiErr(400, "XAmzContentSHA256Mismatch"), true},
		{"403 AccessDenied", apiErr(403, "AccessDenied"), false},
		{"403 SignatureDoesNotMatch", apiErr(403, "SignatureDoesNotMatch"), false},
		{"404 NoSuchBucket", apiErr(404, "NoSuchBucket"), false},
		{"400 InvalidArgument", apiErr(400, "InvalidArgument"), false},
		{"not found", notFoundError{errors.New("x")}, false},
		{"permanent", backend.Permanent(errors.New("x")), false},
		{"connection refused", fmt.Errorf("dial: %w", syscall.ECONNREFUSED), true},
		{"reset", &net.OpError{Op: "read", Err: syscall.ECONNRESET}, true},
		{"unexpected EOF", fmt.Errorf("body: %w", io.ErrUnexpectedEOF), true},
		{"short body", &transientError{errors.New("short")}, true},
		{"attempt timeout", &attemptTimeout{time.Second, context.DeadlineExceeded}, true},
		{"other", errors.New("cannot build request"), false},
	} {
		if got := transient(tc.err); got != tc.want {
			t.Errorf("transient(%s) = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestOpErrClassifies(t *testing.T) {
	b := &Backend{o: Options{Bucket: "bk", Endpoint: "http://e", MaxAttempts: 3}}
	if err := b.opErr("get", "x", apiErr(403, "AccessDenied")); !errors.Is(err, fs.ErrPermission) || !errors.Is(err, backend.ErrPermanent) {
		t.Errorf("403: %v", err)
	}
	if err := b.opErr("get", "x", apiErr(400, "InvalidArgument")); !errors.Is(err, backend.ErrPermanent) {
		t.Errorf("400: %v", err)
	}
	if err := b.opErr("get", "x", apiErr(503, "SlowDown")); errors.Is(err, backend.ErrPermanent) || errors.Is(err, backend.ErrUnavailable) {
		t.Errorf("503 after retries: %v; want neither permanent nor unavailable", err)
	}
	if err := b.opErr("get", "x", fmt.Errorf("dial: %w", syscall.ECONNREFUSED)); !errors.Is(err, backend.ErrUnavailable) {
		t.Errorf("refused: %v, want ErrUnavailable", err)
	}
	if err := b.opErr("get", "x", context.Canceled); !errors.Is(err, context.Canceled) || errors.Is(err, backend.ErrUnavailable) {
		t.Errorf("cancelled: %v", err)
	}
}

func TestRetryPolicy(t *testing.T) {
	var slept []time.Duration
	p := retryPolicy{attempts: 5, budget: time.Hour, base: 100 * time.Millisecond, max: time.Second,
		sleep: func(_ context.Context, d time.Duration) error { slept = append(slept, d); return nil }}
	calls := 0
	_, err := p.run(t.Context(), func(n int) error {
		if n != calls {
			t.Fatalf("attempt %d, want %d", n, calls)
		}
		calls++
		return apiErr(503, "SlowDown")
	})
	if err == nil || calls != 5 || len(slept) != 4 {
		t.Fatalf("err %v, %d calls, %d sleeps; want an error after 5 calls and 4 sleeps", err, calls, len(slept))
	}
	for i, d := range slept {
		ceil := min(time.Second, 100*time.Millisecond<<i)
		if d < 0 || d > ceil {
			t.Errorf("backoff %d = %v, want within [0, %v]", i, d, ceil)
		}
	}
	// Permanent errors are not retried; success stops at once.
	calls = 0
	_, _ = p.run(t.Context(), func(int) error { calls++; return apiErr(403, "AccessDenied") })
	if calls != 1 {
		t.Errorf("a permanent error was tried %d times", calls)
	}
	calls = 0
	if _, err := p.run(t.Context(), func(n int) error {
		calls++
		if n < 2 {
			return apiErr(500, "InternalError")
		}
		return nil
	}); err != nil || calls != 3 {
		t.Errorf("recovering after 2 failures: %v after %d calls", err, calls)
	}
	// Cancellation during the backoff ends the loop with ctx's error.
	ctx, cancel := context.WithCancel(t.Context())
	p.sleep = func(ctx context.Context, d time.Duration) error { cancel(); return ctx.Err() }
	_, err = p.run(ctx, func(int) error { return apiErr(500, "InternalError") })
	if !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled during backoff: %v", err)
	}
	// Jitter: delays are not all equal.
	p = retryPolicy{attempts: 2, base: time.Second, max: time.Second}
	seen := map[time.Duration]bool{}
	for range 20 {
		seen[p.backoff(0)] = true
	}
	if len(seen) < 10 {
		t.Errorf("20 backoffs gave only %d distinct delays: no jitter", len(seen))
	}
}

func TestLimiter(t *testing.T) {
	now := time.Unix(1000, 0)
	l := newLimiter(1 << 20) // 1 MiB/s
	l.now = func() time.Time { return now }
	if d := l.reserve(1 << 20); d != 0 {
		t.Errorf("first reservation waits %v, want 0", d)
	}
	if d := l.reserve(512 << 10); d != time.Second {
		t.Errorf("second waits %v, want 1s", d)
	}
	now = now.Add(10 * time.Second) // idle: no credit
	if d := l.reserve(1 << 20); d != 0 {
		t.Errorf("after idle waits %v, want 0", d)
	}
	if d := l.reserve(1); d != time.Second {
		t.Errorf("after idle, the next waits %v, want 1s (no burst credit)", d)
	}
	if newLimiter(0) != nil {
		t.Error("a zero rate made a limiter")
	}
	var nl *limiter
	if err := nl.wait(t.Context(), 100); err != nil {
		t.Error(err)
	}
}
