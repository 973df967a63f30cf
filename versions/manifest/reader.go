package manifest

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/zeebo/blake3"

	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/metastore/blockmap"
)

// Reader reads and validates a version metadata stream. Nothing it returns
// is known good until NextVersion has returned io.EOF: only then has the
// trailer's checksum been verified. Callers must not commit anything they
// read before that.
//
// Errors about the stream's content wrap ErrInvalid (a stream cut short
// also wraps io.ErrUnexpectedEOF); a stream of a newer format is refused
// by NewReader with ErrNewerFormat; an error of the underlying reader is
// returned wrapped as it is. Every error is final: later calls return it.
//
// A Reader is not safe for concurrent use.
type Reader struct {
	br    *bufio.Reader
	h     *blake3.Hasher
	off   int64 // bytes consumed
	err   error
	state int

	// The frame being read.
	frames     int64 // frames read, this one included
	frameStart int64
	kind       byte
	buf        []byte // payload; reused
	tsum       [32]byte

	store  StoreInfo
	keys   []KeyReg
	keyset keySet
	uids   map[string]struct{}
	count  uint64 // versions read
	v      verState

	recs []block.Record
	seen map[block.ID]int32
}

const (
	stVersions = iota // between versions: V or T next
	stPages           // in a version: P or E next
	stDone            // trailer verified
)

// chunk bounds each read of a payload, so a length that the stream does
// not back with bytes costs no more memory than the bytes that came.
const chunk = 64 << 10

// NewReader reads the magic, the store description and the key
// registrations of a stream, and checks them.
func NewReader(r io.Reader) (*Reader, error) {
	rd := &Reader{
		br:   bufio.NewReaderSize(r, chunk),
		h:    blake3.New(),
		uids: map[string]struct{}{},
		seen: make(map[block.ID]int32, blockmap.PageEntries),
	}
	if err := rd.readHeader(); err != nil {
		return nil, err
	}
	kind, p, err := rd.readFrame()
	if err != nil {
		return nil, err
	}
	if kind != kindStore {
		return nil, rd.invalid("the stream must begin with a store description (S)")
	}
	if rd.store, err = parseStore(p); err != nil {
		return nil, rd.invalid("%v", err)
	}
	for {
		next, err := rd.br.Peek(1)
		if err != nil {
			rd.frames++ // the frame that is missing
			return nil, rd.readErr(err)
		}
		if next[0] != kindKey {
			break
		}
		_, p, err := rd.readFrame()
		if err != nil {
			return nil, err
		}
		if len(rd.keys) == MaxKeys {
			return nil, rd.invalid("more than %d key registrations", MaxKeys)
		}
		var prev uint16
		if len(rd.keys) > 0 {
			prev = rd.keys[len(rd.keys)-1].EncVersion
		}
		k, err := parseKey(p, prev)
		if err != nil {
			return nil, rd.invalid("%v", err)
		}
		k.Registration = slices.Clone(k.Registration)
		rd.keys = append(rd.keys, k)
		rd.keyset.add(k.EncVersion)
	}
	return rd, nil
}

func (r *Reader) readHeader() error {
	var hdr [len(Magic) + 1]byte
	n, err := io.ReadFull(r.br, hdr[:])
	r.off += int64(n)
	if string(hdr[:min(n, len(Magic))]) != Magic[:min(n, len(Magic))] {
		return fmt.Errorf("%w: not a version metadata stream (it begins %q, not %q)", ErrInvalid, hdr[:min(n, len(Magic))], Magic)
	}
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		return r.readErr(err)
	}
	if err != nil {
		return fmt.Errorf("%w: the stream ends at byte %d, in its header: %w", ErrInvalid, n, io.ErrUnexpectedEOF)
	}
	switch f := hdr[len(Magic)]; {
	case f > FormatVersion:
		return fmt.Errorf("%w: format %d, this backy reads up to %d: upgrade backy", ErrNewerFormat, f, FormatVersion)
	case f < 1:
		return fmt.Errorf("%w: unknown format %d", ErrInvalid, f)
	}
	_, _ = r.h.Write(hdr[:])
	return nil
}

// Store returns the stream's store description.
func (r *Reader) Store() StoreInfo { return r.store }

// Keys returns the stream's key registrations, by ascending encryption
// version. The caller must not modify them.
func (r *Reader) Keys() []KeyReg { return r.keys }

