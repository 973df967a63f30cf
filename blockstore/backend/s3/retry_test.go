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
	b := &bucket{o: Options{Bucket: "bk", Endpoint: "http://e", MaxAttempts: 3}}
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
