package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/bits"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/backy/backy/internal/clock"
)

var be = binary.BigEndian

// errAbort ends the handshake after NBD_OPT_ABORT (a soft disconnect).
var errAbort = errors.New("nbd: client aborted the handshake")

// protocolError is a violation by the client that ends the connection.
type protocolError struct{ msg string }

func (e *protocolError) Error() string { return "nbd: protocol error: " + e.msg }

func protoErr(format string, args ...any) error {
	return &protocolError{msg: fmt.Sprintf(format, args...)}
}

// conn is one client connection.
type conn struct {
	srv    *Server
	log    *slog.Logger
	raw    net.Conn // the accepted connection; deadlines are set on it
	nc     net.Conn // raw, or the TLS connection over it
	br     *bufio.Reader
	bw     *bufio.Writer // handshake phase only
	remote string
	key    string          // the client, for the limits (clientKey)
	ctx    context.Context // cancelled when the server shuts down
	cancel context.CancelFunc

	// phase is the tracker's, under its mutex; evicted is set when the
	// tracker closed the connection to make room.
	phase   connPhase
	evicted atomic.Bool

	// Negotiated in the handshake.
	noZeroes   bool   // NBD_FLAG_C_NO_ZEROES
	tls        bool   // TLS is up
	structured bool   // NBD_OPT_STRUCTURED_REPLY acknowledged
	metaSet    bool   // base:allocation selected by NBD_OPT_SET_META_CONTEXT
	metaName   string // ... for this export name

	// Transmission phase.
	export     Export
	exportName string // canonical name, for logs
	goName     string // name the client chose the export by
	size       uint64
	flags      uint16 // transmission flags sent to the client
	readOnly   bool
	closeOnce  sync.Once
	closeErr   error
	requests   atomic.Int64

	wmu  sync.Mutex // serialises replies; each reply is written whole
	werr error      // first write error; later replies are dropped
}

// bufConn reads through a bufio.Reader so that bytes it already
// buffered are not lost when the connection is wrapped in TLS.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (b bufConn) Read(p []byte) (int, error) { return b.r.Read(p) }

// closeExport calls Export.Close once.
func (c *conn) closeExport(reason error) error {
	c.closeOnce.Do(func() {
		defer func() {
			if v := recover(); v != nil {
				c.closeErr = c.recovered(v)
			}
		}()
		c.closeErr = c.export.Close(reason)
	})
	return c.closeErr
}

// handshake runs the fixed newstyle negotiation (proto.md "Fixed newstyle
// negotiation") until transmission starts (nil) or the connection must
// end (an error; errAbort for NBD_OPT_ABORT).
func (c *conn) handshake(ctx context.Context) error {
	c.raw.SetDeadline(clock.Deadline(c.srv.o.HandshakeTimeout))
	if err := ctx.Err(); err != nil {
		return err
	}
	c.br = bufio.NewReaderSize(c.raw, 4096)
	c.bw = bufio.NewWriterSize(c.raw, 4096)

	var hello [18]byte
	be.PutUint64(hello[0:], nbdMagic)
	be.PutUint64(hello[8:], optMagic)
	be.PutUint16(hello[16:], flagFixedNewstyle|flagNoZeroes)
	c.bw.Write(hello[:])
	if err := c.bw.Flush(); err != nil {
		return c.ioErr(ctx, err)
	}
	var cf [4]byte
	if _, err := io.ReadFull(c.br, cf[:]); err != nil {
		return c.ioErr(ctx, err)
	}
	clientFlags := be.Uint32(cf[:])
	if clientFlags&^(flagCFixedNewstyle|flagCNoZeroes) != 0 {
		// "the server MUST drop the TCP connection if the client sets an
		// unknown flag"
		return c.warn(protoErr("unknown client flags %#x", clientFlags))
	}
	if clientFlags&flagCFixedNewstyle == 0 {
		return c.warn(protoErr("client does not support fixed newstyle negotiation"))
	}
	c.noZeroes = clientFlags&flagCNoZeroes != 0

	for {
		done, err := c.option(ctx)
		if err == nil {
			err = c.bw.Flush()
		}
		if err != nil {
			var pe *protocolError
			if errors.As(err, &pe) || errors.Is(err, errAbort) {
				return err
			}
			return c.ioErr(ctx, err)
		}
		if done {
			break
		}
	}
	c.bw = nil
	// Transmission has no deadline, but a shutdown that raced with the
	// handshake must still wake the reader.
	c.raw.SetDeadline(time.Time{})
	if ctx.Err() != nil {
		c.raw.SetReadDeadline(clock.Deadline(0))
	}
	c.log.Info("nbd: export opened", "export", c.exportName, "size", c.size,
		"read_only", c.readOnly, "structured", c.structured, "tls", c.tls)
	return nil
}