// NextVersion returns the next version, skipping (and checking) the pages
// of the current one that were not read. After the last version it reads
// and verifies the trailer and returns io.EOF: only then is the whole
// stream known good.
func (r *Reader) NextVersion() (*metastore.Version, error) {
	if r.err != nil {
		return nil, r.err
	}
	if r.state == stDone {
		return nil, io.EOF
	}
	for r.state == stPages {
		if _, err := r.NextPage(); err == io.EOF {
			break
		} else if err != nil {
			return nil, err
		}
	}
	kind, p, err := r.readFrame()
	if err != nil {
		return nil, r.fail(err)
	}
	switch kind {
	case kindVersion:
		v, err := parseVersion(p, r.store.BlockSize)
		if err != nil {
			return nil, r.fail(r.invalid("%v", err))
		}
		if _, dup := r.uids[v.UID]; dup {
			return nil, r.fail(r.invalid("version %s appears twice", v.UID))
		}
		r.uids[v.UID] = struct{}{}
		r.count++
		r.v = newVerState(v)
		r.state = stPages
		return v, nil
	case kindTrailer:
		if err := r.trailer(p); err != nil {
			return nil, r.fail(err)
		}
		r.state = stDone
		return nil, io.EOF
	case kindKey:
		return nil, r.fail(r.invalid("key registration after the first version"))
	default:
		return nil, r.fail(r.invalid("a version (V) or the trailer (T) was expected"))
	}
}

// Page is one page of a version's block map with the records of its blocks.
type Page struct {
	First   int64          // index of the page's first block in the version
	IDs     []block.ID     // the entries; block.Sparse for a sparse block
	Records []block.Record // one per distinct non-sparse id, in order of first appearance, with ID set

	idx map[block.ID]int32 // index into Records, when the Reader made the page
}

// Record returns the record of id in the page.
func (p Page) Record(id block.ID) (block.Record, bool) {
	if p.idx != nil {
		if i, ok := p.idx[id]; ok && int(i) < len(p.Records) && p.Records[i].ID == id {
			return p.Records[i], true
		}
		return block.Record{}, false
	}
	for i := range p.Records {
		if p.Records[i].ID == id {
			return p.Records[i], true
		}
	}
	return block.Record{}, false
}

// NextPage returns the next page of the current version, or io.EOF after
// its last (or when no version is being read). The Page is valid until the
// next call of NextPage or NextVersion.
func (r *Reader) NextPage() (Page, error) {
	if r.err != nil {
		return Page{}, r.err
	}
	if r.state != stPages {
		return Page{}, io.EOF
	}
	kind, p, err := r.readFrame()
	if err != nil {
		return Page{}, r.fail(err)
	}
	switch kind {
	case kindPage:
		pg, err := r.page(p)
		if err != nil {
			return Page{}, r.fail(err)
		}
		return pg, nil
	case kindEnd:
		if err := r.end(p); err != nil {
			return Page{}, r.fail(err)
		}
		r.state = stVersions
		return Page{}, io.EOF
	default:
		return Page{}, r.fail(r.invalid("a page (P) or the end (E) of version %s was expected", r.v.uid))
	}
}

func (r *Reader) page(p []byte) (Page, error) {
	s := &r.v
	bad := func(format string, args ...any) error {
		return r.invalid("page %d of version %s: %s", s.pages, s.uid, fmt.Sprintf(format, args...))
	}
	want := s.nextEntries()
	if want <= 0 {
		return Page{}, bad("the version's %d blocks are already listed", s.nblocks)
	}
	// The page encoding's length, to find where the records begin.
	if len(p) < 2 {
		return Page{}, bad("%d bytes", len(p))
	}
	n, k := binary.Uvarint(p[1:])
	if k <= 0 || n > blockmap.PageEntries {
		return Page{}, bad("bad entry count")
	}
	encLen := 1 + k + int(n)*block.IDSize
	if encLen > len(p) {
		return Page{}, bad("%d entries need %d bytes, the frame has %d", n, encLen, len(p))
	}
	ids, err := blockmap.Decode(p[:encLen])
	if err != nil {
		return Page{}, bad("%v", err)
	}
	if len(ids) != want {
		return Page{}, bad("%d entries, want %d (every page but the last is full)", len(ids), want)
	}
	clear(r.seen)
	r.recs = r.recs[:0]
	rest := p[encLen:]
	for i, id := range ids {
		if id.IsSparse() {
			continue
		}
		j, ok := r.seen[id]
		if !ok {
			if len(rest) < RecordSize {
				return Page{}, bad("the records end at entry %d", i)
			}
			rec, err := parseRecord(rest[:RecordSize], id)
			if err == nil {
				err = checkRecord(&rec, &r.keyset)
			}
			if err != nil {
				return Page{}, bad("%v", err)
			}
			rest = rest[RecordSize:]
			j = int32(len(r.recs))
			r.seen[id] = j
			r.recs = append(r.recs, rec)
		}
		if err := checkSize(&r.recs[j], s, s.entries+int64(i)); err != nil {
			return Page{}, bad("%v", err)
		}
	}
	if len(rest) != 0 {
		return Page{}, bad("%d bytes after the records", len(rest))
	}
	pg := Page{First: s.entries, IDs: ids, Records: r.recs, idx: r.seen}
	s.pages++
	s.entries += int64(len(ids))
	return pg, nil
}

