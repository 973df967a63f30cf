package nbd

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/backy/backy/internal/clock"
)

// request is one transmission request (proto.md "Request message").
type request struct {
	flags  uint16
	typ    uint16
	handle uint64
	off    uint64
	length uint32
	data   *[]byte // WRITE payload, from the buffer pools
}

// errNoDisc is the reason for a client that hung up without NBD_CMD_DISC.
var errNoDisc = errors.New("nbd: client disconnected without NBD_CMD_DISC")

// transmit runs the transmission phase: this goroutine reads requests,
// up to Workers goroutines handle them, and replies are written whole
// under c.wmu. It returns nil after NBD_CMD_DISC.
func (c *conn) transmit() error {
	sem := make(chan struct{}, c.srv.o.Workers)
	var wg sync.WaitGroup
	reason := c.readRequests(sem, &wg)
	// "The server MUST handle all outstanding requests": wait for them,
	// but not forever on a client that does not read its replies.
	c.raw.SetWriteDeadline(clock.Deadline(c.srv.drainTimeout))
	wg.Wait()
	if err := c.writeErr(); err != nil && reason == nil {
		reason = err
	}
	return reason
}

// readRequests is the reader loop; it returns why reading stopped.
func (c *conn) readRequests(sem chan struct{}, wg *sync.WaitGroup) error {
	var h [requestSize]byte
	for {
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			return c.readErr(err)
		}
		if m := be.Uint32(h[0:]); m != requestMagic {
			// The stream cannot be resynchronised: hard disconnect.
			return c.warn(protoErr("bad request magic %#x", m))
		}
		r := &request{
			flags:  be.Uint16(h[4:]),
			typ:    be.Uint16(h[6:]),
			handle: be.Uint64(h[8:]),
			off:    be.Uint64(h[16:]),
			length: be.Uint32(h[24:]),
		}
		c.requests.Add(1)
		switch r.typ {
		case cmdDisc:
			// No reply; outstanding requests are finished by transmit.
			return nil
		case cmdWrite:
			if errno, msg := c.validate(r); errno != 0 {
				// The payload must be consumed to stay in sync; it is
				// discarded without being buffered. A payload too large
				// to be anything but a denial of service ends the
				// connection instead (proto.md "Block size constraints").
				if r.length > uint32(max(c.srv.o.MaxRequest, dosWriteLen)) {
					return c.warn(protoErr("NBD_CMD_WRITE of %d bytes", r.length))
				}
				if _, err := io.CopyN(io.Discard, c.br, int64(r.length)); err != nil {
					return c.readErr(err)
				}
				c.warnf("nbd: request refused", "cmd", r.typ, "offset", r.off, "length", r.length, "err", msg)
				c.replyError(r, errno, msg, false, 0)
				continue
			}
			if err := c.acquire(sem); err != nil {
				return err
			}
			r.data = c.srv.buffer(int(r.length))
			if _, err := io.ReadFull(c.br, *r.data); err != nil {
				c.srv.release(r.data)
				<-sem
				return c.readErr(err)
			}
		default:
			if err := c.acquire(sem); err != nil {
				return err
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c.handle(r)
		}()
	}
}

// acquire takes a worker slot, giving up when the server shuts down.
func (c *conn) acquire(sem chan struct{}) error {
	select {
	case sem <- struct{}{}:
		return nil
	case <-c.ctx.Done():
		return c.ctx.Err()
	}
}

// readErr names why the reader stopped.
func (c *conn) readErr(err error) error {
	switch {
	case c.ctx.Err() != nil:
		return c.ctx.Err()
	case c.writeErr() != nil:
		return c.writeErr()
	case errors.Is(err, io.EOF):
		return errNoDisc
	case errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("nbd: client disconnected mid-request: %w", err)
	}
	return err
}

