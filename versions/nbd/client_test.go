package nbd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"
)

// This file holds a minimal NBD client for the tests, written from the
// spec independently of the server code (it shares only the constants).

// testClient speaks the client side of the protocol.
type testClient struct {
	c        net.Conn // raw, or TLS over it
	raw      net.Conn
	hsFlags  uint16
	sizes    map[uint64]uint32 // pending simple-reply READs: handle → length
	partial  map[uint64]*reply // structured replies being collected
	structOK bool              // structured replies negotiated
	mu       sync.Mutex        // guards writes (requests from many goroutines)
	smu      sync.Mutex        // guards sizes
}

// optReply is one option reply.
type optReply struct {
	opt, typ uint32
	data     []byte
}

// reply is one complete transmission reply.
type reply struct {
	handle uint64
	simple bool
	errno  uint32 // simple: the error field; structured: first error chunk's
	data   []byte // simple READ payload
	chunks []replyChunk
}

type replyChunk struct {
	flags, typ uint16
	payload    []byte
}

func (tc *testClient) read(n int) ([]byte, error) {
	b := make([]byte, n)
	_, err := io.ReadFull(tc.c, b)
	return b, err
}

func (tc *testClient) write(b ...[]byte) error {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	for _, p := range b {
		if len(p) == 0 {
			continue // an empty write on net.Pipe waits for a reader
		}
		if _, err := tc.c.Write(p); err != nil {
			return err
		}
	}
	return nil
}

// greet reads the server's greeting and sends the client flags.
func greet(c net.Conn, clientFlags uint32) (*testClient, error) {
	tc := &testClient{c: c, raw: c, sizes: map[uint64]uint32{}, partial: map[uint64]*reply{}}
	b, err := tc.read(18)
	if err != nil {
		return nil, fmt.Errorf("greeting: %w", err)
	}
	if m := be.Uint64(b[0:]); m != 0x4e42444d41474943 {
		return nil, fmt.Errorf("greeting magic %#x", m)
	}
	if m := be.Uint64(b[8:]); m != 0x49484156454F5054 {
		return nil, fmt.Errorf("IHAVEOPT magic %#x", m)
	}
	tc.hsFlags = be.Uint16(b[16:])
	return tc, tc.write(be.AppendUint32(nil, clientFlags))
}

func (tc *testClient) sendOpt(opt uint32, data []byte) error {
	h := be.AppendUint64(nil, 0x49484156454F5054)
	h = be.AppendUint32(h, opt)
	h = be.AppendUint32(h, uint32(len(data)))
	return tc.write(h, data)
}

func (tc *testClient) readOptReply() (optReply, error) {
	h, err := tc.read(20)
	if err != nil {
		return optReply{}, err
	}
	if m := be.Uint64(h); m != 0x3e889045565a9 {
		return optReply{}, fmt.Errorf("option reply magic %#x", m)
	}
	r := optReply{opt: be.Uint32(h[8:]), typ: be.Uint32(h[12:])}
	n := be.Uint32(h[16:])
	if n > 1<<20 {
		return r, fmt.Errorf("option reply of %d bytes", n)
	}
	r.data, err = tc.read(int(n))
	return r, err
}

// option sends an option and collects its replies up to the final one
// (ACK or an error).
func (tc *testClient) option(opt uint32, data []byte) ([]optReply, error) {
	if err := tc.sendOpt(opt, data); err != nil {
		return nil, err
	}
	var out []optReply
	for {
		r, err := tc.readOptReply()
		if err != nil {
			return out, err
		}
		if r.opt != opt {
			return out, fmt.Errorf("reply for option %d, want %d", r.opt, opt)
		}
		out = append(out, r)
		if r.typ == 1 || r.typ&(1<<31) != 0 {
			return out, nil
		}
	}
}

// final is the last reply's type.
func final(rs []optReply) uint32 {
	if len(rs) == 0 {
		return 0
	}
	return rs[len(rs)-1].typ
}

// goData is the payload of NBD_OPT_INFO / NBD_OPT_GO.
func goData(name string, infos ...uint16) []byte {
	b := be.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = be.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = be.AppendUint16(b, i)
	}
	return b
}

// metaData is the payload of the META_CONTEXT options.
func metaData(name string, queries ...string) []byte {
	b := be.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = be.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = be.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b
}

// exportInfo is what NBD_INFO_EXPORT carried.
type exportInfo struct {
	size  uint64
	flags uint16
}

// parseInfoExport finds NBD_INFO_EXPORT in replies.
func parseInfoExport(rs []optReply) (exportInfo, bool) {
	for _, r := range rs {
		if r.typ == 3 && len(r.data) == 12 && be.Uint16(r.data) == 0 {
			return exportInfo{be.Uint64(r.data[2:]), be.Uint16(r.data[10:])}, true
		}
	}
	return exportInfo{}, false
}

