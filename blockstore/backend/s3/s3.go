package s3

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/backy/backy/blockstore/backend"
	"github.com/backy/backy/blockstore/backend/retry"
	"github.com/backy/backy/blockstore/backend/stack"
	"github.com/backy/backy/internal/clock"
)

// Options configure an S3 backend. Bucket is required; every other field
// has a default.
type Options struct {
	// Bucket must exist; the backend never creates buckets.
	Bucket string
	// Prefix, when not empty, is prepended with a '/' to every key, so
	// that several stores can share a bucket. Leading and trailing
	// slashes are ignored.
	Prefix string
	// Region; default "us-east-1".
	Region string
	// Endpoint is the URL of an S3-compatible server
	// ("http://127.0.0.1:7070"); "" means AWS.
	Endpoint string
	// PathStyle addresses buckets as endpoint/bucket/key instead of
	// bucket.endpoint/key (most self-hosted servers need it).
	PathStyle bool
	// AccessKeyID and SecretAccessKey (and SessionToken) are static
	// credentials. Without them the SDK's default chain is used: the
	// environment (AWS_ACCESS_KEY_ID, ...), the shared config and
	// credentials files (Profile, or AWS_PROFILE), then instance roles.
	AccessKeyID, SecretAccessKey, SessionToken string
	Profile                                    string
	// ConnectTimeout bounds connecting (TCP and TLS); default 10 s.
	ConnectTimeout time.Duration
	// RequestTimeout bounds one attempt of a request, its body included;
	// default 2 min.
	RequestTimeout time.Duration
	// RetryFor is how long a request that fails with transient errors
	// (no answer, timeouts, 5xx, throttling) is retried, from its first
	// attempt, with exponential backoff and full jitter; the last attempt
	// is made when it has passed. Default 5 min, so an outage of the
	// server of up to a few minutes delays a backup rather than failing it.
	// A negative value disables retries.
	RetryFor time.Duration
	// MaxAttempts, if > 0, also caps the attempts of a request (whichever
	// limit comes first ends the retries); 1 disables retries. Default 0:
	// RetryFor alone decides.
	MaxAttempts int
	// SimultaneousReads and SimultaneousWrites bound the requests in
	// flight: Get, Stat and List pages are reads, Put and Delete writes.
	// Default 16 each.
	SimultaneousReads, SimultaneousWrites int
	// StorageClass of new objects ("STANDARD_IA", ...); "" is the
	// bucket's default.
	StorageClass string
	// BandwidthRead and BandwidthWrite limit the bytes per second of
	// object bodies received and sent; 0 is unlimited.
	BandwidthRead, BandwidthWrite int64

	// Logger receives the backend's notices; nil is slog.Default().
	Logger *slog.Logger

	// HTTPTransport, if set, replaces the transport (tests inject faults
	// with it). Its dial timeout is then its own.
	HTTPTransport http.RoundTripper
	// BaseBackoff and MaxBackoff shape the retry delays: attempt n waits a
	// random time up to min(MaxBackoff, BaseBackoff*2^n). Defaults 100 ms
	// and 10 s.
	BaseBackoff, MaxBackoff time.Duration
	// Clock times the retry budget and paces the bandwidth limits (the
	// waits themselves are real-time timers); clock.System when nil.
	Clock clock.Clock
}

// Backend is an S3 data backend: the bucket's client (one request per
// call) in its stack of wrappers (package stack: concurrency limits,
// retries, bandwidth limits), built from the Options. It is safe for
// concurrent use.
type Backend struct {
	stack  backend.Backend
	bucket *bucket
}

// bucket is the client of one bucket: every call is one request (two for
// Delete, and a probe of the bucket after a 404), one attempt, bounded by
// RequestTimeout, its failure classified (transient or permanent). It
// neither retries nor limits; the stack around it does.
type bucket struct {
	o        Options
	client   *s3.Client
	root     string // "" or the prefix with a trailing '/'
	location string
	http     *http.Client // the custom client, if any
}

var (
	_ backend.Backend      = (*Backend)(nil)
	_ backend.BatchDeleter = (*Backend)(nil)
	_ backend.Unwrapper    = (*Backend)(nil)
	_ backend.Backend      = (*bucket)(nil)
	_ backend.BatchDeleter = (*bucket)(nil)
	_ backend.Pager        = (*bucket)(nil)
)