// ioErr classifies a read/write failure: shutdown, eviction, timeout or
// I/O error.
func (c *conn) ioErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if c.evicted.Load() {
		return errEvicted
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return c.warn(fmt.Errorf("nbd: handshake not finished in %v: %w", c.srv.o.HandshakeTimeout, err))
	}
	return err
}

// warn logs a protocol error (unless the connection was evicted, which
// explains it) and returns it.
func (c *conn) warn(err error) error {
	if !c.evicted.Load() {
		c.warnf("nbd: protocol error", "err", err)
	}
	return err
}

// warnf logs a warning about the client, at most one per
// Options.WarnInterval (Server.warn).
func (c *conn) warnf(msg string, args ...any) {
	c.srv.warn(c.key, c.log, msg, args...)
}

// option reads one option and answers it; done reports that transmission
// starts.
func (c *conn) option(ctx context.Context) (done bool, err error) {
	var h [optHeaderSize]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		return false, err
	}
	if m := be.Uint64(h[0:]); m != optMagic {
		return false, c.warn(protoErr("bad option magic %#x", m))
	}
	opt := be.Uint32(h[8:])
	length := be.Uint32(h[12:])

	// The length is checked before anything is allocated: an oversized
	// option is drained without buffering and refused.
	var data []byte
	tooBig := length > maxOptionLen
	if tooBig {
		if opt == optExportName {
			// NBD_OPT_EXPORT_NAME cannot be answered with an error.
			return false, c.warn(protoErr("NBD_OPT_EXPORT_NAME of %d bytes", length))
		}
		if _, err := io.CopyN(io.Discard, c.br, int64(length)); err != nil {
			return false, err
		}
	} else {
		data = make([]byte, length)
		if _, err := io.ReadFull(c.br, data); err != nil {
			return false, err
		}
	}

	if opt == optAbort {
		// "The server MUST reply with NBD_REP_ACK" (data is ignored).
		c.reply(opt, repAck, nil)
		c.bw.Flush()
		return false, errAbort
	}
	if c.srv.o.RequireTLS && !c.tls && opt != optStartTLS {
		if opt == optExportName {
			return false, c.warn(protoErr("NBD_OPT_EXPORT_NAME before TLS, which is required"))
		}
		return false, c.replyErr(opt, repErrTLSReqd, "TLS required")
	}
	if tooBig {
		c.warnf("nbd: option too large", "option", opt, "length", length)
		return false, c.replyErr(opt, repErrTooBig, "option too large")
	}

	switch opt {
	case optExportName:
		return c.optExportName(ctx, data)
	case optList:
		return false, c.optList(ctx, opt, data)
	case optStartTLS:
		return false, c.optStartTLS(ctx, opt, data)
	case optInfo, optGo:
		return c.optInfoGo(ctx, opt, data)
	case optStructuredReply:
		if len(data) != 0 {
			return false, c.invalid(opt, "NBD_OPT_STRUCTURED_REPLY with data")
		}
		c.structured = true
		return false, c.reply(opt, repAck, nil)
	case optListMetaContext, optSetMetaContext:
		return false, c.optMetaContext(ctx, opt, data)
	default:
		// Includes NBD_OPT_PEEK_EXPORT and NBD_OPT_EXTENDED_HEADERS.
		return false, c.replyErr(opt, repErrUnsup, "unsupported option")
	}
}

