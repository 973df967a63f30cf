package nbd

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestConstants pins every wire constant to the value in proto.md.
func TestConstants(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want uint64
	}{
		{"NBDMAGIC", nbdMagic, 0x4e42444d41474943},
		{"IHAVEOPT", optMagic, 0x49484156454F5054},
		{"option reply magic", optReplyMagic, 0x3e889045565a9},
		{"NBD_REQUEST_MAGIC", uint64(requestMagic), 0x25609513},
		{"NBD_SIMPLE_REPLY_MAGIC", uint64(simpleReplyMagic), 0x67446698},
		{"NBD_STRUCTURED_REPLY_MAGIC", uint64(structReplyMagic), 0x668e33ef},
		{"NBD_FLAG_FIXED_NEWSTYLE", uint64(flagFixedNewstyle), 1},
		{"NBD_FLAG_NO_ZEROES", uint64(flagNoZeroes), 2},
		{"NBD_FLAG_C_FIXED_NEWSTYLE", uint64(flagCFixedNewstyle), 1},
		{"NBD_FLAG_C_NO_ZEROES", uint64(flagCNoZeroes), 2},
		{"NBD_FLAG_HAS_FLAGS", uint64(flagHasFlags), 1 << 0},
		{"NBD_FLAG_READ_ONLY", uint64(flagReadOnly), 1 << 1},
		{"NBD_FLAG_SEND_FLUSH", uint64(flagSendFlush), 1 << 2},
		{"NBD_FLAG_SEND_FUA", uint64(flagSendFUA), 1 << 3},
		{"NBD_FLAG_ROTATIONAL", uint64(flagRotational), 1 << 4},
		{"NBD_FLAG_SEND_TRIM", uint64(flagSendTrim), 1 << 5},
		{"NBD_FLAG_SEND_WRITE_ZEROES", uint64(flagSendWriteZeroes), 1 << 6},
		{"NBD_FLAG_SEND_DF", uint64(flagSendDF), 1 << 7},
		{"NBD_FLAG_CAN_MULTI_CONN", uint64(flagCanMultiConn), 1 << 8},
		{"NBD_FLAG_SEND_RESIZE", uint64(flagSendResize), 1 << 9},
		{"NBD_FLAG_SEND_CACHE", uint64(flagSendCache), 1 << 10},
		{"NBD_FLAG_SEND_FAST_ZERO", uint64(flagSendFastZero), 1 << 11},
		{"NBD_OPT_EXPORT_NAME", uint64(optExportName), 1},
		{"NBD_OPT_ABORT", uint64(optAbort), 2},
		{"NBD_OPT_LIST", uint64(optList), 3},
		{"NBD_OPT_PEEK_EXPORT", uint64(optPeekExport), 4},
		{"NBD_OPT_STARTTLS", uint64(optStartTLS), 5},
		{"NBD_OPT_INFO", uint64(optInfo), 6},
		{"NBD_OPT_GO", uint64(optGo), 7},
		{"NBD_OPT_STRUCTURED_REPLY", uint64(optStructuredReply), 8},
		{"NBD_OPT_LIST_META_CONTEXT", uint64(optListMetaContext), 9},
		{"NBD_OPT_SET_META_CONTEXT", uint64(optSetMetaContext), 10},
		{"NBD_OPT_EXTENDED_HEADERS", uint64(optExtendedHeaders), 11},
		{"NBD_REP_ACK", uint64(repAck), 1},
		{"NBD_REP_SERVER", uint64(repServer), 2},
		{"NBD_REP_INFO", uint64(repInfo), 3},
		{"NBD_REP_META_CONTEXT", uint64(repMetaContext), 4},
		{"NBD_REP_ERR_UNSUP", uint64(repErrUnsup), 1<<31 + 1},
		{"NBD_REP_ERR_POLICY", uint64(repErrPolicy), 1<<31 + 2},
		{"NBD_REP_ERR_INVALID", uint64(repErrInvalid), 1<<31 + 3},
		{"NBD_REP_ERR_PLATFORM", uint64(repErrPlatform), 1<<31 + 4},
		{"NBD_REP_ERR_TLS_REQD", uint64(repErrTLSReqd), 1<<31 + 5},
		{"NBD_REP_ERR_UNKNOWN", uint64(repErrUnknown), 1<<31 + 6},
		{"NBD_REP_ERR_SHUTDOWN", uint64(repErrShutdown), 1<<31 + 7},
		{"NBD_REP_ERR_BLOCK_SIZE_REQD", uint64(repErrBlockSizeReqd), 1<<31 + 8},
		{"NBD_REP_ERR_TOO_BIG", uint64(repErrTooBig), 1<<31 + 9},
		{"NBD_INFO_EXPORT", uint64(infoExport), 0},
		{"NBD_INFO_NAME", uint64(infoName), 1},
		{"NBD_INFO_DESCRIPTION", uint64(infoDescription), 2},
		{"NBD_INFO_BLOCK_SIZE", uint64(infoBlockSize), 3},
		{"NBD_CMD_READ", uint64(cmdRead), 0},
		{"NBD_CMD_WRITE", uint64(cmdWrite), 1},
		{"NBD_CMD_DISC", uint64(cmdDisc), 2},
		{"NBD_CMD_FLUSH", uint64(cmdFlush), 3},
		{"NBD_CMD_TRIM", uint64(cmdTrim), 4},
		{"NBD_CMD_CACHE", uint64(cmdCache), 5},
		{"NBD_CMD_WRITE_ZEROES", uint64(cmdWriteZeroes), 6},
		{"NBD_CMD_BLOCK_STATUS", uint64(cmdBlockStatus), 7},
		{"NBD_CMD_RESIZE", uint64(cmdResize), 8},
		{"NBD_CMD_FLAG_FUA", uint64(cmdFlagFUA), 1 << 0},
		{"NBD_CMD_FLAG_NO_HOLE", uint64(cmdFlagNoHole), 1 << 1},
		{"NBD_CMD_FLAG_DF", uint64(cmdFlagDF), 1 << 2},
		{"NBD_CMD_FLAG_REQ_ONE", uint64(cmdFlagReqOne), 1 << 3},
		{"NBD_CMD_FLAG_FAST_ZERO", uint64(cmdFlagFastZero), 1 << 4},
		{"NBD_REPLY_FLAG_DONE", uint64(replyFlagDone), 1},
		{"NBD_REPLY_TYPE_NONE", uint64(replyTypeNone), 0},
		{"NBD_REPLY_TYPE_OFFSET_DATA", uint64(replyTypeOffsetData), 1},
		{"NBD_REPLY_TYPE_OFFSET_HOLE", uint64(replyTypeOffsetHole), 2},
		{"NBD_REPLY_TYPE_BLOCK_STATUS", uint64(replyTypeBlockStatus), 5},
		{"NBD_REPLY_TYPE_ERROR", uint64(replyTypeError), 1<<15 + 1},
		{"NBD_REPLY_TYPE_ERROR_OFFSET", uint64(replyTypeErrorOffset), 1<<15 + 2},
		{"error chunk bit", uint64(replyTypeErrorBit), 1 << 15},
		{"NBD_STATE_HOLE", uint64(stateHole), 1},
		{"NBD_STATE_ZERO", uint64(stateZero), 2},
		{"NBD_EPERM", uint64(EPERM), 1},
		{"NBD_EIO", uint64(EIO), 5},
		{"NBD_ENOMEM", uint64(ENOMEM), 12},
		{"NBD_EINVAL", uint64(EINVAL), 22},
		{"NBD_ENOSPC", uint64(ENOSPC), 28},
		{"NBD_EOVERFLOW", uint64(EOVERFLOW), 75},
		{"NBD_ENOTSUP", uint64(ENOTSUP), 95},
		{"NBD_ESHUTDOWN", uint64(ESHUTDOWN), 108},
		{"request size", requestSize, 28},
		{"simple reply size", simpleReplySize, 16},
		{"chunk header size", chunkHeaderSize, 20},
		{"option header size", optHeaderSize, 16},
		{"option reply size", optReplySize, 20},
	} {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
}