// DefaultRetryFor is the default of Options.RetryFor.
const DefaultRetryFor = 5 * time.Minute

// ErrNoBucket: the bucket does not exist (or the credentials cannot see
// it). It is permanent and never backend.ErrNotFound.
var ErrNoBucket = errors.New("bucket does not exist")

const noCredentials = "no usable S3 credentials (set access_key_id and secret_access_key or their _file forms in [DataBackend], or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile)"

// maxDeleteBatch is the most keys one DeleteObjects request may name.
const maxDeleteBatch = 1000

// New returns a backend for the bucket in o. It checks that the bucket
// exists and that the credentials may use it (HeadBucket), so that a
// mistake in the configuration is reported before any work starts.
func New(ctx context.Context, o Options) (*Backend, error) {
	bk, err := newBucket(ctx, o)
	if err != nil {
		return nil, err
	}
	so := bk.stackOptions()
	b := &Backend{stack: stack.Wrap(bk, so), bucket: bk}
	if err := retry.Do(ctx, *so.Retry, bk.checkBucket); err != nil {
		_ = b.Close()
		return nil, err
	}
	return b, nil
}

// stackOptions are the wrappers of the bucket, from its options (with
// their defaults applied).
func (b *bucket) stackOptions() stack.Options {
	return stack.Options{
		Retry: &retry.Options{
			For:         max(b.o.RetryFor, 0),
			MaxAttempts: b.o.MaxAttempts,
			BaseBackoff: b.o.BaseBackoff,
			MaxBackoff:  b.o.MaxBackoff,
			Logger:      b.o.Logger,
		},
		SimultaneousReads:  b.o.SimultaneousReads,
		SimultaneousWrites: b.o.SimultaneousWrites,
		BandwidthRead:      b.o.BandwidthRead,
		BandwidthWrite:     b.o.BandwidthWrite,
		Clock:              b.o.Clock,
	}
}

