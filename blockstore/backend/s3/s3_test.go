package s3_test

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/backy/backy/blockstore/backend"
	"github.com/backy/backy/blockstore/backend/backendtest"
	s3be "github.com/backy/backy/blockstore/backend/s3"
	"github.com/backy/backy/blockstore/backend/s3/s3test"
)

func newBackend(t testing.TB, o s3be.Options) *s3be.Backend {
	t.Helper()
	b, err := s3be.New(t.Context(), o)
	if err != nil {
		t.Fatalf("s3.New: %v", err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

func randomPrefix() string {
	var r [4]byte
	_, _ = rand.Read(r[:])
	return "p-" + hex.EncodeToString(r[:]) + "/store"
}

// TestS3Conformance runs the backend conformance suite against a real S3
// server, with and without a key prefix.
func TestS3Conformance(t *testing.T) {
	srv := s3test.Start(t)
	for _, prefixed := range []bool{false, true} {
		t.Run(fmt.Sprintf("prefix=%v", prefixed), func(t *testing.T) {
			backendtest.Run(t, func(t *testing.T) backend.Backend {
				o := srv.Options(srv.NewBucket(t))
				if prefixed {
					o.Prefix = randomPrefix()
				}
				return newBackend(t, o)
			})
		})
	}
}

// TestS3PrefixIsolation: stores under different prefixes of one bucket
// do not see each other's objects, and foreign keys are not listed.
func TestS3PrefixIsolation(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)
	oa, ob := srv.Options(bucket), srv.Options(bucket)
	oa.Prefix, ob.Prefix = "/a/", "a2"
	a, b := newBackend(t, oa), newBackend(t, ob)
	ctx := t.Context()
	if err := a.Put(ctx, "x", []byte("a")); err != nil {
		t.Fatal(err)
	}
	if err := b.Put(ctx, "x", []byte("b")); err != nil {
		t.Fatal(err)
	}
	// Foreign keys: not a valid name, and a "directory" marker.
	cl := srv.Client()
	for _, key := range []string{"a/UPPER", "a/sub/", "a/.hidden"} {
		body := "f"
		if strings.HasSuffix(key, "/") {
			body = ""
		}
		if _, err := cl.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(key), Body: strings.NewReader(body)}); err != nil {
			t.Fatalf("put %s: %v", key, err)
		}
	}
	got := map[string]bool{}
	if err := a.List(ctx, "", func(i backend.Info) error { got[i.Name] = true; return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || !got["x"] {
		t.Errorf("List of prefix a = %v, want only x", got)
	}
	if d, err := a.Get(ctx, "x", nil); err != nil || string(d) != "a" {
		t.Errorf("Get a/x = %q, %v", d, err)
	}
	if _, err := s3be.New(ctx, func() s3be.Options { o := srv.Options(bucket); o.Prefix = "Bad Prefix"; return o }()); !errors.Is(err, backend.ErrBadName) {
		t.Errorf("New with a bad prefix = %v, want ErrBadName", err)
	}
}

// TestS3ServerVerifiesChecksum: a PUT whose CRC-32C does not match its
// body is refused by the server, which is what Put relies on.
func TestS3ServerVerifiesChecksum(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)
	_, err := srv.Client().PutObject(t.Context(), &s3.PutObjectInput{
		Bucket:            aws.String(bucket),
		Key:               aws.String("bad"),
		Body:              bytes.NewReader([]byte("hello world")),
		ContentLength:     aws.Int64(11),
		ChecksumAlgorithm: types.ChecksumAlgorithmCrc32c,
		ChecksumCRC32C:    aws.String("AAAAAA=="),
	}, func(o *s3.Options) { o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired })
	if err == nil {
		t.Fatal("the server stored an object whose checksum does not match")
	}
	b := newBackend(t, srv.Options(bucket))
	if _, err := b.Stat(t.Context(), "bad"); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("Stat of the refused object = %v, want ErrNotFound", err)
	}
	// Our own PUT stores the checksum, and GET gets it back.
	if err := b.Put(t.Context(), "good", []byte("hello world")); err != nil {
		t.Fatal(err)
	}
	out, err := srv.Client().HeadObject(t.Context(), &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String("good"), ChecksumMode: types.ChecksumModeEnabled})
	if err != nil {
		t.Fatal(err)
	}
	if aws.ToString(out.ChecksumCRC32C) == "" {
		t.Errorf("the stored object has no CRC-32C: the server did not take the checksum we sent")
	}
}

