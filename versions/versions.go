// Package versions holds the operations on versions that need only the
// metastore: listing, removal, protection and labels. The engines that move
// data live in the sub-packages backup and restore; sources and targets in
// source; change hints in hints.
package versions

import (
	"errors"
	"fmt"
	"time"

	"github.com/backy/backy/internal/clock"
	"github.com/backy/backy/metastore"
)

// Errors, tested with errors.Is.
var (
	// ErrProtected: the version is protected.
	ErrProtected = errors.New("version is protected")
	// ErrTooYoung: the version is younger than the configured minimum age
	// for removal.
	ErrTooYoung = errors.New("version is too young to remove")
)

// List returns the versions of volume (all when volume is ""), oldest first.
func List(db *metastore.DB, volume string) ([]*metastore.Version, error) {
	return db.Versions(func(v *metastore.Version) bool { return volume == "" || v.Volume == volume })
}

// RemoveOptions guard removal.
type RemoveOptions struct {
	// Force removes versions younger than MinAge.
	Force bool
	// MinAge is disallow_rm_when_younger_than_days as a duration.
	MinAge time.Duration
	// Now is the time the age is measured at; when zero, Clock.Now().
	Now time.Time
	// Clock gives Now when it is zero; clock.System when nil.
	Clock clock.Clock
	// Check, when set, is called with the stored version under its
	// exclusive lock, after the protection and age checks; an error
	// refuses the removal (retention uses it to re-check its decision).
	Check func(*metastore.Version) error
	// BeforeRemove, when set, runs under the version's exclusive lock
	// after every check, before the metastore forgets the version: the
	// CLI deletes the version's metadata from the data backend there, so
	// that it cannot come back with a rebuild. An error keeps the version.
	BeforeRemove func(*metastore.Version) error
}

// Remove deletes a version from the metastore. Its blocks become
// unreferenced when no other version uses them, and cleanup deletes them
// from the backend. Protected versions are always refused (unprotect them
// first); versions younger than MinAge are refused unless Force. A version
// in use (being backed up, restored or used as a base) is refused with an
// error wrapping metastore.ErrLocked.
func Remove(db *metastore.DB, uid string, o RemoveOptions) error {
	lk, err := db.LockVersion(uid, metastore.Exclusive)
	if err != nil {
		return err
	}
	defer lk.Unlock()
	v, err := db.Version(uid)
	if err != nil {
		return err
	}
	if v.Protected {
		return fmt.Errorf("%w: %s (run 'backy unprotect %s' first)", ErrProtected, uid, uid)
	}
	if !o.Force && o.MinAge > 0 && !v.Removing && v.Status != metastore.StatusIncomplete {
		now := o.Now
		if now.IsZero() {
			now = clock.Or(o.Clock).Now()
		}
		if age := now.Sub(v.Date); age < o.MinAge {
			return fmt.Errorf("%w: %s is %s old, the minimum is %s (disallow_rm_when_younger_than_days); use --force to remove it anyway",
				ErrTooYoung, uid, FormatDuration(age), FormatDuration(o.MinAge))
		}
	}
	if o.Check != nil {
		if err := o.Check(v); err != nil {
			return err
		}
	}
	if o.BeforeRemove != nil {
		// Marked first: a kill or a failure after BeforeRemove began never
		// leaves a complete version whose other copies are gone, and the
		// next rm, enforce or cleanup finishes the removal.
		if err := db.BeginRemoval(uid); err != nil {
			return err
		}
		if err := o.BeforeRemove(v); err != nil {
			return fmt.Errorf("%w (the removal of %s has begun: 'backy rm %s', 'backy enforce' or 'backy cleanup' finishes it)", err, uid, uid)
		}
	}
	return db.RemoveVersion(uid)
}

// FinishRemovals finishes the removals that processes which died left
// behind: versions marked "removing" (metastore.DB.RemoveVersion marks a
// version so in its first transaction) that no process holds locked. A
// remover holds the version's exclusive lock from before it marks the
// version until the version is gone, and the lock is an flock, which dies
// with its process: a removing version nobody holds is one whose remover
// died. keep selects the versions to look at (nil: all). before, when set,
// runs under the lock first, as RemoveOptions.BeforeRemove does (the CLI
// deletes the version's metadata from the data backend there, which the
// dead remover may have left half deleted); an error keeps the version for
// a later run. Protection and age are not looked at: the removal was
// decided, and half of the version's map may be gone already.
//
// It returns the versions it removed (as they were before) and the uids of
// removing versions that another process holds (a removal still running).
func FinishRemovals(db *metastore.DB, keep func(*metastore.Version) bool, before func(*metastore.Version) error) (done []*metastore.Version, busy []string, err error) {
	vs, err := db.Versions(func(v *metastore.Version) bool { return v.Removing && (keep == nil || keep(v)) })
	if err != nil {
		return nil, nil, err
	}
	var errs []error
	for _, v := range vs {
		removed, err := finishRemoval(db, v.UID, before)
		switch {
		case errors.Is(err, metastore.ErrLocked):
			busy = append(busy, v.UID)
		case err != nil:
			errs = append(errs, fmt.Errorf("finishing the interrupted removal of %s: %w", v.UID, err))
		case removed != nil:
			done = append(done, removed)
		}
	}
	return done, busy, errors.Join(errs...)
}

func finishRemoval(db *metastore.DB, uid string, before func(*metastore.Version) error) (*metastore.Version, error) {
	lk, err := db.LockVersion(uid, metastore.Exclusive)
	if err != nil {
		return nil, err
	}
	defer lk.Unlock()
	v, err := db.Version(uid) // as it is now that we hold the lock
	if errors.Is(err, metastore.ErrVersionNotFound) {
		return nil, nil // its remover finished it meanwhile
	}
	if err != nil || !v.Removing {
		return nil, err
	}
	if before != nil {
		if err := before(v); err != nil {
			return nil, err
		}
	}
	if err := db.RemoveVersion(uid); err != nil {
		return nil, err
	}
	return v, nil
}

// SetProtected protects or unprotects a version.
func SetProtected(db *metastore.DB, uid string, protected bool) (*metastore.Version, error) {
	return db.UpdateVersion(uid, func(v *metastore.Version) error {
		v.Protected = protected
		return nil
	})
}

// SetExpire sets a version's expiry date, or clears it when at is nil.
// 'backy enforce' removes versions whose expiry date has passed (unless
// protected) and keeps versions whose expiry date is in the future.
func SetExpire(db *metastore.DB, uid string, at *time.Time) (*metastore.Version, error) {
	if at != nil {
		t := at.UTC()
		at = &t
	}
	return db.UpdateVersion(uid, func(v *metastore.Version) error {
		v.Expire = at
		return nil
	})
}