func newBucket(ctx context.Context, o Options) (*bucket, error) {
	if o.Bucket == "" {
		return nil, errors.New("s3 backend: no bucket given")
	}
	if o.Region == "" {
		o.Region = "us-east-1"
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = 10 * time.Second
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = 2 * time.Minute
	}
	if o.RetryFor == 0 {
		o.RetryFor = DefaultRetryFor
	}
	if o.MaxAttempts < 0 {
		o.MaxAttempts = 0
	}
	if o.SimultaneousReads <= 0 {
		o.SimultaneousReads = 16
	}
	if o.SimultaneousWrites <= 0 {
		o.SimultaneousWrites = 16
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.BaseBackoff <= 0 {
		o.BaseBackoff = retry.DefaultBaseBackoff
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = retry.DefaultMaxBackoff
	}
	root := strings.Trim(o.Prefix, "/")
	if root != "" {
		if !backend.ValidName(root) {
			return nil, fmt.Errorf("s3 backend: prefix %q: %w (expected lower-case [a-z0-9._-] path elements separated by '/')", o.Prefix, backend.ErrBadName)
		}
		root += "/"
	}
	location := "s3://" + o.Bucket + "/" + root
	if o.Endpoint != "" {
		u, err := url.Parse(o.Endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("s3 backend: endpoint %q is not an http:// or https:// URL", o.Endpoint)
		}
		location += " at " + o.Endpoint
	}

	conns := o.SimultaneousReads + o.SimultaneousWrites
	// The SDK's buildable client honours AWS_CA_BUNDLE and the shared
	// config's CA bundle; tests replace the transport.
	var hc aws.HTTPClient = awshttp.NewBuildableClient().
		WithDialerOptions(func(d *net.Dialer) {
			d.Timeout = o.ConnectTimeout
			d.KeepAlive = 30 * time.Second
		}).
		WithTransportOptions(func(tr *http.Transport) {
			tr.TLSHandshakeTimeout = o.ConnectTimeout
			tr.MaxIdleConns = conns
			tr.MaxIdleConnsPerHost = conns
		})
	var custom *http.Client
	if o.HTTPTransport != nil {
		custom = &http.Client{Transport: o.HTTPTransport}
	}

	loadOpts := []func(*awsconfig.LoadOptions) error{
		awsconfig.WithRegion(o.Region),
		awsconfig.WithHTTPClient(hc),
		awsconfig.WithRetryer(func() aws.Retryer { return aws.NopRetryer{} }),
	}
	if o.AccessKeyID != "" {
		loadOpts = append(loadOpts, awsconfig.WithCredentialsProvider(
			credentials.NewStaticCredentialsProvider(o.AccessKeyID, o.SecretAccessKey, o.SessionToken)))
	}
	if o.Profile != "" {
		loadOpts = append(loadOpts, awsconfig.WithSharedConfigProfile(o.Profile))
	}
	cfg, err := awsconfig.LoadDefaultConfig(ctx, loadOpts...)
	if err != nil {
		return nil, backend.Permanent(fmt.Errorf("s3 backend: loading the AWS configuration: %w", err))
	}
	// Credentials first: a missing or broken source is a clear error
	// here rather than a failure of the first request.
	if cfg.Credentials == nil {
		return nil, backend.Permanent(deniedError{errors.New("s3 backend: " + noCredentials)})
	}
	if _, err := cfg.Credentials.Retrieve(ctx); err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("s3 backend: getting credentials: %w", ctx.Err())
		}
		return nil, backend.Permanent(deniedError{fmt.Errorf("s3 backend: %s: %w", noCredentials, err)})
	}
	client := s3.NewFromConfig(cfg, func(so *s3.Options) {
		so.UsePathStyle = o.PathStyle
		if o.Endpoint != "" {
			so.BaseEndpoint = aws.String(o.Endpoint)
		}
		so.Retryer = aws.NopRetryer{}
		if custom != nil {
			so.HTTPClient = custom
		}
		// We send our own CRC-32C with every PUT and ask for the stored
		// checksum on GET; the SDK need not add its own.
		so.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		// Get checks the stored checksum itself (see Get).
		so.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
		so.DisableLogOutputChecksumValidationSkipped = true
	})
	b := &bucket{
		o:        o,
		client:   client,
		root:     root,
		location: location,
		http:     custom,
	}
	return b, nil
}

// Unwrap returns the stack of wrappers around the bucket.
func (b *Backend) Unwrap() backend.Backend { return b.stack }

// Properties describes the backend.
func (b *Backend) Properties() backend.Properties { return b.stack.Properties() }

// Close releases idle connections of a custom transport.
func (b *Backend) Close() error { return b.stack.Close() }

// Put stores data under name with one PutObject carrying its CRC-32C.
func (b *Backend) Put(ctx context.Context, name string, data []byte) error {
	return b.stack.Put(ctx, name, data)
}

// Get reads the whole object into buf. The body must be exactly
// Content-Length bytes and match the CRC-32C the server stored with it (if
// it sends one); otherwise the GET is retried. If every attempt brings a
// body that does not match its stored checksum, the last body is returned
// anyway, with a notice: the object itself (or its stored checksum) is
// damaged, and the caller's own verification (AEAD tag, BLAKE3) is the
// judge of what it got, so that a damaged block is reported as such
// rather than as an I/O error.
func (b *Backend) Get(ctx context.Context, name string, buf []byte) ([]byte, error) {
	out, err := b.stack.Get(ctx, name, buf)
	if err != nil && errors.Is(err, errChecksum) && ctx.Err() == nil {
		b.bucket.o.Logger.Info("s3 backend: an object does not match its stored checksum on any attempt; passing it on for verification",
			"object", name, "location", b.bucket.location, "error", err)
		return out, nil
	}
	if err != nil {
		return buf[:0], err
	}
	return out, nil
}

// Stat returns the object's size and modification time (HeadObject).
func (b *Backend) Stat(ctx context.Context, name string) (backend.Info, error) {
	return b.stack.Stat(ctx, name)
}

// List calls fn for every object whose name starts with prefix, one page
// of ListObjectsV2 at a time (each page retried on its own).
func (b *Backend) List(ctx context.Context, prefix string, fn func(backend.Info) error) error {
	return b.stack.List(ctx, prefix, fn)
}

