package nbd

import (
	"context"
	"errors"
	"io"
	"os"
	"syscall"
)

// Export is one open device served to one client connection.
//
// The server may call ReadAt, WriteAt, Zero, Trim, Flush and Extents
// concurrently (up to Options.Workers at once); it never calls them after
// Close. Offsets and lengths passed in are always within [0, Size()).
type Export interface {
	Size() int64
	// ReadAt fills p from offset off. An error is sent to the client as
	// NBD_EIO (or the errno an error maps to via Errno). ReadAt must not
	// retain p after it returns.
	ReadAt(ctx context.Context, p []byte, off int64) error
	// WriteAt, Zero (punch: the client allows a hole), Trim, Flush:
	// ErrReadOnly when the export is read-only (the server never calls
	// them then: it advertises NBD_FLAG_READ_ONLY and answers EPERM
	// itself). WriteAt must not retain p after it returns.
	WriteAt(ctx context.Context, p []byte, off int64) error
	Zero(ctx context.Context, off, length int64, punch bool) error
	Trim(ctx context.Context, off, length int64) error
	Flush(ctx context.Context) error
	// Extents describes [off, off+length) for base:allocation: a list of
	// extents covering at least part of the range from off, each with
	// Length > 0 and flags Hole/Zero. The server clips the list to the
	// requested range; an empty or malformed list is answered as one
	// allocated extent of unknown content (status 0), which the spec
	// always allows.
	Extents(ctx context.Context, off, length int64) ([]Extent, error)
	// Close is called once when the client disconnects (cleanly or not),
	// with the reason (nil for NBD_CMD_DISC).
	Close(reason error) error
}

// Extent is one run of the base:allocation metadata context.
type Extent struct {
	Length int64
	// Hole: not allocated in the backing store (NBD_STATE_HOLE).
	Hole bool
	// Zero: reads as all zeroes (NBD_STATE_ZERO).
	Zero bool
}

// ExportInfo describes an export.
type ExportInfo struct {
	Name, Description string
	Size              int64
	ReadOnly          bool
	// BlockSize is the preferred block size, e.g. 4 MiB; 0 = unknown.
	// It is advertised (rounded down to a power of two, at least 512 and
	// at most the maximum request size) in NBD_INFO_BLOCK_SIZE.
	BlockSize int64
}

// Exports is the set of exports a Server offers.
type Exports interface {
	List(ctx context.Context) ([]ExportInfo, error)
	// Info describes an export without opening it (NBD_OPT_INFO).
	// ErrUnknownExport for unknown names.
	Info(ctx context.Context, name string) (ExportInfo, error)
	// Open opens it for one connection (NBD_OPT_GO / EXPORT_NAME).
	Open(ctx context.Context, name string) (Export, ExportInfo, error)
}

var (
	// ErrReadOnly is returned by the write methods of a read-only export;
	// it is sent as NBD_EPERM.
	ErrReadOnly = errors.New("nbd: export is read-only")
	// ErrUnknownExport is returned by Exports.Info and Exports.Open for
	// names that do not exist; it is sent as NBD_REP_ERR_UNKNOWN.
	ErrUnknownExport = errors.New("nbd: unknown export")
	// ErrOutOfRange reports a request outside the export (NBD_EINVAL).
	ErrOutOfRange = errors.New("nbd: request out of range")
	// ErrNoSpace reports a write that cannot be stored (NBD_ENOSPC).
	ErrNoSpace = errors.New("nbd: no space left")
	// ErrNotSupported reports an unsupported operation (NBD_ENOTSUP).
	ErrNotSupported = errors.New("nbd: operation not supported")
)

// Error values of the transmission phase (proto.md, "Error values").
const (
	EPERM     uint32 = 1   // NBD_EPERM: operation not permitted
	EIO       uint32 = 5   // NBD_EIO: input/output error
	ENOMEM    uint32 = 12  // NBD_ENOMEM: cannot allocate memory
	EINVAL    uint32 = 22  // NBD_EINVAL: invalid argument
	ENOSPC    uint32 = 28  // NBD_ENOSPC: no space left on device
	EOVERFLOW uint32 = 75  // NBD_EOVERFLOW: value too large
	ENOTSUP   uint32 = 95  // NBD_ENOTSUP: operation not supported
	ESHUTDOWN uint32 = 108 // NBD_ESHUTDOWN: server is shutting down
)

// Errno maps an error to the NBD error value sent to the client: nil → 0,
// ErrReadOnly (and EPERM/EACCES/EROFS) → EPERM, ErrOutOfRange (and
// EINVAL) → EINVAL, ErrNoSpace (and ENOSPC/EDQUOT/EFBIG, as the spec asks)
// → ENOSPC, ErrNotSupported → ENOTSUP, context.Canceled (and ESHUTDOWN) →
// ESHUTDOWN, ENOMEM → ENOMEM, EOVERFLOW → EOVERFLOW, anything else
// (I/O errors, io.ErrUnexpectedEOF, deadline exceeded, …) → EIO.
func Errno(err error) uint32 {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, ErrReadOnly), errors.Is(err, os.ErrPermission):
		return EPERM
	case errors.Is(err, ErrOutOfRange):
		return EINVAL
	case errors.Is(err, ErrNoSpace):
		return ENOSPC
	case errors.Is(err, ErrNotSupported), errors.Is(err, errors.ErrUnsupported):
		return ENOTSUP
	case errors.Is(err, context.Canceled):
		return ESHUTDOWN
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return EIO
	}
	var en syscall.Errno
	if errors.As(err, &en) {
		switch en {
		case syscall.EPERM, syscall.EACCES, syscall.EROFS:
			return EPERM
		case syscall.ENOMEM:
			return ENOMEM
		case syscall.EINVAL:
			return EINVAL
		case syscall.ENOSPC, syscall.EDQUOT, syscall.EFBIG:
			return ENOSPC
		case syscall.EOVERFLOW:
			return EOVERFLOW
		case syscall.ESHUTDOWN:
			return ESHUTDOWN
		}
		// Distinct on some systems, equal on Linux.
		if en == syscall.ENOTSUP || en == syscall.EOPNOTSUPP {
			return ENOTSUP
		}
	}
	return EIO
}
