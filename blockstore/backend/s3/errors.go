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
	"time"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/backy/backy/blockstore/backend"
)

// notFoundError marks an object that does not exist.
type notFoundError struct{ err error }

func (e notFoundError) Error() string { return e.err.Error() }
func (e notFoundError) Unwrap() []error {
	return []error{backend.ErrNotFound, e.err}
}

// transientError marks a failure that a retry may fix, found by us rather
// than by the SDK (a short body, a missing header).
type transientError struct{ err error }

func (e *transientError) Error() string { return e.err.Error() }
func (e *transientError) Unwrap() error { return e.err }

// attemptTimeout: one attempt ran out of RequestTimeout.
type attemptTimeout struct {
	after time.Duration
	err   error
}

func (e *attemptTimeout) Error() string {
	return fmt.Sprintf("no answer within the request timeout of %v: %v", e.after, e.err)
}
func (e *attemptTimeout) Unwrap() error { return e.err }

// errorCode returns the S3 error code and HTTP status of err, "" and 0 if
// it carries none.
func errorCode(err error) (string, int) {
	var code string
	var api smithy.APIError
	if errors.As(err, &api) {
		code = api.ErrorCode()
	}
	status := 0
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		status = re.HTTPStatusCode()
	} else {
		var sre *smithyhttp.ResponseError
		if errors.As(err, &sre) {
			status = sre.HTTPStatusCode()
		}
	}
	return code, status
}

// deniedCodes are S3 error codes of credentials or permissions.
var deniedCodes = map[string]bool{
	"AccessDenied": true, "InvalidAccessKeyId": true, "SignatureDoesNotMatch": true,
	"ExpiredToken": true, "InvalidToken": true, "TokenRefreshRequired": true,
	"AccountProblem": true, "AllAccessDisabled": true, "InvalidSecurity": true,
	"RequestTimeTooSkewed": true, "Forbidden": true,
	"XAdminUserNotFound": true, // versitygw: an unknown access key
}

// transientCodes are S3 error codes a retry may fix.
var transientCodes = map[string]bool{
	"InternalError": true, "ServiceUnavailable": true, "SlowDown": true,
	"RequestTimeout": true, "RequestTimeoutException": true, "Throttling": true,
	"ThrottlingException": true, "RequestThrottled": true, "TooManyRequests": true,
	"BadDigest": true, "InvalidDigest": true, "XAmzContentSHA256Mismatch": true,
	"IncompleteBody": true, "OperationAborted": true, "PriorRequestNotComplete": true,
	"EC2ThrottledException": true, "RequestLimitExceeded": true,
}

// transient reports whether a retry may fix err.
func transient(err error) bool {
	var te *transientError
	var at *attemptTimeout
	if errors.As(err, &te) || errors.As(err, &at) {
		return true
	}
	if errors.Is(err, backend.ErrNotFound) || errors.Is(err, backend.ErrPermanent) {
		return false
	}
	code, status := errorCode(err)
	switch {
	case transientCodes[code]:
		return true
	case deniedCodes[code]:
		return false
	case status >= 500 || status == http.StatusTooManyRequests || status == http.StatusRequestTimeout:
		return true
	case status != 0:
		return false // another 4xx: a malformed request or a missing bucket
	}
	// No HTTP answer: the connection failed or broke.
	var ne net.Error
	switch {
	case errors.As(err, &ne),
		errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ETIMEDOUT),
		errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return true
	}
	var oe *net.OpError
	if errors.As(err, &oe) {
		return true
	}
	// The SDK reports "failed to send the request" etc. as a
	// smithy OperationError wrapping the transport's error; other
	// errors without an answer (a request the SDK could not even build)
	// are not retried.
	return false
}

// unreachable reports whether err means no answer came from the server:
// the connection failed or broke, or an attempt timed out.
func unreachable(err error) bool {
	var te *transientError
	if errors.As(err, &te) {
		return false // an answer came, but a bad one
	}
	var at *attemptTimeout
	return errors.As(err, &at) || transient(err)
}

// classifyCode maps a per-key error of DeleteObjects.
func classifyCode(code string, status int, err error) error {
	if deniedCodes[code] || status == http.StatusForbidden {
		return backend.Permanent(deniedError{err})
	}
	return err
}

// deniedError: the credentials were refused, or lack a permission.
type deniedError struct{ err error }

func (e deniedError) Error() string { return e.err.Error() }
func (e deniedError) Unwrap() []error {
	return []error{fs.ErrPermission, e.err}
}

// opError is the error of one attempt of a request: the operation, the
// object and the classified cause. It says whether a retry may fix it
// (backend.ErrTransient) and, when no answer came from the server, that
// the server cannot be reached (backend.ErrUnavailable); as a
// retry.Reporter it tells, in that case, how long it was retried.
type opError struct {
	op, name  string
	err       error
	where     string // the endpoint when it could not be reached, else ""
	tries     string // " after N attempts in T", once given up
	transient bool
}

func (e *opError) Error() string {
	if e.where != "" {
		return fmt.Sprintf("s3 backend: %s %q: %v: cannot reach %s%s (is the server up? check [DataBackend] endpoint; retry_for sets how long backy retries): %v",
			e.op, e.name, backend.ErrUnavailable, e.where, e.tries, e.err)
	}
	return fmt.Sprintf("s3 backend: %s %q: %v", e.op, e.name, e.err)
}

func (e *opError) Unwrap() []error {
	errs := []error{e.err}
	if e.where != "" {
		errs = append(errs, backend.ErrUnavailable)
	}
	if e.transient {
		errs = append(errs, backend.ErrTransient)
	}
	return errs
}

// Retried puts the attempts and the time into the message of a server
// that could not be reached.
func (e *opError) Retried(attempts int, elapsed time.Duration) error {
	if e.where == "" {
		return e
	}
	plural := "s"
	if attempts == 1 {
		plural = ""
	}
	c := *e
	c.tries = fmt.Sprintf(" after %d attempt%s in %v", attempts, plural, elapsed.Round(100*time.Millisecond))
	return &c
}

// opErr wraps err with the operation and name, and classifies it: denied
// access wraps fs.ErrPermission, and every HTTP 4xx but a missing object
// is permanent; what a retry may fix is transient, and no answer at all
// is unavailable too.
func (b *bucket) opErr(op, name string, err error) error {
	e := &opError{op: op, name: name, err: err}
	var at *attemptTimeout
	if (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) && !errors.As(err, &at) {
		return e // the caller's context ended
	}
	if errors.Is(err, backend.ErrNotFound) || errors.Is(err, backend.ErrPermanent) {
		return e
	}
	code, status := errorCode(err)
	switch {
	case deniedCodes[code] || status == http.StatusForbidden:
		e.err = backend.Permanent(deniedError{fmt.Errorf("access denied by %s (check the credentials and their permissions on bucket %q): %w", b.endpointName(), b.o.Bucket, err)})
		return e
	case status >= 400 && status < 500 && !transient(err):
		e.err = backend.Permanent(err)
		return e
	case status == 0 && unreachable(err):
		e.where = b.endpointName()
	}
	e.transient = transient(err)
	return e
}

func (b *bucket) endpointName() string {
	if b.o.Endpoint != "" {
		return b.o.Endpoint
	}
	return "S3 (region " + b.o.Region + ")"
}
