package source

import (
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Errors, tested with errors.Is.
var (
	// ErrNotFound: the source does not exist.
	ErrNotFound = errors.New("source not found")
	// ErrUnsupported: the path is neither a regular file nor a block device,
	// or the URL scheme is not supported.
	ErrUnsupported = errors.New("unsupported source")
	// ErrTargetExists: the restore target exists and --force was not given.
	ErrTargetExists = errors.New("target exists")
	// ErrTargetTooSmall: the existing target is smaller than the version.
	ErrTargetTooSmall = errors.New("target too small")
	// ErrBadTarget: the restore target is neither a regular file nor a
	// block device (a directory, a FIFO, a character device, ...).
	ErrBadTarget = errors.New("unusable restore target")
	// ErrTargetBusy: the restore target is a block device in use (mounted,
	// held by device-mapper, md or swap, or opened exclusively).
	ErrTargetBusy = errors.New("restore target in use")
)

// Source is a readable image of known size.
type Source interface {
	io.ReaderAt
	// Size is the image size in bytes, fixed while the source is open.
	Size() int64
	// Name describes the source in messages.
	Name() string
	Close() error
}

// HoleFinder is implemented by sources that can tell holes from data.
type HoleFinder interface {
	// IsHole reports whether [off, off+n) is entirely a hole (reads as
	// zeros without being stored). A false answer is always safe.
	IsHole(off, n int64) bool
}

// PathFromSpec turns a source or target argument (a path or a file:// URL)
// into a path.
func PathFromSpec(spec string) (string, error) {
	if !strings.Contains(spec, "://") {
		return spec, nil
	}
	u, err := url.Parse(spec)
	if err != nil {
		return "", fmt.Errorf("%w: %q is not a valid URL: %v", ErrUnsupported, spec, err)
	}
	if u.Scheme != "file" {
		return "", fmt.Errorf("%w: %q: only file:// URLs and plain paths are supported", ErrUnsupported, spec)
	}
	if u.Host != "" && u.Host != "localhost" {
		return "", fmt.Errorf("%w: %q: file:// URLs must name a local path (file:///path)", ErrUnsupported, spec)
	}
	if u.Path == "" {
		return "", fmt.Errorf("%w: %q has no path", ErrUnsupported, spec)
	}
	return u.Path, nil
}

// File is a Source backed by a regular file or a block device.
type File struct {
	f        *os.File
	name     string
	size     int64
	isDev    bool
	nextData int64 // cached SEEK_DATA answer: no data in [lastAsk, nextData)
	lastAsk  int64
}

// Open opens a source given as a path or a file:// URL.
func Open(spec string) (*File, error) {
	path, err := PathFromSpec(spec)
	if err != nil {
		return nil, err
	}
	// The type first: open(2) of a FIFO would wait for a writer.
	st, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s", ErrNotFound, path)
		}
		return nil, fmt.Errorf("source %s: %w", path, err)
	}
	if !usable(st.Mode()) {
		return nil, fmt.Errorf("%w: source %s is %s: give an image file or a block device%s", ErrUnsupported, path, DescribeMode(st.Mode()), sourceAdvice(st.Mode()))
	}
	f, err := openNoBlock(path, os.O_RDONLY)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s", ErrNotFound, path)
		}
		return nil, fmt.Errorf("opening source %s: %w", path, err)
	}
	if st, err = f.Stat(); err != nil {
		f.Close()
		return nil, fmt.Errorf("source %s: %w", path, err)
	}
	s := &File{f: f, name: path, nextData: -1, lastAsk: -1}
	switch {
	case st.Mode().IsRegular():
		s.size = st.Size()
	case isBlockDevice(st.Mode()):
		s.isDev = true
		end, err := f.Seek(0, io.SeekEnd)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("source %s: size of block device: %w", path, err)
		}
		s.size = end
	default: // replaced since the Stat above
		f.Close()
		return nil, fmt.Errorf("%w: source %s is %s: give an image file or a block device", ErrUnsupported, path, DescribeMode(st.Mode()))
	}
	// We read every byte once, front to back.
	_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_SEQUENTIAL)
	return s, nil
}