// validate checks a request against the negotiated flags and the export
// size; a nonzero errno is sent back instead of running it.
func (c *conn) validate(r *request) (errno uint32, msg string) {
	write := false
	allowed := uint16(0)
	if c.flags&flagSendFUA != 0 {
		allowed |= cmdFlagFUA // "valid for all commands"
	}
	switch r.typ {
	case cmdRead:
		if c.structured {
			allowed |= cmdFlagDF
		}
	case cmdWrite, cmdTrim, cmdFlush:
		write = true
	case cmdWriteZeroes:
		write = true
		allowed |= cmdFlagNoHole
	case cmdBlockStatus:
		if !c.structured || !c.metaSet || c.metaName != c.goName {
			return EINVAL, "no metadata context negotiated"
		}
		allowed |= cmdFlagReqOne
	default:
		return EINVAL, "unknown command"
	}
	if write && c.readOnly {
		return EPERM, "export is read-only"
	}
	if r.flags&^allowed != 0 {
		return EINVAL, "invalid command flags"
	}
	if r.typ == cmdFlush {
		if r.off != 0 || r.length != 0 {
			return EINVAL, "flush with offset or length"
		}
		return 0, ""
	}
	if r.off > c.size || uint64(r.length) > c.size-r.off {
		if r.typ == cmdWrite || r.typ == cmdWriteZeroes {
			return ENOSPC, "write beyond the end of the export"
		}
		return EINVAL, "request beyond the end of the export"
	}
	if (r.typ == cmdRead || r.typ == cmdWrite) && r.length > uint32(c.srv.o.MaxRequest) {
		if r.flags&cmdFlagDF != 0 {
			return EOVERFLOW, "read too large to send unfragmented"
		}
		return EINVAL, "request larger than the maximum block size"
	}
	if r.typ == cmdBlockStatus && r.length == 0 {
		return EINVAL, "block status of zero length"
	}
	return 0, ""
}

// handle runs one request and sends its reply.
func (c *conn) handle(r *request) {
	defer func() {
		if r.data != nil {
			c.srv.release(r.data)
			r.data = nil
		}
	}()
	defer func() {
		if v := recover(); v != nil {
			err := c.recovered(v)
			c.replyError(r, EIO, "internal server error", false, 0)
			c.fail(err)
		}
	}()
	if errno, msg := c.validate(r); errno != 0 {
		c.warnf("nbd: request refused", "cmd", r.typ, "offset", r.off, "length", r.length, "err", msg)
		c.replyError(r, errno, msg, false, 0)
		return
	}
	ctx := c.ctx
	off, n := int64(r.off), int64(r.length)
	fua := r.flags&cmdFlagFUA != 0 && !c.readOnly
	var err error
	switch r.typ {
	case cmdRead:
		c.read(r)
		return
	case cmdBlockStatus:
		c.blockStatus(r)
		return
	case cmdWrite:
		if n > 0 {
			err = c.export.WriteAt(ctx, *r.data, off)
		}
		c.srv.release(r.data)
		r.data = nil
	case cmdWriteZeroes:
		if n > 0 {
			err = c.export.Zero(ctx, off, n, r.flags&cmdFlagNoHole == 0)
		}
	case cmdTrim:
		if n > 0 {
			err = c.export.Trim(ctx, off, n)
		}
	case cmdFlush:
		err = c.export.Flush(ctx)
		fua = false
	}
	if err == nil && fua {
		// FUA: the reply waits until the data is persisted.
		err = c.export.Flush(ctx)
	}
	if err != nil {
		c.replyError(r, Errno(err), "", false, 0)
		return
	}
	c.send(simpleReply(r.handle, 0))
}

// segment is one part of a READ reply: data to read, or a known hole.
type segment struct {
	start, end int64 // relative to the request offset
	hole       bool
}

