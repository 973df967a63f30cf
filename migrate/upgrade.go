package migrate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/backy/backy/internal/atomicfile"
	"github.com/backy/backy/metastore"
)

// ErrVerify: the migrated copy of a metastore failed its consistency check;
// the original was left as it was.
var ErrVerify = errors.New("the upgraded metastore failed verification")

// Options configures Upgrade and Open.
type Options struct {
	// Notify receives the one line that announces a completed upgrade
	// (without a trailing newline). Nil: say nothing.
	Notify func(string)
	// Hook, when set, is called at each named stage of an upgrade; tests
	// use it to kill the process there. The stages, in order:
	//   "locked"             the store lock is held exclusively
	//   "copying-backup"     part of <db>.pre-N.tmp is written
	//   "backup"             <db>.pre-N is complete and durable
	//   "copying-work"       part of <db>.migrating is written
	//   "copied"             <db>.migrating is complete and durable
	//   "apply F->T"         step F->T applied, its transaction not committed
	//   "applied F->T"       step F->T committed
	//   "verified"           the working copy passed metastore Check
	//   "renamed"            the working copy replaced <db>, directory not synced
	//   "done"               the upgrade is complete and durable
	Hook func(stage string)
	// MetaOptions opens the working copy for verification.
	MetaOptions metastore.Options
}

func (o *Options) hook(stage string) {
	if o.Hook != nil {
		o.Hook(stage)
	}
}

// Result says what Upgrade did. From == To when there was nothing to do.
type Result struct {
	From, To int
	// Backup is the copy of the database as it was before the upgrade
	// (<db>.pre-<To>); empty when nothing was done.
	Backup string
}

// Names of the files an upgrade of the metastore at path uses.
func workPath(path string) string           { return path + ".migrating" }
func backupPath(path string, to int) string { return path + ".pre-" + strconv.Itoa(to) }
func backupTemp(path string, to int) string { return backupPath(path, to) + ".tmp" }
func leftovers(path string, to int) []string {
	return []string{workPath(path), metastore.LockDir(workPath(path)), backupTemp(path, to)}
}

// Upgrade brings the metastore at path to metastore.CurrentSchema. It waits
// for every other backy command using the store to finish (the store lock,
// taken exclusively; commands starting meanwhile wait for it), keeps a copy
// of the database as it was in <path>.pre-<CurrentSchema>, migrates a
// working copy <path>.migrating step by step, verifies it with metastore's
// Check, and renames it over path. On any failure path is left as it was,
// the working files are removed, and the error wraps the cause (for example
// syscall.ENOSPC). A database already at the current schema (another
// process migrated it meanwhile) is left alone; a newer one is refused with
// an error wrapping metastore.ErrNewerSchema.
func Upgrade(ctx context.Context, path string, o Options) (Result, error) {
	target := Target
	if _, err := os.Stat(path); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return Result{}, fmt.Errorf("%w at %s", metastore.ErrNoStore, path)
		}
		return Result{}, fmt.Errorf("upgrading metastore: %w", err)
	}
	lk, err := lockExclusive(ctx, path)
	if err != nil {
		return Result{}, err
	}
	defer lk.Unlock()
	o.hook("locked")
	// What an earlier upgrade left when it was killed: never the database
	// itself, which is replaced by one rename.
	if err := removeAll(leftovers(path, target)); err != nil {
		return Result{}, fmt.Errorf("upgrading metastore %s: removing the leftovers of an interrupted upgrade: %w", path, err)
	}
	from, err := metastore.SchemaOf(path)
	if err != nil {
		return Result{}, err
	}
	res := Result{From: from, To: from}
	switch {
	case from == target:
		return res, nil
	case from > target:
		return res, fmt.Errorf("%w: %s has schema %d, this backy reads up to %d: upgrade backy", metastore.ErrNewerSchema, path, from, target)
	}
	steps, err := plan(Steps, from, target)
	if err != nil {
		return res, fmt.Errorf("upgrading metastore %s: %w", path, err)
	}
	backup, err := upgrade(ctx, path, steps, &o)
	if err != nil {
		hint := "fix the cause and run backy again"
		if errors.Is(err, syscall.ENOSPC) {
			hint = "free space beside it (an upgrade needs room for two copies of the database) and run backy again"
		}
		return res, fmt.Errorf("upgrading metastore %s from schema %d to %d: %w; the metastore is unchanged: %s", path, from, target, err, hint)
	}
	res.To, res.Backup = target, backup
	if o.Notify != nil {
		o.Notify(fmt.Sprintf("backy: upgraded metastore %s from schema %d to %d (the old database is kept as %s)", path, from, target, backup))
	}
	return res, nil
}