// Delete removes the object; a missing object is ErrNotFound.
func (b *Backend) Delete(ctx context.Context, name string) error {
	return b.stack.Delete(ctx, name)
}

// MaxDeleteBatch is the most names DeleteBatch takes (S3's limit).
func (b *Backend) MaxDeleteBatch() int { return maxDeleteBatch }

// DeleteBatch deletes up to 1000 objects with one DeleteObjects request,
// through the stack (limited and retried like every write).
func (b *Backend) DeleteBatch(ctx context.Context, names []string) ([]error, error) {
	bd, ok := backend.As[backend.BatchDeleter](b.stack)
	if !ok {
		return nil, fmt.Errorf("s3 backend: delete %d objects: no batch delete in the stack", len(names))
	}
	return bd.DeleteBatch(ctx, names)
}

// Properties describes the bucket.
func (b *bucket) Properties() backend.Properties {
	return backend.Properties{Location: b.location, Connections: max(b.o.SimultaneousReads, b.o.SimultaneousWrites)}
}

// Close releases idle connections of a custom transport.
func (b *bucket) Close() error {
	if b.http != nil {
		b.http.CloseIdleConnections()
	}
	return nil
}

func (b *bucket) key(name string) string { return b.root + name }

// call makes one attempt of a request: fn is called with a context
// bounded by RequestTimeout, and its error classified (opErr).
func (b *bucket) call(ctx context.Context, op, name string, fn func(ctx context.Context) error) error {
	if err := ctx.Err(); err != nil {
		return b.opErr(op, name, err)
	}
	actx, cancel := context.WithTimeout(ctx, b.o.RequestTimeout)
	defer cancel()
	err := fn(actx)
	if err == nil {
		return nil
	}
	if ctx.Err() == nil && actx.Err() != nil {
		// Our per-attempt timeout, not the caller's: transient.
		err = &attemptTimeout{after: b.o.RequestTimeout, err: err}
	}
	return b.opErr(op, name, err)
}

// Put stores data under name with one PutObject carrying its CRC-32C.
func (b *bucket) Put(ctx context.Context, name string, data []byte) error {
	if !backend.ValidName(name) {
		return badName("put", name)
	}
	crc := crcBase64(data)
	return b.call(ctx, "put", name, func(ctx context.Context) error {
		in := &s3.PutObjectInput{
			Bucket:            aws.String(b.o.Bucket),
			Key:               aws.String(b.key(name)),
			Body:              bytes.NewReader(data),
			ContentLength:     aws.Int64(int64(len(data))),
			ChecksumAlgorithm: types.ChecksumAlgorithmCrc32c,
			ChecksumCRC32C:    aws.String(crc),
		}
		if b.o.StorageClass != "" {
			in.StorageClass = types.StorageClass(b.o.StorageClass)
		}
		_, err := b.client.PutObject(ctx, in)
		return err
	})
}

// Get reads the whole object into buf with one GetObject. A body that is
// not exactly Content-Length bytes is a transient error; so is one that
// does not match the CRC-32C the server stored, but then the body is
// returned with the error (errChecksum), for Backend.Get to pass on when
// no attempt brings a better one.
func (b *bucket) Get(ctx context.Context, name string, buf []byte) ([]byte, error) {
	if !backend.ValidName(name) {
		return buf[:0], badName("get", name)
	}
	out := buf[:0]
	err := b.call(ctx, "get", name, func(ctx context.Context) error {
		resp, err := b.client.GetObject(ctx, &s3.GetObjectInput{
			Bucket: aws.String(b.o.Bucket),
			Key:    aws.String(b.key(name)),
		}, s3.WithAPIOptions(smithyhttp.AddHeaderValue("x-amz-checksum-mode", "ENABLED")))
		if err != nil {
			return b.confirmMissing(ctx, err)
		}
		defer resp.Body.Close()
		size := aws.ToInt64(resp.ContentLength)
		if resp.ContentLength == nil || size < 0 {
			return &transientError{fmt.Errorf("the response has no Content-Length")}
		}
		if int64(cap(buf)) < size {
			buf = make([]byte, size)
		}
		out = buf[:size]
		if _, err := io.ReadFull(resp.Body, out); err != nil {
			return &transientError{fmt.Errorf("reading the body (%d bytes): %w", size, err)}
		}
		var one [1]byte
		if n, err := resp.Body.Read(one[:]); n > 0 {
			return &transientError{fmt.Errorf("the body is longer than its Content-Length of %d bytes", size)}
		} else if err != nil && err != io.EOF {
			return &transientError{fmt.Errorf("reading the body: %w", err)}
		}
		if want := aws.ToString(resp.ChecksumCRC32C); want != "" && !strings.Contains(want, "-") {
			if got := crcBase64(out); got != want {
				return &transientError{fmt.Errorf("%w: the body's CRC-32C is %s, the server stored %s", errChecksum, got, want)}
			}
		}
		return nil
	})
	if err != nil && !errors.Is(err, errChecksum) {
		return buf[:0], err
	}
	return out, err
}