// read answers NBD_CMD_READ. With structured replies (and without DF)
// ranges the export reports as reading zeroes go out as OFFSET_HOLE
// chunks and are not read.
func (c *conn) read(r *request) {
	n := int64(r.length)
	if n == 0 {
		// Unspecified by the spec; answered as an empty success.
		if c.structured {
			c.send(chunk(r.handle, replyFlagDone, replyTypeNone, nil)...)
		} else {
			c.send(simpleReply(r.handle, 0))
		}
		return
	}
	ctx := c.ctx
	off := int64(r.off)
	segs := []segment{{0, n, false}}
	if c.structured && r.flags&cmdFlagDF == 0 {
		if exts, err := c.export.Extents(ctx, off, n); err == nil {
			segs = readSegments(exts, n)
		}
	}
	buf := c.srv.buffer(int(n))
	defer c.srv.release(buf)
	p := *buf
	var (
		failed = -1 // index of the segment whose read failed
		rerr   error
	)
	for i, s := range segs {
		if s.hole {
			continue
		}
		// Pooled buffers hold earlier data, possibly of another export:
		// never let an Export that under-fills p leak it.
		clear(p[s.start:s.end])
		if rerr = c.export.ReadAt(ctx, p[s.start:s.end], off+s.start); rerr != nil {
			failed = i
			break
		}
	}
	if !c.structured {
		if rerr != nil {
			c.replyError(r, Errno(rerr), "", false, 0)
			return
		}
		c.send(simpleReply(r.handle, 0), p)
		return
	}
	if failed == 0 {
		c.replyError(r, Errno(rerr), "read failed", true, r.off)
		return
	}
	if failed > 0 {
		segs = segs[:failed]
	}
	var bufs net.Buffers
	for i, s := range segs {
		flags := uint16(0)
		if i == len(segs)-1 && rerr == nil {
			flags = replyFlagDone
		}
		start := r.off + uint64(s.start)
		if s.hole {
			var b [12]byte
			be.PutUint64(b[0:], start)
			be.PutUint32(b[8:], uint32(s.end-s.start))
			bufs = append(bufs, chunk(r.handle, flags, replyTypeOffsetHole, b[:])...)
			continue
		}
		h := chunkHeader(r.handle, flags, replyTypeOffsetData, 8+int(s.end-s.start))
		bufs = append(bufs, be.AppendUint64(h, start), p[s.start:s.end])
	}
	if rerr != nil {
		at := r.off + uint64(segs[len(segs)-1].end)
		bufs = append(bufs, errorChunk(r.handle, Errno(rerr), "read failed", true, at)...)
	}
	c.send(bufs...)
}

// readSegments turns extents into READ reply segments covering [0, n):
// zero runs of at least minHole bytes become holes, the rest is data.
func readSegments(exts []Extent, n int64) []segment {
	const (
		minHole     = 4096
		maxSegments = 4096
	)
	var segs []segment
	add := func(start, end int64, hole bool) {
		if k := len(segs); k > 0 && segs[k-1].hole == hole {
			segs[k-1].end = end
			return
		}
		segs = append(segs, segment{start, end, hole})
	}
	var pos int64
	for _, e := range exts {
		if pos >= n || e.Length <= 0 || len(segs) >= maxSegments {
			break
		}
		l := min(e.Length, n-pos)
		add(pos, pos+l, e.Zero && l >= minHole)
		pos += l
	}
	if pos < n {
		add(pos, n, false)
	}
	return segs
}