// TestS3ConfigErrors: a missing bucket, wrong credentials and a server
// that is down each fail New with a clear, correctly classified error.
func TestS3ConfigErrors(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)
	ctx := t.Context()

	o := srv.Options("no-such-bucket-here")
	_, err := s3be.New(ctx, o)
	if !errors.Is(err, s3be.ErrNoBucket) || !errors.Is(err, backend.ErrPermanent) || errors.Is(err, backend.ErrNotFound) {
		t.Errorf("missing bucket: %v; want ErrNoBucket, permanent, not ErrNotFound", err)
	}
	t.Logf("missing bucket: %v", err)

	o = srv.Options(bucket)
	o.SecretAccessKey = "wrong-secret"
	_, err = s3be.New(ctx, o)
	if !errors.Is(err, fs.ErrPermission) || !errors.Is(err, backend.ErrPermanent) {
		t.Errorf("wrong secret: %v; want fs.ErrPermission and permanent", err)
	}
	if strings.Contains(fmt.Sprint(err), "wrong-secret") {
		t.Errorf("the error shows the secret: %v", err)
	}
	t.Logf("wrong secret: %v", err)

	o = srv.Options(bucket)
	o.AccessKeyID = "nosuchuser"
	if _, err = s3be.New(ctx, o); !errors.Is(err, fs.ErrPermission) {
		t.Errorf("unknown access key: %v; want fs.ErrPermission", err)
	}

	down := srv.Options(bucket)
	down.Endpoint = "http://127.0.0.1:1"
	start := time.Now()
	_, err = s3be.New(ctx, down)
	if err == nil || errors.Is(err, backend.ErrPermanent) || errors.Is(err, backend.ErrNotFound) {
		t.Errorf("server down: %v; want a transient failure", err)
	}
	if !errors.Is(err, backend.ErrUnavailable) || !strings.Contains(fmt.Sprint(err), "cannot reach http://127.0.0.1:1 after 4 attempts") {
		t.Errorf("server down: %v; want it to say it cannot reach the endpoint", err)
	}
	t.Logf("server down (%v): %v", time.Since(start).Round(time.Millisecond), err)
}