// reply queues one option reply.
func (c *conn) reply(opt, typ uint32, data []byte) error {
	var h [optReplySize]byte
	be.PutUint64(h[0:], optReplyMagic)
	be.PutUint32(h[8:], opt)
	be.PutUint32(h[12:], typ)
	be.PutUint32(h[16:], uint32(len(data)))
	c.bw.Write(h[:])
	_, err := c.bw.Write(data)
	return err
}

// replyErr queues an error reply with a human-readable message.
func (c *conn) replyErr(opt, typ uint32, msg string) error {
	return c.reply(opt, typ, []byte(msg))
}

// invalid answers a malformed option with NBD_REP_ERR_INVALID.
func (c *conn) invalid(opt uint32, msg string) error {
	c.warnf("nbd: invalid option", "option", opt, "err", msg)
	return c.replyErr(opt, repErrInvalid, msg)
}

// validString checks the spec's rules for strings: no NUL, at most 4096
// bytes, UTF-8.
func validString(s string) bool {
	return len(s) <= maxStringLen && !strings.ContainsRune(s, 0) && utf8.ValidString(s)
}

// exportErr answers a failed Info/Open.
func (c *conn) exportErr(opt uint32, name string, err error) error {
	switch {
	case errors.Is(err, ErrUnknownExport):
		return c.replyErr(opt, repErrUnknown, "unknown export")
	case errors.Is(err, context.Canceled):
		return c.replyErr(opt, repErrShutdown, "server shutting down")
	}
	c.warnf("nbd: export unavailable", "export", name, "err", err)
	return c.replyErr(opt, repErrUnknown, "export unavailable")
}

// transmissionFlags are the flags advertised for an export.
func (c *conn) transmissionFlags(readOnly bool) uint16 {
	f := flagHasFlags
	if readOnly {
		// Nothing can be written, so flush/FUA/trim/zeroes are not
		// offered, and every connection sees the same data.
		f |= flagReadOnly | flagCanMultiConn
	} else {
		f |= flagSendFlush | flagSendFUA | flagSendTrim | flagSendWriteZeroes
	}
	if c.structured {
		f |= flagSendDF
	}
	return f
}

// blockSizes are the advertised minimum, preferred and maximum block
// sizes (proto.md "Block size constraints").
func (c *conn) blockSizes(info ExportInfo) (minimum, preferred, maximum uint32) {
	maximum = uint32(c.srv.o.MaxRequest)
	p := info.BlockSize
	if p <= 0 {
		p = 4096
	}
	p = min(p, int64(maximum))
	preferred = max(uint32(1)<<(bits.Len64(uint64(p))-1), 512)
	return 1, preferred, maximum
}

// optExportName: NBD_OPT_EXPORT_NAME ends the handshake or, failing, the
// session.
func (c *conn) optExportName(ctx context.Context, data []byte) (bool, error) {
	name := string(data)
	if !validString(name) {
		return false, c.warn(protoErr("invalid export name"))
	}
	exp, info, err := c.srv.exports.Open(ctx, name)
	if err != nil {
		// "If the chosen export does not exist ... the server MUST
		// terminate the session."
		c.warnf("nbd: NBD_OPT_EXPORT_NAME refused", "export", name, "err", err)
		return false, fmt.Errorf("nbd: open export %q: %w", name, err)
	}
	if why := c.srv.track.establish(c); why != "" {
		_ = exp.Close(errors.New("nbd: " + why))
		c.warnf("nbd: NBD_OPT_EXPORT_NAME refused", "export", name, "err", why)
		return false, fmt.Errorf("nbd: open export %q: %s", name, why)
	}
	c.startExport(exp, info, name)
	var b [8 + 2 + 124]byte
	be.PutUint64(b[0:], c.size)
	be.PutUint16(b[8:], c.flags)
	n := len(b)
	if c.noZeroes {
		n = 10
	}
	_, err = c.bw.Write(b[:n])
	if err == nil {
		err = c.bw.Flush()
	}
	return true, err
}

// startExport records the opened export; from here on Export.Close is
// called when the connection ends.
func (c *conn) startExport(exp Export, info ExportInfo, name string) {
	c.export = exp
	c.goName = name
	c.exportName = info.Name
	if c.exportName == "" {
		c.exportName = name
	}
	c.size = uint64(max(exp.Size(), 0))
	c.readOnly = info.ReadOnly
	c.flags = c.transmissionFlags(info.ReadOnly)
}

