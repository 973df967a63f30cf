package manifest

import (
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"unicode/utf8"

	"github.com/zeebo/blake3"

	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/metastore/blockmap"
)

// Writer writes a version metadata stream: NewWriter, then for each version
// BeginVersion, Page for each of its pages in order, EndVersion; then Close.
//
// Every call checks its input with the Reader's rules and returns an error,
// writing nothing, when the stream would be invalid; the Writer stays
// usable after such an error. An error of the underlying writer is final:
// every later call returns it.
//
// A Writer is not safe for concurrent use.
type Writer struct {
	w     io.Writer
	h     *blake3.Hasher
	n     int64
	err   error // sticky: a write failed or the stream was closed
	store StoreInfo
	keys  keySet
	uids  map[string]struct{}
	count uint64 // versions begun
	inVer bool
	v     verState
	buf   []byte // frame being built; reused
	first map[block.ID]int32
	order []int32
}

var errClosed = errors.New("manifest: writer is closed")

// NewWriter writes the stream's magic, its store description and the key
// registrations (sorted by encryption version; each version once).
func NewWriter(w io.Writer, s StoreInfo, keys []KeyReg) (*Writer, error) {
	if !utf8.ValidString(s.WrittenBy) {
		return nil, errors.New("manifest: written_by is not valid UTF-8")
	}
	payload, err := json.Marshal(storeJSON{
		Format:    FormatVersion,
		StoreID:   hex.EncodeToString(s.StoreID[:]),
		BlockSize: s.BlockSize,
		WrittenBy: s.WrittenBy,
	})
	if err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	// Check the description exactly as a reader will.
	if _, err := parseStore(payload); err != nil {
		return nil, fmt.Errorf("manifest: %v", err)
	}
	if len(keys) > MaxKeys {
		return nil, fmt.Errorf("manifest: %d key registrations, the limit is %d", len(keys), MaxKeys)
	}
	sorted := slices.Clone(keys)
	slices.SortStableFunc(sorted, func(a, b KeyReg) int { return int(a.EncVersion) - int(b.EncVersion) })
	var prev uint16
	for _, k := range sorted {
		if err := checkKey(k, prev); err != nil {
			return nil, fmt.Errorf("manifest: %v", err)
		}
		prev = k.EncVersion
	}

	wr := &Writer{
		w:     w,
		h:     blake3.New(),
		store: s,
		uids:  map[string]struct{}{},
		first: make(map[block.ID]int32, blockmap.PageEntries),
		buf:   make([]byte, 0, 4096),
	}
	if err := wr.write(append([]byte(Magic), FormatVersion)); err != nil {
		return nil, err
	}
	if err := wr.emit(kindStore, append(wr.begin(), payload...)); err != nil {
		return nil, err
	}
	for _, k := range sorted {
		b := binary.BigEndian.AppendUint16(wr.begin(), k.EncVersion)
		if err := wr.emit(kindKey, append(b, k.Registration...)); err != nil {
			return nil, err
		}
		wr.keys.add(k.EncVersion)
	}
	return wr, nil
}

// Written returns the number of bytes written so far.
func (w *Writer) Written() int64 { return w.n }

// BeginVersion starts a version: v must be valid or invalid (never
// incomplete nor being removed), of the store's block size, with
// blocks_done equal to its number of blocks, and not yet in the stream.
func (w *Writer) BeginVersion(v *metastore.Version) error {
	if w.err != nil {
		return w.err
	}
	if v == nil {
		return errors.New("manifest: nil version")
	}
	if w.inVer {
		return fmt.Errorf("manifest: version %s begun before version %s ended", v.UID, w.v.uid)
	}
	payload, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("manifest: version %s: %w", v.UID, err)
	}
	if len(payload) > MaxFramePayload {
		return fmt.Errorf("manifest: version %s: %d bytes of JSON, the limit is %d", v.UID, len(payload), MaxFramePayload)
	}
	// Check what a reader will decode, not only v: JSON replaces invalid
	// UTF-8, which may lengthen a volume name past its limit.
	dec, err := parseVersion(payload, w.store.BlockSize)
	if err != nil {
		return fmt.Errorf("manifest: %v", err)
	}
	if _, dup := w.uids[dec.UID]; dup {
		return fmt.Errorf("manifest: version %s is already in the stream", dec.UID)
	}
	if err := w.emit(kindVersion, append(w.begin(), payload...)); err != nil {
		return err
	}
	w.uids[dec.UID] = struct{}{}
	w.count++
	w.inVer = true
	w.v = newVerState(dec)
	return nil
}

