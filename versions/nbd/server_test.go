package nbd

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestOutOfOrderReplies: a slow request does not hold up a later one;
// replies are matched by handle.
func TestOutOfOrderReplies(t *testing.T) {
	for _, structured := range modes() {
		t.Run(modeName(structured), func(t *testing.T) {
			h := newHarness(t, Options{})
			release := make(chan struct{})
			h.x.onOpen = func(e *memExport) {
				e.readGate = func(off int64) {
					if off == 0 {
						<-release
					}
				}
			}
			tc, _ := h.open("disk", structured)
			// Data, not holes: a structured read of a hole skips ReadAt.
			do(t, tc, 0, cmdWrite, 10, 0, 3*4096, pattern(3*4096, 1))
			if err := tc.request(0, cmdRead, 1, 0, 4096, nil); err != nil {
				t.Fatal(err)
			}
			if err := tc.request(0, cmdRead, 2, 8192, 4096, nil); err != nil {
				t.Fatal(err)
			}
			r, err := tc.next()
			if err != nil || r.handle != 2 {
				t.Fatalf("first reply %+v %v, want handle 2", r, err)
			}
			close(release)
			r, err = tc.next()
			if err != nil || r.handle != 1 || r.errno != 0 {
				t.Fatalf("second reply %+v %v, want handle 1", r, err)
			}
		})
	}
}

