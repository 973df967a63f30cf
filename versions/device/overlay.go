package device

// Durable copy-on-write overlays (Options.Durable).
//
// A durable overlay is two files in Options.OverlayDir named after the
// session, NAME = "<version uid>-<session id>":
//
//	NAME.overlay  the data: sparse, the size of the device, each changed
//	              block's current content at its offset
//	NAME.map      the journal: the served version (uid, volume, size,
//	              block size), the session, and a bitmap of the changed
//	              blocks (docs/FORMAT.md, "NBD overlay journal")
//
// Flush (NBD_CMD_FLUSH, and every FUA write) makes the session durable:
// it takes the bitmap, fsyncs the data file, and, if a block has become
// dirty since the last flush, writes NAME.map.tmp, fsyncs it, renames it
// over NAME.map and fsyncs the directory. So after a crash the journal
// names exactly the blocks changed before the last acknowledged flush,
// and the data file holds their content as of that flush or later
// (writes after it may or may not be there, as NBD allows); blocks first
// changed after it are not named, and read as the version has them.
//
// The session holds an exclusive flock(2) on NAME.overlay while the device
// is open; the kernel drops it when the process dies. Orphans finds the
// overlays no process holds: a crashed session's, or one whose changes
// could not be saved. A device closed after Drop (its changes were saved
// as a new version, or are discarded) removes both files; one closed
// without Drop with changes keeps them, flushed first.
//
// DIR/.lock serialises the creation of overlays (shared) with Orphans
// (exclusive), so that Orphans never takes an overlay that is being
// created, before its session could lock it.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"maps"
	"math/bits"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/backy/backy/internal/atomicfile"
)

// ErrOverlay: a durable overlay's journal is damaged or does not match
// its data file or its version.
var ErrOverlay = errors.New("damaged nbd overlay")

// OverlayInfo describes a durable overlay (its journal's header).
type OverlayInfo struct {
	Session   string    `json:"session"`
	Version   string    `json:"version"`
	Volume    string    `json:"volume"`
	Size      int64     `json:"size"`
	BlockSize int64     `json:"block_size"`
	Created   time.Time `json:"created"`
	// Saved is when the journal was last written (the last flush that
	// changed it).
	Saved time.Time `json:"saved"`
	// Changed is the number of changed blocks the journal names.
	Changed int64 `json:"-"`
}

const (
	overlayExt    = ".overlay"
	mapExt        = ".map"
	mapTmpExt     = ".map.tmp"
	dirLockName   = ".lock"
	overlayMagic  = "BKYNBDOV"
	overlayFormat = 1
	// maxHeader bounds the journal's JSON header.
	maxHeader = 64 << 10
)

// durable is the state of a device's durable overlay.
type durable struct {
	dir, name string
	info      OverlayInfo
	// Under Device.fl: the dirty generation the journal on disk has.
	savedGen uint64
	// Under Device.wmu.
	dropped bool
}

func (u *durable) path(ext string) string { return filepath.Join(u.dir, u.name+ext) }

// OverlayPath is the journal of the device's durable overlay ("" if the
// overlay is not durable).
func (d *Device) OverlayPath() string {
	if d.dur == nil {
		return ""
	}
	return d.dur.path(mapExt)
}

// Session is the id of the device's durable overlay ("" if none).
func (d *Device) Session() string {
	if d.dur == nil {
		return ""
	}
	return d.dur.info.Session
}

// Drop says the changes are dealt with (saved as a new version, or to be
// discarded): Close removes the durable overlay instead of keeping it.
func (d *Device) Drop() {
	d.wmu.Lock()
	defer d.wmu.Unlock()
	if d.dur != nil {
		d.dur.dropped = true
	}
}

// lockDir takes DIR/.lock (exclusive or shared, waiting).
func lockDir(dir string, exclusive bool) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, dirLockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("locking the overlay directory: %w", err)
	}
	how := syscall.LOCK_SH
	if exclusive {
		how = syscall.LOCK_EX
	}
	if err := flock(f, how); err != nil {
		f.Close()
		return nil, fmt.Errorf("locking the overlay directory: %w", err)
	}
	return f, nil
}

