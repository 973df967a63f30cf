package atomicfile

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Options say how a file is written and put in place.
type Options struct {
	// Perm is the mode of a file Create (and WriteFile) makes; 0 is 0o600.
	Perm fs.FileMode
	// Temp, if set, is the temporary path Create writes (in the
	// directory of the final path), instead of a new
	// ".<name>.tmp-<12 hex digits>". An existing file of that name is
	// truncated: it is for callers that find their own debris by name,
	// under a lock of their own that no other writer of it passes.
	Temp string
	// NoReplace never replaces an existing file: putting the file in
	// place fails with an error wrapping fs.ErrExist if the final name
	// exists, also when it appeared while the file was written
	// (renameat2 RENAME_NOREPLACE, or a hard link where the file system
	// has no renameat2).
	NoReplace bool
	// Locked says that the open temporary file holds a lock (flock) that
	// marks it a live writer's: it is closed only after it has its final
	// name, so the lock lasts until then. Otherwise it is closed before
	// (a failing close, as NFS reports a lost write, then leaves nothing
	// in place).
	Locked bool
	// NoDirSync leaves the fsync of the directory, which makes the new
	// name durable, to the caller (who batches them, or treats a failure
	// differently).
	NoDirSync bool
	// Ops replace the system calls of Commit; nil uses the real ones.
	// Tests inject failures with it.
	Ops *Ops
}

// Ops are the system calls Commit makes; a nil field is the real call.
type Ops struct {
	Sync    func(f *os.File) error
	Close   func(f *os.File) error
	Rename  func(oldpath, newpath string) error
	SyncDir func(dir string) error
}

func (o *Ops) sync(f *os.File) error {
	if o != nil && o.Sync != nil {
		return o.Sync(f)
	}
	return f.Sync()
}

func (o *Ops) close(f *os.File) error {
	if o != nil && o.Close != nil {
		return o.Close(f)
	}
	return f.Close()
}

func (o *Ops) rename(from, to string) error {
	if o != nil && o.Rename != nil {
		return o.Rename(from, to)
	}
	return os.Rename(from, to)
}

func (o *Ops) syncDir(dir string) error {
	if o != nil && o.SyncDir != nil {
		return o.SyncDir(dir)
	}
	return SyncDir(dir)
}

// WriteFile writes data to path atomically and durably: a temporary file
// in path's directory, written, fsynced, renamed over path (or, with
// NoReplace, put there only if path does not exist), and the directory
// fsynced. Readers see the old file or the new one, never part of one; a
// failure leaves no temporary file behind.
func WriteFile(path string, data []byte, o Options) error {
	f, err := Create(path, o)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Abort()
		return err
	}
	return f.Commit(context.Background())
}

// File is a new file being written under a temporary name; Commit puts it
// in place, Abort removes it. The embedded *os.File is the temporary
// file, for writing.
type File struct {
	*os.File
	path string
	o    Options
	done bool
}

// Create makes the temporary file of a new file at path (see
// Options.Temp for its name), open for reading and writing.
func Create(path string, o Options) (*File, error) {
	perm := o.Perm
	if perm == 0 {
		perm = 0o600
	}
	if o.Temp != "" {
		f, err := os.OpenFile(o.Temp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, perm)
		if err != nil {
			return nil, err
		}
		return &File{File: f, path: path, o: o}, nil
	}
	prefix := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	for range 16 {
		var rnd [6]byte
		_, _ = rand.Read(rnd[:])
		f, err := os.OpenFile(prefix+hex.EncodeToString(rnd[:]), os.O_RDWR|os.O_CREATE|os.O_EXCL, perm)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		return &File{File: f, path: path, o: o}, nil
	}
	return nil, fmt.Errorf("creating a temporary file beside %s: no free name", path)
}

// Path is the final path of the file.
func (f *File) Path() string { return f.path }

// Commit puts the written file in place (see the function Commit). The
// File is done with afterwards, whatever the outcome.
func (f *File) Commit(ctx context.Context) error {
	if f.done {
		return fmt.Errorf("committing %s: %w", f.path, fs.ErrClosed)
	}
	f.done = true
	return Commit(ctx, f.File, f.path, f.o)
}

// Abort removes the temporary file and closes it. It does nothing after
// Commit.
func (f *File) Abort() {
	if f.done {
		return
	}
	f.done = true
	_ = os.Remove(f.Name())
	_ = f.Close()
}

// Commit gives the complete file f, open under a temporary name in
// path's directory, the name path, atomically and durably: it fsyncs f,
// closes it (after the move with Locked), checks ctx (the last point at
// which it gives up: afterwards the file is in place), moves it to path
// (rename, or without replacing with NoReplace), and fsyncs the directory
// (unless NoDirSync). f is closed afterwards in every case. A failure
// before the move removes the temporary file, so nothing of it is left or
// visible; a failure after (the close with Locked, the directory fsync)
// is returned with the file in place.
func Commit(ctx context.Context, f *os.File, path string, o Options) error {
	tmp := f.Name()
	open := true
	fail := func(err error) error {
		_ = os.Remove(tmp) // while still open: a lock on it holds
		if open {
			_ = f.Close()
		}
		return err
	}
	if err := o.Ops.sync(f); err != nil {
		return fail(err)
	}
	if !o.Locked {
		open = false
		if err := o.Ops.close(f); err != nil {
			return fail(err)
		}
	}
	if err := ctx.Err(); err != nil {
		return fail(err)
	}
	var err error
	if o.NoReplace {
		err = renameNoReplace(tmp, path)
	} else {
		err = o.Ops.rename(tmp, path)
	}
	if err != nil {
		return fail(err)
	}
	if open {
		if err := o.Ops.close(f); err != nil {
			return err
		}
	}
	if o.NoDirSync {
		return nil
	}
	return o.Ops.syncDir(filepath.Dir(path))
}

// Move gives the complete, closed file at tmp the name path as Commit
// does (fsync, rename or no-replace move, directory fsync): for files
// written by others (a bbolt database built under a temporary name).
func Move(tmp, path string, o Options) error {
	f, err := os.Open(tmp)
	if err != nil {
		return err
	}
	o.Locked = false
	if err := Commit(context.Background(), f, path, o); err != nil {
		return err
	}
	return nil
}

// linkNoReplace is the no-replace move where renameat2 is missing: a hard
// link fails if path exists; the temporary name is removed after (it may
// be gone already, removed as debris by a process that saw both names).
func linkNoReplace(tmp, path string) error {
	if err := os.Link(tmp, path); err != nil {
		return err
	}
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
