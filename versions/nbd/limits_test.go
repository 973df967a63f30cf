package nbd

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// Tests of the connection limits and the rate-limited warnings (issue 13
// item 19: 300 idle sockets locked legitimate clients out for about 30 s,
// and every refused request was a WARN line).

// tcpServer serves a writable 1 MiB "disk" on 127.0.0.1 until the test
// ends and returns the server, its address and its log.
func tcpServer(t *testing.T, o Options, tweaks ...func(*Server)) (*Server, string, *logBuffer) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	x := newMemExports()
	x.add("disk", 1<<20, false, "")
	logs := &logBuffer{}
	o.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv := NewServer(x, o)
	for _, f := range tweaks {
		f(srv)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("Serve did not return")
		}
	})
	return srv, ln.Addr().String(), logs
}

// dialFrom connects to addr from the loopback address local (127.0.0.2,
// ...: each is another client to the server) with a generous deadline.
func dialFrom(t *testing.T, addr, local string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 20 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c
}

// session greets, opens "disk" with NBD_OPT_GO and reads its first 4 KiB.
func session(t *testing.T, c net.Conn) *testClient {
	t.Helper()
	tc, err := greet(c, 3)
	if err != nil {
		t.Fatalf("greeting: %v", err)
	}
	rs, err := tc.option(7, goData("disk"))
	if err != nil || final(rs) != 1 {
		t.Fatalf("GO: %v %v", rs, err)
	}
	if err := tc.request(0, cmdRead, 1, 0, 4096, nil); err != nil {
		t.Fatal(err)
	}
	if r, err := tc.next(); err != nil || r.errno != 0 || len(r.data) != 4096 {
		t.Fatalf("read: %+v %v", r, err)
	}
	return tc
}

// closedByServer reports whether the server closed c (after the greeting
// it may have sent), waiting at most wait.
func closedByServer(c net.Conn, wait time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(wait))
	_, err := io.Copy(io.Discard, c)
	return err == nil // EOF
}

// warnLines counts the WARN lines of the log that contain s.
func warnLines(logs *logBuffer, s string) int {
	n := 0
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, "level=WARN") && strings.Contains(l, s) {
			n++
		}
	}
	return n
}

// TestIdleSocketsDoNotLockOut: 300 idle sockets from the host of a
// legitimate client (all loopback clients are 127.0.0.1) do not keep it
// out, even with a handshake deadline far away; the idle ones beyond the
// per-client cap are closed, and the log stays short.
func TestIdleSocketsDoNotLockOut(t *testing.T) {
	srv, addr, logs := tcpServer(t, Options{HandshakeTimeout: 5 * time.Minute})
	idle := make([]net.Conn, 300)
	for i := range idle {
		idle[i] = dialFrom(t, addr, "127.0.0.1")
	}
	session(t, dialFrom(t, addr, "127.0.0.1"))
	// The server holds at most MaxConnsPerClient of them; the oldest went.
	if _, hs := srv.track.counts(); hs > srv.o.MaxConnsPerClient {
		t.Errorf("%d connections in the handshake, want at most %d", hs, srv.o.MaxConnsPerClient)
	}
	if !closedByServer(idle[0], 20*time.Second) {
		t.Error("the oldest idle socket is still open")
	}
	if n := warnLines(logs, ""); n > 3 {
		t.Errorf("%d WARN lines for one client's idle sockets, want at most 3:\n%s", n, logs)
	}
}

// TestHandshakeFloodSparesOtherClients: when the handshake slots run out,
// the flooding client's own sockets make room, not another client's.
func TestHandshakeFloodSparesOtherClients(t *testing.T) {
	srv, addr, _ := tcpServer(t, Options{HandshakeTimeout: 5 * time.Minute, MaxHandshakes: 8, MaxConnsPerClient: 1000})
	victim, err := greet(dialFrom(t, addr, "127.0.0.3"), 3)
	if err != nil {
		t.Fatal(err)
	}
	for range 100 {
		dialFrom(t, addr, "127.0.0.2")
	}
	// Accepting is asynchronous: a legitimate session from a third client
	// proves the flood has been accepted (and evicted) before it.
	session(t, dialFrom(t, addr, "127.0.0.4"))
	if _, hs := srv.track.counts(); hs > 8 {
		t.Errorf("%d connections in the handshake, want at most 8", hs)
	}
	// The victim, in its handshake all along, still goes on.
	rs, err := victim.option(7, goData("disk"))
	if err != nil || final(rs) != 1 {
		t.Fatalf("the other client's handshake was cut: %v %v", rs, err)
	}
}

