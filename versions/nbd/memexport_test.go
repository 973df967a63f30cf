package nbd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
)

// memBlock is the hole-tracking granularity of memStore.
const memBlock = 4096

// memStore is an in-memory disk: bytes plus a per-block allocation map.
type memStore struct {
	mu    sync.Mutex
	data  []byte
	alloc []bool // per memBlock; false = hole (reads as zeroes)
}

func newMemStore(size int64) *memStore {
	return &memStore{
		data:  make([]byte, size),
		alloc: make([]bool, (size+memBlock-1)/memBlock),
	}
}

func (m *memStore) snapshot() []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return bytes.Clone(m.data)
}

func (m *memStore) check(off, n int64) error {
	if off < 0 || n < 0 || off > int64(len(m.data)) || n > int64(len(m.data))-off {
		return fmt.Errorf("memStore: [%d,+%d) outside %d: %w", off, n, len(m.data), ErrOutOfRange)
	}
	return nil
}

// punch makes the blocks wholly inside [off, off+n) holes and zeroes the
// whole range.
func (m *memStore) punch(off, n int64, hole bool) {
	clear(m.data[off : off+n])
	if !hole {
		for b := off / memBlock; b*memBlock < off+n; b++ {
			m.alloc[b] = true
		}
		return
	}
	for b := (off + memBlock - 1) / memBlock; b < int64(len(m.alloc)); b++ {
		if min((b+1)*memBlock, int64(len(m.data))) > off+n {
			break
		}
		m.alloc[b] = false
	}
}

// memExport is one connection's view of a memStore, with hooks for tests.
type memExport struct {
	st       *memStore
	readOnly bool

	// Hooks.
	readGate  func(off int64) // called before a read; may block
	failRead  func(off int64) error
	panicRead bool
	waitCtx   bool // ReadAt waits for ctx to be done and returns its error

	flushes atomic.Int64
	reads   atomic.Int64
	extents atomic.Int64
	closed  atomic.Int64
	reason  chan error // receives Close's reason (buffered)
}

func (e *memExport) Size() int64 { return int64(len(e.st.data)) }

func (e *memExport) ReadAt(ctx context.Context, p []byte, off int64) error {
	e.reads.Add(1)
	if e.panicRead {
		panic("memExport: panic on read")
	}
	if e.waitCtx {
		<-ctx.Done()
		return ctx.Err()
	}
	if e.readGate != nil {
		e.readGate(off)
	}
	if e.failRead != nil {
		if err := e.failRead(off); err != nil {
			return err
		}
	}
	e.st.mu.Lock()
	defer e.st.mu.Unlock()
	if err := e.st.check(off, int64(len(p))); err != nil {
		return err
	}
	copy(p, e.st.data[off:])
	return nil
}

func (e *memExport) WriteAt(ctx context.Context, p []byte, off int64) error {
	if e.readOnly {
		return ErrReadOnly
	}
	e.st.mu.Lock()
	defer e.st.mu.Unlock()
	if err := e.st.check(off, int64(len(p))); err != nil {
		return err
	}
	copy(e.st.data[off:], p)
	for b := off / memBlock; b*memBlock < off+int64(len(p)); b++ {
		e.st.alloc[b] = true
	}
	return nil
}

func (e *memExport) Zero(ctx context.Context, off, n int64, punch bool) error {
	if e.readOnly {
		return ErrReadOnly
	}
	e.st.mu.Lock()
	defer e.st.mu.Unlock()
	if err := e.st.check(off, n); err != nil {
		return err
	}
	e.st.punch(off, n, punch)
	return nil
}

func (e *memExport) Trim(ctx context.Context, off, n int64) error {
	if e.readOnly {
		return ErrReadOnly
	}
	e.st.mu.Lock()
	defer e.st.mu.Unlock()
	if err := e.st.check(off, n); err != nil {
		return err
	}
	e.st.punch(off, n, true)
	return nil
}

func (e *memExport) Flush(ctx context.Context) error {
	if e.readOnly {
		return ErrReadOnly
	}
	e.flushes.Add(1)
	return nil
}

func (e *memExport) Extents(ctx context.Context, off, n int64) ([]Extent, error) {
	e.extents.Add(1)
	e.st.mu.Lock()
	defer e.st.mu.Unlock()
	if err := e.st.check(off, n); err != nil {
		return nil, err
	}
	var out []Extent
	for pos := off; pos < off+n; {
		b := pos / memBlock
		end := min((b+1)*memBlock, int64(len(e.st.data)))
		hole := !e.st.alloc[b]
		if k := len(out); k > 0 && out[k-1].Hole == hole {
			out[k-1].Length += end - pos
		} else {
			out = append(out, Extent{Length: end - pos, Hole: hole, Zero: hole})
		}
		pos = end
	}
	return out, nil
}

func (e *memExport) Close(reason error) error {
	e.closed.Add(1)
	select {
	case e.reason <- reason:
	default:
	}
	return nil
}

// memExports serves named memStores.
type memExports struct {
	mu      sync.Mutex
	stores  map[string]*memStore
	ro      map[string]bool
	desc    map[string]string
	opened  []*memExport
	onOpen  func(*memExport) // test hook, before Open returns
	listErr error
}

func newMemExports() *memExports {
	return &memExports{stores: map[string]*memStore{}, ro: map[string]bool{}, desc: map[string]string{}}
}

func (x *memExports) add(name string, size int64, readOnly bool, desc string) *memStore {
	x.mu.Lock()
	defer x.mu.Unlock()
	st := newMemStore(size)
	x.stores[name] = st
	x.ro[name] = readOnly
	x.desc[name] = desc
	return st
}

func (x *memExports) List(ctx context.Context) ([]ExportInfo, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.listErr != nil {
		return nil, x.listErr
	}
	var out []ExportInfo
	for name := range x.stores {
		out = append(out, x.info(name))
	}
	return out, nil
}

func (x *memExports) info(name string) ExportInfo {
	return ExportInfo{
		Name:        name,
		Description: x.desc[name],
		Size:        int64(len(x.stores[name].data)),
		ReadOnly:    x.ro[name],
		BlockSize:   64 << 10,
	}
}

func (x *memExports) Info(ctx context.Context, name string) (ExportInfo, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if _, ok := x.stores[name]; !ok {
		return ExportInfo{}, ErrUnknownExport
	}
	return x.info(name), nil
}

func (x *memExports) Open(ctx context.Context, name string) (Export, ExportInfo, error) {
	x.mu.Lock()
	st, ok := x.stores[name]
	if !ok {
		x.mu.Unlock()
		return nil, ExportInfo{}, ErrUnknownExport
	}
	e := &memExport{st: st, readOnly: x.ro[name], reason: make(chan error, 1)}
	x.opened = append(x.opened, e)
	info := x.info(name)
	hook := x.onOpen
	x.mu.Unlock()
	if hook != nil {
		hook(e)
	}
	return e, info, nil
}

// all returns the exports opened so far.
func (x *memExports) all() []*memExport {
	x.mu.Lock()
	defer x.mu.Unlock()
	return append([]*memExport(nil), x.opened...)
}

var errTest = errors.New("test: injected I/O error")