// batch sends reqs without waiting (many in flight) while collecting the
// replies concurrently; check validates each reply, matched by handle.
func batch(tc *testClient, reqs []request, payloads map[uint64][]byte, check func(req request, r *reply) error) error {
	byHandle := map[uint64]request{}
	for _, r := range reqs {
		byHandle[r.handle] = r
	}
	errc := make(chan error, 1)
	go func() {
		seen := map[uint64]bool{}
		for range reqs {
			r, err := tc.next()
			if err != nil {
				errc <- err
				return
			}
			req, ok := byHandle[r.handle]
			if !ok || seen[r.handle] {
				errc <- fmt.Errorf("unexpected reply for handle %d", r.handle)
				return
			}
			seen[r.handle] = true
			if err := check(req, r); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	for _, r := range reqs {
		if err := tc.request(r.flags, r.typ, r.handle, r.off, r.length, payloads[r.handle]); err != nil {
			return err
		}
	}
	select {
	case err := <-errc:
		return err
	case <-time.After(30 * time.Second):
		return fmt.Errorf("replies did not arrive")
	}
}

// writeReadBack writes n blocks in one batch, then reads them back in
// another, both with every request in flight at once.
func writeReadBack(tc *testClient, region uint64, n int, seed byte) error {
	const blk = 4096
	var writes, reads []request
	payloads := map[uint64][]byte{}
	want := map[uint64][]byte{}
	for i := range n {
		off := region + uint64(i)*blk
		data := pattern(blk, seed+byte(i))
		hw, hr := uint64(2*i+1)<<8|uint64(seed), uint64(2*i+2)<<8|uint64(seed)
		writes = append(writes, request{typ: cmdWrite, handle: hw, off: off, length: blk})
		payloads[hw] = data
		reads = append(reads, request{typ: cmdRead, handle: hr, off: off, length: blk})
		want[hr] = data
	}
	ok := func(req request, r *reply) error {
		if r.errno != 0 {
			return fmt.Errorf("handle %d: errno %d", r.handle, r.errno)
		}
		return nil
	}
	if err := batch(tc, writes, payloads, ok); err != nil {
		return fmt.Errorf("writes: %w", err)
	}
	return batch(tc, reads, nil, func(req request, r *reply) error {
		if err := ok(req, r); err != nil {
			return err
		}
		got, err := readData(r, req.off, req.length)
		if err != nil {
			return err
		}
		if !bytes.Equal(got, want[r.handle]) {
			return fmt.Errorf("handle %d: data differs", r.handle)
		}
		return nil
	})
}

func TestManyInFlight(t *testing.T) {
	for _, structured := range modes() {
		t.Run(modeName(structured), func(t *testing.T) {
			h := newHarness(t, Options{Workers: 4})
			tc, _ := h.open("disk", structured)
			if err := writeReadBack(tc, 0, 200, 1); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestManyClients(t *testing.T) {
	h := newHarness(t, Options{})
	const clients = 16
	var wg sync.WaitGroup
	tcs := make([]*testClient, clients)
	for i := range tcs {
		tcs[i], _ = h.open("disk", i%2 == 1)
	}
	for i, tc := range tcs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Each client owns a 64 KiB region of the shared store.
			if err := writeReadBack(tc, uint64(i)*64<<10, 16, byte(i)); err != nil {
				t.Errorf("client %d: %v", i, err)
			}
			tc.request(0, cmdDisc, 0, 0, 0, nil)
		}()
	}
	wg.Wait()
	h.stop()
	for i, e := range h.x.all() {
		if n := e.closed.Load(); n != 1 {
			t.Errorf("export %d closed %d times", i, n)
		}
	}
}

func TestDisconnectMidRequest(t *testing.T) {
	t.Run("partial write payload", func(t *testing.T) {
		h := newHarness(t, Options{})
		tc, _ := h.open("disk", false)
		tc.request(0, cmdWrite, 1, 0, 8192, make([]byte, 100))
		tc.c.Close()
		e := h.lastExport()
		select {
		case reason := <-e.reason:
			if reason == nil || !strings.Contains(reason.Error(), "mid-request") {
				t.Errorf("reason %v", reason)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("export not closed")
		}
		h.stop()
		if n := e.closed.Load(); n != 1 {
			t.Errorf("Close called %d times", n)
		}
	})
	t.Run("slow read", func(t *testing.T) {
		h := newHarness(t, Options{})
		release := make(chan struct{})
		h.x.onOpen = func(e *memExport) {
			e.readGate = func(int64) { <-release }
		}
		// Simple replies: a structured read of a hole never calls ReadAt.
		tc, _ := h.open("disk", false)
		tc.request(0, cmdRead, 1, 0, 4096, nil)
		e := h.lastExport()
		for e.reads.Load() == 0 {
			time.Sleep(time.Millisecond)
		}
		tc.c.Close()
		time.Sleep(20 * time.Millisecond)
		if n := e.closed.Load(); n != 0 {
			t.Error("export closed while a request was in flight")
		}
		close(release)
		select {
		case reason := <-e.reason:
			if reason == nil {
				t.Error("Close(nil) without NBD_CMD_DISC")
			}
		case <-time.After(10 * time.Second):
			t.Fatal("export not closed")
		}
		h.stop()
		if n := e.closed.Load(); n != 1 {
			t.Errorf("Close called %d times", n)
		}
	})
	t.Run("hang up without DISC", func(t *testing.T) {
		h := newHarness(t, Options{})
		tc, _ := h.open("disk", false)
		readAt(t, tc, 1, 0, 512)
		tc.c.Close()
		if reason := <-h.lastExport().reason; reason != errNoDisc {
			t.Errorf("reason %v, want %v", reason, errNoDisc)
		}
	})
}

// TestServeCancel: cancelling Serve's context ends every connection,
// answers in-flight requests with ESHUTDOWN and closes every export.
func TestServeCancel(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	x := newMemExports()
	x.add("disk", 1<<20, false, "")
	x.onOpen = func(e *memExport) { e.waitCtx = true }
	srv := NewServer(x, Options{Logger: quietLogger()})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()

	dial := func() *testClient {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(20 * time.Second))
		tc, err := greet(c, 3)
		if err != nil {
			t.Fatal(err)
		}
		return tc
	}
	goExport := func(tc *testClient) {
		if rs, err := tc.option(7, goData("disk")); err != nil || final(rs) != 1 {
			t.Fatal(rs, err)
		}
	}
	busy := dial() // a read in flight that waits for the shutdown
	goExport(busy)
	busy.request(0, cmdRead, 5, 0, 4096, nil)
	idle := dial() // in transmission, nothing in flight
	goExport(idle)
	negotiating := dial() // still in the handshake
	for len(x.all()) < 2 {
		time.Sleep(time.Millisecond)
	}
	for x.all()[0].reads.Load() == 0 {
		time.Sleep(time.Millisecond)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve returned %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Serve did not return")
	}
	r, err := busy.next()
	if err != nil || r.handle != 5 || r.errno != ESHUTDOWN {
		t.Errorf("in-flight request: %+v %v, want ESHUTDOWN", r, err)
	}
	for _, tc := range []*testClient{busy, idle, negotiating} {
		expectClosed(t, tc.c)
	}
	for i, e := range x.all() {
		if n := e.closed.Load(); n != 1 {
			t.Errorf("export %d closed %d times", i, n)
		}
	}
	if _, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		t.Error("listener still accepting")
	}
}

func TestMaxConns(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	x := newMemExports()
	x.add("disk", 1<<20, false, "")
	srv := NewServer(x, Options{MaxConns: 2, Logger: quietLogger()})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	defer func() {
		cancel()
		<-done
	}()
	dial := func() net.Conn {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(20 * time.Second))
		return c
	}
	// MaxConns counts sessions, not connections in the handshake.
	a, b := dial(), dial()
	defer a.Close()
	defer b.Close()
	for _, c := range []net.Conn{a, b} {
		tc, err := greet(c, 3)
		if err != nil {
			t.Fatal(err)
		}
		if rs, err := tc.option(7, goData("disk")); err != nil || final(rs) != 1 {
			t.Fatalf("GO: %v %v", rs, err)
		}
	}
	c := dial()
	defer c.Close()
	if _, err := greet(c, 3); err == nil {
		t.Fatal("third connection was served")
	}
	// Once one ends, a new connection is served again.
	a.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		d := dial()
		_, err := greet(d, 3)
		d.Close()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no connection served after one ended")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestPanicRecovery(t *testing.T) {
	h := newHarness(t, Options{})
	bad, _ := h.open("disk", false)
	h.lastExport().panicRead = true
	good, _ := h.open("disk", true)

	bad.request(0, cmdRead, 1, 0, 512, nil)
	if r, err := bad.next(); err == nil && r.errno != EIO {
		t.Errorf("reply %+v to a panicking read", r)
	}
	expectClosed(t, bad.c)
	select {
	case v := <-h.panics:
		if !strings.Contains(fmt.Sprint(v), "panic on read") {
			t.Errorf("recovered %v", v)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("panic not reported")
	}
	// The other connection is unaffected.
	readAt(t, good, 2, 0, 4096)
	if !strings.Contains(h.logs.String(), "level=ERROR") {
		t.Error("panic not logged")
	}
}

func TestLogging(t *testing.T) {
	h := newHarness(t, Options{})
	tc, _ := h.open("disk", false)
	tc.request(0, cmdDisc, 0, 0, 0, nil)
	expectClosed(t, tc.c)
	<-h.lastExport().reason
	h.stop()
	logs := h.logs.String()
	for _, want := range []string{
		`level=DEBUG msg="nbd: connection opened" remote=pipe`,
		`level=INFO msg="nbd: export opened" remote=pipe export=disk`,
		`level=INFO msg="nbd: connection closed" remote=pipe export=disk requests=1`,
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
}

func TestBufferPool(t *testing.T) {
	s := NewServer(newMemExports(), Options{MaxRequest: 3 << 20})
	for _, n := range []int{0, 1, 512, 4096, 4097, 1 << 20, 3<<20 - 1, 3 << 20} {
		b := s.buffer(n)
		if len(*b) != n || cap(*b) > 3<<20 {
			t.Errorf("buffer(%d): len %d cap %d", n, len(*b), cap(*b))
		}
		s.release(b)
		b2 := s.buffer(n)
		if len(*b2) != n {
			t.Errorf("reused buffer(%d): len %d", n, len(*b2))
		}
		s.release(b2)
	}
}

// TestShutdownNonReadingClient: a client that sends requests but never
// reads the replies cannot hold up Serve's return beyond drainTimeout.
func TestShutdownNonReadingClient(t *testing.T) {
	h := newHarness(t, Options{Workers: 2}, func(s *Server) { s.drainTimeout = 300 * time.Millisecond })
	tc, _ := h.open("disk", false)
	go func() {
		for i := range 50 {
			if tc.request(0, cmdRead, uint64(i), 0, 64<<10, nil) != nil {
				return
			}
		}
	}()
	e := h.lastExport()
	for e.reads.Load() < 2 {
		time.Sleep(time.Millisecond)
	}
	start := time.Now()
	h.stop()
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Serve took %v to return", d)
	}
	if n := e.closed.Load(); n != 1 {
		t.Errorf("Close called %d times", n)
	}
}

// panicCloser panics in Close.
type panicCloser struct{ *memExport }

func (p panicCloser) Close(error) error { panic("close exploded") }

func TestPanicInClose(t *testing.T) {
	h := newHarness(t, Options{}, func(s *Server) {
		s.exports = &wrapExports{memExports: s.exports.(*memExports)}
	})
	tc, _ := h.open("disk", false)
	tc.request(0, cmdDisc, 0, 0, 0, nil)
	expectClosed(t, tc.c)
	select {
	case v := <-h.panics:
		if !strings.Contains(fmt.Sprint(v), "close exploded") {
			t.Errorf("recovered %v", v)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("panic not reported")
	}
	// The server still serves.
	tc2, _ := h.open("disk", false)
	readAt(t, tc2, 1, 0, 512)
	tc2.c.Close()
	select {
	case <-h.panics: // the second connection's Close panics too
	case <-time.After(10 * time.Second):
		t.Fatal("second panic not reported")
	}
}

// wrapExports opens exports whose Close panics.
type wrapExports struct{ *memExports }

func (w *wrapExports) Open(ctx context.Context, name string) (Export, ExportInfo, error) {
	e, info, err := w.memExports.Open(ctx, name)
	if err != nil {
		return nil, info, err
	}
	return panicCloser{e.(*memExport)}, info, nil
}