// ReadAt reads len(p) bytes at off; short reads are errors except at the end.
func (s *File) ReadAt(p []byte, off int64) (int, error) {
	n, err := s.f.ReadAt(p, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return n, fmt.Errorf("reading source %s at %d: %w", s.name, off, err)
	}
	return n, err
}

func (s *File) Size() int64  { return s.size }
func (s *File) Name() string { return s.name }
func (s *File) Close() error { return s.f.Close() }

// Prefetcher is implemented by sources that can start reading ahead.
type Prefetcher interface {
	// Prefetch asks for [off, off+n) to be read in the background, so that
	// a later ReadAt of it does not wait for the device.
	Prefetch(off, n int64)
}

// Prefetch starts an asynchronous read of [off, off+n) into the page cache
// (posix_fadvise WILLNEED), so the device works while backy hashes.
func (s *File) Prefetch(off, n int64) {
	if n > 0 {
		_ = unix.Fadvise(int(s.f.Fd()), off, n, unix.FADV_WILLNEED)
	}
}

// IsHole reports whether [off, off+n) of a regular file is a hole. It is
// meant for in-order calls: one lseek(SEEK_DATA) answers for every block up
// to the next data.
func (s *File) IsHole(off, n int64) bool {
	if s.isDev || n <= 0 {
		return false
	}
	if s.lastAsk >= 0 && off >= s.lastAsk && s.nextData >= 0 {
		if off+n <= s.nextData {
			return true
		}
		if off < s.nextData {
			return false
		}
	}
	d, err := unix.Seek(int(s.f.Fd()), off, unix.SEEK_DATA)
	if err != nil {
		if errors.Is(err, syscall.ENXIO) { // no data from off to the end
			s.lastAsk, s.nextData = off, s.size
			return off+n <= s.size
		}
		return false
	}
	s.lastAsk, s.nextData = off, d
	return d >= off+n
}

// State is what can tell cheaply that a source was modified: its size
// and, for a regular file, its modification and status change times. The
// times of a block device are those of its device node and say nothing.
type State struct {
	Size         int64
	Mtime, Ctime time.Time
	HasTimes     bool
}

// Changes describes how later differs from s ("its size changed from 1
// to 2 bytes; it was modified (mtime ...)"), "" if it does not.
func (s State) Changes(later State) string {
	var out []string
	if s.Size != later.Size {
		out = append(out, fmt.Sprintf("its size changed from %d to %d bytes", s.Size, later.Size))
	}
	if s.HasTimes && later.HasTimes {
		switch {
		case !s.Mtime.Equal(later.Mtime):
			out = append(out, fmt.Sprintf("it was modified (mtime %s, was %s)", later.Mtime.UTC().Format(time.RFC3339Nano), s.Mtime.UTC().Format(time.RFC3339Nano)))
		case !s.Ctime.Equal(later.Ctime):
			out = append(out, fmt.Sprintf("its inode changed (ctime %s, was %s)", later.Ctime.UTC().Format(time.RFC3339Nano), s.Ctime.UTC().Format(time.RFC3339Nano)))
		}
	}
	return strings.Join(out, "; ")
}

// Stater is implemented by sources that can report their State.
type Stater interface {
	State() (State, error)
}

// State reports the source's current size and, for a regular file, its
// modification and status change times (fstat), so that a backup can tell
// a source written while it was read.
func (s *File) State() (State, error) {
	if s.isDev {
		end, err := s.f.Seek(0, io.SeekEnd)
		if err != nil {
			return State{}, fmt.Errorf("source %s: size of block device: %w", s.name, err)
		}
		return State{Size: end}, nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(s.f.Fd()), &st); err != nil {
		return State{}, fmt.Errorf("source %s: %w", s.name, err)
	}
	return State{
		Size:     st.Size,
		Mtime:    time.Unix(st.Mtim.Unix()),
		Ctime:    time.Unix(st.Ctim.Unix()),
		HasTimes: true,
	}, nil
}
