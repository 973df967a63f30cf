package source

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"

	"github.com/backy/backy/internal/atomicfile"
)

// Target is where a restore writes. Create it with CreateTarget; finish
// with Commit, or Abort on failure.
type Target struct {
	f     *os.File
	path  string // final path
	tmp   string // temporary path of a new file, "" when writing in place
	isDev bool
	// Existing is true when the restore overwrites an existing file or
	// device (with --force), false for a new file.
	Existing   bool
	punchFails bool
	// Stale lists the temporary files that killed restores to the same
	// target left, which CreateTarget removed.
	Stale []StaleTemp
	// StaleErr is why one of them could not be removed.
	StaleErr error
}

// TempKind names a restore's temporary files: ".<target>.backy-restore-<hex>".
const TempKind = "backy-restore"

// CreateTarget prepares a restore of size bytes to spec (a path or file://
// URL). A new file is created under a temporary name beside it, already
// size bytes long and entirely a hole, locked while the restore writes it
// (see CreateTemp); the temporary files that killed restores to the same
// target left are removed first (Target.Stale). An existing file or block
// device is used only with force, and must be at least size bytes; a block
// device is opened exclusively and refused (ErrTargetBusy) when it is in
// use. Any other existing file (a directory, a FIFO, a character device) is
// refused with ErrBadTarget. A target whose directory does not exist fails
// with ErrNoTargetDir.
func CreateTarget(spec string, size int64, force bool) (*Target, error) {
	path, err := PathFromSpec(spec)
	if err != nil {
		return nil, err
	}
	if err := CheckDir(path, "restore target"); err != nil {
		return nil, err
	}
	st, err := os.Stat(path)
	var stale []StaleTemp
	var staleErr error
	if err != nil || st.Mode().IsRegular() {
		stale, staleErr = RemoveStaleTemps(path, TempKind)
	}
	switch {
	case err == nil:
		if !usable(st.Mode()) {
			return nil, badTarget(path, st.Mode())
		}
		if !force {
			return nil, fmt.Errorf("%w: %s (use --force to overwrite it)", ErrTargetExists, path)
		}
		f, isDev, err := openExisting(path, st.Mode())
		if err != nil {
			return nil, err
		}
		have := st.Size()
		if isDev {
			if have, err = f.Seek(0, io.SeekEnd); err != nil {
				f.Close()
				return nil, fmt.Errorf("target %s: size of block device: %w", path, err)
			}
		}
		if have < size {
			f.Close()
			return nil, fmt.Errorf("%w: %s has %d bytes, the version needs %d", ErrTargetTooSmall, path, have, size)
		}
		return &Target{f: f, path: path, isDev: isDev, Existing: true, Stale: stale, StaleErr: staleErr}, nil
	case !errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("target %s: %w", path, err)
	}
	f, err := CreateTemp(path, TempKind, 0o600)
	if err != nil {
		return nil, fmt.Errorf("creating target %s: %w", path, err)
	}
	tmp := f.Name()
	if err := f.Truncate(size); err != nil {
		os.Remove(tmp)
		f.Close()
		return nil, fmt.Errorf("sizing target %s: %w", path, err)
	}
	return &Target{f: f, path: path, tmp: tmp, Stale: stale, StaleErr: staleErr}, nil
}

// Path is the final path of the target.
func (t *Target) Path() string { return t.path }

// WriteAt writes p at off, and starts writing it back to the device at
// once (sync_file_range), so that the final fsync of Commit has little
// left to do instead of flushing the whole image in one go.
func (t *Target) WriteAt(p []byte, off int64) (int, error) {
	n, err := t.f.WriteAt(p, off)
	if err != nil {
		return n, fmt.Errorf("writing target %s at %d: %w", t.path, off, err)
	}
	_ = unix.SyncFileRange(int(t.f.Fd()), off, int64(n), unix.SYNC_FILE_RANGE_WRITE)
	return n, nil
}

// Zero makes [off, off+n) read as zeros. With sparse it punches a hole
// (discards, on a device) where it can; otherwise, and where punching is
// not supported, it writes zeros. On a new file with sparse there is
// nothing to do: the file was created as one hole.
func (t *Target) Zero(off, n int64, sparse bool, zeros []byte) error {
	if sparse {
		if !t.Existing {
			return nil
		}
		if !t.punchFails {
			err := unix.Fallocate(int(t.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
			if err == nil {
				return nil
			}
			if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EINVAL) {
				return fmt.Errorf("punching hole in %s at %d: %w", t.path, off, err)
			}
			t.punchFails = true
		}
	}
	for n > 0 {
		c := min(n, int64(len(zeros)))
		if _, err := t.WriteAt(zeros[:c], off); err != nil {
			return err
		}
		off += c
		n -= c
	}
	return nil
}

// Commit makes the restored data durable and, for a new file, moves it to
// its final name (refusing to replace a file that appeared meanwhile).
func (t *Target) Commit() error {
	if t.tmp == "" {
		// An existing file or device, written in place.
		if err := t.f.Sync(); err != nil {
			t.Abort()
			return fmt.Errorf("syncing target %s: %w", t.path, err)
		}
		err := t.f.Close()
		t.f = nil
		if err != nil {
			return fmt.Errorf("closing target %s: %w", t.path, err)
		}
		return nil
	}
	// Renamed while open (Locked): the lock that marks it a live
	// restore's is held until it has its final name.
	err := atomicfile.Commit(context.Background(), t.f, t.path, atomicfile.Options{NoReplace: true, Locked: true})
	t.f, t.tmp = nil, ""
	switch {
	case errors.Is(err, fs.ErrExist):
		return fmt.Errorf("%w: %s appeared during the restore", ErrTargetExists, t.path)
	case err != nil:
		return fmt.Errorf("putting the restored file in place at %s: %w", t.path, err)
	}
	return nil
}

// Abort gives up: a new file is removed; an existing target is left as it
// is (partly overwritten) and closed.
func (t *Target) Abort() {
	if t.tmp != "" { // removed while still locked
		os.Remove(t.tmp)
		t.tmp = ""
	}
	if t.f != nil {
		t.f.Close()
		t.f = nil
	}
}