// TestPerClientCap: a client's connections are capped; beyond the cap, a
// new connection takes an idle one's place, and is refused when all are
// sessions. Other clients are not affected.
func TestPerClientCap(t *testing.T) {
	_, addr, logs := tcpServer(t, Options{MaxConnsPerClient: 2})
	a := session(t, dialFrom(t, addr, "127.0.0.2"))
	idle := dialFrom(t, addr, "127.0.0.2")
	if _, err := greet(idle, 3); err != nil {
		t.Fatal(err)
	}
	// A third connection evicts the idle one, not the session.
	b := session(t, dialFrom(t, addr, "127.0.0.2"))
	if !closedByServer(idle, 20*time.Second) {
		t.Error("the idle connection was not closed to make room")
	}
	// Two sessions: the next connection from that client is refused.
	if _, err := greet(dialFrom(t, addr, "127.0.0.2"), 3); err == nil {
		t.Error("a connection beyond the per-client cap was served")
	}
	// The eviction was logged; the refusal, from the same client right
	// after, is held back.
	if n := warnLines(logs, "remote=127.0.0.2"); n != 1 {
		t.Errorf("%d WARN lines about the client, want 1:\n%s", n, logs)
	}
	// Another client is served.
	session(t, dialFrom(t, addr, "127.0.0.3"))
	// Both sessions still work.
	for i, tc := range []*testClient{a, b} {
		if err := tc.request(0, cmdRead, 2, 4096, 512, nil); err != nil {
			t.Fatal(err)
		}
		if r, err := tc.next(); err != nil || r.errno != 0 {
			t.Errorf("session %d: %+v %v", i, r, err)
		}
	}
	// Once a session ends, the client is served again.
	a.request(0, cmdDisc, 0, 0, 0, nil)
	a.c.Close()
	deadline := time.Now().Add(20 * time.Second)
	for {
		c := dialFrom(t, addr, "127.0.0.2")
		tc, err := greet(c, 3)
		if err == nil {
			if rs, err := tc.option(7, goData("disk")); err == nil && final(rs) == 1 {
				break
			}
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("no session for the client after one of its sessions ended")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestHandshakeDeadlineClosesIdleSockets: every idle socket is closed once
// the handshake deadline passes, and the default deadline is short.
func TestHandshakeDeadlineClosesIdleSockets(t *testing.T) {
	if d := NewServer(newMemExports(), Options{}).o.HandshakeTimeout; d > 10*time.Second {
		t.Errorf("default handshake deadline %v, want at most 10s", d)
	}
	_, addr, logs := tcpServer(t, Options{HandshakeTimeout: 200 * time.Millisecond, MaxConnsPerClient: 100})
	idle := make([]net.Conn, 20)
	for i := range idle {
		idle[i] = dialFrom(t, addr, "127.0.0.1")
	}
	var wg sync.WaitGroup
	for i, c := range idle {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !closedByServer(c, 20*time.Second) {
				t.Errorf("idle socket %d still open after the handshake deadline", i)
			}
		}()
	}
	wg.Wait()
	if n := warnLines(logs, "handshake not finished"); n != 1 {
		t.Errorf("%d WARN lines about 20 handshake timeouts of one client, want 1:\n%s", n, logs)
	}
}

// TestRefusedRequestsLogBounded: a client sending a thousand invalid
// requests gets a thousand errors but the log one WARN line.
func TestRefusedRequestsLogBounded(t *testing.T) {
	h := newHarness(t, Options{})
	tc, _ := h.open("disk", false)
	const n = 1000
	go func() {
		for i := range n {
			if tc.request(0, cmdRead, uint64(i), 1<<20, 512, nil) != nil {
				return
			}
		}
	}()
	for range n {
		r, err := tc.next()
		if err != nil {
			t.Fatal(err)
		}
		if r.errno != EINVAL {
			t.Fatalf("read beyond the end: errno %d, want EINVAL", r.errno)
		}
	}
	if got := warnLines(h.logs, "request refused"); got != 1 {
		t.Errorf("%d WARN lines for %d refused requests, want 1", got, n)
	}
}

// TestWarnSuppressedCount: the next warning let through counts the ones
// held back, and so does the line logged when the connection ends.
func TestWarnSuppressedCount(t *testing.T) {
	var mu sync.Mutex
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	h := newHarness(t, Options{WarnInterval: 10 * time.Second}, func(s *Server) { s.warns.now = clock })
	tc, _ := h.open("disk", false)
	refuse := func(k int) {
		t.Helper()
		for i := range k {
			if err := tc.request(0, cmdRead, uint64(i), 1<<20, 512, nil); err != nil {
				t.Fatal(err)
			}
			if r, err := tc.next(); err != nil || r.errno != EINVAL {
				t.Fatalf("%+v %v", r, err)
			}
		}
	}
	refuse(50)
	advance(11 * time.Second)
	refuse(1)
	if got := warnLines(h.logs, "request refused"); got != 2 {
		t.Errorf("%d WARN lines, want 2:\n%s", got, h.logs)
	}
	if !strings.Contains(h.logs.String(), "suppressed=49") {
		t.Errorf("the second line should count the 49 held back:\n%s", h.logs)
	}
	refuse(5)
	advance(11 * time.Second)
	tc.request(0, cmdDisc, 0, 0, 0, nil)
	expectClosed(t, tc.c)
	<-h.lastExport().reason
	h.stop()
	if !strings.Contains(h.logs.String(), `msg="nbd: warnings suppressed" remote=pipe suppressed=5`) {
		t.Errorf("the end of the connection should count the 5 held back:\n%s", h.logs)
	}
}

// TestWarnLimiterBounded: the limiter remembers a bounded number of
// clients.
func TestWarnLimiterBounded(t *testing.T) {
	l := newWarnLimiter(time.Hour)
	for i := range 3 * maxWarnClients {
		l.allow(fmt.Sprint("client-", i))
	}
	if n := len(l.m); n > maxWarnClients+1 {
		t.Errorf("limiter holds %d clients", n)
	}
	if ok, _ := l.allow(fmt.Sprint("client-", 3*maxWarnClients+1)); ok {
		t.Error("a client beyond the bound was not limited with the others")
	}
}