func TestHandshakeGreeting(t *testing.T) {
	h := newHarness(t, Options{})
	tc := h.client()
	if tc.hsFlags != 3 {
		t.Errorf("handshake flags %#x, want FIXED_NEWSTYLE|NO_ZEROES", tc.hsFlags)
	}
}

func TestExportName(t *testing.T) {
	for _, tt := range []struct {
		name     string
		noZeroes bool
		export   string
		size     uint64
		flags    uint16
	}{
		{"zeroes", false, "disk", 1 << 20, 1 | 1<<2 | 1<<3 | 1<<5 | 1<<6},
		{"no zeroes", true, "disk", 1 << 20, 1 | 1<<2 | 1<<3 | 1<<5 | 1<<6},
		{"read-only", true, "ro", 256 << 10, 1 | 1<<1 | 1<<8},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, Options{})
			cf := uint32(1)
			if tt.noZeroes {
				cf |= 2
			}
			tc, err := greet(h.dial(), cf)
			if err != nil {
				t.Fatal(err)
			}
			if err := tc.sendOpt(1, []byte(tt.export)); err != nil {
				t.Fatal(err)
			}
			b, err := tc.read(10)
			if err != nil {
				t.Fatal(err)
			}
			if got := be.Uint64(b); got != tt.size {
				t.Errorf("size %d, want %d", got, tt.size)
			}
			if got := be.Uint16(b[8:]); got != tt.flags {
				t.Errorf("flags %#x, want %#x", got, tt.flags)
			}
			if !tt.noZeroes {
				z, err := tc.read(124)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(z, make([]byte, 124)) {
					t.Error("padding is not zero")
				}
			}
			// The next bytes must be a reply to our request.
			if err := tc.request(0, cmdRead, 42, 0, 512, nil); err != nil {
				t.Fatal(err)
			}
			r, err := tc.next()
			if err != nil || !r.simple || r.handle != 42 || r.errno != 0 || len(r.data) != 512 {
				t.Fatalf("read after EXPORT_NAME: %+v %v", r, err)
			}
			tc.request(0, cmdDisc, 0, 0, 0, nil)
			expectClosed(t, tc.c)
		})
	}
}

