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
	"sync/atomic"
	"syscall"
	"time"
)

// Options configures a Server. The zero value serves without TLS with
// the defaults given below.
type Options struct {
	// TLS, when set, offers NBD_OPT_STARTTLS; nil: no TLS.
	TLS *tls.Config
	// RequireTLS (with TLS set): every option but STARTTLS/ABORT is
	// refused with NBD_REP_ERR_TLS_REQD until TLS is up (FORCEDTLS).
	RequireTLS bool
	// MaxConns bounds concurrent connections; 0 = 64. More are closed at
	// accept.
	MaxConns int
	// MaxRequest is the largest READ/WRITE payload, 0 = 32 MiB. It is
	// advertised as the maximum block size; it is clamped to [512, 1 GiB].
	MaxRequest int
	// Workers bounds the requests handled concurrently per connection,
	// 0 = 8. Replies may go out of order, matched by handle.
	Workers int
	// Logger receives connection events (Info) and protocol errors
	// (Warn); nil = slog.Default().
	Logger *slog.Logger
	// HandshakeTimeout drops a client that does not finish the handshake
	// in time; 0 = 30s.
	HandshakeTimeout time.Duration
}

// Server serves Exports over the NBD protocol. It is safe for concurrent
// use; one Server may Serve several listeners.
type Server struct {
	exports Exports
	o       Options
	log     *slog.Logger
	active  atomic.Int64
	pools   [32]sync.Pool // read/write buffers by power-of-two class

	// panicHook, when set (tests), is told of every recovered panic.
	panicHook func(v any)
	// drainTimeout: see defaultDrainTimeout (shortened by tests).
	drainTimeout time.Duration
}

// Defaults.
const (
	defaultMaxConns         = 64
	defaultMaxRequest       = 32 << 20
	defaultWorkers          = 8
	defaultHandshakeTimeout = 30 * time.Second
	minMaxRequest           = 512
	maxMaxRequest           = 1 << 30
)

// defaultDrainTimeout bounds how long a closing connection waits for its
// pending replies to be written.
const defaultDrainTimeout = 10 * time.Second

// NewServer returns a Server for exports.
func NewServer(exports Exports, o Options) *Server {
	if o.MaxConns <= 0 {
		o.MaxConns = defaultMaxConns
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
	return &Server{exports: exports, o: o, log: log, drainTimeout: defaultDrainTimeout}
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
				s.log.Warn("nbd: accept", "err", aerr, "retry_in", backoff)
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
		if n := s.active.Add(1); n > int64(s.o.MaxConns) {
			s.active.Add(-1)
			s.log.Warn("nbd: too many connections, refused", "remote", remoteAddr(c), "max", s.o.MaxConns)
			c.Close()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer s.active.Add(-1)
			s.serveConn(ctx, c)
		}()
	}
	cancel()
	ln.Close()
	wg.Wait()
	return err
}

func remoteAddr(c net.Conn) string {
	if a := c.RemoteAddr(); a != nil {
		return a.String()
	}
	return ""
}

// serveConn runs one connection to its end: handshake, then transmission.
func (s *Server) serveConn(ctx context.Context, nc net.Conn) {
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetNoDelay(true) // the spec asks both ends to disable Nagle
	}
	c := &conn{
		srv:    s,
		raw:    nc,
		nc:     nc,
		remote: remoteAddr(nc),
	}
	c.ctx, c.cancel = context.WithCancel(ctx)
	defer c.cancel()
	log := s.log.With("remote", c.remote)
	c.log = log
	log.Info("nbd: connection opened")

	// Server shutdown: wake the reader; pending replies still go out.
	stop := context.AfterFunc(ctx, func() {
		nc.SetReadDeadline(time.Now())
		nc.SetWriteDeadline(time.Now().Add(s.drainTimeout))
	})
	defer stop()

	reason := c.run(ctx)
	nc.SetWriteDeadline(time.Now().Add(s.drainTimeout))
	nc.SetReadDeadline(time.Now())
	c.nc.Close() // for TLS this sends close_notify first
	nc.Close()

	args := []any{"export", c.exportName, "requests", c.requests.Load()}
	if reason != nil {
		args = append(args, "reason", reason)
	}
	if c.export != nil {
		if err := c.closeExport(reason); err != nil {
			args = append(args, "close_err", err)
		}
	}
	log.Info("nbd: connection closed", args...)
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