// upgrade does the work of Upgrade under the exclusive store lock: path is
// never written before the final rename, and nothing of a failed run stays
// behind, not even the copy of the old database (path itself is that copy).
func upgrade(ctx context.Context, path string, steps []Step, o *Options) (_ string, err error) {
	target := steps[len(steps)-1].To
	keptBackup := false
	defer func() {
		if err != nil {
			rm := leftovers(path, target)
			if keptBackup {
				rm = append(rm, backupPath(path, target))
			}
			_ = removeAll(rm)
		}
	}()
	// 1. The copy kept aside, durable before anything else happens. An
	// existing one is overwritten: it can only come from an upgrade to the
	// same schema that was interrupted (a copy of this same database) or
	// from an earlier upgrade whose result was since replaced by an older
	// database (the one in place now, which is what going back means).
	backup := backupPath(path, target)
	tmp := backupTemp(path, target)
	if err := copyDurable(path, tmp, "copying-backup", o); err != nil {
		return "", err
	}
	if err := atomicfile.Move(tmp, backup, atomicfile.Options{NoDirSync: true}); err != nil {
		return "", fmt.Errorf("keeping the old database: %w", err)
	}
	keptBackup = true
	if err := atomicfile.SyncDir(filepath.Dir(path)); err != nil {
		return "", fmt.Errorf("syncing directory %s: %w", filepath.Dir(path), err)
	}
	o.hook("backup")
	if err := ctx.Err(); err != nil {
		return "", context.Cause(ctx)
	}

	// 2. The working copy, migrated one step per transaction.
	work := workPath(path)
	if err := copyDurable(path, work, "copying-work", o); err != nil {
		return "", err
	}
	o.hook("copied")
	if err := applySteps(ctx, path, work, steps, o); err != nil {
		return "", err
	}

	// 3. Verification with the code of the new schema.
	if err := verify(work, target, o); err != nil {
		return "", err
	}
	if err := os.RemoveAll(metastore.LockDir(work)); err != nil {
		return "", err
	}
	o.hook("verified")
	if err := ctx.Err(); err != nil {
		return "", context.Cause(ctx)
	}

	// 4. The switch: one rename (the file fsynced first), made durable.
	if err := atomicfile.Move(work, path, atomicfile.Options{NoDirSync: true}); err != nil {
		return "", fmt.Errorf("replacing the database: %w", err)
	}
	o.hook("renamed")
	// The rename is done and cannot be taken back: a failing directory
	// sync leaves only its durability in doubt, and a crash then leaves
	// either database, each consistent, so it is not an error.
	_ = atomicfile.SyncDir(filepath.Dir(path))
	o.hook("done")
	return backup, nil
}

// applySteps migrates the working copy work of the metastore at path. A
// damaged database makes bbolt panic: metastore.Guard turns that into an
// error naming path (a panic in a step rolls its transaction back).
func applySteps(ctx context.Context, path, work string, steps []Step, o *Options) error {
	return metastore.Guard(path, func() error { return applyStepsTo(ctx, work, steps, o) })
}

