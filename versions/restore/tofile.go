package restore

import (
	"context"
	"errors"
	"fmt"

	"github.com/backy/backy/metastore"
	"github.com/backy/backy/versions"
	"github.com/backy/backy/versions/source"
)

// ToFile restores version uid to target (a path or file:// URL, see
// source.CreateTarget) the whole way: it read-locks the version so that it
// cannot be removed meanwhile, refuses an incomplete or invalid version
// unless o.Force, creates the target (an existing one only with o.Force),
// runs the restore, and commits the target — also after a forced restore
// with bad blocks, whose Result lists them and whose error wraps
// ErrBadBlocks — or aborts it, so that a failed restore to a new file
// leaves nothing behind.
func ToFile(ctx context.Context, st BlockStore, db *metastore.DB, uid, target string, o Options) (*Result, error) {
	lk, err := db.LockVersion(uid, metastore.Shared)
	if err != nil {
		return nil, err
	}
	defer lk.Unlock()
	v, err := db.Version(uid) // as it is now that we hold the lock
	if err != nil {
		return nil, err
	}
	if v.Status != metastore.StatusValid && !o.Force {
		return nil, fmt.Errorf("%w: version %s is %s; use --force to restore what it holds (unrestorable blocks become zeros and are listed)",
			ErrNotRestorable, uid, v.Status)
	}
	if kc, ok := st.(KeyChecker); ok {
		// Before the target is created: a missing key must not leave a
		// half-written (or even an empty) file behind.
		if err := versions.CheckKeys(db, v.UID, kc.CanOpen); err != nil {
			return nil, err
		}
	}
	tgt, err := source.CreateTarget(target, v.Size, o.Force)
	if err != nil {
		return nil, err
	}
	if o.Logger != nil {
		for _, st := range tgt.Stale {
			o.Logger.Warn("removed a temporary file that an interrupted restore to the same target left", "file", st.Path, "bytes", st.Size)
		}
		if tgt.StaleErr != nil {
			o.Logger.Warn("could not remove the temporary files of interrupted restores to the same target", "err", tgt.StaleErr)
		}
	}
	res, err := run(ctx, st, db, v, tgt, o) // keys checked above
	if err != nil && !(o.Force && errors.Is(err, ErrBadBlocks)) {
		tgt.Abort()
		return res, err
	}
	if cerr := tgt.Commit(); cerr != nil {
		return res, cerr
	}
	return res, err
}