// Page writes the next page of the current version. ids are the page's
// entries (block.Sparse for a sparse block); recs[i] is the record of ids[i]
// (ignored for sparse entries; the same for every index of one id). Every
// page but the version's last holds blockmap.PageEntries entries.
func (w *Writer) Page(ids []block.ID, recs []block.Record) error {
	if w.err != nil {
		return w.err
	}
	if !w.inVer {
		return errors.New("manifest: page outside a version")
	}
	s := &w.v
	want := s.nextEntries()
	if want <= 0 {
		return fmt.Errorf("manifest: version %s: a page after all its %d blocks", s.uid, s.nblocks)
	}
	if len(ids) != want {
		return fmt.Errorf("manifest: version %s: page %d has %d entries, want %d (every page but the last is full)", s.uid, s.pages, len(ids), want)
	}
	if len(recs) != len(ids) {
		return fmt.Errorf("manifest: version %s: page %d has %d entries and %d records", s.uid, s.pages, len(ids), len(recs))
	}
	clear(w.first)
	w.order = w.order[:0]
	for i := range ids {
		id := ids[i]
		if id.IsSparse() {
			continue
		}
		r := &recs[i]
		if r.ID != id {
			return fmt.Errorf("manifest: version %s: page %d: entry %d is block %s, its record names %s", s.uid, s.pages, i, id.Short(), r.ID.Short())
		}
		if err := checkSize(r, s, s.entries+int64(i)); err != nil {
			return fmt.Errorf("manifest: version %s: page %d: %v", s.uid, s.pages, err)
		}
		if j, ok := w.first[id]; ok {
			if recs[j] != *r {
				return fmt.Errorf("manifest: version %s: page %d: block %s has differing records at entries %d and %d", s.uid, s.pages, id.Short(), j, i)
			}
			continue
		}
		if err := checkRecord(r, &w.keys); err != nil {
			return fmt.Errorf("manifest: version %s: page %d: %v", s.uid, s.pages, err)
		}
		w.first[id] = int32(i)
		w.order = append(w.order, int32(i))
	}
	b := append(w.begin(), blockmap.Encode(ids)...)
	for _, i := range w.order {
		b = appendRecord(b, &recs[i])
	}
	if err := w.emit(kindPage, b); err != nil {
		return err
	}
	s.pages++
	s.entries += int64(len(ids))
	return nil
}

// EndVersion ends the current version, which must have all its pages.
func (w *Writer) EndVersion() error {
	if w.err != nil {
		return w.err
	}
	if !w.inVer {
		return errors.New("manifest: EndVersion outside a version")
	}
	s := &w.v
	if s.entries != s.nblocks {
		return fmt.Errorf("manifest: version %s ends after %d of its %d blocks", s.uid, s.entries, s.nblocks)
	}
	b := binary.AppendUvarint(w.begin(), uint64(s.pages))
	b = binary.AppendUvarint(b, uint64(s.entries))
	if err := w.emit(kindEnd, b); err != nil {
		return err
	}
	w.inVer = false
	return nil
}

// Close writes the trailer (number of versions, BLAKE3-256 of everything
// before it). It does not close the underlying writer.
func (w *Writer) Close() error {
	if w.err != nil {
		return w.err
	}
	if w.inVer {
		return fmt.Errorf("manifest: Close before version %s ended", w.v.uid)
	}
	var sum [32]byte
	w.h.Sum(sum[:0])
	b := binary.AppendUvarint(w.begin(), w.count)
	if err := w.emit(kindTrailer, append(b, sum[:]...)); err != nil {
		return err
	}
	w.err = errClosed
	return nil
}

// begin returns the frame buffer with room for the header; the payload is
// appended to it.
func (w *Writer) begin() []byte { return w.buf[:hdrRoom] }

// emit writes the frame whose payload follows the header room of b.
func (w *Writer) emit(kind byte, b []byte) error {
	w.buf = b[:0] // keep what append grew
	n := len(b) - hdrRoom
	if n > MaxFramePayload {
		return fmt.Errorf("manifest: %s frame of %d bytes, the limit is %d", kindName(kind), n, MaxFramePayload)
	}
	var h [hdrRoom]byte
	h[0] = kind
	hl := 1 + len(binary.AppendUvarint(h[1:1], uint64(n)))
	start := hdrRoom - hl
	copy(b[start:], h[:hl])
	return w.write(b[start:])
}

func (w *Writer) write(p []byte) error {
	m, err := w.w.Write(p)
	if m > 0 {
		w.n += int64(min(m, len(p)))
	}
	if err == nil && m != len(p) {
		err = io.ErrShortWrite
	}
	if err != nil {
		w.err = fmt.Errorf("manifest: writing at byte %d: %w", w.n, err)
		return w.err
	}
	_, _ = w.h.Write(p)
	return nil
}