func TestExportNameUnknownCloses(t *testing.T) {
	h := newHarness(t, Options{})
	tc := h.client()
	tc.sendOpt(1, []byte("nope"))
	expectClosed(t, tc.c)
}

func TestGoInfoRequests(t *testing.T) {
	h := newHarness(t, Options{MaxRequest: 1 << 20})
	tc := h.client()
	rs, err := tc.option(7, goData("disk", 1, 2, 3, 0x7777))
	if err != nil || final(rs) != 1 {
		t.Fatalf("GO: %v %v", rs, err)
	}
	got := map[uint16][]byte{}
	for _, r := range rs[:len(rs)-1] {
		if r.typ != 3 || len(r.data) < 2 {
			t.Fatalf("unexpected reply %+v", r)
		}
		it := be.Uint16(r.data)
		if _, dup := got[it]; dup {
			t.Errorf("info %d sent twice", it)
		}
		got[it] = r.data[2:]
	}
	if e := got[0]; len(e) != 10 || be.Uint64(e) != 1<<20 || be.Uint16(e[8:]) != 1|1<<2|1<<3|1<<5|1<<6 {
		t.Errorf("NBD_INFO_EXPORT %x", e)
	}
	if string(got[1]) != "disk" {
		t.Errorf("NBD_INFO_NAME %q", got[1])
	}
	if string(got[2]) != "a writable disk" {
		t.Errorf("NBD_INFO_DESCRIPTION %q", got[2])
	}
	if b := got[3]; len(b) != 12 || be.Uint32(b) != 1 || be.Uint32(b[4:]) != 64<<10 || be.Uint32(b[8:]) != 1<<20 {
		t.Errorf("NBD_INFO_BLOCK_SIZE %x", b)
	}
	if _, ok := got[0x7777]; ok {
		t.Error("unknown info request answered")
	}
	// Transmission follows the ACK directly (no padding).
	tc.request(0, cmdRead, 7, 4096, 100, nil)
	if r, err := tc.next(); err != nil || r.errno != 0 || len(r.data) != 100 || r.handle != 7 {
		t.Fatalf("read: %+v %v", r, err)
	}
}

