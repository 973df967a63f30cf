// Package retry is the backend wrapper that retries transient failures:
// every request whose attempt fails with an error marked
// backend.ErrTransient (and neither permanent nor "not found") is tried
// again, with exponential backoff and full jitter, until a time budget
// (Options.For, from the first attempt) is spent, or a cap on the attempts
// is reached, or the caller's context ends. The last attempt comes when the
// budget runs out, so an outage of the server shorter than the budget
// delays a request rather than failing it.
//
// The wrapper knows nothing of any particular backend: what is transient is
// the wrapped backend's call (package s3 marks timeouts, 5xx answers,
// throttling, broken connections and bad bodies; the file backend marks
// nothing, so nothing of it is retried). A backend that wants the number of
// attempts in its own message implements Reporter on its errors. Do runs
// the same policy around any operation (the S3 backend's bucket probe when
// it opens).
//
// Batch deletes (backend.BatchDeleter) and paged listings (backend.Pager)
// of the wrapped backend are offered and retried too; a listing without
// pages is retried only until it has handed the first object to the
// caller, never again after (the caller would see objects twice). The
// wrapper must never retry an error that is not marked transient, and
// never sleep past the caller's context.
package retry
