package metastore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/backy/backy/internal/clock"
)

// Lock is an flock(2) lock on a file in the store's lock directory. The
// kernel drops it when the process dies, so a lock can never go stale.
type Lock struct {
	f    *os.File
	path string
	// exclusive: the holder line in the file is this process's, and is
	// cleared on Unlock.
	exclusive bool
}

// LockDir returns the directory holding the lock files of the metastore at
// dbPath: "<dbPath>.locks".
func LockDir(dbPath string) string { return dbPath + ".locks" }

// lockFile locks the file at path, creating it (and its directory) if
// need be.
//
// On a read-only filesystem (EROFS) a lock file cannot be created, and
// read-only commands must still work there (a store on a read-only mount
// or snapshot): a lock file that exists is opened read-only and locked as
// usual (flock needs no write access), so a reader still excludes a writer
// elsewhere that locks the same file; a shared lock whose file does not
// exist is skipped, since no process can take it through a read-only
// mount either. An exclusive lock is never skipped: its holder writes.
func lockFile(path string, exclusive, wait bool, what string) (*Lock, error) {
	var f *os.File
	err := os.MkdirAll(filepath.Dir(path), 0o700)
	if err != nil {
		err = fmt.Errorf("creating lock directory: %w", err)
	} else if f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600); err != nil {
		err = fmt.Errorf("opening lock %s: %w", path, err)
	}
	if errors.Is(err, syscall.EROFS) {
		var oerr error
		if f, oerr = os.Open(path); oerr == nil {
			err = nil
		} else if errors.Is(oerr, os.ErrNotExist) && !exclusive {
			return &Lock{path: path}, nil
		}
	}
	if err != nil {
		return nil, err
	}
	how := syscall.LOCK_SH
	if exclusive {
		how = syscall.LOCK_EX
	}
	if !wait {
		how |= syscall.LOCK_NB
	}
	for {
		err = flock(f, how)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		holder := ""
		if h := lockHolders(f, path); h != "" {
			holder = " (" + h + ")"
		}
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s: %w%s", what, ErrLocked, holder)
		}
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	if exclusive {
		// Say who holds it, for the error message of whoever waits (the
		// real time: an operator compares it with ps and the logs).
		_ = f.Truncate(0)
		_, _ = f.WriteAt([]byte(fmt.Sprintf("pid %d, %s, since %s", os.Getpid(), processName(), clock.System.Now().UTC().Format(time.RFC3339))), 0)
	}
	return &Lock{f: f, path: path, exclusive: exclusive}, nil
}

var lockHolderName = "backy"

// SetHolderName sets the text recorded in exclusive lock files next to the
// process id (the CLI sets it to the command being run). A lock that cannot
// be taken names its live holders (lockholder.go).
func SetHolderName(s string) { lockHolderName = s }

func processName() string { return lockHolderName }

// Unlock releases the lock.
func (l *Lock) Unlock() {
	if l == nil || l.f == nil {
		return
	}
	if l.exclusive {
		// The next holder may be shared and write nothing: leave no line
		// naming a process that no longer holds the lock.
		_ = l.f.Truncate(0)
	}
	_ = l.f.Close()
	l.f = nil
}

// lockStore takes the store-wide lock: shared for ordinary commands,
// exclusive for schema migrations. Shared holders wait for a migration.
func lockStore(dbPath string, exclusive bool) (*Lock, error) {
	return lockFile(filepath.Join(LockDir(dbPath), "store.lock"), exclusive, true, "store "+dbPath)
}

// LockCreate serialises the creation of the store at dbPath between
// processes (two commands using a new default store at once): the caller
// holds it while it checks whether the store exists and creates it.
func LockCreate(dbPath string) (*Lock, error) {
	return lockFile(filepath.Join(LockDir(dbPath), "create.lock"), true, true, "creating store "+dbPath)
}

// TryLockCreate is LockCreate failing at once (ErrLocked) when a creation
// runs.
func TryLockCreate(dbPath string) (*Lock, error) {
	return lockFile(filepath.Join(LockDir(dbPath), "create.lock"), true, false, "creating store "+dbPath)
}

// LockStoreExclusive takes the store lock exclusively, waiting for every
// other command to finish. Only schema migrations use it.
func LockStoreExclusive(dbPath string) (*Lock, error) { return lockStore(dbPath, true) }

// writersLockPath is the lock every process that stores block objects
// holds shared for its whole run, and the orphan sweep holds exclusively.
func (db *DB) writersLockPath() string { return filepath.Join(LockDir(db.path), "writers.lock") }

// LockWriter takes the writers lock shared. Every process that stores
// block objects (backup, migrate-encryption) holds it from before its first
// Put until it has committed or given up, so that an object no record
// names while no one holds it is debris ('cleanup --orphans'). It waits
// while an orphan sweep holds the lock exclusively, calling waiting (if
// non-nil) with the holder once, first.
func (db *DB) LockWriter(waiting func(error)) (*Lock, error) {
	const what = "an orphan sweep ('backy cleanup --orphans') is running on this store"
	lk, err := lockFile(db.writersLockPath(), false, false, what)
	if err == nil || !errors.Is(err, ErrLocked) {
		return lk, err
	}
	if waiting != nil {
		waiting(err)
	}
	return lockFile(db.writersLockPath(), false, true, what)
}

// LockWritersExclusive takes the writers lock exclusively: no backup or
// migration stores objects while it is held. With wait false it fails at
// once (ErrLocked) when one is running.
func (db *DB) LockWritersExclusive(wait bool) (*Lock, error) {
	return lockFile(db.writersLockPath(), true, wait,
		"a backup or migrate-encryption is running on this store, and 'cleanup --orphans' needs none to run (without --no-wait it waits for them)")
}

// LockMode says how a version is locked.
type LockMode int

const (
	// Shared: the version is being read (restore, scrub, used as a base);
	// it cannot be removed or changed meanwhile, and others may read it.
	Shared LockMode = iota
	// Exclusive: the version is being written (backup, resume) or removed.
	Exclusive
)

// LockVersion locks version uid without waiting. It fails with an error
// wrapping ErrLocked when a conflicting lock is held.
func (db *DB) LockVersion(uid string, mode LockMode) (*Lock, error) {
	if !validUID(uid) {
		return nil, fmt.Errorf("%w: %q", ErrVersionNotFound, uid)
	}
	what := "version " + uid + " is in use by another backy process"
	if mode == Shared {
		what = "version " + uid + " is being written or removed by another backy process"
	}
	return lockFile(db.versionLockPath(uid), mode == Exclusive, false, what)
}

func (db *DB) versionLockPath(uid string) string {
	return filepath.Join(LockDir(db.path), "version-"+uid+".lock")
}

// removeVersionLock deletes the lock file of a removed version; the caller
// holds it exclusively.
func (db *DB) removeVersionLock(uid string) {
	_ = os.Remove(db.versionLockPath(uid))
}

// validUID reports whether s has the shape of a version uid: "V" and 20
// lower-case hex digits.
func validUID(s string) bool {
	if len(s) != 21 || s[0] != 'V' {
		return false
	}
	_, err := strconv.ParseUint(s[1:9], 16, 64)
	if err != nil {
		return false
	}
	for _, c := range s[1:] {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// ValidUID reports whether s has the shape of a version uid.
func ValidUID(s string) bool { return validUID(s) }
