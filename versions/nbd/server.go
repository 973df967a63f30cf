package nbd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/backy/backy/internal/clock"
)

// Options configures a Server. The zero value serves without TLS with
// the defaults given below.
type Options struct {
	// TLS, when set, offers NBD_OPT_STARTTLS; nil: no TLS.
	TLS *tls.Config
	// RequireTLS (with TLS set): every option but STARTTLS/ABORT is
	// refused with NBD_REP_ERR_TLS_REQD until TLS is up (FORCEDTLS).
	RequireTLS bool
	// MaxConns bounds concurrent sessions (connections past the
	// handshake); 0 = 64. A connection beyond is closed at accept, and a
	// handshake that would open one more is refused. Connections still in
	// the handshake do not count: see MaxHandshakes and limits.go.
	MaxConns int
	// MaxHandshakes bounds the connections in the handshake at once;
	// 0 = 32. A new connection beyond takes the slot of the oldest
	// handshaking connection of the client holding the most slots, which
	// is closed.
	MaxHandshakes int
	// MaxConnsPerClient bounds the connections (handshaking or in a
	// session) from one remote IP address; 0 = 16. A new connection
	// beyond takes the slot of that client's oldest handshaking one, or
	// is refused when all of them are sessions.
	MaxConnsPerClient int
	// MaxRequest is the largest READ/WRITE payload, 0 = 32 MiB. It is
	// advertised as the maximum block size; it is clamped to [512, 1 GiB].
	MaxRequest int
	// Workers bounds the requests handled concurrently per connection,
	// 0 = 8. Replies may go out of order, matched by handle.
	Workers int
	// Logger receives sessions (Info), connections that open no export
	// (Debug) and protocol errors, refused requests and refused
	// connections (Warn, at most one per client per WarnInterval, the
	// next one counting those held back as "suppressed"); nil =
	// slog.Default().
	Logger *slog.Logger
	// WarnInterval: see Logger; 0 = 10s.
	WarnInterval time.Duration
	// HandshakeTimeout drops a client that does not finish the handshake
	// in time; 0 = 10s.
	HandshakeTimeout time.Duration
	// Clock times WarnInterval; clock.System when nil. The network
	// deadlines (HandshakeTimeout, the drain) are on the real clock
	// (clock.Deadline) whatever the Clock: the runtime measures them.
	Clock clock.Clock
}

// Server serves Exports over the NBD protocol. It is safe for concurrent
// use; one Server may Serve several listeners.
type Server struct {
	exports Exports
	o       Options
	log     *slog.Logger
	track   *tracker
	warns   *warnLimiter
	pools   [32]sync.Pool // read/write buffers by power-of-two class

	// panicHook, when set (tests), is told of every recovered panic.
	panicHook func(v any)
	// drainTimeout: see defaultDrainTimeout (shortened by tests).
	drainTimeout time.Duration
}

// Defaults.
const (
	defaultMaxConns          = 64
	defaultMaxHandshakes     = 32
	defaultMaxConnsPerClient = 16
	defaultWarnInterval      = 10 * time.Second
	defaultMaxRequest        = 32 << 20
	defaultWorkers           = 8
	defaultHandshakeTimeout  = 10 * time.Second
	minMaxRequest            = 512
	maxMaxRequest            = 1 << 30
)

// defaultDrainTimeout bounds how long a closing connection waits for its
// pending replies to be written.
const defaultDrainTimeout = 10 * time.Second

// NewServer returns a Server for exports.
func NewServer(exports Exports, o Options) *Server {
	if o.MaxConns <= 0 {
		o.MaxConns = defaultMaxConns
	}
	if o.MaxHandshakes <= 0 {
		o.MaxHandshakes = defaultMaxHandshakes
	}
	if o.MaxConnsPerClient <= 0 {
		o.MaxConnsPerClient = defaultMaxConnsPerClient
	}
	if o.WarnInterval <= 0 {
		o.WarnInterval = defaultWarnInterval
	}
	if o.MaxRequest <= 0 {
		o.MaxRequest = defaultMaxRequest
	}
	o.MaxRequest = min(max(o.MaxRequest, minMaxRequest), maxMaxRequest)
	if o.Workers <= 0 {
		o.Workers = defaultWorkers
	}
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = defaultHandshakeTimeout
	}
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	s := &Server{exports: exports, o: o, log: log, track: newTracker(o), warns: newWarnLimiter(o.WarnInterval),
		drainTimeout: defaultDrainTimeout}
	if o.Clock != nil {
		s.warns.now = o.Clock.Now
	}
	return s
}