func flock(f *os.File, how int) error {
	for {
		err := syscall.Flock(int(f.Fd()), how)
		if !errors.Is(err, syscall.EINTR) {
			return err
		}
	}
}

// createDurable creates and locks the durable overlay of a session on
// d.v, with an empty journal.
func (d *Device) createDurable(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating the copy-on-write overlay directory: %w", err)
	}
	dl, err := lockDir(dir, false)
	if err != nil {
		return err
	}
	defer dl.Close()
	var id [8]byte
	_, _ = rand.Read(id[:])
	now := d.o.Clock.Now().UTC().Truncate(time.Second)
	u := &durable{dir: dir, info: OverlayInfo{Session: hex.EncodeToString(id[:]), Version: d.v.UID, Volume: d.v.Volume,
		Size: d.v.Size, BlockSize: d.v.BlockSize, Created: now, Saved: now}}
	u.name = d.v.UID + "-" + u.info.Session
	f, err := os.OpenFile(u.path(overlayExt), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("creating the copy-on-write overlay: %w", err)
	}
	if err := flock(f, syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		os.Remove(u.path(overlayExt))
		return fmt.Errorf("locking the copy-on-write overlay: %w", err)
	}
	d.overlay, d.dur = f, u
	// As large as the device, all hole: a punched block past the last
	// write reads as zeros, not as the end of the file.
	if err := f.Truncate(d.v.Size); err != nil {
		return fmt.Errorf("sizing the copy-on-write overlay: %w", err)
	}
	if err := d.saveMap(make([]uint64, (d.n+63)/64)); err != nil {
		return err
	}
	return nil
}

// Flush makes the writes so far durable: with a durable overlay they
// survive a crash (see above); otherwise it syncs the scratch file, which
// a crash loses anyway.
func (d *Device) Flush(ctx context.Context) error {
	if d.overlay == nil {
		return nil
	}
	if d.dur == nil {
		return d.overlay.Sync()
	}
	d.fl.Lock()
	defer d.fl.Unlock()
	d.wmu.RLock()
	if d.closed {
		d.wmu.RUnlock()
		return os.ErrClosed
	}
	dirty, gen := slices.Clone(d.dirty), d.gen
	d.wmu.RUnlock()
	return d.flushDurable(dirty, gen)
}

// flushDurable syncs the data, then writes the journal of the blocks in
// dirty (taken before the sync) if it changed. The caller holds d.fl, or
// d.wmu exclusively (Close).
func (d *Device) flushDurable(dirty []uint64, gen uint64) error {
	if err := d.overlay.Sync(); err != nil {
		return fmt.Errorf("syncing the copy-on-write overlay: %w", err)
	}
	if gen == d.dur.savedGen {
		return nil
	}
	if err := d.saveMap(dirty); err != nil {
		return err
	}
	d.dur.savedGen = gen
	return nil
}

// saveMap writes the journal naming the blocks in dirty, atomically and
// durably.
func (d *Device) saveMap(dirty []uint64) error {
	u := d.dur
	u.info.Saved = d.o.Clock.Now().UTC().Truncate(time.Second)
	b, err := encodeMap(u.info, dirty, d.n)
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(u.path(mapExt), b, atomicfile.Options{Temp: u.path(mapTmpExt)}); err != nil {
		return fmt.Errorf("writing the copy-on-write journal: %w", err)
	}
	return nil
}

// removeDurable removes the overlay's files (journal first: a data file
// without a journal holds nothing to recover). The caller holds its lock.
func (u *durable) remove() error {
	var errs []error
	for _, ext := range []string{mapExt, mapTmpExt, overlayExt} {
		if err := os.Remove(u.path(ext)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := atomicfile.SyncDir(u.dir); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("removing the copy-on-write overlay %s: %w", u.path(overlayExt), errors.Join(errs...))
	}
	return nil
}

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// encodeMap encodes a journal: magic, format (2 bytes), 2 zero bytes,
// header length (4 bytes), the JSON header, the bitmap of the n blocks
// (block i is bit i%8 of byte i/8), and a CRC-32C of all before it; all
// integers big-endian.
func encodeMap(info OverlayInfo, dirty []uint64, n int64) ([]byte, error) {
	h, err := json.Marshal(info)
	if err != nil {
		return nil, err
	}
	nb := (n + 7) / 8
	b := make([]byte, 0, 16+len(h)+int(nb)+4)
	b = append(b, overlayMagic...)
	b = binary.BigEndian.AppendUint16(b, overlayFormat)
	b = binary.BigEndian.AppendUint16(b, 0)
	b = binary.BigEndian.AppendUint32(b, uint32(len(h)))
	b = append(b, h...)
	for i := int64(0); i < nb; i++ {
		b = append(b, byte(dirty[i/8]>>(8*(i%8))))
	}
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, crcTable)), nil
}

