package metastore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// A damaged database file.
//
// bbolt trusts its file: a truncated file, a scribbled page or a bad page
// id makes it panic (an assertion, a slice out of range) or read outside
// its memory map (a fault, fatal to a Go program unless the goroutine asked
// for a panic instead) inside a transaction, and bolt.Open fails with an
// error of its own. Every transaction of this package runs under guard,
// which turns those into one error, ErrDamaged, that names the file and
// what to do. A panic that does not come from bbolt (a bug in backy) is not
// hidden: it goes on.
//
// A panic leaves nothing half-done: bbolt's View and Update roll the
// transaction back when the function panics, and a write transaction
// writes nothing to the file before its commit, whose last step, the meta
// page, makes it visible (a commit cut short leaves the previous state).

// damaged returns the error for a damaged database file at path.
func damaged(path string, cause any) error {
	return &damageError{path: path, cause: fmt.Sprint(cause)}
}

type damageError struct {
	path  string
	cause string
}

func (e *damageError) Error() string {
	return fmt.Sprintf("%v: %s cannot be read (%s); recreate it from the data backend with 'backy rebuild-metastore' (the damaged file is kept aside)",
		ErrDamaged, e.path, e.cause)
}

func (e *damageError) Unwrap() error { return ErrDamaged }

// minFileSize is the smallest database bbolt writes: two meta pages, a
// freelist page and the root page (4 KiB pages).
const minFileSize = 4 * 4096

// openBolt opens the database file at path for one transaction. A file
// that is not there fails as os.Open does; one too short to be a database,
// or that bbolt rejects or panics on, fails with ErrDamaged. With create,
// a missing or empty file becomes a new database (Create only).
func openBolt(path string, readOnly, create bool, o *bolt.Options) (bdb *bolt.DB, err error) {
	switch {
	case create:
	case !readOnly:
		// Checked before bbolt sees the file: a writer's Open reads the
		// freelist and panics on a bad one, after it has locked and
		// mapped the file, and the mapping would keep the lock held
		// until this process ends.
		if err := precheck(path, true, o.Timeout); err != nil {
			return nil, err
		}
	default:
		// A reader's Open reads the meta pages only: checked once bbolt
		// holds the file (below). Too short a file it would try to
		// initialise.
		fi, err := os.Stat(path)
		if err != nil {
			return nil, fmt.Errorf("opening metastore: %w", err)
		}
		if fi.Size() < minFileSize {
			return nil, damaged(path, fmt.Sprintf("%d bytes long: truncated", fi.Size()))
		}
	}
	opts := *o
	opts.ReadOnly = readOnly
	var file *os.File
	opts.OpenFile = func(name string, flag int, perm os.FileMode) (*os.File, error) {
		if !create {
			flag &^= os.O_CREATE // never make a new database in place of a vanished one
		}
		f, err := os.OpenFile(name, flag, perm)
		file = f
		return f, err
	}
	defer func() {
		if r := recover(); r != nil {
			if !fromBolt(r) {
				panic(r)
			}
			if file != nil {
				_ = file.Close()
			}
			bdb, err = nil, damaged(path, r)
		}
	}()
	bdb, err = bolt.Open(path, 0o600, &opts)
	if err != nil {
		return nil, openError(path, err)
	}
	if readOnly && !create {
		// Under bbolt's shared lock: no commit is half written.
		if err := checkFile(file, false); err != nil {
			_ = bdb.Close()
			return nil, damaged(path, err)
		}
	}
	return bdb, nil
}

// precheck checks the database file at path with checkFile. It holds a
// shared lock on the file meanwhile, as a bbolt reader does (waiting up to
// timeout for a writer), so that it never sees a commit half written.
func precheck(path string, freelist bool, timeout time.Duration) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("opening metastore: %w", err)
	}
	defer f.Close()
	if err := flockShared(f, timeout); err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return fmt.Errorf("%w: %s is held by another process", ErrBusy, path)
		}
		return fmt.Errorf("opening metastore %s: %w", path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("opening metastore: %w", err)
	}
	if fi.Size() < minFileSize {
		return damaged(path, fmt.Sprintf("%d bytes long: truncated", fi.Size()))
	}
	if err := checkFile(f, freelist); err != nil {
		return damaged(path, err)
	}
	return nil
}

