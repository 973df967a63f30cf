package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"syscall"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/blockstore/backend"
	"github.com/backy/backy/blockstore/backend/s3"
	"github.com/backy/backy/blockstore/keyring"
	"github.com/backy/backy/blockstore/object"
	"github.com/backy/backy/cmd/backy/internal/config"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/migrate/reencrypt"
	"github.com/backy/backy/scrub"
	"github.com/backy/backy/versions"
	"github.com/backy/backy/versions/backup"
	"github.com/backy/backy/versions/catalog"
	"github.com/backy/backy/versions/hints"
	"github.com/backy/backy/versions/manifest"
	"github.com/backy/backy/versions/replicate"
	"github.com/backy/backy/versions/restore"
	"github.com/backy/backy/versions/source"
	"github.com/backy/backy/versions/transfer"
)

// Exit codes, documented in README.md ("Exit codes") and in --help. They
// follow sysexits(3) where one fits.
const (
	exitOK           = 0
	exitFailure      = 1   // an unexpected internal error
	exitUsage        = 64  // bad command line
	exitDataErr      = 65  // bad input data: hints file, sanity check against the base
	exitNotFound     = 66  // no such source, version, store or config file
	exitIntegrity    = 70  // a stored block is corrupt or missing; a version is not restorable
	exitNoSpace      = 71  // no space left on a device
	exitCantCreate   = 73  // restore target exists / too small; store already exists
	exitIOErr        = 74  // an I/O error reading the source or writing the target or store
	exitLocked       = 75  // the store or version is in use by another process: try again later
	exitNoPerm       = 77  // permission denied, wrong or missing key
	exitConfig       = 78  // configuration error
	exitIncompatible = 79  // the store was written by a newer backy
	exitDamage       = 80  // scrub or deep-scrub ran to its end and found damage (now recorded)
	exitInterrupted  = 130 // interrupted (Ctrl-C, SIGTERM)
)

var (
	errInterrupted = errors.New("interrupted")
	errUsage       = errors.New("usage")
	errExitCode    = errors.New("exit code set")
	// errConfigTarget: migrate-encryption has no target version.
	errConfigTarget = errors.New("no encryption version to migrate to: set encryption_version and its key in the configuration, or pass --to N")
)

// usageErr reports a command-line mistake.
func usageErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errUsage}, args...)...)
}

// exitCode maps an error to the documented exit code. The order matters:
// the most specific cause wins.
func exitCode(err error) int {
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, errInterrupted), errors.Is(err, context.Canceled):
		return exitInterrupted
	case errors.Is(err, errUsage):
		return exitUsage
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return exitNoSpace
	case errors.Is(err, config.ErrInvalid), errors.Is(err, errStoreMismatch), errors.Is(err, errConfigTarget), errors.Is(err, s3.ErrNoBucket):
		return exitConfig
	case errors.Is(err, metastore.ErrNewerSchema), errors.Is(err, object.ErrNewerFormat), errors.Is(err, manifest.ErrNewerFormat):
		return exitIncompatible
	case errors.Is(err, metastore.ErrLocked), errors.Is(err, metastore.ErrBusy):
		return exitLocked
	case errors.Is(err, object.ErrNoKey), errors.Is(err, keyring.ErrWrongKey), errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM), errors.Is(err, fs.ErrPermission):
		return exitNoPerm
	case errors.Is(err, scrub.ErrDamage):
		return exitDamage
	case errors.Is(err, scrub.ErrOptions), errors.Is(err, replicate.ErrOptions):
		return exitUsage
	case errors.Is(err, scrub.ErrSourceSize):
		return exitDataErr
	case errors.Is(err, hints.ErrInvalid), errors.Is(err, backup.ErrSanity), errors.Is(err, backup.ErrSourceChanged),
		errors.Is(err, replicate.ErrBlockSize), errors.Is(err, manifest.ErrInvalid), errors.Is(err, transfer.ErrOtherStore),
		errors.Is(err, transfer.ErrKeyMismatch):
		return exitDataErr
	case errors.Is(err, blockstore.ErrCorrupt), errors.Is(err, blockstore.ErrMissing), errors.Is(err, restore.ErrNotRestorable),
		errors.Is(err, restore.ErrBadBlocks), errors.Is(err, metastore.ErrCorrupt), errors.Is(err, metastore.ErrNotBacky), errors.Is(err, metastore.ErrDamaged),
		errors.Is(err, reencrypt.ErrFailures), errors.Is(err, reencrypt.ErrIncomplete), errors.Is(err, keyring.ErrBadRegistration),
		errors.Is(err, replicate.ErrNotCopyable), errors.Is(err, transfer.ErrMissingObjects), errors.Is(err, metastore.ErrTrashed),
		errors.Is(err, transfer.ErrNotExportable):
		return exitIntegrity
	case errors.Is(err, source.ErrTargetExists), errors.Is(err, source.ErrTargetTooSmall), errors.Is(err, metastore.ErrExists),
		errors.Is(err, replicate.ErrConflict), errors.Is(err, transfer.ErrExists), errors.Is(err, transfer.ErrHealthy),
		errors.Is(err, blockstore.ErrStoreExists):
		return exitCantCreate
	case errors.Is(err, source.ErrNotFound), errors.Is(err, metastore.ErrVersionNotFound), errors.Is(err, metastore.ErrNoStore),
		errors.Is(err, config.ErrNotFound), errors.Is(err, errNoSuchVolume), errors.Is(err, scrub.ErrNoVersions),
		errors.Is(err, replicate.ErrNoVersions), errors.Is(err, catalog.ErrNoSnapshot), errors.Is(err, source.ErrNoTargetDir):
		return exitNotFound
	case errors.Is(err, backup.ErrBadBase), errors.Is(err, backup.ErrBadResume), errors.Is(err, backup.ErrInput),
		errors.Is(err, versions.ErrProtected), errors.Is(err, versions.ErrTooYoung), errors.Is(err, source.ErrUnsupported):
		return exitUsage
	case errors.Is(err, syscall.EIO), errors.Is(err, backend.ErrPermanent), errors.Is(err, backend.ErrUnavailable):
		return exitIOErr
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return exitIOErr
	}
	return exitFailure
}