// decodeMap decodes a journal, checking it whole.
func decodeMap(b []byte) (OverlayInfo, []uint64, error) {
	var info OverlayInfo
	if len(b) < 20 || string(b[:8]) != overlayMagic {
		return info, nil, errors.New("not an nbd overlay journal")
	}
	if f := binary.BigEndian.Uint16(b[8:]); f != overlayFormat {
		return info, nil, fmt.Errorf("journal format %d, this backy knows %d (use the backy that wrote it)", f, overlayFormat)
	}
	if got, want := crc32.Checksum(b[:len(b)-4], crcTable), binary.BigEndian.Uint32(b[len(b)-4:]); got != want {
		return info, nil, errors.New("checksum mismatch")
	}
	hl := int64(binary.BigEndian.Uint32(b[12:]))
	if hl > maxHeader || 16+hl > int64(len(b))-4 {
		return info, nil, errors.New("header length out of range")
	}
	dec := json.NewDecoder(bytes.NewReader(b[16 : 16+hl]))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&info); err != nil {
		return info, nil, fmt.Errorf("header: %w", err)
	}
	if info.Size < 0 || info.BlockSize <= 0 || info.Version == "" || info.Session == "" {
		return info, nil, errors.New("header: missing or invalid fields")
	}
	n := (info.Size + info.BlockSize - 1) / info.BlockSize
	bm := b[16+hl : len(b)-4]
	if int64(len(bm)) != (n+7)/8 {
		return info, nil, fmt.Errorf("bitmap of %d bytes for %d blocks", len(bm), n)
	}
	dirty := make([]uint64, (n+63)/64)
	for i, c := range bm {
		dirty[i/8] |= uint64(c) << (8 * (i % 8))
	}
	// No bit beyond the last block.
	if r := n % 64; r != 0 && len(dirty) > 0 && dirty[len(dirty)-1]>>r != 0 {
		return info, nil, errors.New("bitmap names blocks beyond the end")
	}
	for _, w := range dirty {
		info.Changed += int64(bits.OnesCount64(w))
	}
	return info, dirty, nil
}

// Orphan is a durable overlay that no open device holds, locked for the
// caller: a crashed session's, or one whose changes could not be saved.
// Open it with OpenOrphan, or Close it (its files stay) or Remove it.
type Orphan struct {
	// Path is the journal's path.
	Path string
	Info OverlayInfo
	// Err, when set, says why the overlay cannot be recovered (a damaged
	// journal, a missing data file); its files are kept for the operator.
	Err error

	dir, name string
	f         *os.File
	dirty     []uint64
}

// Close releases the orphan; its files stay.
func (o *Orphan) Close() {
	if o.f != nil {
		o.f.Close()
		o.f = nil
	}
}

// Remove deletes the orphan's files and releases it.
func (o *Orphan) Remove() error {
	defer o.Close()
	return (&durable{dir: o.dir, name: o.name}).remove()
}

