// Package backend defines the contract every data backend of backy meets:
// a flat namespace of immutable, named objects of at most a few MiB each.
//
// A backend sees opaque names and bytes. It knows nothing of blocks,
// encryption or versions; those live above it (package blockstore). Names
// are slash-separated paths of the characters [a-z0-9._/-], such as
// "blocks/3f/3f0c…" or "versions/<uid>"; a backend may map them to files or
// keys as it likes, but List must give them back unchanged.
//
// # The contract
//
//   - Put is atomic and durable: when it returns nil the whole object is
//     stored and survives a crash of the process or the machine (for a
//     backend configured to defer directory syncs, once Sync has returned
//     nil after it; see Syncer); when it
//     fails, or the process dies during it, no reader ever observes a partial
//     object under the name (it is either absent or complete).
//   - Objects are never modified in place. Put of an existing name replaces
//     it atomically; backy's upper layers never do this for block objects
//     (their names are random and written once).
//   - Get, Stat and Delete of a missing name fail with an error for which
//     errors.Is(err, ErrNotFound) holds. Delete of a missing name is an
//     error, so callers learn that something they believed stored is gone.
//   - Every method honours ctx: cancellation stops it promptly and returns
//     an error wrapping ctx.Err().
//   - All methods are safe for concurrent use.
//   - Errors that no retry can fix (no space, permission denied, a bucket
//     that does not exist) satisfy errors.Is(err, ErrPermanent) as well as
//     wrapping their cause. Errors that a retry may fix (a timeout, a
//     server's 5xx, a broken connection) satisfy errors.Is(err,
//     ErrTransient); only those are retried by the retry wrapper (package
//     retry). An error that is neither is not retried.
//
// # Optional capabilities and wrappers
//
// Besides the Backend methods a backend may offer optional capabilities,
// each an interface of its own: Syncer (deferred durability), BatchDeleter
// (many deletions in one request), Pager (a listing made of pages) and
// TempCleaner (removing the debris of killed writers). Wrappers (retry,
// concurrency and bandwidth limits, fault injection) implement Unwrapper,
// and callers find a capability with As, which looks through the wrappers.
// A wrapper that must see every call of some kind (a limit counting
// requests, the fault injector) either offers the capability itself,
// applying its policy, or hides it (Hider); As never hands out a
// capability that would go around such a wrapper. Callers therefore use
// As, never a plain type assertion, to find a capability.
package backend

import (
	"context"
	"errors"
	"time"
)

// Backend stores named objects. See the package documentation for the
// contract every implementation meets.
type Backend interface {
	// Put stores data under name, atomically and durably. The backend does
	// not retain data after Put returns.
	Put(ctx context.Context, name string, data []byte) error
	// Get reads the whole object into buf (which it may grow) and returns
	// the filled slice. A missing object yields ErrNotFound.
	Get(ctx context.Context, name string, buf []byte) ([]byte, error)
	// Stat returns the object's size and modification time, without
	// reading its data. A missing object yields ErrNotFound.
	Stat(ctx context.Context, name string) (Info, error)
	// List calls fn for every object whose name starts with prefix, in no
	// particular order, in the caller's goroutine. An error from fn stops
	// the listing and is returned. Objects written or deleted during the
	// listing may or may not be seen.
	List(ctx context.Context, prefix string, fn func(Info) error) error
	// Delete removes the object. A missing object yields ErrNotFound.
	Delete(ctx context.Context, name string) error
	// Properties describes the backend to the layers above.
	Properties() Properties
	// Close releases the backend's resources.
	Close() error
}

// Info describes one stored object.
type Info struct {
	Name    string
	Size    int64
	ModTime time.Time
}

// Properties describes a backend.
type Properties struct {
	// Location is a human-readable description ("file:/var/lib/backy/data").
	Location string
	// Connections is how many requests the backend serves well at once.
	Connections int
}

// Sentinel errors. Implementations wrap them with the operation and name.
var (
	// ErrNotFound: the named object does not exist.
	ErrNotFound = errors.New("object not found")
	// ErrPermanent marks errors that retrying cannot fix.
	ErrPermanent = errors.New("permanent backend error")
	// ErrBadName: a name outside the allowed alphabet or shape.
	ErrBadName = errors.New("invalid object name")
	// ErrUnavailable: a remote backend could not be reached (after its
	// retries). Nothing is known of the object; a later run may succeed.
	ErrUnavailable = errors.New("backend unavailable")
	// ErrTransient marks errors that a retry may fix. See Transient.
	ErrTransient = errors.New("transient backend error")
)

// Permanent wraps err so that errors.Is(result, ErrPermanent) holds while
// errors.Is/As still reach err.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanentError{err}
}

type permanentError struct{ err error }

func (p permanentError) Error() string { return p.err.Error() }
func (p permanentError) Unwrap() []error {
	return []error{p.err, ErrPermanent}
}

// Transient wraps err so that errors.Is(result, ErrTransient) holds while
// errors.Is/As still reach err: a backend's way of saying that a retry may
// succeed.
func Transient(err error) error {
	if err == nil {
		return nil
	}
	return transientError{err}
}

type transientError struct{ err error }

func (t transientError) Error() string { return t.err.Error() }
func (t transientError) Unwrap() []error {
	return []error{t.err, ErrTransient}
}

// Retryable reports whether a retry may fix err: it is marked
// ErrTransient, and neither ErrPermanent nor ErrNotFound.
func Retryable(err error) bool {
	return errors.Is(err, ErrTransient) && !errors.Is(err, ErrPermanent) && !errors.Is(err, ErrNotFound)
}

// ValidName reports whether name is a valid object name: non-empty, at most
// 255 bytes, made of [a-z0-9._/-], not starting or ending with '/', with no
// empty, "." or ".." path element and no element starting with '.'
// (backends keep temporary files under such names).
func ValidName(name string) bool {
	if name == "" || len(name) > 255 || name[0] == '/' || name[len(name)-1] == '/' {
		return false
	}
	start := 0
	for i := 0; i <= len(name); i++ {
		if i == len(name) || name[i] == '/' {
			elem := name[start:i]
			if elem == "" || elem[0] == '.' {
				return false
			}
			start = i + 1
			continue
		}
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