func (r *Reader) end(p []byte) error {
	s := &r.v
	pages, n1, ok1 := uvarint(p)
	var entries uint64
	var n2 int
	ok2 := false
	if ok1 {
		entries, n2, ok2 = uvarint(p[n1:])
	}
	if !ok1 || !ok2 || n1+n2 != len(p) {
		return r.invalid("end of version %s: malformed counts", s.uid)
	}
	if s.entries != s.nblocks {
		return r.invalid("version %s ends after %d of its %d blocks", s.uid, s.entries, s.nblocks)
	}
	if pages != uint64(s.pages) || entries != uint64(s.entries) {
		return r.invalid("end of version %s counts %d pages and %d entries, the stream had %d and %d", s.uid, pages, entries, s.pages, s.entries)
	}
	return nil
}

func (r *Reader) trailer(p []byte) error {
	count, n, ok := uvarint(p)
	if !ok || len(p)-n != len(r.tsum) {
		return r.invalid("malformed trailer")
	}
	if string(p[n:]) != string(r.tsum[:]) {
		return r.invalid("checksum mismatch: the stream is damaged or was altered")
	}
	if count != r.count {
		return r.invalid("the trailer counts %d versions, the stream has %d", count, r.count)
	}
	switch _, err := r.br.ReadByte(); err {
	case io.EOF:
		return nil
	case nil:
		return fmt.Errorf("%w: bytes after the trailer at byte %d", ErrInvalid, r.off)
	default:
		return fmt.Errorf("manifest: reading after the trailer: %w", err)
	}
}

// readFrame reads the next frame into r.buf and hashes it.
func (r *Reader) readFrame() (byte, []byte, error) {
	r.frames++
	r.frameStart = r.off
	r.kind = 0
	kind, err := r.br.ReadByte()
	if err != nil {
		return 0, nil, r.readErr(err)
	}
	r.off++
	r.kind = kind
	if kind == kindTrailer {
		r.h.Sum(r.tsum[:0])
	}
	var hdr [hdrRoom]byte
	hdr[0] = kind
	hl := 1
	var n uint64
	for {
		if hl == hdrRoom {
			return 0, nil, r.invalid("payload length over %d bytes", MaxFramePayload)
		}
		c, err := r.br.ReadByte()
		if err != nil {
			return 0, nil, r.readErr(err)
		}
		r.off++
		n |= uint64(c&0x7f) << (7 * (hl - 1))
		hdr[hl] = c
		hl++
		if c < 0x80 {
			if c == 0 && hl > 2 {
				return 0, nil, r.invalid("payload length is not minimally encoded")
			}
			break
		}
	}
	if n > MaxFramePayload {
		return 0, nil, r.invalid("payload of %d bytes, the limit is %d", n, MaxFramePayload)
	}
	_, _ = r.h.Write(hdr[:hl])
	buf := r.buf[:0]
	for len(buf) < int(n) {
		c := min(int(n)-len(buf), chunk)
		buf = slices.Grow(buf, c)
		m, err := io.ReadFull(r.br, buf[len(buf):len(buf)+c])
		buf = buf[:len(buf)+m]
		r.off += int64(m)
		if err != nil {
			r.buf = buf[:0]
			return 0, nil, r.readErr(err)
		}
	}
	r.buf = buf[:0]
	_, _ = r.h.Write(buf)
	return kind, buf, nil
}

func (r *Reader) fail(err error) error {
	r.err = err
	return err
}

// invalid returns an ErrInvalid error about the current frame.
func (r *Reader) invalid(format string, args ...any) error {
	return r.fail(fmt.Errorf("%w: frame %d (%s) at byte %d: %s", ErrInvalid, r.frames, kindName(r.kind), r.frameStart, fmt.Sprintf(format, args...)))
}

// readErr turns an error of the underlying reader into the Reader's error.
func (r *Reader) readErr(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return r.fail(fmt.Errorf("%w: the stream ends at byte %d, in frame %d, before its trailer: %w", ErrInvalid, r.off, r.frames, io.ErrUnexpectedEOF))
	}
	return r.fail(fmt.Errorf("manifest: reading at byte %d: %w", r.off, err))
}