// Orphans returns the durable overlays in dir that no process holds,
// locked for the caller, oldest session first. On the way it removes the
// overlays that hold no flushed change (a session that crashed before its
// first flush with a change, or while it was being created or removed)
// and stray temporary journals. A missing dir holds none.
func Orphans(dir string) ([]*Orphan, error) {
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	dl, err := lockDir(dir, true)
	if err != nil {
		return nil, err
	}
	defer dl.Close()
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	type parts struct{ data, m, tmp bool }
	names := map[string]*parts{}
	for _, e := range ents {
		n := e.Name()
		var base string
		var set func(p *parts)
		switch {
		case strings.HasSuffix(n, mapTmpExt):
			base, set = strings.TrimSuffix(n, mapTmpExt), func(p *parts) { p.tmp = true }
		case strings.HasSuffix(n, mapExt):
			base, set = strings.TrimSuffix(n, mapExt), func(p *parts) { p.m = true }
		case strings.HasSuffix(n, overlayExt):
			base, set = strings.TrimSuffix(n, overlayExt), func(p *parts) { p.data = true }
		default:
			continue
		}
		if !e.Type().IsRegular() || base == "" || strings.HasPrefix(base, ".") {
			continue
		}
		if names[base] == nil {
			names[base] = &parts{}
		}
		set(names[base])
	}
	var out []*Orphan
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(names)) {
		p := names[name]
		o, err := takeOrphan(dir, name, p.data, p.m, p.tmp)
		if err != nil {
			errs = append(errs, err)
		}
		if o != nil {
			out = append(out, o)
		}
	}
	slices.SortStableFunc(out, func(a, b *Orphan) int { return a.Info.Created.Compare(b.Info.Created) })
	return out, errors.Join(errs...)
}

// Overlays returns the headers of the durable overlays in dir, held by a
// running session or not, without locking or changing anything (journals
// are replaced whole, so each reads consistently). A journal that cannot
// be read is skipped. A missing dir holds none. rm and enforce use it to
// keep a version that flushed writes wait on as their base.
func Overlays(dir string) ([]OverlayInfo, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []OverlayInfo
	for _, e := range ents {
		n := e.Name()
		if !strings.HasSuffix(n, mapExt) || strings.HasPrefix(n, ".") || !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			continue
		}
		if info, _, err := decodeMap(b); err == nil {
			out = append(out, info)
		}
	}
	return out, nil
}

// takeOrphan examines the overlay name of dir (which has its data file,
// journal and temporary journal as given) and returns it, locked, if it
// holds changes no process holds; nil if it is in use or held nothing.
func takeOrphan(dir, name string, data, m, tmp bool) (*Orphan, error) {
	u := &durable{dir: dir, name: name}
	o := &Orphan{Path: u.path(mapExt), dir: dir, name: name}
	if !data {
		if tmp {
			_ = os.Remove(u.path(mapTmpExt))
		}
		if !m {
			return nil, nil
		}
		o.Err = fmt.Errorf("%w: its data file %s is missing", ErrOverlay, u.path(overlayExt))
		if b, err := os.ReadFile(o.Path); err == nil {
			o.Info, _, _ = decodeMap(b)
		}
		return o, nil
	}
	f, err := os.OpenFile(u.path(overlayExt), os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("opening the nbd overlay: %w", err)
	}
	if err := flock(f, syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, nil // a live session's
		}
		return nil, fmt.Errorf("locking the nbd overlay %s: %w", u.path(overlayExt), err)
	}
	o.f = f
	// Still the file of that name (not removed by its owner meanwhile)?
	fi, err1 := f.Stat()
	pi, err2 := os.Stat(u.path(overlayExt))
	if err1 != nil || err2 != nil || !os.SameFile(fi, pi) {
		o.Close()
		return nil, nil
	}
	if tmp {
		_ = os.Remove(u.path(mapTmpExt))
	}
	if !m {
		// Never journalled: nothing was flushed.
		return nil, o.Remove()
	}
	b, err := os.ReadFile(o.Path)
	if err != nil {
		o.Close()
		return nil, fmt.Errorf("reading the nbd overlay journal: %w", err)
	}
	info, dirty, err := decodeMap(b)
	switch {
	case err != nil:
		o.Err = fmt.Errorf("%w: %s: %v", ErrOverlay, o.Path, err)
		return o, nil
	case info.Version+"-"+info.Session != name:
		o.Err = fmt.Errorf("%w: %s names session %s of version %s", ErrOverlay, o.Path, info.Session, info.Version)
		return o, nil
	case fi.Size() != info.Size:
		o.Err = fmt.Errorf("%w: its data file %s has %d bytes, the journal says %d", ErrOverlay, u.path(overlayExt), fi.Size(), info.Size)
		o.Info = info
		return o, nil
	case info.Changed == 0:
		return nil, o.Remove()
	}
	o.Info, o.dirty = info, dirty
	return o, nil
}
