package source

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// isBlockDevice reports whether m is the mode of a block device.
func isBlockDevice(m os.FileMode) bool {
	return m&os.ModeDevice != 0 && m&os.ModeCharDevice == 0
}

// usable reports whether m is the mode of a file backy can read or write
// as an image: a regular file or a block device. Everything else either
// has no size (a FIFO, a socket, a character device such as /dev/zero or a
// tty) or is no image at all (a directory).
func usable(m os.FileMode) bool { return m.IsRegular() || isBlockDevice(m) }

// DescribeMode names the kind of file of mode m for messages ("a
// directory").
func DescribeMode(m os.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&os.ModeNamedPipe != 0:
		return "a FIFO"
	case m&os.ModeSocket != 0:
		return "a socket"
	case m&os.ModeCharDevice != 0:
		return "a character device"
	case isBlockDevice(m):
		return "a block device"
	case m.IsRegular():
		return "a regular file"
	case m&os.ModeSymlink != 0:
		return "a symbolic link"
	}
	return "not a regular file"
}

// sourceAdvice adds why a file of mode m cannot be a source.
func sourceAdvice(m os.FileMode) string {
	switch {
	case m&os.ModeNamedPipe != 0, m&os.ModeSocket != 0:
		return " (backy reads a source at any offset and needs its size, which a stream has not; write the stream to a file first)"
	case m&os.ModeCharDevice != 0:
		return " (a character device such as /dev/zero or a tty has no size)"
	}
	return ""
}

// openNoBlock opens path with flag and O_NONBLOCK, so that open(2) never
// waits (for the writer of a FIFO, the carrier of a tty, ...), then makes
// the descriptor blocking again: reads and writes of regular files and
// block devices are unaffected either way.
func openNoBlock(path string, flag int) (*os.File, error) {
	var fd int
	var err error
	for {
		fd, err = unix.Open(path, flag|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "fcntl", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}

// badTarget returns the error for a restore target of mode m that is
// neither a regular file nor a block device.
func badTarget(path string, m os.FileMode) error {
	var what string
	switch {
	case m.IsDir():
		what = fmt.Sprintf("name the image file to create, e.g. %s", filepath.Join(path, "disk.img"))
	case m&os.ModeCharDevice != 0:
		what = "restore to a regular file or a block device (to check that a version restores, use 'backy deep-scrub VERSION')"
	default:
		what = "backy writes a restore at any offset: restore to a regular file or a block device"
	}
	return fmt.Errorf("%w %s: it is %s; %s", ErrBadTarget, path, DescribeMode(m), what)
}

// openExisting opens the existing restore target path (of mode m, from a
// Stat) for writing. A block device is opened exclusively (O_EXCL), so the
// kernel refuses one that is mounted or held and nobody can mount it while
// the restore runs; a busy device fails with ErrTargetBusy naming its users
// where the kernel tells them.
func openExisting(path string, m os.FileMode) (*os.File, bool, error) {
	if !usable(m) {
		return nil, false, badTarget(path, m)
	}
	dev := isBlockDevice(m)
	flag := os.O_WRONLY
	if dev {
		flag |= unix.O_EXCL
	}
	f, err := openNoBlock(path, flag)
	if err != nil {
		if dev && errors.Is(err, unix.EBUSY) {
			return nil, false, fmt.Errorf("%w: %s is %s; unmount it or stop what uses it, then retry",
				ErrTargetBusy, path, deviceUsers(path))
		}
		return nil, false, fmt.Errorf("opening target %s: %w", path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, false, fmt.Errorf("target %s: %w", path, err)
	}
	if isBlockDevice(st.Mode()) != dev || !usable(st.Mode()) { // replaced since the Stat
		f.Close()
		return nil, false, fmt.Errorf("%w %s: it changed while it was opened (now %s); retry", ErrBadTarget, path, DescribeMode(st.Mode()))
	}
	return f, dev, nil
}
