// Package s3 is the data backend for Amazon S3 and S3-compatible object
// stores (MinIO, Ceph RGW, versitygw, ...), built on aws-sdk-go-v2.
//
// It uses only the plainest operations, which every S3-compatible server
// implements: PutObject, GetObject, HeadObject, HeadBucket,
// ListObjectsV2, DeleteObject and DeleteObjects. Each backend object name
// becomes the key Prefix + "/" + name in one bucket.
//
// # How it meets the backend contract
//
//   - Put is one PutObject of the whole object, which S3 makes visible
//     atomically and durably when it answers 200; there is no multipart
//     upload (objects are a few MiB), so a killed writer leaves nothing
//     behind. Every PUT carries a CRC-32C of the body in
//     x-amz-checksum-crc32c, which the server verifies before it stores
//     the object; a mismatch is retried.
//   - Get asks for the stored checksum (x-amz-checksum-mode) and checks
//     the body against it when the server sends one; the body must also
//     be exactly Content-Length bytes. A failed, short or mismatching read
//     is retried like any transient error, so a bit flipped in transit is
//     not mistaken for a damaged block by the layers above. A body that
//     mismatches on every attempt is damaged where it is stored: it is
//     handed on (with a warning) to the layers above, whose verification
//     reports it as a damaged block.
//   - S3 answers DeleteObject of a missing key with success, and HEAD of a
//     key in a missing bucket with a bare 404. Delete therefore asks
//     HeadObject first, and every 404 of an object is confirmed with
//     HeadBucket before it is reported as backend.ErrNotFound: a deleted
//     or misnamed bucket must never look like missing blocks, which the
//     layers above would mark invalid (it is ErrNoBucket instead).
//   - Retries: the SDK's own retryer is off. Each call of the bucket's
//     client is one attempt, bounded by RequestTimeout, whose failure is
//     classified: transient failures (connection errors, timeouts, HTTP
//     5xx, 429, throttling, checksum mismatches, short bodies) are marked
//     backend.ErrTransient, and those with no answer from the server also
//     backend.ErrUnavailable; errors no retry can fix (access denied, bad
//     credentials, a missing bucket, a malformed request) are
//     backend.Permanent, and credential errors also wrap fs.ErrPermission.
//     The retry wrapper (package retry) retries the transient ones for
//     RetryFor, at most MaxAttempts times, with exponential backoff and
//     full jitter; the message of a server given up says how long.
//   - Concurrency is bounded by SimultaneousReads (Get, Stat, List pages)
//     and SimultaneousWrites (Put, Delete, DeleteBatch), and optional
//     bandwidth limits pace request bodies in bytes per second: the
//     wrappers of package limit.
//
// New assembles the client and those wrappers with package stack (the
// order is stack's) from the Options, and probes the bucket under the
// retry policy. Listings are paged (backend.Pager), so that a listing of
// many pages is retried page by page. What stays S3's own is above the
// stack: a body that mismatches its stored checksum on every attempt is
// handed on by Backend.Get, and DeleteBatch goes through the stack.
//
// DeleteBatch (backend.BatchDeleter) removes up to 1000 objects in one
// DeleteObjects request; cleanup uses it.
package s3