func TestInfoThenGo(t *testing.T) {
	h := newHarness(t, Options{})
	tc := h.client()
	rs, err := tc.option(6, goData("ro"))
	if err != nil || final(rs) != 1 {
		t.Fatalf("INFO: %v %v", rs, err)
	}
	info, ok := parseInfoExport(rs)
	if !ok || info.size != 256<<10 || info.flags != 1|1<<1|1<<8 {
		t.Errorf("INFO: %+v", info)
	}
	if n := len(h.x.all()); n != 0 {
		t.Errorf("INFO opened %d exports", n)
	}
	// Unknown exports fail without ending the negotiation.
	for _, opt := range []uint32{6, 7} {
		rs, err = tc.option(opt, goData("missing"))
		if err != nil || final(rs) != 1<<31+6 || len(rs) != 1 {
			t.Fatalf("option %d on unknown export: %v %v", opt, rs, err)
		}
	}
	rs, err = tc.option(7, goData("ro"))
	if err != nil || final(rs) != 1 {
		t.Fatalf("GO: %v %v", rs, err)
	}
	if info2, _ := parseInfoExport(rs); info2 != info {
		t.Errorf("GO info %+v differs from INFO %+v", info2, info)
	}
}

func TestList(t *testing.T) {
	h := newHarness(t, Options{})
	tc := h.client()
	rs, err := tc.option(3, nil)
	if err != nil || final(rs) != 1 {
		t.Fatalf("LIST: %v %v", rs, err)
	}
	var names []string
	for _, r := range rs[:len(rs)-1] {
		if r.typ != 2 || len(r.data) < 4 {
			t.Fatalf("reply %+v", r)
		}
		n := be.Uint32(r.data)
		if int(n) > len(r.data)-4 {
			t.Fatalf("name length %d in %d bytes", n, len(r.data))
		}
		names = append(names, string(r.data[4:4+n])+"|"+string(r.data[4+n:]))
	}
	sort.Strings(names)
	want := []string{"disk|a writable disk", "ro|a read-only disk"}
	if !slices.Equal(names, want) {
		t.Errorf("LIST = %q, want %q", names, want)
	}
	// With data: invalid, and the session goes on.
	if rs, err := tc.option(3, []byte("x")); err != nil || final(rs) != 1<<31+3 {
		t.Fatalf("LIST with data: %v %v", rs, err)
	}
	h.x.mu.Lock()
	h.x.listErr = errTest
	h.x.mu.Unlock()
	if rs, err := tc.option(3, nil); err != nil || final(rs) != 1<<31+2 {
		t.Fatalf("failing LIST: %v %v", rs, err)
	}
	if rs, err := tc.option(7, goData("disk")); err != nil || final(rs) != 1 {
		t.Fatalf("GO after LIST: %v %v", rs, err)
	}
}

func TestAbort(t *testing.T) {
	h := newHarness(t, Options{})
	tc := h.client()
	rs, err := tc.option(2, []byte("ignored data"))
	if err != nil || final(rs) != 1 {
		t.Fatalf("ABORT: %v %v", rs, err)
	}
	expectClosed(t, tc.c)
	if !strings.Contains(h.logs.String(), "connection closed") {
		t.Error("no close logged")
	}
}