// startTLS sends NBD_OPT_STARTTLS and upgrades the connection.
func (tc *testClient) startTLS(cfg *tls.Config) error {
	rs, err := tc.option(5, nil)
	if err != nil {
		return err
	}
	if final(rs) != 1 {
		return fmt.Errorf("STARTTLS answered %#x", final(rs))
	}
	c := tls.Client(tc.raw, cfg)
	if err := c.Handshake(); err != nil {
		return err
	}
	tc.c = c
	return nil
}

// request sends one transmission request.
func (tc *testClient) request(flags, typ uint16, handle, off uint64, length uint32, payload []byte) error {
	h := be.AppendUint32(nil, 0x25609513)
	h = be.AppendUint16(h, flags)
	h = be.AppendUint16(h, typ)
	h = be.AppendUint64(h, handle)
	h = be.AppendUint64(h, off)
	h = be.AppendUint32(h, length)
	if typ == 0 && !tc.structOK {
		tc.smu.Lock()
		tc.sizes[handle] = length
		tc.smu.Unlock()
	}
	return tc.write(h, payload)
}

// next reads messages until one request's reply is complete.
func (tc *testClient) next() (*reply, error) {
	for {
		h, err := tc.read(4)
		if err != nil {
			return nil, err
		}
		switch m := be.Uint32(h); m {
		case 0x67446698:
			b, err := tc.read(12)
			if err != nil {
				return nil, err
			}
			r := &reply{simple: true, errno: be.Uint32(b), handle: be.Uint64(b[4:])}
			tc.smu.Lock()
			n, isRead := tc.sizes[r.handle]
			delete(tc.sizes, r.handle)
			tc.smu.Unlock()
			if isRead && r.errno == 0 {
				if r.data, err = tc.read(int(n)); err != nil {
					return nil, err
				}
			}
			return r, nil
		case 0x668e33ef:
			b, err := tc.read(16)
			if err != nil {
				return nil, err
			}
			ch := replyChunk{flags: be.Uint16(b), typ: be.Uint16(b[2:])}
			handle := be.Uint64(b[4:])
			n := be.Uint32(b[12:])
			if n > 64<<20 {
				return nil, fmt.Errorf("chunk of %d bytes", n)
			}
			if ch.payload, err = tc.read(int(n)); err != nil {
				return nil, err
			}
			r := tc.partial[handle]
			if r == nil {
				r = &reply{handle: handle}
				tc.partial[handle] = r
			}
			r.chunks = append(r.chunks, ch)
			if ch.typ&(1<<15) != 0 && r.errno == 0 {
				if len(ch.payload) < 6 {
					return nil, fmt.Errorf("short error chunk")
				}
				r.errno = be.Uint32(ch.payload)
			}
			if ch.flags&1 != 0 {
				delete(tc.partial, handle)
				return r, nil
			}
		default:
			return nil, fmt.Errorf("reply magic %#x", m)
		}
	}
}

// readData reassembles a READ reply for [off, off+n), checking that the
// content chunks lie inside the request, do not overlap and (on success)
// cover it.
func readData(r *reply, off uint64, n uint32) ([]byte, error) {
	if r.simple {
		if r.errno == 0 && len(r.data) != int(n) {
			return nil, fmt.Errorf("simple reply with %d bytes, want %d", len(r.data), n)
		}
		return r.data, nil
	}
	out := make([]byte, n)
	covered := make([]bool, n)
	mark := func(o uint64, l uint64) error {
		if o < off || o+l > off+uint64(n) || l == 0 {
			return fmt.Errorf("chunk [%d,+%d) outside request [%d,+%d)", o, l, off, n)
		}
		for i := o - off; i < o-off+l; i++ {
			if covered[i] {
				return fmt.Errorf("overlapping chunk at %d", o)
			}
			covered[i] = true
		}
		return nil
	}
	for _, ch := range r.chunks {
		switch ch.typ {
		case 1: // OFFSET_DATA
			if len(ch.payload) < 9 {
				return nil, fmt.Errorf("short OFFSET_DATA")
			}
			o := be.Uint64(ch.payload)
			if err := mark(o, uint64(len(ch.payload)-8)); err != nil {
				return nil, err
			}
			copy(out[o-off:], ch.payload[8:])
		case 2: // OFFSET_HOLE
			if len(ch.payload) != 12 {
				return nil, fmt.Errorf("OFFSET_HOLE of %d bytes", len(ch.payload))
			}
			if err := mark(be.Uint64(ch.payload), uint64(be.Uint32(ch.payload[8:]))); err != nil {
				return nil, err
			}
		case 0: // NONE
		default:
			if ch.typ&(1<<15) == 0 {
				return nil, fmt.Errorf("unexpected chunk type %d in READ reply", ch.typ)
			}
		}
	}
	if r.errno == 0 {
		for i, c := range covered {
			if !c {
				return nil, fmt.Errorf("byte %d not covered", i)
			}
		}
	}
	return out, nil
}

