package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
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
	"github.com/backy/backy/versions/blockread"
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
	case errors.Is(err, metastore.ErrLocked), errors.Is(err, metastore.ErrBusy), errors.Is(err, blockread.ErrMoving):
		return exitLocked
	case errors.Is(err, object.ErrNoKey), errors.Is(err, keyring.ErrWrongKey), errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM), errors.Is(err, fs.ErrPermission):
		return exitNoPerm
	case errors.Is(err, scrub.ErrDamage):
		return exitDamage
	case errors.Is(err, scrub.ErrOptions), errors.Is(err, replicate.ErrOptions):
		return exitUsage
	case errors.Is(err, scrub.ErrSourceSize), errors.Is(err, scrub.ErrDiffers):
		return exitDataErr
	case errors.Is(err, hints.ErrInvalid), errors.Is(err, backup.ErrSanity), errors.Is(err, backup.ErrSourceChanged), errors.Is(err, backup.ErrEmptyHints),
		errors.Is(err, replicate.ErrBlockSize), errors.Is(err, manifest.ErrInvalid), errors.Is(err, transfer.ErrOtherStore),
		errors.Is(err, transfer.ErrKeyMismatch):
		return exitDataErr
	case errors.Is(err, blockstore.ErrCorrupt), errors.Is(err, blockstore.ErrMissing), errors.Is(err, restore.ErrNotRestorable),
		errors.Is(err, restore.ErrBadBlocks), errors.Is(err, metastore.ErrCorrupt), errors.Is(err, metastore.ErrNotBacky), errors.Is(err, metastore.ErrDamaged),
		errors.Is(err, reencrypt.ErrFailures), errors.Is(err, reencrypt.ErrIncomplete), errors.Is(err, keyring.ErrBadRegistration),
		errors.Is(err, replicate.ErrNotCopyable), errors.Is(err, transfer.ErrMissingObjects), errors.Is(err, metastore.ErrTrashed),
		errors.Is(err, transfer.ErrNotExportable):
		return exitIntegrity
	case errors.Is(err, source.ErrBadTarget):
		return exitUsage
	case errors.Is(err, source.ErrTargetBusy):
		return exitCantCreate
	case errors.Is(err, source.ErrTargetExists), errors.Is(err, source.ErrTargetTooSmall), errors.Is(err, metastore.ErrExists),
		errors.Is(err, replicate.ErrConflict), errors.Is(err, transfer.ErrExists), errors.Is(err, transfer.ErrHealthy),
		errors.Is(err, blockstore.ErrStoreExists), errors.Is(err, errOutputExists), errors.Is(err, errListenBusy):
		return exitCantCreate
	case errors.Is(err, source.ErrNotFound), errors.Is(err, metastore.ErrVersionNotFound), errors.Is(err, metastore.ErrNoStore),
		errors.Is(err, config.ErrNotFound), errors.Is(err, errNoSuchVolume), errors.Is(err, scrub.ErrNoVersions),
		errors.Is(err, replicate.ErrNoVersions), errors.Is(err, catalog.ErrNoSnapshot), errors.Is(err, transfer.ErrLoss), errors.Is(err, errHintsNotFound),
		errors.Is(err, source.ErrNoTargetDir):
		return exitNotFound
	case errors.Is(err, backup.ErrBadBase), errors.Is(err, backup.ErrBadResume), errors.Is(err, backup.ErrInput),
		errors.Is(err, versions.ErrProtected), errors.Is(err, versions.ErrTooYoung), errors.Is(err, source.ErrUnsupported),
		errors.Is(err, versions.ErrBadName):
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
		if errors.Is(err, syscall.EROFS) {
			return "that file system is read-only (a read-only store serves ls, stats, restore and export; commands that change it need it writable)"
		}
	case exitUsage:
		if errors.Is(err, errUsage) {
			return "see 'backy help'"
		}
	}
	return ""
}

// leftError is an error of a command that says what the command left
// behind (a version left incomplete, ...). Its message adds that in
// parentheses; an interruption (interruptedError) reports it instead of
// the cancelled operation.
type leftError struct {
	err  error
	left string
}

