package metastore

import (
	"errors"
	"fmt"
	"strings"

	"github.com/backy/backy/internal/block"
)

// Sentinel errors. Callers test them with errors.Is.
var (
	// ErrNoStore: no metastore exists at the path.
	ErrNoStore = errors.New("no backy store")
	// ErrExists: Create found a metastore already there.
	ErrExists = errors.New("store already exists")
	// ErrNewerSchema: the database was written by a newer backy.
	ErrNewerSchema = errors.New("metastore schema is newer than this backy supports")
	// ErrOlderSchema: the database needs a schema migration (package migrate).
	ErrOlderSchema = errors.New("metastore schema is older than this backy uses")
	// ErrNotBacky: the file is not a backy metastore.
	ErrNotBacky = errors.New("not a backy metastore")
	// ErrVersionNotFound: no version has the uid.
	ErrVersionNotFound = errors.New("version not found")
	// ErrLocked: another process holds a conflicting lock.
	ErrLocked = errors.New("locked by another backy process")
	// ErrBusy: the database stayed locked by another process too long.
	ErrBusy = errors.New("metastore busy")
	// ErrCorrupt: the database holds an inconsistent or undecodable entry.
	ErrCorrupt = errors.New("metastore corrupt")
	// ErrDamaged: the database file cannot be read at all (truncated, bad
	// meta pages, damaged pages): rebuild-metastore recreates it. Unlike
	// ErrCorrupt it says nothing of one version or block.
	ErrDamaged = errors.New("metastore damaged")
)

// corruptError names the metastore file of an ErrCorrupt found in one of
// its transactions, and what to do.
type corruptError struct {
	path string
	err  error
}

func (e *corruptError) Error() string {
	return fmt.Sprintf("%v (metastore %s; if it is damaged, 'backy rebuild-metastore' recreates it from the data backend)", e.err, e.path)
}

func (e *corruptError) Unwrap() error { return e.err }

// MissingBlocksError is returned by Commit when blocks the writer
// deduplicated against have been removed since it looked them up (by a
// concurrent cleanup). The writer must store them again and retry; nothing
// of the commit was applied.
type MissingBlocksError struct {
	IDs []block.ID
}

func (e *MissingBlocksError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d deduplicated block(s) no longer stored", len(e.IDs))
	for i, id := range e.IDs {
		if i == 3 {
			b.WriteString(", ...")
			break
		}
		b.WriteString(", ")
		b.WriteString(id.Short())
	}
	return b.String()
}