// errChecksum: a body did not match the checksum stored with it.
var errChecksum = errors.New("checksum mismatch")

func crcBase64(p []byte) string {
	var enc [4]byte
	binary.BigEndian.PutUint32(enc[:], crc32.Checksum(p, castagnoli))
	return base64.StdEncoding.EncodeToString(enc[:])
}

// Stat returns the object's size and modification time (HeadObject).
func (b *bucket) Stat(ctx context.Context, name string) (backend.Info, error) {
	if !backend.ValidName(name) {
		return backend.Info{}, badName("stat", name)
	}
	var info backend.Info
	err := b.call(ctx, "stat", name, func(ctx context.Context) error {
		var err error
		info, err = b.head(ctx, name)
		return err
	})
	return info, err
}

func (b *bucket) head(ctx context.Context, name string) (backend.Info, error) {
	resp, err := b.client.HeadObject(ctx, &s3.HeadObjectInput{
		Bucket: aws.String(b.o.Bucket),
		Key:    aws.String(b.key(name)),
	})
	if err != nil {
		return backend.Info{}, b.confirmMissing(ctx, err)
	}
	return backend.Info{Name: name, Size: aws.ToInt64(resp.ContentLength), ModTime: aws.ToTime(resp.LastModified)}, nil
}

// Delete removes the object; a missing object is ErrNotFound, which S3's
// DeleteObject does not tell, so HeadObject asks first.
func (b *bucket) Delete(ctx context.Context, name string) error {
	if !backend.ValidName(name) {
		return badName("delete", name)
	}
	return b.call(ctx, "delete", name, func(ctx context.Context) error {
		if _, err := b.head(ctx, name); err != nil {
			return err
		}
		_, err := b.client.DeleteObject(ctx, &s3.DeleteObjectInput{
			Bucket: aws.String(b.o.Bucket),
			Key:    aws.String(b.key(name)),
		})
		if err != nil {
			// Some servers say NoSuchKey when another client deleted
			// the object since our HEAD.
			return b.confirmMissing(ctx, err)
		}
		return nil
	})
}

// MaxDeleteBatch is the most names DeleteBatch takes (S3's limit).
func (b *bucket) MaxDeleteBatch() int { return maxDeleteBatch }