func TestUnknownAndMalformedOptions(t *testing.T) {
	long := make([]byte, 5000)
	for i := range long {
		long[i] = 'a'
	}
	for _, tt := range []struct {
		name string
		opt  uint32
		data []byte
		want uint32
	}{
		{"unknown", 0xdead, []byte("whatever"), 1<<31 + 1},
		{"peek export", 4, nil, 1<<31 + 1},
		{"extended headers", 11, nil, 1<<31 + 1},
		{"go short", 7, []byte{0, 0, 0}, 1<<31 + 3},
		{"go name too long", 7, []byte{0, 0, 0, 9, 'a', 0, 0}, 1<<31 + 3},
		{"go count mismatch", 7, []byte{0, 0, 0, 0, 0, 2, 0, 1}, 1<<31 + 3},
		{"go trailing", 7, append(goData("disk"), 0), 1<<31 + 3},
		{"go NUL in name", 7, goData("di\x00sk"), 1<<31 + 3},
		{"go name over 4096", 7, goData(string(long)), 1<<31 + 3},
		{"info short", 6, nil, 1<<31 + 3},
		{"structured with data", 8, []byte{1}, 1<<31 + 3},
		{"starttls without tls", 5, nil, 1<<31 + 2},
		{"list meta before structured", 9, metaData("disk"), 1<<31 + 3},
		{"set meta before structured", 10, metaData("disk", "base:allocation"), 1<<31 + 3},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, Options{})
			tc := h.client()
			rs, err := tc.option(tt.opt, tt.data)
			if err != nil || final(rs) != tt.want || len(rs) != 1 {
				t.Fatalf("got %v %v, want one reply %#x", rs, err, tt.want)
			}
			// The session continues.
			if rs, err := tc.option(7, goData("disk")); err != nil || final(rs) != 1 {
				t.Fatalf("GO afterwards: %v %v", rs, err)
			}
		})
	}
}

func TestOversizedOption(t *testing.T) {
	h := newHarness(t, Options{})
	tc := h.client()
	big := make([]byte, 1<<20)
	rs, err := tc.option(7, big)
	if err != nil || final(rs) != 1<<31+9 {
		t.Fatalf("oversized GO: %v %v", rs, err)
	}
	if rs, err := tc.option(7, goData("disk")); err != nil || final(rs) != 1 {
		t.Fatalf("GO afterwards: %v %v", rs, err)
	}

	// An oversized NBD_OPT_EXPORT_NAME cannot be answered: hard close,
	// before the data is even read.
	tc = h.client()
	h2 := be.AppendUint64(nil, 0x49484156454F5054)
	h2 = be.AppendUint32(h2, 1)
	h2 = be.AppendUint32(h2, 1<<31)
	tc.write(h2)
	expectClosed(t, tc.c)
}

func TestBadClientFlags(t *testing.T) {
	for _, tt := range []struct {
		name  string
		flags uint32
	}{
		{"no fixed newstyle", 0},
		{"no fixed newstyle, no zeroes", 2},
		{"unknown flag", 1 | 4},
		{"high flag", 1 | 1<<31},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, Options{})
			tc, err := greet(h.dial(), tt.flags)
			if err != nil {
				t.Fatal(err)
			}
			expectClosed(t, tc.c)
			if !strings.Contains(h.logs.String(), "level=WARN") {
				t.Error("protocol error not logged at Warn")
			}
		})
	}
}

func TestBadOptionMagic(t *testing.T) {
	h := newHarness(t, Options{})
	tc := h.client()
	tc.write([]byte("IHAVEOPX\x00\x00\x00\x07\x00\x00\x00\x00"))
	expectClosed(t, tc.c)
}

func TestHandshakeTimeout(t *testing.T) {
	h := newHarness(t, Options{HandshakeTimeout: 200 * time.Millisecond})
	c := h.dial()
	start := time.Now()
	expectClosed(t, c) // never even reads the greeting
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("dropped after %v", d)
	}
	// A client that stops mid-negotiation is dropped too.
	tc := h.client()
	if rs, err := tc.option(8, nil); err != nil || final(rs) != 1 {
		t.Fatal(rs, err)
	}
	expectClosed(t, tc.c)
}