// optList: NBD_OPT_LIST.
func (c *conn) optList(ctx context.Context, opt uint32, data []byte) error {
	if len(data) != 0 {
		return c.invalid(opt, "NBD_OPT_LIST with data")
	}
	list, err := c.srv.exports.List(ctx)
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return c.replyErr(opt, repErrShutdown, "server shutting down")
		}
		c.warnf("nbd: listing exports", "err", err)
		return c.replyErr(opt, repErrPolicy, "export list unavailable")
	}
	for _, e := range list {
		if !validString(e.Name) {
			continue
		}
		desc := e.Description
		if !validString(desc) {
			desc = ""
		}
		b := make([]byte, 4+len(e.Name)+len(desc))
		be.PutUint32(b, uint32(len(e.Name)))
		copy(b[4:], e.Name)
		copy(b[4+len(e.Name):], desc)
		if err := c.reply(opt, repServer, b); err != nil {
			return err
		}
	}
	return c.reply(opt, repAck, nil)
}

// optStartTLS: NBD_OPT_STARTTLS upgrades the connection in place.
func (c *conn) optStartTLS(ctx context.Context, opt uint32, data []byte) error {
	switch {
	case c.srv.o.TLS == nil:
		return c.replyErr(opt, repErrPolicy, "TLS not configured")
	case len(data) != 0:
		return c.invalid(opt, "NBD_OPT_STARTTLS with data")
	case c.tls:
		return c.invalid(opt, "TLS already started")
	}
	if err := c.reply(opt, repAck, nil); err != nil {
		return err
	}
	if err := c.bw.Flush(); err != nil {
		return err
	}
	tc := tls.Server(bufConn{Conn: c.raw, r: c.br}, c.srv.o.TLS)
	if err := tc.HandshakeContext(ctx); err != nil {
		// Too late to continue without TLS: terminate the session.
		return c.warn(protoErr("TLS handshake: %v", err))
	}
	c.nc = tc
	c.tls = true
	c.br = bufio.NewReaderSize(tc, 4096)
	c.bw = bufio.NewWriterSize(tc, 4096)
	// "the server MUST NOT preserve any negotiation state ... issued
	// before this command."
	c.structured = false
	c.metaSet = false
	c.metaName = ""
	return nil
}

// optInfoGo: NBD_OPT_INFO and NBD_OPT_GO.
func (c *conn) optInfoGo(ctx context.Context, opt uint32, data []byte) (bool, error) {
	// 32 bits name length, name, 16 bits count, count × 16 bits.
	if len(data) < 6 {
		return false, c.invalid(opt, "option too short")
	}
	nameLen := be.Uint32(data)
	if uint64(nameLen) > uint64(len(data)-6) {
		return false, c.invalid(opt, "name length exceeds option")
	}
	name := string(data[4 : 4+nameLen])
	rest := data[4+nameLen:]
	n := int(be.Uint16(rest))
	if len(rest)-2 != 2*n {
		return false, c.invalid(opt, "information request count does not match option length")
	}
	if !validString(name) {
		return false, c.invalid(opt, "invalid export name")
	}
	var wantName, wantDesc bool
	for i := range n {
		switch be.Uint16(rest[2+2*i:]) {
		case infoName:
			wantName = true
		case infoDescription:
			wantDesc = true
		}
		// NBD_INFO_EXPORT and NBD_INFO_BLOCK_SIZE are always sent;
		// unknown requests are ignored, as the spec requires.
	}

	var (
		exp  Export
		info ExportInfo
		err  error
	)
	if opt == optGo {
		exp, info, err = c.srv.exports.Open(ctx, name)
	} else {
		info, err = c.srv.exports.Info(ctx, name)
	}
	if err == nil && exp == nil && info.Size < 0 {
		err = fmt.Errorf("negative size %d", info.Size)
	}
	if err != nil {
		return false, c.exportErr(opt, name, err)
	}
	if exp != nil {
		if why := c.srv.track.establish(c); why != "" {
			_ = exp.Close(errors.New("nbd: " + why))
			c.warnf("nbd: NBD_OPT_GO refused", "export", name, "err", why)
			return false, c.replyErr(opt, repErrPolicy, why)
		}
	}

	size := uint64(info.Size)
	flags := c.transmissionFlags(info.ReadOnly)
	if exp != nil {
		c.startExport(exp, info, name)
		size, flags = c.size, c.flags
	}
	var b [14]byte
	be.PutUint16(b[0:], infoExport)
	be.PutUint64(b[2:], size)
	be.PutUint16(b[10:], flags)
	c.reply(opt, repInfo, b[:12])
	if wantName {
		cn := info.Name
		if cn == "" || !validString(cn) {
			cn = name
		}
		c.reply(opt, repInfo, append(be.AppendUint16(nil, infoName), cn...))
	}
	if wantDesc && info.Description != "" && validString(info.Description) {
		c.reply(opt, repInfo, append(be.AppendUint16(nil, infoDescription), info.Description...))
	}
	// Sent even when not requested (the spec allows it): our maximum is
	// smaller than the default "unlimited".
	lo, pref, hi := c.blockSizes(info)
	be.PutUint16(b[0:], infoBlockSize)
	be.PutUint32(b[2:], lo)
	be.PutUint32(b[6:], pref)
	be.PutUint32(b[10:], hi)
	c.reply(opt, repInfo, b[:14])
	if err := c.reply(opt, repAck, nil); err != nil {
		return false, err
	}
	if opt == optGo {
		// No zero padding after NBD_REP_ACK, whatever NO_ZEROES says.
		return true, c.bw.Flush()
	}
	return false, nil
}