// TestS3BucketVanishes: a 404 of a HEAD in a bucket that was deleted
// after New is ErrNoBucket, never ErrNotFound (which would make the
// layers above mark blocks missing).
func TestS3BucketVanishes(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)
	b := newBackend(t, srv.Options(bucket))
	ctx := t.Context()
	if err := b.Put(ctx, "x", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := b.Delete(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Client().DeleteBucket(ctx, &s3.DeleteBucketInput{Bucket: aws.String(bucket)}); err != nil {
		t.Fatal(err)
	}
	for op, err := range map[string]error{
		"stat":   func() error { _, err := b.Stat(ctx, "x"); return err }(),
		"get":    func() error { _, err := b.Get(ctx, "x", nil); return err }(),
		"delete": b.Delete(ctx, "x"),
		"put":    b.Put(ctx, "y", []byte("y")),
		"list":   b.List(ctx, "", func(backend.Info) error { return nil }),
	} {
		if errors.Is(err, backend.ErrNotFound) || !errors.Is(err, backend.ErrPermanent) {
			t.Errorf("%s in a deleted bucket: %v; want a permanent error, not ErrNotFound", op, err)
		}
	}
}

// faultTransport wraps a transport and misbehaves on chosen requests.
type faultTransport struct {
	inner http.RoundTripper
	mu    sync.Mutex
	// fault, if set, is asked for every request; it returns what to do.
	fault func(n int, req *http.Request) fault
	n     int
	seen  atomic.Int64
}

type fault int

const (
	pass      fault = iota
	status503       // answer 503 SlowDown without reaching the server
	reset           // fail the connection
	shortBody       // cut the response body in half
	flipBody        // flip a bit in the response body
	hang            // never answer (until the attempt's timeout)
)

func (f *faultTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	f.seen.Add(1)
	f.mu.Lock()
	n := f.n
	f.n++
	what := pass
	if f.fault != nil {
		what = f.fault(n, req)
	}
	f.mu.Unlock()
	switch what {
	case status503:
		if req.Body != nil {
			_, _ = io.Copy(io.Discard, req.Body)
			req.Body.Close()
		}
		body := "<Error><Code>SlowDown</Code><Message>injected</Message></Error>"
		return &http.Response{StatusCode: 503, Status: "503 Slow Down", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header: http.Header{"Content-Type": {"application/xml"}}, Body: io.NopCloser(strings.NewReader(body)),
			ContentLength: int64(len(body)), Request: req}, nil
	case reset:
		return nil, fmt.Errorf("injected: %w", &netErr{})
	case hang:
		<-req.Context().Done()
		return nil, req.Context().Err()
	}
	resp, err := f.inner.RoundTrip(req)
	if err != nil || (what != shortBody && what != flipBody) {
		return resp, err
	}
	data, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	if what == shortBody {
		resp.Body = io.NopCloser(io.MultiReader(bytes.NewReader(data[:len(data)/2]), errReader{io.ErrUnexpectedEOF}))
	} else {
		if len(data) > 0 {
			data[len(data)/3] ^= 0x10
		}
		resp.Body = io.NopCloser(bytes.NewReader(data))
	}
	return resp, nil
}

type netErr struct{}

func (*netErr) Error() string   { return "connection reset by peer" }
func (*netErr) Timeout() bool   { return false }
func (*netErr) Temporary() bool { return true }

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// TestS3RetriesTransientFaults: each kind of transient fault on the first
// attempts of a request is retried, and the data comes back intact; a
// fault on every attempt fails after MaxAttempts.
func TestS3RetriesTransientFaults(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)
	data := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
	for _, tc := range []struct {
		name string
		f    fault
		ops  []string // methods the fault applies to
	}{
		{"503", status503, []string{"PUT", "GET", "HEAD", "DELETE"}},
		{"reset", reset, []string{"PUT", "GET", "HEAD", "DELETE"}},
		{"short body", shortBody, []string{"GET"}},
		{"bit flip in transit", flipBody, []string{"GET"}},
		{"hang", hang, []string{"PUT", "GET"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ft := &faultTransport{inner: http.DefaultTransport}
			o := srv.Options(bucket)
			o.Prefix = randomPrefix()
			o.HTTPTransport = ft
			o.RequestTimeout = time.Second
			b := newBackend(t, o)
			ctx := t.Context()
			if err := b.Put(ctx, "obj", data); err != nil {
				t.Fatal(err)
			}
			for _, method := range tc.ops {
				// Fail the first two attempts of the next request.
				var failed atomic.Int64
				ft.mu.Lock()
				ft.fault = func(n int, req *http.Request) fault {
					if req.Method == method && failed.Load() < 2 {
						failed.Add(1)
						return tc.f
					}
					return pass
				}
				ft.mu.Unlock()
				var err error
				switch method {
				case "PUT":
					err = b.Put(ctx, "obj", data)
				case "GET":
					var got []byte
					got, err = b.Get(ctx, "obj", nil)
					if err == nil && !bytes.Equal(got, data) {
						t.Fatalf("Get after %s returned wrong data", tc.name)
					}
				case "HEAD":
					var info backend.Info
					info, err = b.Stat(ctx, "obj")
					if err == nil && info.Size != int64(len(data)) {
						t.Fatalf("Stat size %d", info.Size)
					}
				case "DELETE":
					err = b.Delete(ctx, "obj")
				}
				if err != nil {
					t.Fatalf("%s with 2 injected %s faults: %v", method, tc.name, err)
				}
				if failed.Load() != 2 {
					t.Fatalf("%s: %d faults fired, want 2", method, failed.Load())
				}
			}
			// Every attempt fails: the error surfaces, not permanent.
			ft.mu.Lock()
			ft.fault = func(int, *http.Request) fault { return tc.f }
			ft.mu.Unlock()
			before := ft.seen.Load()
			var err error
			if tc.f == flipBody {
				// A body that never matches its stored checksum is handed
				// on after MaxAttempts, for the caller's verification.
				ft.mu.Lock()
				ft.fault = nil
				ft.mu.Unlock()
				if err := b.Put(ctx, "obj", data); err != nil {
					t.Fatal(err)
				}
				ft.mu.Lock()
				ft.fault = func(int, *http.Request) fault { return flipBody }
				ft.mu.Unlock()
				before = ft.seen.Load()
				got, err := b.Get(ctx, "obj", nil)
				if err != nil || len(got) != len(data) || bytes.Equal(got, data) {
					t.Fatalf("Get under permanent bit flips = %d bytes (equal: %v), %v; want the flipped body and no error", len(got), bytes.Equal(got, data), err)
				}
				if n := ft.seen.Load() - before; n != 4 {
					t.Errorf("Get under permanent bit flips made %d requests, want MaxAttempts = 4", n)
				}
				return
			}
			if tc.f == shortBody {
				_, err = b.Get(ctx, "obj", nil) // deleted above: 404 first
				if !errors.Is(err, backend.ErrNotFound) {
					// A bit flip in an error body may garble it; either
					// way it is an error.
					t.Logf("Get of a missing object under %s: %v", tc.name, err)
				}
				return
			}
			err = b.Put(ctx, "obj2", data)
			if err == nil || errors.Is(err, backend.ErrPermanent) {
				t.Fatalf("Put under permanent %s faults = %v, want a transient error", tc.name, err)
			}
			if n := ft.seen.Load() - before; n != 4 {
				t.Errorf("Put under permanent faults made %d requests, want MaxAttempts = 4", n)
			}
		})
	}
}