func TestMetaContext(t *testing.T) {
	h := newHarness(t, Options{})
	tc := h.client()
	if rs, err := tc.option(8, nil); err != nil || final(rs) != 1 {
		t.Fatal(rs, err)
	}
	ctxNames := func(rs []optReply) (out []string) {
		for _, r := range rs {
			if r.typ == 4 {
				out = append(out, string(r.data[4:]))
			}
		}
		return out
	}
	for _, tt := range []struct {
		name    string
		opt     uint32
		data    []byte
		final   uint32
		ctxs    []string
		wantIDs bool
	}{
		{"list all", 9, metaData("disk"), 1, []string{"base:allocation"}, false},
		{"list base wildcard", 9, metaData("disk", "base:"), 1, []string{"base:allocation"}, false},
		{"list exact", 9, metaData("disk", "base:allocation", "base:allocation"), 1, []string{"base:allocation"}, false},
		{"list unknown namespace", 9, metaData("disk", "qemu:dirty-bitmap:x"), 1, nil, false},
		{"list unknown base leaf", 9, metaData("disk", "base:other"), 1, nil, false},
		{"list no colon", 9, metaData("disk", "allocation"), 1<<31 + 3, nil, false},
		{"list unknown export", 9, metaData("nope"), 1<<31 + 6, nil, false},
		{"list truncated", 9, metaData("disk", "base:allocation")[:20], 1<<31 + 3, nil, false},
		{"set none", 10, metaData("disk"), 1, nil, false},
		{"set base wildcard ignored", 10, metaData("disk", "base:"), 1, nil, false},
		{"set", 10, metaData("disk", "x-foo:bar", "base:allocation"), 1, []string{"base:allocation"}, true},
		{"set unknown export", 10, metaData("nope", "base:allocation"), 1<<31 + 6, nil, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rs, err := tc.option(tt.opt, tt.data)
			if err != nil || final(rs) != tt.final {
				t.Fatalf("got %v %v, want final %#x", rs, err, tt.final)
			}
			if got := ctxNames(rs); !slices.Equal(got, tt.ctxs) {
				t.Errorf("contexts %q, want %q", got, tt.ctxs)
			}
			for _, r := range rs {
				if r.typ == 4 && (be.Uint32(r.data) != 0) != tt.wantIDs {
					t.Errorf("context id %d", be.Uint32(r.data))
				}
			}
		})
	}
}

// selfSigned makes a TLS server config and a client config trusting it.
func selfSigned(t testing.TB) (server, client *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "nbd-test"},
		DNSNames:     []string{"nbd-test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	server = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
	client = &tls.Config{RootCAs: pool, ServerName: "nbd-test"}
	return server, client
}