// hint returns advice to add to a message that lacks it.
func hint(err error, code int) string {
	var rf *restoreFailure
	if errors.As(err, &rf) && (code == exitNoSpace || code == exitInterrupted) {
		what := "the restore did not finish and left nothing at " + rf.target
		if rf.existing {
			what = "the restore did not finish: " + rf.target + " holds part of the version"
		}
		if code == exitNoSpace {
			return what + "; free space on that device and run the restore again"
		}
		return what + "; run the restore again"
	}
	switch code {
	case exitNoSpace:
		return "free space on that device (an interrupted backup can be finished with 'backy backup --resume VERSION')"
	case exitLocked:
		return "wait for the other backy process to finish, then retry"
	case exitIntegrity:
		if errors.Is(err, blockstore.ErrCorrupt) || errors.Is(err, blockstore.ErrMissing) || errors.Is(err, restore.ErrBadBlocks) {
			return "the damaged blocks are now marked invalid; a new backup stores fresh copies"
		}
	case exitDamage:
		return "damaged blocks and the versions using them are marked invalid; a new backup stores fresh copies, and a deep-scrub makes valid again what reads back intact"
	case exitIOErr:
		if errors.Is(err, backend.ErrUnavailable) {
			return "nothing was recorded for what did not reach the backend; once it is reachable, finish an interrupted backup with 'backy backup --resume VERSION'"
		}
	case exitInterrupted:
		if errors.Is(err, errCopyInterrupted) {
			return "run the same copy again to continue where it stopped"
		}
		return "a version left incomplete can be finished with 'backy backup --resume VERSION' or removed with 'backy rm'"
	case exitUsage:
		if errors.Is(err, errUsage) {
			return "see 'backy help'"
		}
	}
	return ""
}

// reportError prints err as one line on stderr (and as JSON with --json).
func (e *env) reportError(err error, code int) {
	msg := strings.ReplaceAll(err.Error(), "\n", " ")
	msg = strings.TrimPrefix(msg, errUsage.Error()+": ")
	if h := hint(err, code); h != "" && !strings.Contains(msg, h) {
		msg += "; " + h
	}
	if e.json {
		b, _ := json.Marshal(map[string]any{"error": msg, "exit_code": code})
		fmt.Fprintln(e.stderr, string(b))
		return
	}
	fmt.Fprintf(e.stderr, "backy: %s\n", msg)
}