// TestS3NotRetried: a permanent error is not retried.
func TestS3NotRetried(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)
	ft := &faultTransport{inner: http.DefaultTransport}
	o := srv.Options(bucket)
	o.HTTPTransport = ft
	b := newBackend(t, o)
	before := ft.seen.Load()
	if _, err := b.Get(t.Context(), "missing", nil); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("Get missing = %v", err)
	}
	if n := ft.seen.Load() - before; n != 1 {
		t.Errorf("a missing object took %d requests, want 1", n)
	}
	before = ft.seen.Load()
	if _, err := b.Stat(t.Context(), "missing"); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("Stat missing = %v", err)
	}
	if n := ft.seen.Load() - before; n != 2 {
		t.Errorf("a missing object's Stat took %d requests, want 2 (HEAD object, then a listing that proves the bucket is there)", n)
	}
}

// TestS3DeleteBatch deletes in batches: present and missing objects are
// gone afterwards, and others are kept.
func TestS3DeleteBatch(t *testing.T) {
	srv := s3test.Start(t)
	o := srv.Options(srv.NewBucket(t))
	o.Prefix = "batch"
	b := newBackend(t, o)
	ctx := t.Context()
	var names []string
	for i := range 30 {
		name := fmt.Sprintf("blocks/%02d", i)
		if err := b.Put(ctx, name, []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		names = append(names, name)
	}
	del := append(names[:20:20], "blocks/missing", "Bad Name")
	errs, err := b.DeleteBatch(ctx, del)
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range errs {
		if (i == len(del)-1) != (e != nil) {
			t.Errorf("DeleteBatch %q: %v", del[i], e)
		}
	}
	left := 0
	_ = b.List(ctx, "", func(backend.Info) error { left++; return nil })
	if left != 10 {
		t.Errorf("%d objects left, want 10", left)
	}
	if _, err := b.DeleteBatch(ctx, make([]string, 1001)); err == nil {
		t.Error("a batch of 1001 names was accepted")
	}
}

// TestS3ServerKilled: a server killed mid-way makes requests fail (not
// permanently), and once it is back the backend works again.
func TestS3ServerKilled(t *testing.T) {
	srv := s3test.Start(t)
	o := srv.Options(srv.NewBucket(t))
	o.MaxAttempts = 2
	b := newBackend(t, o)
	ctx := t.Context()
	if err := b.Put(ctx, "a", []byte("a")); err != nil {
		t.Fatal(err)
	}
	srv.Kill()
	err := b.Put(ctx, "b", []byte("b"))
	if err == nil || errors.Is(err, backend.ErrPermanent) {
		t.Fatalf("Put to a dead server = %v, want a transient error", err)
	}
	srv.Restart(t)
	if err := b.Put(ctx, "b", []byte("b")); err != nil {
		t.Fatalf("Put after the restart: %v", err)
	}
	if got, err := b.Get(ctx, "a", nil); err != nil || string(got) != "a" {
		t.Fatalf("Get after the restart = %q, %v", got, err)
	}
}

// TestS3Concurrency: no more requests are in flight than allowed.
func TestS3Concurrency(t *testing.T) {
	srv := s3test.Start(t)
	var inFlight, peak atomic.Int64
	ft := &faultTransport{inner: roundTripFunc(func(req *http.Request) (*http.Response, error) {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(5 * time.Millisecond)
		return http.DefaultTransport.RoundTrip(req)
	})}
	o := srv.Options(srv.NewBucket(t))
	o.HTTPTransport = ft
	o.SimultaneousWrites = 3
	b := newBackend(t, o)
	var wg sync.WaitGroup
	for i := range 24 {
		wg.Go(func() {
			if err := b.Put(t.Context(), fmt.Sprintf("c/%d", i), []byte("x")); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if p := peak.Load(); p > 3 || p < 2 {
		t.Errorf("peak of %d PUTs in flight, want at most 3 (and some parallelism)", p)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestS3BandwidthLimit: with bandwidth_write of 4 MiB/s, writing 6 MiB
// takes at least 1 s more than the first object's share (a lower bound
// only: no upper bounds on a shared machine).
func TestS3BandwidthLimit(t *testing.T) {
	srv := s3test.Start(t)
	o := srv.Options(srv.NewBucket(t))
	o.BandwidthWrite = 4 << 20
	o.BandwidthRead = 4 << 20
	b := newBackend(t, o)
	data := make([]byte, 2<<20)
	start := time.Now()
	for i := range 3 {
		if err := b.Put(t.Context(), fmt.Sprintf("bw/%d", i), data); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d < 900*time.Millisecond {
		t.Errorf("6 MiB at 4 MiB/s took %v, want at least 1 s", d)
	}
	start = time.Now()
	for i := range 3 {
		if _, err := b.Get(t.Context(), fmt.Sprintf("bw/%d", i), nil); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d < 900*time.Millisecond {
		t.Errorf("reading 6 MiB at 4 MiB/s took %v, want at least 1 s", d)
	}
}

// TestS3ObjectsOnDisk: what the server stores is what was put (the key
// layout with the prefix), checked behind the server's back.
func TestS3ObjectsOnDisk(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)
	o := srv.Options(bucket)
	o.Prefix = "host1/backy"
	b := newBackend(t, o)
	if err := b.Put(t.Context(), "blocks/ab/cd", []byte("payload")); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(srv.Dir(), bucket, "host1", "backy", "blocks", "ab", "cd"))
	if err != nil || string(got) != "payload" {
		t.Fatalf("object on the server's disk = %q, %v", got, err)
	}
}

func BenchmarkS3(b *testing.B) {
	srv := s3test.Start(b)
	backendtest.Bench(b, func(b *testing.B) backend.Backend {
		return newBackend(b, srv.Options(srv.NewBucket(b)))
	})
}