// DeleteBatch deletes up to 1000 objects with one DeleteObjects request.
func (b *bucket) DeleteBatch(ctx context.Context, names []string) ([]error, error) {
	if len(names) > maxDeleteBatch {
		return nil, fmt.Errorf("s3 backend: delete batch of %d names, more than %d", len(names), maxDeleteBatch)
	}
	errs := make([]error, len(names))
	index := make(map[string]int, len(names))
	ids := make([]types.ObjectIdentifier, 0, len(names))
	for i, name := range names {
		if !backend.ValidName(name) {
			errs[i] = badName("delete", name)
			continue
		}
		index[b.key(name)] = i
		ids = append(ids, types.ObjectIdentifier{Key: aws.String(b.key(name))})
	}
	if len(ids) == 0 {
		return errs, nil
	}
	what := fmt.Sprintf("%d objects", len(ids))
	err := b.call(ctx, "delete", what, func(ctx context.Context) error {
		resp, err := b.client.DeleteObjects(ctx, &s3.DeleteObjectsInput{
			Bucket: aws.String(b.o.Bucket),
			Delete: &types.Delete{Objects: ids, Quiet: aws.Bool(true)},
		})
		if err != nil {
			return err
		}
		for _, e := range resp.Errors {
			i, ok := index[aws.ToString(e.Key)]
			if !ok {
				continue
			}
			code, msg := aws.ToString(e.Code), aws.ToString(e.Message)
			cause := fmt.Errorf("%s: %s", code, msg)
			if code == "NoSuchKey" {
				continue // gone already
			}
			errs[i] = b.opErr("delete", names[i], classifyCode(code, 0, cause))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return errs, nil
}

// List calls fn for every object whose name starts with prefix, one page
// of ListObjectsV2 at a time (ListPage).
func (b *bucket) List(ctx context.Context, prefix string, fn func(backend.Info) error) error {
	if err := ctx.Err(); err != nil {
		return b.opErr("list", prefix, err)
	}
	return backend.ListPages(ctx, prefix, b.ListPage, fn)
}

// ListPage lists one page (ListObjectsV2, up to 1000 keys). Keys that are
// no valid object names (foreign objects, "directory" markers) are
// skipped.
func (b *bucket) ListPage(ctx context.Context, prefix, token string) ([]backend.Info, string, error) {
	var page *s3.ListObjectsV2Output
	err := b.call(ctx, "list", prefix, func(ctx context.Context) error {
		in := &s3.ListObjectsV2Input{
			Bucket: aws.String(b.o.Bucket),
			Prefix: aws.String(b.root + prefix),
		}
		if token != "" {
			in.ContinuationToken = aws.String(token)
		}
		var err error
		page, err = b.client.ListObjectsV2(ctx, in)
		return err
	})
	if err != nil {
		return nil, "", err
	}
	infos := make([]backend.Info, 0, len(page.Contents))
	for _, obj := range page.Contents {
		key := aws.ToString(obj.Key)
		name, ok := strings.CutPrefix(key, b.root)
		if !ok || !strings.HasPrefix(name, prefix) || !backend.ValidName(name) {
			continue
		}
		infos = append(infos, backend.Info{Name: name, Size: aws.ToInt64(obj.Size), ModTime: aws.ToTime(obj.LastModified)})
	}
	next := ""
	if aws.ToBool(page.IsTruncated) && page.NextContinuationToken != nil {
		next = aws.ToString(page.NextContinuationToken)
	}
	return infos, next, nil
}

// checkBucket lists at most one key of the store: that proves the bucket
// exists and the credentials may list it. A GET is used rather than
// HeadBucket because a HEAD's error has no body: some servers answer a
// wrong access key with a bare 404, which would read as a missing bucket.
// New retries it with the backend's retry policy.
func (b *bucket) checkBucket(ctx context.Context) error {
	return b.call(ctx, "open bucket", b.o.Bucket, b.probeBucket)
}

func (b *bucket) probeBucket(ctx context.Context) error {
	_, err := b.client.ListObjectsV2(ctx, &s3.ListObjectsV2Input{
		Bucket:  aws.String(b.o.Bucket),
		Prefix:  aws.String(b.root),
		MaxKeys: aws.Int32(1),
	})
	if code, status := errorCode(err); code == "NoSuchBucket" || (code == "" && status == http.StatusNotFound) {
		return noBucket(b.o.Bucket, err)
	}
	return err
}

// confirmMissing turns a 404 of an object into ErrNotFound only after
// probing the bucket: a HEAD's bare 404 cannot tell a missing object from
// a missing bucket.
func (b *bucket) confirmMissing(ctx context.Context, err error) error {
	code, status := errorCode(err)
	switch {
	case code == "NoSuchBucket":
		return noBucket(b.o.Bucket, err)
	case code == "NoSuchKey":
		return notFoundError{err}
	case status != http.StatusNotFound:
		return err
	}
	if perr := b.probeBucket(ctx); perr != nil {
		return perr
	}
	return notFoundError{err}
}

func noBucket(bucket string, err error) error {
	return backend.Permanent(fmt.Errorf("%w: %q (create it, or fix [DataBackend] bucket): %w", ErrNoBucket, bucket, err))
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func badName(op, name string) error {
	return fmt.Errorf("s3 backend: %s %q: %w", op, name, backend.ErrBadName)
}