func applyStepsTo(ctx context.Context, work string, steps []Step, o *Options) error {
	bdb, err := bolt.Open(work, 0o600, &bolt.Options{Timeout: time.Minute, FreelistType: bolt.FreelistMapType})
	if err != nil {
		return fmt.Errorf("opening the working copy %s: %w", work, err)
	}
	defer bdb.Close()
	for _, s := range steps {
		if err := ctx.Err(); err != nil {
			return context.Cause(ctx)
		}
		stage := fmt.Sprintf("%d->%d", s.From, s.To)
		err := bdb.Update(func(tx *bolt.Tx) error {
			if v, err := schemaIn(tx); err != nil {
				return err
			} else if v != s.From {
				return fmt.Errorf("%w: the working copy has schema %d, step %s expects %d", metastore.ErrCorrupt, v, stage, s.From)
			}
			if err := s.Apply(tx); err != nil {
				return err
			}
			if v, err := schemaIn(tx); err != nil {
				return err
			} else if v != s.To {
				return fmt.Errorf("the step left schema %d instead of %d", v, s.To)
			}
			o.hook("apply " + stage)
			return nil
		})
		if err != nil {
			return fmt.Errorf("step %s (%s): %w", stage, s.Name, err)
		}
		o.hook("applied " + stage)
	}
	if err := bdb.Close(); err != nil {
		return fmt.Errorf("closing the working copy: %w", err)
	}
	return nil
}

// verify opens the working copy with the metastore of the current schema
// and runs its full consistency check.
func verify(work string, target int, o *Options) error {
	if s, err := metastore.SchemaOf(work); err != nil {
		return fmt.Errorf("verifying: %w", err)
	} else if s != target {
		return fmt.Errorf("%w: the working copy has schema %d, not %d", ErrVerify, s, target)
	}
	db, err := metastore.Open(work, o.MetaOptions)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrVerify, err)
	}
	problems, err := db.Check()
	_ = db.Close()
	if err != nil {
		return fmt.Errorf("verifying: %w", err)
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w: %d problem(s), the first: %w", ErrVerify, len(problems), problems[0])
	}
	return nil
}

// lockExclusive takes the store lock exclusively, giving up (and releasing
// it as soon as it comes) when ctx ends first.
func lockExclusive(ctx context.Context, path string) (*metastore.Lock, error) {
	type got struct {
		lk  *metastore.Lock
		err error
	}
	ch := make(chan got, 1)
	go func() {
		lk, err := metastore.LockStoreExclusive(path)
		ch <- got{lk, err}
	}()
	select {
	case g := <-ch:
		return g.lk, g.err
	case <-ctx.Done():
		go func() {
			if g := <-ch; g.lk != nil {
				g.lk.Unlock()
			}
		}()
		return nil, fmt.Errorf("waiting for other backy commands to finish to upgrade metastore %s: %w", path, context.Cause(ctx))
	}
}

// writeFile writes b to f; tests replace it to inject errors.
var writeFile = func(f *os.File, b []byte) (int, error) { return f.Write(b) }

// copyDurable copies src to the new file dst and fsyncs it. stage is
// reported once part of dst is written. A partial dst is removed on error.
func copyDurable(src, dst, stage string, o *Options) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fi.Mode().Perm())
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); err == nil && cerr != nil {
			err = cerr
		}
		if err != nil {
			_ = os.Remove(dst)
			err = fmt.Errorf("copying the database: %w", err)
		}
	}()
	buf := make([]byte, 1<<20)
	chunk := 16 << 10 // a small first chunk, so that stage falls mid-copy
	for first := true; ; first = false {
		n, rerr := in.Read(buf[:chunk])
		if n > 0 {
			if _, err := writeFile(out, buf[:n]); err != nil {
				return err
			}
		}
		if first {
			o.hook(stage)
			chunk = len(buf)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return rerr
		}
	}
	return out.Sync()
}

func removeAll(names []string) error {
	var errs []error
	for _, n := range names {
		if err := os.RemoveAll(n); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Open opens the metastore at path like metastore.Open, upgrading it first
// when it has an older schema (see Upgrade; mopts also opens the working
// copy for verification, whatever o.MetaOptions says). A newer schema
// fails with metastore.Open's error, which wraps metastore.ErrNewerSchema.
func Open(ctx context.Context, path string, mopts metastore.Options, o Options) (*metastore.DB, error) {
	db, err := metastore.Open(path, mopts)
	if !errors.Is(err, metastore.ErrOlderSchema) {
		return db, err
	}
	o.MetaOptions = mopts
	if _, err := Upgrade(ctx, path, o); err != nil {
		return nil, err
	}
	return metastore.Open(path, mopts)
}
