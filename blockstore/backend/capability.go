package backend

import (
	"context"
	"time"
)

// Unwrapper is implemented by wrappers (retry, limits, fault injection) so
// that an optional capability of an inner backend can be found (As).
type Unwrapper interface {
	Unwrap() Backend
}

// Hider is implemented by a wrapper that must not be gone around: As asks
// it, at its place in the chain, whether it hides a capability, passing a
// nil pointer to the capability's interface ((*BatchDeleter)(nil)). A
// wrapper hides what it cannot offer itself and what the backends below it
// must not be reached by: the fault injector hides BatchDeleter and Pager
// so that every Delete and List goes through it; a limit or retry wrapper
// that offers DeleteBatch itself hides it when the backend below has none.
type Hider interface {
	Hides(capability any) bool
}

// As finds the capability T (an interface such as BatchDeleter) of be: be
// itself if it implements T, else the first backend down the Unwrap chain
// that does. A wrapper that hides T (Hider) ends the search with false, as
// does the end of the chain.
func As[T any](be Backend) (T, bool) {
	var zero T
	for be != nil {
		if h, ok := be.(Hider); ok && h.Hides((*T)(nil)) {
			return zero, false
		}
		if c, ok := be.(T); ok {
			return c, true
		}
		u, ok := be.(Unwrapper)
		if !ok {
			return zero, false
		}
		be = u.Unwrap()
	}
	return zero, false
}

// Syncer is implemented by backends that can defer part of Put's
// durability (file.Options.DeferDirSync). Once Sync returns nil, every
// object whose Put returned before the call is durable. Callers that
// record objects elsewhere (the metastore) call Sync first (see Sync). A
// backend whose Put is always durable need not have it.
type Syncer interface {
	Sync(ctx context.Context) error
}

// Sync calls Sync on be's Syncer (found with As); it does nothing if it has
// none.
func Sync(ctx context.Context, be Backend) error {
	if s, ok := As[Syncer](be); ok {
		return s.Sync(ctx)
	}
	return nil
}

// BatchDeleter is implemented by backends that delete many objects in one
// request (S3's DeleteObjects). Callers find it with As; without it (or
// when a wrapper hides it: the fault injector) they fall back to Delete.
type BatchDeleter interface {
	// DeleteBatch deletes the named objects, at most MaxDeleteBatch of
	// them. If err is nil, errs has one entry per name: nil when the
	// object is gone (deleted now, or already missing: a batch cannot
	// tell the two apart), else why it was not deleted. A non-nil err
	// failed the whole request and nothing is known of any name.
	DeleteBatch(ctx context.Context, names []string) (errs []error, err error)
	// MaxDeleteBatch is the largest number of names DeleteBatch takes.
	MaxDeleteBatch() int
}

// Pager is implemented by backends whose listing is made of pages, one
// request each (S3's ListObjectsV2), so that a wrapper can retry or limit
// one page rather than a whole listing (which it could not repeat without
// calling the caller's function twice for an object).
type Pager interface {
	// ListPage returns one page of the objects whose names start with
	// prefix: the first page for the token "", else the page that token
	// names, and the token of the next page ("" after the last page).
	ListPage(ctx context.Context, prefix, token string) (page []Info, next string, err error)
}

// ListPages is List made of pages: it calls page for each page in turn and
// fn for each object of it, in the caller's goroutine, and stops at the
// first error (fn's is returned as it is). It checks ctx between objects.
func ListPages(ctx context.Context, prefix string, page func(ctx context.Context, prefix, token string) ([]Info, string, error), fn func(Info) error) error {
	token := ""
	for {
		infos, next, err := page(ctx, prefix, token)
		if err != nil {
			return err
		}
		for _, info := range infos {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := fn(info); err != nil {
				return err
			}
		}
		if next == "" {
			return nil
		}
		token = next
	}
}

// TempCleaner is implemented by backends whose killed writers leave
// temporary debris that List never shows (the file backend's ".tmp-*"
// files). Cleanup calls it while no writer runs.
type TempCleaner interface {
	// CleanTemp removes the temporary files of writes to names starting
	// with prefix (a directory-like prefix ending in '/', such as
	// "blocks/", or "" for all) that are older than olderThan, and returns
	// how many it removed. Pass an age well above the longest Put unless
	// no writer can be running. It keeps going after an error and returns
	// the first one.
	CleanTemp(ctx context.Context, prefix string, olderThan time.Duration) (int, error)
}

// Below is what a wrapper that offers the capabilities BatchDeleter and
// Pager itself, applying its policy to them (a retry or a limit wrapper),
// found below it. Embedded in the wrapper, its Hides hides each of them
// that the wrapped backend lacks, so that As finds the wrapper's method
// only where it leads somewhere.
type Below struct {
	Batch BatchDeleter // nil: none below
	Pages Pager        // nil: none below
}

// FindBelow finds the capabilities of be (with As).
func FindBelow(be Backend) Below {
	var b Below
	b.Batch, _ = As[BatchDeleter](be)
	b.Pages, _ = As[Pager](be)
	return b
}

// Hides hides BatchDeleter and Pager when there is none below.
func (b Below) Hides(capability any) bool {
	switch capability.(type) {
	case *BatchDeleter:
		return b.Batch == nil
	case *Pager:
		return b.Pages == nil
	}
	return false
}
