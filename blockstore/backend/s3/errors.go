package s3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net"
	"net/http"
	"syscall"
	"time"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/backy/backy/blockstore/backend"
	"github.com/backy/backy/internal/clock"
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

// opErr wraps err with the operation, name and location, and marks what
// no retry fixes: denied access wraps fs.ErrPermission, and every HTTP 4xx
// but a missing object is permanent.
func (b *Backend) opErr(op, name string, err error) error {
	// How long the request was retried, for the message; the retry
	// loop's wrapper itself goes.
	tries := ""
	if g, ok := err.(*gaveUp); ok {
		plural := "s"
		if g.attempts == 1 {
			plural = ""
		}
		tries = fmt.Sprintf(" after %d attempt%s in %v", g.attempts, plural, g.elapsed().Round(100*time.Millisecond))
		err = g.err
	}
	switch {
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		var at *attemptTimeout
		if errors.As(err, &at) {
			break
		}
		return fmt.Errorf("s3 backend: %s %q: %w", op, name, err)
	case errors.Is(err, backend.ErrNotFound) || errors.Is(err, backend.ErrPermanent):
		return fmt.Errorf("s3 backend: %s %q: %w", op, name, err)
	}
	code, status := errorCode(err)
	switch {
	case deniedCodes[code] || status == http.StatusForbidden:
		err = backend.Permanent(deniedError{fmt.Errorf("access denied by %s (check the credentials and their permissions on bucket %q): %w", b.endpointName(), b.o.Bucket, err)})
	case status >= 400 && status < 500 && !transient(err):
		err = backend.Permanent(err)
	case status == 0 && unreachable(err):
		err = fmt.Errorf("%w: cannot reach %s%s (is the server up? check [DataBackend] endpoint; retry_for sets how long backy retries): %w", backend.ErrUnavailable, b.endpointName(), tries, err)
	}
	return fmt.Errorf("s3 backend: %s %q: %w", op, name, err)
}

func (b *Backend) endpointName() string {
	if b.o.Endpoint != "" {
		return b.o.Endpoint
	}
	return "S3 (region " + b.o.Region + ")"
}

// gaveUp carries how long a request was retried to opErr.
type gaveUp struct {
	attempts   int
	start, end time.Time
	err        error
}

func (g *gaveUp) Error() string                     { return g.err.Error() }
func (g *gaveUp) Unwrap() error                     { return g.err }
func (g *gaveUp) elapsed() time.Duration            { return g.end.Sub(g.start) }
func (g *gaveUp) with(start, end time.Time) *gaveUp { g.start, g.end = start, end; return g }

// retryPolicy retries transient errors with exponential backoff and full
// jitter until the budget (time since the first attempt) is spent, and
// at most attempts times when attempts > 0.
type retryPolicy struct {
	attempts  int
	budget    time.Duration
	base, max time.Duration
	// sleep waits d or until ctx ends; nil is a timer (tests replace it).
	sleep func(ctx context.Context, d time.Duration) error
	// now is the clock (Options.Clock); nil is clock.System.
	now func() time.Time
}

// run calls attempt (with the attempt number from 0) until it succeeds,
// fails permanently, the budget or the attempts are used up, or ctx ends.
// A backoff that would end past the budget is cut short, so the last
// attempt comes when the budget is spent. It returns the attempts made.
func (p retryPolicy) run(ctx context.Context, attempt func(n int) error) (int, error) {
	now := p.now
	if now == nil {
		now = clock.System.Now
	}
	start := now()
	deadline := start.Add(p.budget)
	var err error
	for n := 0; ; n++ {
		err = attempt(n)
		if err == nil {
			return n + 1, nil
		}
		if ctx.Err() != nil {
			return n + 1, fmt.Errorf("%w (after: %v)", ctx.Err(), err)
		}
		t := now()
		if !transient(err) || (p.attempts > 0 && n+1 >= p.attempts) || !t.Before(deadline) {
			return n + 1, (&gaveUp{attempts: n + 1, err: err}).with(start, t)
		}
		d := min(p.backoff(n), deadline.Sub(t))
		if serr := p.wait(ctx, d); serr != nil {
			return n + 1, fmt.Errorf("%w (after: %v)", serr, err)
		}
	}
}

// backoff returns a random delay in [0, min(max, base*2^n)].
func (p retryPolicy) backoff(n int) time.Duration {
	ceil := p.max
	if n < 30 {
		if d := p.base << n; d > 0 && d < ceil {
			ceil = d
		}
	}
	return time.Duration(rand.Int64N(int64(ceil) + 1))
}

func (p retryPolicy) wait(ctx context.Context, d time.Duration) error {
	if p.sleep != nil {
		return p.sleep(ctx, d)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