func (l *leftError) Error() string { return l.err.Error() + " (" + l.left + ")" }
func (l *leftError) Unwrap() error { return l.err }

// interruptedLeaves says what each command leaves behind when it is
// interrupted, unless its error says it more precisely (leftError).
var interruptedLeaves = map[string]string{
	"init":               "the store may be half made: run 'backy init' again",
	"backup":             "no version was made",
	"restore":            "a new target file is not created (its temporary file is removed); a target written over with --force holds a partial image: restore again",
	"copy":               "the versions copied so far are complete in the target: run the same copy again to continue",
	"ls":                 "nothing was changed",
	"stats":              "nothing was changed",
	"export":             "nothing in the store was changed",
	"rm":                 "the versions reported removed are gone, the others are untouched; a removal cut short is finished by running 'backy rm' again",
	"enforce":            "the versions listed as removed are gone, the others are untouched: run 'backy enforce' again to finish",
	"protect":            "the versions listed were changed, the others not: run the command again",
	"unprotect":          "the versions listed were changed, the others not: run the command again",
	"expire":             "run the command again",
	"cleanup":            "what it deleted so far is reported, nothing else was touched: run 'backy cleanup' again to finish",
	"scrub":              "what it found so far is recorded: run it again to check the rest",
	"deep-scrub":         "what it found so far is recorded: run it again to check the rest",
	"migrate-encryption": "the blocks migrated so far stay migrated: run it again to continue",
	"import":             "nothing was imported (an import is all or nothing)",
	"rebuild-metastore":  "the metastore was not replaced: run it again",
}

// interruptedError is a command stopped by SIGINT (Ctrl-C) or SIGTERM.
// Its message says so, and what the command leaves behind, rather than
// "context canceled" from whatever the command was doing at the time.
type interruptedError struct {
	cause   error
	command string
	signal  string // "Ctrl-C", "SIGTERM" or ""
}

func (ie *interruptedError) Error() string {
	msg := "interrupted"
	if ie.signal != "" {
		msg += " (" + ie.signal + ")"
	}
	if !errors.Is(ie.cause, context.Canceled) && !errors.Is(ie.cause, errInterrupted) {
		// A failure of its own that came with the interruption.
		return msg + ": " + ie.cause.Error()
	}
	var le *leftError
	if errors.As(ie.cause, &le) {
		return msg + "; " + le.left
	}
	if l := interruptedLeaves[ie.command]; l != "" {
		return msg + "; " + l
	}
	return msg
}

func (ie *interruptedError) Unwrap() []error { return []error{errInterrupted, ie.cause} }

// interrupted wraps err of command, which ran when ctx was cancelled by a
// signal (signal.NotifyContext's cause names it).
func interrupted(ctx context.Context, err error, command string) error {
	sig := ""
	if c := context.Cause(ctx); c != nil {
		switch {
		case strings.HasPrefix(c.Error(), os.Interrupt.String()):
			sig = "Ctrl-C"
		case strings.HasPrefix(c.Error(), syscall.SIGTERM.String()):
			sig = "SIGTERM"
		}
	}
	return &interruptedError{cause: err, command: command, signal: sig}
}

// reportError prints err as one line on stderr (and as JSON with --json).
func (e *env) reportError(err error, code int) {
	msg := strings.ReplaceAll(err.Error(), "\n", " ")
	msg = strings.TrimPrefix(msg, errUsage.Error()+": ")
	if h := hint(err, code); h != "" && !strings.Contains(msg, h) {
		msg += "; " + h
	}
	if e.fileLog != nil { // the audit trail: every failure, at ERROR
		e.fileLog.Error("command failed", "command", e.metrics.command, "exit_code", code, "err", msg)
	}
	if e.json {
		b, _ := json.Marshal(map[string]any{"error": msg, "exit_code": code})
		fmt.Fprintln(e.stderr, string(b))
		return
	}
	fmt.Fprintf(e.stderr, "backy: %s\n", msg)
}
