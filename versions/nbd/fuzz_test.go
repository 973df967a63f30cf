package nbd

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"
)

// fuzzServer returns a Server over two small exports whose recovered
// panics fail t.
func fuzzServer(t *testing.T, tlsCfg *tls.Config) (*Server, *memExports) {
	x := newMemExports()
	x.add("disk", 1<<20, false, "writable")
	x.add("ro", 64<<10, true, "read-only")
	srv := NewServer(x, Options{
		MaxRequest:       64 << 10,
		Workers:          4,
		Logger:           quietLogger(),
		HandshakeTimeout: 5 * time.Second,
		TLS:              tlsCfg,
	})
	srv.panicHook = func(v any) { t.Errorf("server panicked: %v", v) }
	return srv, x
}

// runFuzzConn serves one pipe connection while feed talks to it, then
// checks that the server ends the connection promptly once the client
// is gone, and closes every opened export exactly once.
//
// net.Pipe writes return only once the server has read every byte, so
// after feed the server has seen all input; grace lets it finish what
// it is doing before the hang-up.
func runFuzzConn(t *testing.T, srv *Server, x *memExports, grace time.Duration, feed func(c net.Conn)) {
	client, server := net.Pipe()
	client.SetDeadline(time.Now().Add(10 * time.Second))
	done := make(chan struct{})
	go func() {
		defer close(done)
		c := srv.newConn(server)
		if _, why := srv.track.admit(c); why != "" {
			t.Errorf("connection refused: %s", why)
			return
		}
		defer srv.track.done(c)
		srv.serveConn(context.Background(), c)
	}()
	feed(client)
	select {
	case <-done:
	case <-time.After(grace):
		// Still waiting for input (e.g. a declared payload): hang up.
	}
	client.Close()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("server connection did not end after the client hung up")
	}
	for _, e := range x.all() {
		if n := e.closed.Load(); n != 1 {
			t.Errorf("export closed %d times", n)
		}
	}
}

// drain discards everything the server sends, so it never blocks.
func drain(c net.Conn) { io.Copy(io.Discard, c) }

// req encodes a request header.
func req(flags, typ uint16, handle, off uint64, length uint32) []byte {
	b := be.AppendUint32(nil, 0x25609513)
	b = be.AppendUint16(b, flags)
	b = be.AppendUint16(b, typ)
	b = be.AppendUint64(b, handle)
	b = be.AppendUint64(b, off)
	return be.AppendUint32(b, length)
}

func cat(bs ...[]byte) (out []byte) {
	for _, b := range bs {
		out = append(out, b...)
	}
	return out
}

// FuzzRequests feeds arbitrary bytes to the transmission phase after a
// valid handshake. The first byte picks the handshake variant.
func FuzzRequests(f *testing.F) {
	f.Add(byte(0), req(0, cmdRead, 1, 0, 512))
	f.Add(byte(1), cat(req(0, cmdWrite, 1, 4096, 8), []byte("12345678"), req(0, cmdRead, 2, 4090, 20)))
	f.Add(byte(1), cat(req(cmdFlagReqOne, cmdBlockStatus, 1, 0, 1<<20), req(0, cmdBlockStatus, 2, 100, 5000)))
	f.Add(byte(1), cat(req(cmdFlagDF, cmdRead, 1, 0, 65536), req(0, cmdRead, 2, 0, 65537)))
	f.Add(byte(2), cat(req(0, cmdWrite, 1, 0, 3), []byte("abc"), req(0, cmdTrim, 2, 0, 4096)))
	f.Add(byte(0), cat(req(cmdFlagFUA, cmdWriteZeroes, 1, 0, 1<<20), req(cmdFlagNoHole, cmdWriteZeroes, 2, 5, 7), req(0, cmdFlush, 3, 0, 0)))
	f.Add(byte(0), cat(req(0, cmdWrite, 1, 1<<20-1, 70000), make([]byte, 70000), req(0, cmdRead, 2, 0, 1)))
	f.Add(byte(3), cat(req(0, cmdWrite, 1, 0, 100), make([]byte, 100), req(0, cmdFlush, 2, 0, 0)))
	f.Add(byte(1), cat(req(0, 99, 1, 0, 0), req(0xffff, cmdRead, 2, 1<<63, 1<<31)))
	f.Add(byte(0), cat(req(0, cmdWrite, 1, 0, 1<<30)))
	f.Add(byte(1), []byte{0x25, 0x60, 0x95, 0x13, 0, 0})
	f.Add(byte(0), []byte("garbage that is not a request at all"))
	f.Fuzz(func(t *testing.T, mode byte, data []byte) {
		srv, x := fuzzServer(t, nil)
		name := "disk"
		if mode&2 != 0 {
			name = "ro"
		}
		structured := mode&1 != 0
		runFuzzConn(t, srv, x, 20*time.Millisecond, func(c net.Conn) {
			tc, err := greet(c, 3)
			if err != nil {
				t.Fatal(err)
			}
			if structured {
				if rs, err := tc.option(8, nil); err != nil || final(rs) != 1 {
					t.Fatal(rs, err)
				}
				if rs, err := tc.option(10, metaData(name, "base:allocation")); err != nil || final(rs) != 1 {
					t.Fatal(rs, err)
				}
			}
			if mode&4 != 0 {
				tc.sendOpt(1, []byte(name))
				if _, err := tc.read(10); err != nil {
					t.Fatal(err)
				}
			} else if rs, err := tc.option(7, goData(name)); err != nil || final(rs) != 1 {
				t.Fatal(rs, err)
			}
			go drain(c)
			c.Write(data)
			c.Write(req(0, cmdDisc, 0, 0, 0))
		})
	})
}

// FuzzOptions feeds arbitrary bytes to the option phase, right after the
// server's greeting (client flags included).
func FuzzOptions(f *testing.F) {
	srvTLS, _ := selfSigned(f)
	opt := func(o uint32, data []byte) []byte {
		b := be.AppendUint64(nil, 0x49484156454F5054)
		b = be.AppendUint32(b, o)
		b = be.AppendUint32(b, uint32(len(data)))
		return append(b, data...)
	}
	flags := []byte{0, 0, 0, 3}
	f.Add(cat(flags, opt(7, goData("disk", 0, 1, 2, 3)), req(0, cmdRead, 1, 0, 512)))
	f.Add(cat(flags, opt(3, nil), opt(6, goData("ro")), opt(2, nil)))
	f.Add(cat(flags, opt(8, nil), opt(9, metaData("disk")), opt(10, metaData("disk", "base:allocation", "base:")), opt(7, goData("disk"))))
	f.Add(cat(flags, opt(1, []byte("disk")), req(0, cmdRead, 1, 0, 512)))
	f.Add(cat([]byte{0, 0, 0, 1}, opt(1, []byte("ro"))))
	f.Add(cat(flags, opt(5, nil), []byte("\x16\x03\x01\x00\x05hello")))
	f.Add(cat(flags, opt(7, []byte{0, 0, 0, 200, 1}), opt(10, []byte{0, 0, 0, 4, 'd', 'i', 's', 'k', 0, 0, 0, 9})))
	f.Add(cat(flags, opt(0xffffffff, []byte("x")), opt(4, nil), opt(11, nil)))
	f.Add(cat(flags, be.AppendUint64(nil, 0x49484156454F5054), []byte{0, 0, 0, 7, 0xff, 0xff, 0xff, 0xff}))
	f.Add([]byte{0, 0, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		srv, x := fuzzServer(t, srvTLS)
		runFuzzConn(t, srv, x, 10*time.Millisecond, func(c net.Conn) {
			go drain(c)
			c.Write(data)
		})
	})
}