// optMetaContext: NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT.
// The only context is base:allocation.
func (c *conn) optMetaContext(ctx context.Context, opt uint32, data []byte) error {
	set := opt == optSetMetaContext
	if set {
		// "Issuing this command replaces all previously-set metadata
		// contexts (including when this command fails)".
		c.metaSet = false
		c.metaName = ""
	}
	if !c.structured {
		return c.invalid(opt, "structured replies not negotiated")
	}
	// 32 bits name length, name, 32 bits query count, queries each as
	// 32 bits length and string.
	if len(data) < 8 {
		return c.invalid(opt, "option too short")
	}
	nameLen := be.Uint32(data)
	if uint64(nameLen) > uint64(len(data)-8) {
		return c.invalid(opt, "name length exceeds option")
	}
	name := string(data[4 : 4+nameLen])
	rest := data[4+nameLen:]
	nq := be.Uint32(rest)
	rest = rest[4:]
	var queries []string
	for range nq {
		if len(rest) < 4 {
			return c.invalid(opt, "query count exceeds option")
		}
		ql := be.Uint32(rest)
		if uint64(ql) > uint64(len(rest)-4) {
			return c.invalid(opt, "query length exceeds option")
		}
		queries = append(queries, string(rest[4:4+ql]))
		rest = rest[4+ql:]
	}
	if len(rest) != 0 {
		return c.invalid(opt, "trailing data after queries")
	}
	if !validString(name) {
		return c.invalid(opt, "invalid export name")
	}
	match := len(queries) == 0 && !set // no query: list everything
	for _, q := range queries {
		if !validString(q) {
			return c.invalid(opt, "invalid query string")
		}
		ns, leaf, ok := strings.Cut(q, ":")
		if !ok || ns == "" {
			return c.invalid(opt, "query without namespace")
		}
		if ns != "base" {
			continue // unknown namespaces MUST be ignored
		}
		switch {
		case leaf == "allocation":
			match = true
		case leaf == "" && !set:
			match = true // "base:" is a wildcard for LIST only
		}
		// Other base: leaf names MUST be ignored.
	}
	if _, err := c.srv.exports.Info(ctx, name); err != nil {
		return c.exportErr(opt, name, err)
	}
	if match {
		id := uint32(0) // "SHOULD be set to zero" in LIST replies
		if set {
			id = metaBaseAllocationID
			c.metaSet = true
			c.metaName = name
		}
		c.reply(opt, repMetaContext, append(be.AppendUint32(nil, id), metaBaseAllocation...))
	}
	return c.reply(opt, repAck, nil)
}