// flockShared takes a shared flock on f, polling as bbolt does, for at
// most timeout (0: wait as long as it takes), measured by a real-time
// timer.
func flockShared(f *os.File, timeout time.Duration) error {
	var expired <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		expired = t.C
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, syscall.EINTR):
			continue
		case !errors.Is(err, syscall.EWOULDBLOCK):
			return err
		}
		select {
		case <-expired:
			return berrors.ErrTimeout
		default:
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkFile checks the database file f as bbolt reads it (bbolt trusts
// the meta page: a file cut short faults when a page past its end is read,
// and a writer allocates pages from the freelist, which a scribble turns
// into absurd offsets), at the cost of a few small reads: the meta page bbolt uses (valid, newest transaction)
// must name a root and a freelist below its high water mark, and the file
// must hold every page up to that mark. With freelist, every page id the
// freelist lists must lie between the meta pages and the mark.
func checkFile(f *os.File, freelist bool) error {
	const (
		hdr     = 16 // page header: id, flags, count, overflow
		magic   = 0xED0CDAED
		version = 2
	)
	le := binary.LittleEndian
	type meta struct{ pageSize, root, freelist, hwm, txid uint64 }
	read := func(off int64) (meta, bool) {
		var b [hdr + 64]byte
		if _, err := f.ReadAt(b[:], off); err != nil {
			return meta{}, false
		}
		m := b[hdr:]
		h := fnv.New64a()
		h.Write(m[:56])
		if le.Uint32(m[0:]) != magic || le.Uint32(m[4:]) != version || le.Uint64(m[56:]) != h.Sum64() {
			return meta{}, false
		}
		return meta{uint64(le.Uint32(m[8:])), le.Uint64(m[16:]), le.Uint64(m[32:]), le.Uint64(m[40:]), le.Uint64(m[48:])}, true
	}
	m, ok := read(0)
	if ok {
		if m1, ok1 := read(int64(m.pageSize)); ok1 && m1.txid > m.txid {
			m = m1
		}
	} else {
		// bbolt found a valid one (Open succeeded): the second, at a
		// page size it guessed; try the usual ones.
		for _, try := range []uint64{4096, 8192, 16384, 65536, 1024, 2048} {
			if m1, ok1 := read(int64(try)); ok1 && m1.pageSize == try {
				m, ok = m1, true
				break
			}
		}
		if !ok {
			return errors.New("no valid meta page")
		}
	}
	const noFreelist = 0xffffffffffffffff
	ps := m.pageSize
	switch {
	case ps < 1024 || ps > 1<<24 || ps&(ps-1) != 0:
		return fmt.Errorf("the meta page gives a page size of %d", ps)
	case m.hwm < 4 || m.hwm > 1<<40:
		return fmt.Errorf("the meta page gives a high water mark of %d pages", m.hwm)
	case m.root < 2 || m.root >= m.hwm:
		return fmt.Errorf("the meta page names root page %d, the high water mark is %d", m.root, m.hwm)
	case m.freelist != noFreelist && (m.freelist < 2 || m.freelist >= m.hwm):
		return fmt.Errorf("the meta page names freelist page %d, the high water mark is %d", m.freelist, m.hwm)
	}
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if uint64(fi.Size()) < m.hwm*ps {
		return fmt.Errorf("%d bytes long, its pages need %d: truncated", fi.Size(), m.hwm*ps)
	}
	if !freelist || m.freelist == noFreelist {
		return nil
	}
	var h [hdr + 8]byte
	if _, err := f.ReadAt(h[:], int64(m.freelist*ps)); err != nil {
		return fmt.Errorf("reading the freelist page %d: %v", m.freelist, err)
	}
	flags, count, overflow := le.Uint16(h[8:]), uint64(le.Uint16(h[10:])), uint64(le.Uint32(h[12:]))
	if le.Uint64(h[0:]) != m.freelist || flags != 0x10 {
		return fmt.Errorf("page %d is not the freelist the meta page names", m.freelist)
	}
	first := uint64(0)
	if count == 0xFFFF {
		count, first = le.Uint64(h[hdr:]), 1
	}
	if m.freelist+overflow >= m.hwm || count > m.hwm || (first+count)*8 > (overflow+1)*ps-hdr {
		return fmt.Errorf("the freelist page %d claims %d entries in %d pages", m.freelist, count, overflow+1)
	}
	ids := make([]byte, count*8)
	if _, err := f.ReadAt(ids, int64(m.freelist*ps+hdr+first*8)); err != nil {
		return fmt.Errorf("reading the freelist: %v", err)
	}
	for i := 0; i < len(ids); i += 8 {
		if id := le.Uint64(ids[i:]); id < 2 || id >= m.hwm {
			return fmt.Errorf("the freelist lists page %d, the high water mark is %d", id, m.hwm)
		}
	}
	return nil
}

func openError(path string, err error) error {
	var errno syscall.Errno
	var pe *fs.PathError
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		return fmt.Errorf("%w: %s is held by another process", ErrBusy, path)
	case errors.As(err, &pe), errors.As(err, &errno):
		// The file system's answer (permission, I/O error, no memory
		// for the map): not the file's content.
		return fmt.Errorf("opening metastore %s: %w", path, err)
	}
	// Bad meta pages (invalid, checksum, version), "file size too small",
	// an invalid mapping: the file is not a database bbolt can read.
	return damaged(path, err)
}

// guard runs fn, a transaction on the database file at path, turning a
// panic of bbolt (or a fault reading its memory map) into ErrDamaged. Once
// the file was found damaged, db fails every later transaction at once.
func (db *DB) guard(fn func() error) (err error) {
	if err := db.damage.Load(); err != nil {
		return *err
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			if !fromBolt(r) {
				panic(r)
			}
			err = damaged(db.path, r)
		}
		var de *damageError
		var ce *corruptError
		switch {
		case errors.As(err, &de):
			db.damage.CompareAndSwap(nil, &err)
		case errors.Is(err, ErrCorrupt) && !errors.As(err, &ce):
			err = &corruptError{path: db.path, err: err}
		}
	}()
	return fn()
}

// Guard runs fn, which uses bbolt directly on the metastore file at path
// (the schema migrations do), as this package runs its own transactions:
// a panic of bbolt or a fault reading its memory map becomes an error
// wrapping ErrDamaged that names path and what to do.
func Guard(path string, fn func() error) error {
	db := &DB{path: path}
	return db.guard(fn)
}

// fromBolt reports whether the recovered panic r comes from reading a
// damaged database: a memory fault (a page id beyond the file), or a panic
// raised in bbolt's own code (its assertions, its slices).
func fromBolt(r any) bool {
	if re, ok := r.(runtime.Error); ok {
		if _, fault := re.(interface{ Addr() uintptr }); fault {
			return true
		}
	}
	pcs := make([]uintptr, 64)
	n := runtime.Callers(1, pcs)
	frames := runtime.CallersFrames(pcs[:n])
	panicking := false
	for {
		f, more := frames.Next()
		switch {
		case !panicking:
			panicking = f.Function == "runtime.gopanic"
		case strings.HasPrefix(f.Function, "runtime."):
			// runtime.panicIndex, runtime.sigpanic, ...: the origin is below.
		default:
			return strings.HasPrefix(f.Function, "go.etcd.io/bbolt")
		}
		if !more {
			return false
		}
	}
}
