package limit

import (
	"context"
	"fmt"

	"github.com/backy/backy/blockstore/backend"
)

// Concurrent bounds the requests in flight on the backend it wraps: at
// most Reads of Get, Stat and List (pages), at most Writes of Put, Delete
// and DeleteBatch. Create it with Concurrency.
type Concurrent struct {
	below         // what inner offers (and Hides)
	inner         backend.Backend
	reads, writes chan struct{} // nil: unlimited
	conns         int
}

var (
	_ backend.Backend      = (*Concurrent)(nil)
	_ backend.Unwrapper    = (*Concurrent)(nil)
	_ backend.Hider        = (*Concurrent)(nil)
	_ backend.BatchDeleter = (*Concurrent)(nil)
	_ backend.Pager        = (*Concurrent)(nil)
)

// below is embedded under a name of its own, unexported.
type below = backend.Below

// Concurrency wraps inner so that at most reads reads and writes writes
// are in flight at once; 0 (or less) leaves that kind unlimited. A request
// waiting for its slot gives up when its context ends. The wrapper
// reports max(reads, writes) as the backend's Connections.
func Concurrency(inner backend.Backend, reads, writes int) *Concurrent {
	c := &Concurrent{below: backend.FindBelow(inner), inner: inner, conns: max(reads, writes, 0)}
	if reads > 0 {
		c.reads = make(chan struct{}, reads)
	}
	if writes > 0 {
		c.writes = make(chan struct{}, writes)
	}
	return c
}

// Unwrap returns the wrapped backend.
func (c *Concurrent) Unwrap() backend.Backend { return c.inner }

// acquire takes a slot of sem (nil: none needed) or fails when ctx ends.
func acquire(ctx context.Context, sem chan struct{}, op, name string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s %q: %w", op, name, err)
	}
	if sem == nil {
		return nil
	}
	select {
	case sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%s %q: waiting for a free connection: %w", op, name, ctx.Err())
	}
}

func release(sem chan struct{}) {
	if sem != nil {
		<-sem
	}
}

// Put stores data in a write slot.
func (c *Concurrent) Put(ctx context.Context, name string, data []byte) error {
	if err := acquire(ctx, c.writes, "put", name); err != nil {
		return err
	}
	defer release(c.writes)
	return c.inner.Put(ctx, name, data)
}

// Get reads in a read slot.
func (c *Concurrent) Get(ctx context.Context, name string, buf []byte) ([]byte, error) {
	if err := acquire(ctx, c.reads, "get", name); err != nil {
		return buf[:0], err
	}
	defer release(c.reads)
	return c.inner.Get(ctx, name, buf)
}

// Stat asks in a read slot.
func (c *Concurrent) Stat(ctx context.Context, name string) (backend.Info, error) {
	if err := acquire(ctx, c.reads, "stat", name); err != nil {
		return backend.Info{}, err
	}
	defer release(c.reads)
	return c.inner.Stat(ctx, name)
}

// List lists with a read slot for each page of a paged listing, or for the
// listing as a whole otherwise. The slot is never held while fn runs (fn
// may make requests of its own).
func (c *Concurrent) List(ctx context.Context, prefix string, fn func(backend.Info) error) error {
	if c.Pages != nil {
		return backend.ListPages(ctx, prefix, c.ListPage, fn)
	}
	if err := acquire(ctx, c.reads, "list", prefix); err != nil {
		return err
	}
	held := true
	defer func() {
		if held {
			release(c.reads)
		}
	}()
	return c.inner.List(ctx, prefix, func(i backend.Info) error {
		release(c.reads)
		held = false
		if err := fn(i); err != nil {
			return err
		}
		if err := acquire(ctx, c.reads, "list", prefix); err != nil {
			return err
		}
		held = true
		return nil
	})
}

// ListPage lists one page in a read slot.
func (c *Concurrent) ListPage(ctx context.Context, prefix, token string) ([]backend.Info, string, error) {
	if c.Pages == nil {
		return nil, "", fmt.Errorf("list %q: the backend has no paged listing", prefix)
	}
	if err := acquire(ctx, c.reads, "list", prefix); err != nil {
		return nil, "", err
	}
	defer release(c.reads)
	return c.Pages.ListPage(ctx, prefix, token)
}

// Delete deletes in a write slot.
func (c *Concurrent) Delete(ctx context.Context, name string) error {
	if err := acquire(ctx, c.writes, "delete", name); err != nil {
		return err
	}
	defer release(c.writes)
	return c.inner.Delete(ctx, name)
}

// DeleteBatch deletes a batch in one write slot (it is one request).
func (c *Concurrent) DeleteBatch(ctx context.Context, names []string) ([]error, error) {
	what := fmt.Sprintf("%d objects", len(names))
	if c.Batch == nil {
		return nil, fmt.Errorf("delete %s: the backend has no batch delete", what)
	}
	if err := acquire(ctx, c.writes, "delete", what); err != nil {
		return nil, err
	}
	defer release(c.writes)
	return c.Batch.DeleteBatch(ctx, names)
}

// MaxDeleteBatch is the wrapped backend's.
func (c *Concurrent) MaxDeleteBatch() int {
	if c.Batch == nil {
		return 1
	}
	return c.Batch.MaxDeleteBatch()
}

// Properties returns the wrapped backend's, with Connections set to the
// larger limit when there is one.
func (c *Concurrent) Properties() backend.Properties {
	p := c.inner.Properties()
	if c.conns > 0 {
		p.Connections = c.conns
	}
	return p
}

// Close closes the wrapped backend.
func (c *Concurrent) Close() error { return c.inner.Close() }