// Serve accepts connections on ln and serves them until ctx is cancelled
// or ln fails. Either way it then closes ln and every connection (pending
// requests are answered first, with NBD_ESHUTDOWN once ctx is done; see
// doc.go), calls Export.Close on each open export, and waits for all of
// it. It returns nil after ctx is cancelled, else the listener's error.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if s.o.RequireTLS && s.o.TLS == nil {
		ln.Close()
		return errors.New("nbd: RequireTLS without a TLS config")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()

	var wg sync.WaitGroup
	var err error
	var backoff time.Duration
	for {
		c, aerr := ln.Accept()
		if aerr != nil {
			if ctx.Err() != nil {
				break
			}
			if errors.Is(aerr, syscall.EMFILE) || errors.Is(aerr, syscall.ENFILE) {
				// Out of descriptors: wait for connections to end.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.warn("", s.log, "nbd: accept", "err", aerr, "retry_in", backoff)
				select {
				case <-time.After(backoff):
					continue
				case <-ctx.Done():
				}
				break
			}
			err = aerr
			break
		}
		backoff = 0
		nc := s.newConn(c)
		evict, refused := s.track.admit(nc)
		for _, old := range evict {
			s.warn(old.key, old.log, "nbd: too many connections in the handshake; closing the oldest", "max_handshakes", s.o.MaxHandshakes, "max_per_client", s.o.MaxConnsPerClient)
			old.raw.Close() // its goroutine ends it (reason errEvicted)
		}
		if refused != "" {
			s.warn(nc.key, nc.log, "nbd: connection refused", "reason", refused, "max_sessions", s.o.MaxConns, "max_per_client", s.o.MaxConnsPerClient)
			c.Close()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer s.track.done(nc)
			s.serveConn(ctx, nc)
		}()
	}
	cancel()
	ln.Close()
	wg.Wait()
	for key, n := range s.warns.drain() {
		s.log.Warn("nbd: warnings suppressed", "remote", key, "suppressed", n)
	}
	return err
}

// warn logs a warning about client key (log names it) unless too many
// came from that client lately (Options.WarnInterval).
func (s *Server) warn(key string, log *slog.Logger, msg string, args ...any) {
	ok, n := s.warns.allow(key)
	if !ok {
		return
	}
	if n > 0 {
		args = append(args, "suppressed", n)
	}
	log.Warn(msg, args...)
}

// newConn makes the conn of an accepted connection.
func (s *Server) newConn(nc net.Conn) *conn {
	c := &conn{srv: s, raw: nc, nc: nc, remote: remoteAddr(nc), key: clientKey(nc.RemoteAddr())}
	c.log = s.log.With("remote", c.remote)
	return c
}

func remoteAddr(c net.Conn) string {
	if a := c.RemoteAddr(); a != nil {
		return a.String()
	}
	return ""
}

// serveConn runs one connection to its end: handshake, then transmission.
func (s *Server) serveConn(ctx context.Context, c *conn) {
	nc := c.raw
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetNoDelay(true) // the spec asks both ends to disable Nagle
	}
	c.ctx, c.cancel = context.WithCancel(ctx)
	defer c.cancel()
	log := c.log
	log.Debug("nbd: connection opened")

	// Server shutdown: wake the reader; pending replies still go out.
	stop := context.AfterFunc(ctx, func() {
		nc.SetReadDeadline(clock.Deadline(0))
		nc.SetWriteDeadline(clock.Deadline(s.drainTimeout))
	})
	defer stop()

	reason := c.run(ctx)
	nc.SetWriteDeadline(clock.Deadline(s.drainTimeout))
	nc.SetReadDeadline(clock.Deadline(0))
	c.nc.Close() // for TLS this sends close_notify first
	nc.Close()

	if c.evicted.Load() && c.export == nil {
		reason = errEvicted
	}
	args := []any{"export", c.exportName, "requests", c.requests.Load()}
	if reason != nil {
		args = append(args, "reason", reason)
	}
	if c.export != nil {
		if err := c.closeExport(reason); err != nil {
			args = append(args, "close_err", err)
		}
		log.Info("nbd: connection closed", args...)
	} else {
		// Only sessions are worth a line at Info: a connection flood
		// must not fill the log.
		log.Debug("nbd: connection closed", args...)
	}
	if n := s.warns.due(c.key); n > 0 {
		log.Warn("nbd: warnings suppressed", "suppressed", n)
	}
}

// run performs the handshake and the transmission phase; it returns why
// the connection ended (nil for NBD_OPT_ABORT or NBD_CMD_DISC).
func (c *conn) run(ctx context.Context) (reason error) {
	defer func() {
		if v := recover(); v != nil {
			reason = c.recovered(v)
		}
	}()
	if err := c.handshake(ctx); err != nil {
		if errors.Is(err, errAbort) {
			return nil
		}
		return err
	}
	return c.transmit()
}

// recovered logs a recovered panic and turns it into a close reason.
func (c *conn) recovered(v any) error {
	c.log.Error("nbd: panic serving connection", "panic", v, "export", c.exportName)
	if h := c.srv.panicHook; h != nil {
		h(v)
	}
	return fmt.Errorf("nbd: internal error: %v", v)
}

// buffer returns a buffer of length n (n <= MaxRequest) from the pools.
func (s *Server) buffer(n int) *[]byte {
	if n <= 0 {
		return new([]byte)
	}
	class := max(bits.Len(uint(n-1)), 12)
	size := min(1<<class, s.o.MaxRequest)
	if v := s.pools[class].Get(); v != nil {
		b := v.(*[]byte)
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, size)
	return &b
}

// release returns a buffer obtained from buffer.
func (s *Server) release(b *[]byte) {
	c := cap(*b)
	if c == 0 {
		return
	}
	class := max(bits.Len(uint(c-1)), 12)
	if class < len(s.pools) {
		s.pools[class].Put(b)
	}
}