// descriptor is one NBD_REPLY_TYPE_BLOCK_STATUS entry.
type descriptor struct{ length, status uint32 }

func blockStatusOf(r *reply) (id uint32, ds []descriptor, err error) {
	if len(r.chunks) != 1 || r.chunks[0].typ != 5 {
		return 0, nil, fmt.Errorf("block status reply %+v", r.chunks)
	}
	p := r.chunks[0].payload
	if len(p) < 12 || (len(p)-4)%8 != 0 {
		return 0, nil, fmt.Errorf("block status payload of %d bytes", len(p))
	}
	id = be.Uint32(p)
	for p = p[4:]; len(p) > 0; p = p[8:] {
		ds = append(ds, descriptor{be.Uint32(p), be.Uint32(p[4:])})
	}
	return id, ds, nil
}

// --- test harness ---

// pipeListener is a net.Listener over net.Pipe connections.
type pipeListener struct {
	ch     chan net.Conn
	done   chan struct{}
	closed sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.closed.Do(func() { close(l.done) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }

func (l *pipeListener) dial() (net.Conn, error) {
	c, s := net.Pipe()
	select {
	case l.ch <- s:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// harness runs a Server on a pipe listener for one test.
type harness struct {
	t       testing.TB
	x       *memExports
	srv     *Server
	ln      *pipeListener
	cancel  context.CancelFunc
	done    chan error
	panics  chan any
	logs    *logBuffer
	stopped bool
}

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func newHarness(t testing.TB, o Options, tweaks ...func(*Server)) *harness {
	t.Helper()
	x := newMemExports()
	x.add("disk", 1<<20, false, "a writable disk")
	x.add("ro", 256<<10, true, "a read-only disk")
	h := &harness{t: t, x: x, ln: newPipeListener(), done: make(chan error, 1), panics: make(chan any, 16)}
	if o.Logger == nil {
		h.logs = &logBuffer{}
		o.Logger = slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	h.srv = NewServer(x, o)
	for _, f := range tweaks {
		f(h.srv)
	}
	h.srv.panicHook = func(v any) {
		select {
		case h.panics <- v:
		default:
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.done <- h.srv.Serve(ctx, h.ln) }()
	t.Cleanup(h.stop)
	return h
}

// stop cancels Serve and checks it returns promptly.
func (h *harness) stop() {
	if h.stopped {
		return
	}
	h.stopped = true
	h.cancel()
	select {
	case err := <-h.done:
		if err != nil {
			h.t.Errorf("Serve: %v", err)
		}
	case <-time.After(20 * time.Second):
		h.t.Errorf("Serve did not return after cancel")
	}
	select {
	case v := <-h.panics:
		h.t.Errorf("server recovered a panic: %v", v)
	default:
	}
}

// dial connects a raw client with a deadline.
func (h *harness) dial() net.Conn {
	h.t.Helper()
	c, err := h.ln.dial()
	if err != nil {
		h.t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	h.t.Cleanup(func() { c.Close() })
	return c
}

// client dials and greets with fixed newstyle and NO_ZEROES.
func (h *harness) client() *testClient {
	h.t.Helper()
	tc, err := greet(h.dial(), 3)
	if err != nil {
		h.t.Fatal(err)
	}
	return tc
}

// open dials and enters transmission with NBD_OPT_GO on export name,
// negotiating structured replies and base:allocation when structured.
func (h *harness) open(name string, structured bool) (*testClient, exportInfo) {
	h.t.Helper()
	tc := h.client()
	if structured {
		if rs, err := tc.option(8, nil); err != nil || final(rs) != 1 {
			h.t.Fatalf("STRUCTURED_REPLY: %v %v", rs, err)
		}
		tc.structOK = true
		if rs, err := tc.option(10, metaData(name, "base:allocation")); err != nil || final(rs) != 1 || len(rs) != 2 {
			h.t.Fatalf("SET_META_CONTEXT: %v %v", rs, err)
		}
	}
	rs, err := tc.option(7, goData(name))
	if err != nil || final(rs) != 1 {
		h.t.Fatalf("GO %q: %v %v", name, rs, err)
	}
	info, ok := parseInfoExport(rs)
	if !ok {
		h.t.Fatalf("GO %q: no NBD_INFO_EXPORT in %v", name, rs)
	}
	return tc, info
}

// lastExport is the most recently opened export.
func (h *harness) lastExport() *memExport {
	all := h.x.all()
	if len(all) == 0 {
		h.t.Fatal("no export opened")
	}
	return all[len(all)-1]
}

// logBuffer collects log output safely.
type logBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b = append(l.b, p...)
	return len(p), nil
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.b)
}

// expectClosed checks that the server closed the connection.
func expectClosed(t testing.TB, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var b [256]byte
	for {
		_, err := c.Read(b[:])
		if err == nil {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("connection still open")
		}
		return
	}
}

func newTextLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