func TestStartTLS(t *testing.T) {
	srvCfg, cliCfg := selfSigned(t)
	h := newHarness(t, Options{TLS: srvCfg})
	tc := h.client()
	// State negotiated before STARTTLS is forgotten.
	if rs, err := tc.option(8, nil); err != nil || final(rs) != 1 {
		t.Fatal(rs, err)
	}
	if rs, err := tc.option(5, []byte("x")); err != nil || final(rs) != 1<<31+3 {
		t.Fatalf("STARTTLS with data: %v %v", rs, err)
	}
	if err := tc.startTLS(cliCfg); err != nil {
		t.Fatal(err)
	}
	if rs, err := tc.option(5, nil); err != nil || final(rs) != 1<<31+3 {
		t.Fatalf("second STARTTLS: %v %v", rs, err)
	}
	if rs, err := tc.option(9, metaData("disk")); err != nil || final(rs) != 1<<31+3 {
		t.Fatalf("structured replies survived STARTTLS: %v %v", rs, err)
	}
	rs, err := tc.option(7, goData("disk"))
	if err != nil || final(rs) != 1 {
		t.Fatal(rs, err)
	}
	if info, _ := parseInfoExport(rs); info.flags&(1<<7) != 0 {
		t.Error("SEND_DF without structured replies")
	}
	data := bytes.Repeat([]byte("tls!"), 1024)
	tc.request(0, cmdWrite, 1, 8192, uint32(len(data)), data)
	if r, err := tc.next(); err != nil || r.errno != 0 {
		t.Fatal(r, err)
	}
	tc.request(0, cmdRead, 2, 8192, uint32(len(data)), nil)
	if r, err := tc.next(); err != nil || !bytes.Equal(r.data, data) {
		t.Fatal(r, err)
	}
	tc.request(0, cmdDisc, 3, 0, 0, nil)
	expectClosed(t, tc.c)
	select {
	case reason := <-h.lastExport().reason:
		if reason != nil {
			t.Errorf("close reason %v after DISC", reason)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("export not closed")
	}
}

func TestStartTLSBadHandshake(t *testing.T) {
	srvCfg, _ := selfSigned(t)
	h := newHarness(t, Options{TLS: srvCfg})
	tc := h.client()
	if rs, err := tc.option(5, nil); err != nil || final(rs) != 1 {
		t.Fatal(rs, err)
	}
	tc.write([]byte("this is not a TLS client hello, not at all........"))
	expectClosed(t, tc.c)
}

func TestRequireTLS(t *testing.T) {
	srvCfg, cliCfg := selfSigned(t)
	h := newHarness(t, Options{TLS: srvCfg, RequireTLS: true})
	tc := h.client()
	for _, opt := range []uint32{3, 6, 7, 8, 9, 10, 0xbad} {
		data := goData("disk")
		if opt == 3 || opt == 8 {
			data = nil
		}
		if rs, err := tc.option(opt, data); err != nil || final(rs) != 1<<31+5 || len(rs) != 1 {
			t.Fatalf("option %d before TLS: %v %v", opt, rs, err)
		}
	}
	if err := tc.startTLS(cliCfg); err != nil {
		t.Fatal(err)
	}
	if rs, err := tc.option(3, nil); err != nil || final(rs) != 1 {
		t.Fatalf("LIST over TLS: %v %v", rs, err)
	}
	if rs, err := tc.option(7, goData("ro")); err != nil || final(rs) != 1 {
		t.Fatalf("GO over TLS: %v %v", rs, err)
	}
	tc.request(0, cmdRead, 9, 0, 4096, nil)
	if r, err := tc.next(); err != nil || r.errno != 0 {
		t.Fatal(r, err)
	}

	// EXPORT_NAME before TLS cannot be refused: hard close.
	tc = h.client()
	tc.sendOpt(1, []byte("disk"))
	expectClosed(t, tc.c)
	// ABORT is allowed without TLS.
	tc = h.client()
	if rs, err := tc.option(2, nil); err != nil || final(rs) != 1 {
		t.Fatalf("ABORT: %v %v", rs, err)
	}
}

func TestRequireTLSWithoutConfig(t *testing.T) {
	srv := NewServer(newMemExports(), Options{RequireTLS: true, Logger: quietLogger()})
	ln := newPipeListener()
	if err := srv.Serve(t.Context(), ln); err == nil {
		t.Fatal("Serve accepted RequireTLS without a TLS config")
	}
	if _, err := ln.dial(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("listener not closed: %v", err)
	}
}

func TestErrno(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want uint32
	}{
		{nil, 0},
		{ErrReadOnly, EPERM},
		{ErrOutOfRange, EINVAL},
		{ErrNoSpace, ENOSPC},
		{ErrNotSupported, ENOTSUP},
		{errors.ErrUnsupported, ENOTSUP},
		{io.ErrUnexpectedEOF, EIO},
		{errTest, EIO},
		{context.Canceled, ESHUTDOWN},
		{fmt.Errorf("op: %w", context.Canceled), ESHUTDOWN},
		{context.DeadlineExceeded, EIO},
		{fmt.Errorf("op: %w", ErrReadOnly), EPERM},
		{&os.PathError{Op: "write", Path: "x", Err: syscall.EPERM}, EPERM},
		{&os.PathError{Op: "write", Path: "x", Err: syscall.EACCES}, EPERM},
		{&os.PathError{Op: "write", Path: "x", Err: syscall.EROFS}, EPERM},
		{syscall.ENOMEM, ENOMEM},
		{syscall.EINVAL, EINVAL},
		{&os.PathError{Op: "write", Path: "x", Err: syscall.ENOSPC}, ENOSPC},
		{syscall.EDQUOT, ENOSPC},
		{syscall.EFBIG, ENOSPC},
		{syscall.EOVERFLOW, EOVERFLOW},
		{syscall.EOPNOTSUPP, ENOTSUP},
		{syscall.ESHUTDOWN, ESHUTDOWN},
		{syscall.EIO, EIO},
	} {
		if got := Errno(tt.err); got != tt.want {
			t.Errorf("Errno(%v) = %d, want %d", tt.err, got, tt.want)
		}
	}
}