// blockStatus answers NBD_CMD_BLOCK_STATUS for base:allocation.
func (c *conn) blockStatus(r *request) {
	exts, err := c.export.Extents(c.ctx, int64(r.off), int64(r.length))
	if err != nil {
		c.replyError(r, Errno(err), "block status failed", false, 0)
		return
	}
	reqOne := r.flags&cmdFlagReqOne != 0
	remaining := int64(r.length)
	desc := be.AppendUint32(make([]byte, 0, 4+8*min(len(exts)+1, 64)), metaBaseAllocationID)
	var last uint32
	count := 0
	for _, e := range exts {
		if remaining == 0 || e.Length <= 0 || count >= maxDescriptors {
			break
		}
		var st uint32
		if e.Hole {
			st |= stateHole
		}
		if e.Zero {
			st |= stateZero
		}
		if reqOne && count == 1 && st != last {
			break // exactly one descriptor
		}
		l := min(e.Length, remaining)
		remaining -= l
		if count > 0 && st == last {
			// Merge runs of equal status (lengths stay below 2^32:
			// their sum is at most the request length).
			i := len(desc) - 8
			be.PutUint32(desc[i:], be.Uint32(desc[i:])+uint32(l))
		} else {
			desc = be.AppendUint32(desc, uint32(l))
			desc = be.AppendUint32(desc, st)
			count++
			last = st
		}
	}
	if count == 0 {
		// Status 0 ("allocated, contents unknown") is always correct.
		desc = be.AppendUint32(desc, r.length)
		desc = be.AppendUint32(desc, 0)
	}
	c.send(chunk(r.handle, replyFlagDone, replyTypeBlockStatus, desc)...)
}

// replyError sends an error reply: a structured ERROR (or, with offset,
// ERROR_OFFSET) chunk when structured replies are on, else a simple
// reply. NBD_CMD_READ errors always use ERROR_OFFSET when structured.
func (c *conn) replyError(r *request, errno uint32, msg string, withOffset bool, at uint64) {
	if errno == 0 {
		errno = EIO
	}
	if !c.structured {
		c.send(simpleReply(r.handle, errno))
		return
	}
	c.send(errorChunk(r.handle, errno, msg, withOffset, at)...)
}

// simpleReply is a simple reply header.
func simpleReply(handle uint64, errno uint32) []byte {
	b := make([]byte, simpleReplySize)
	be.PutUint32(b[0:], simpleReplyMagic)
	be.PutUint32(b[4:], errno)
	be.PutUint64(b[8:], handle)
	return b
}

// chunkHeader is a structured reply chunk header for a payload of n bytes.
func chunkHeader(handle uint64, flags, typ uint16, n int) []byte {
	b := make([]byte, chunkHeaderSize, chunkHeaderSize+16)
	be.PutUint32(b[0:], structReplyMagic)
	be.PutUint16(b[4:], flags)
	be.PutUint16(b[6:], typ)
	be.PutUint64(b[8:], handle)
	be.PutUint32(b[16:], uint32(n))
	return b
}

// chunk is a whole structured reply chunk.
func chunk(handle uint64, flags, typ uint16, payload []byte) net.Buffers {
	return net.Buffers{chunkHeader(handle, flags, typ, len(payload)), payload}
}

// errorChunk is a final NBD_REPLY_TYPE_ERROR or _ERROR_OFFSET chunk.
func errorChunk(handle uint64, errno uint32, msg string, withOffset bool, at uint64) net.Buffers {
	if len(msg) > maxStringLen {
		msg = msg[:maxStringLen]
	}
	p := be.AppendUint32(nil, errno)
	p = be.AppendUint16(p, uint16(len(msg)))
	p = append(p, msg...)
	typ := replyTypeError
	if withOffset {
		typ = replyTypeErrorOffset
		p = be.AppendUint64(p, at)
	}
	return chunk(handle, replyFlagDone, typ, p)
}

// send writes one whole reply; replies of concurrent requests never
// interleave. After a write error nothing more is sent and the
// connection is torn down.
func (c *conn) send(bufs ...[]byte) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return
	}
	nb := net.Buffers(bufs)
	if _, err := nb.WriteTo(c.nc); err != nil {
		c.werr = fmt.Errorf("nbd: writing reply: %w", err)
		c.raw.Close() // wakes the reader
	}
}

// writeErr is the first reply write error, if any.
func (c *conn) writeErr() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.werr
}

// fail tears the connection down after an internal error.
func (c *conn) fail(err error) {
	c.wmu.Lock()
	if c.werr == nil {
		c.werr = err
	}
	c.wmu.Unlock()
	c.raw.Close()
}
