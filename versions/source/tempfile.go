package source

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// Temporary files beside a new file.
//
// A new file (a restore target, an export) is written under a hidden
// temporary name in its directory, ".<name>.<kind>-<12 hex digits>", and
// renamed into place when complete. Its writer holds an flock(2) lock on
// the temporary file from before it writes anything until the file is
// renamed or removed, and the kernel drops the lock when the writer dies.
// So a temporary file of that pattern that nobody holds locked is what a
// killed writer left, and RemoveStaleTemps removes it; one a live writer
// holds is never touched.

// ErrNoTargetDir: the directory a new file is to be made in does not
// exist (or is not a directory).
var ErrNoTargetDir = errors.New("target directory not found")

// CheckDir fails with ErrNoTargetDir, naming it, when the directory of
// path does not exist or is not a directory; what is the kind of file
// ("restore target", "export file").
func CheckDir(path, what string) error {
	dir := filepath.Dir(path)
	fi, err := os.Stat(dir)
	switch {
	case err == nil && !fi.IsDir():
		return fmt.Errorf("%w: %s %s: %s is not a directory", ErrNoTargetDir, what, path, dir)
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
		return fmt.Errorf("%w: %s %s: the directory %s does not exist (create it first)", ErrNoTargetDir, what, path, dir)
	case err != nil:
		return fmt.Errorf("%s %s: %w", what, path, err)
	}
	return nil
}

func tempPrefix(path, kind string) string {
	return filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+"."+kind+"-")
}

// isTempName reports whether name (a path) is a temporary name of kind for
// path: the prefix and 12 lower-case hex digits.
func isTempName(path, kind, name string) bool {
	rest, ok := strings.CutPrefix(name, tempPrefix(path, kind))
	if !ok || len(rest) != 12 {
		return false
	}
	for _, c := range rest {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// CreateTemp creates a new temporary file of kind (such as
// "backy-restore") for a new file at path, in path's directory, and
// returns it open for reading and writing, locked for as long as it is
// open. The caller renames it into place while it is still open, or
// removes it, and closes it after.
func CreateTemp(path, kind string, perm os.FileMode) (*os.File, error) {
	for range 16 {
		var rnd [6]byte
		_, _ = rand.Read(rnd[:])
		name := tempPrefix(path, kind) + hex.EncodeToString(rnd[:])
		f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, perm)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		ok, err := lockStill(f, name)
		if err != nil {
			f.Close()
			_ = os.Remove(name)
			return nil, err
		}
		if ok {
			return f, nil
		}
		// A RemoveStaleTemps took it for debris in the instant between
		// the create and the lock: it removes it. Another name.
		f.Close()
	}
	return nil, fmt.Errorf("creating a temporary file beside %s: no free name", path)
}

// lockStill locks f exclusively without waiting and reports whether it got
// the lock and name still names f.
func lockStill(f *os.File, name string) (bool, error) {
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("locking %s: %w", name, err)
		}
		break
	}
	have, err := f.Stat()
	if err != nil {
		return false, err
	}
	now, err := os.Lstat(name)
	if err != nil || !os.SameFile(have, now) {
		return false, nil
	}
	return true, nil
}

// StaleTemp is a temporary file a killed writer left.
type StaleTemp struct {
	Path string
	Size int64
}

// RemoveStaleTemps removes the temporary files of kind for path (see
// CreateTemp) that no live writer holds, and returns them. It keeps going
// after an error and returns the first one.
func RemoveStaleTemps(path, kind string) ([]StaleTemp, error) {
	dir := filepath.Dir(path)
	entries, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	var out []StaleTemp
	var first error
	for _, e := range entries {
		name := filepath.Join(dir, e.Name())
		if !e.Type().IsRegular() || !isTempName(path, kind, name) {
			continue
		}
		st, err := removeIfStale(name)
		if err != nil && first == nil {
			first = err
		}
		if st != nil {
			out = append(out, *st)
		}
	}
	return out, first
}

// removeIfStale removes the temporary file name if no writer holds it.
func removeIfStale(name string) (*StaleTemp, error) {
	f, err := os.Open(name)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil // renamed or removed by its writer meanwhile
		}
		return nil, err
	}
	defer f.Close()
	ok, err := lockStill(f, name)
	if err != nil || !ok {
		return nil, err // a live writer's
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	// Removed while the lock is held: a writer creating this name now
	// fails to lock it and takes another.
	if err := os.Remove(name); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	return &StaleTemp{Path: name, Size: fi.Size()}, nil
}
