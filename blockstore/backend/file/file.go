package file

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/backy/backy/blockstore/backend"
	"github.com/backy/backy/internal/atomicfile"
	"github.com/backy/backy/internal/clock"
)

// chunkSize is how much Put writes and Get reads between two checks of ctx.
const chunkSize = 1 << 20

// tempPrefix starts the name of every temporary file. No valid object name
// has an element starting with '.', so temporary files never collide with
// objects and List skips them.
const tempPrefix = ".tmp-"

// Backend stores objects as files below a root directory. It is safe for
// concurrent use, also by several processes sharing the directory.
type Backend struct {
	root string
	ops  osOps

	// deferDirSync: Put leaves the directory fsync to Sync (see Options).
	deferDirSync bool
	mu           sync.Mutex
	pendingDirs  map[string]bool // directories with renames not yet synced
}

// Options configure a file backend.
type Options struct {
	// DeferDirSync makes Put fsync the object's file but leave the fsync
	// of its directory (which makes the new name durable) to the next
	// Sync call, which syncs each touched directory once. A writer that
	// stores many objects and then records them (a backup committing to
	// the metastore) calls Sync before it records them; it halves the
	// journal commits of a backup. Without it, Put is durable on return.
	DeferDirSync bool
}

var (
	_ backend.Backend     = (*Backend)(nil)
	_ backend.Syncer      = (*Backend)(nil)
	_ backend.TempCleaner = (*Backend)(nil)
)

// osOps are the operating-system calls of Put and Delete. Tests replace
// them to inject failures (a full disk, a failing fsync) that are hard to
// provoke for real.
type osOps struct {
	mkdir      func(dir string) error
	createTemp func(dir string) (*os.File, error)
	write      func(f *os.File, p []byte) (int, error)
	syncFile   func(f *os.File) error
	closeFile  func(f *os.File) error
	rename     func(oldpath, newpath string) error
	remove     func(path string) error
	syncDir    func(dir string) error
}

var defaultOps = osOps{
	mkdir:      func(dir string) error { return os.Mkdir(dir, 0o700) },
	createTemp: func(dir string) (*os.File, error) { return os.CreateTemp(dir, tempPrefix+"*") },
	write:      func(f *os.File, p []byte) (int, error) { return f.Write(p) },
	syncFile:   func(f *os.File) error { return f.Sync() },
	closeFile:  func(f *os.File) error { return f.Close() },
	rename:     os.Rename,
	remove:     os.Remove,
	syncDir:    atomicfile.SyncDir,
}

// New returns a backend storing its objects below root, which it creates
// (mode 0700, with any missing parents) if it does not exist.
func New(root string) (*Backend, error) { return NewWithOptions(root, Options{}) }

// NewWithOptions is New with options.
func NewWithOptions(root string, o Options) (*Backend, error) {
	if root == "" {
		return nil, errors.New("file backend: empty root directory")
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("file backend: root %q: %w", root, err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("file backend: root: %w", classify(err))
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("file backend: root: %w", classify(err))
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("file backend: root %s is not a directory", abs)
	}
	return &Backend{root: abs, ops: defaultOps, deferDirSync: o.DeferDirSync, pendingDirs: map[string]bool{}}, nil
}

// Root returns the absolute path of the root directory.
func (b *Backend) Root() string { return b.root }

// Properties describes the backend.
func (b *Backend) Properties() backend.Properties {
	return backend.Properties{Location: "file:" + b.root, Connections: 4}
}

// Close does nothing; the backend holds no resources between calls.
func (b *Backend) Close() error { return nil }

// path maps a valid object name to its file.
func (b *Backend) path(name string) string {
	return filepath.Join(b.root, filepath.FromSlash(name))
}

// Put stores data under name: it writes a temporary file in the target
// directory, fsyncs it, renames it over name and fsyncs the directory.
func (b *Backend) Put(ctx context.Context, name string, data []byte) error {
	if !backend.ValidName(name) {
		return badName("put", name)
	}
	if err := ctx.Err(); err != nil {
		return opErr("put", name, err)
	}
	path := b.path(name)
	dir := filepath.Dir(path)
	var f *os.File
	var err error
	for attempt := 0; ; attempt++ {
		// A concurrent Delete may prune the directory (or a parent) while
		// it is being made or before the temporary file is: make it again.
		if err = b.ensureDir(dir); err == nil {
			f, err = b.ops.createTemp(dir)
		}
		if err == nil || !errors.Is(err, fs.ErrNotExist) || attempt == 3 {
			break
		}
	}
	if err != nil {
		return opErr("put", name, err)
	}
	for p := data; len(p) > 0; {
		err := ctx.Err()
		if err == nil {
			n := min(len(p), chunkSize)
			var w int
			if w, err = b.ops.write(f, p[:n]); err == nil && w != n {
				err = fmt.Errorf("write %s: %w", f.Name(), io.ErrShortWrite)
			}
			p = p[n:]
		}
		if err != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
			return opErr("put", name, err)
		}
	}
	// fsync, close, a last look at ctx, rename; the directory is synced
	// below (or by Sync).
	err = atomicfile.Commit(ctx, f, path, atomicfile.Options{NoDirSync: true, Ops: &atomicfile.Ops{
		Sync: b.ops.syncFile, Close: b.ops.closeFile, Rename: b.ops.rename,
	}})
	if err != nil {
		return opErr("put", name, err)
	}
	if b.deferDirSync {
		b.mu.Lock()
		b.pendingDirs[dir] = true
		b.mu.Unlock()
		return nil
	}
	// Gone already: a concurrent Delete of the same name removed the
	// object and pruned the directory; that Put was complete.
	if err := b.ops.syncDir(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return opErr("put", name, err)
	}
	return nil
}

// Sync makes durable every object whose Put returned before the call: it
// fsyncs each directory that received an object since the last Sync. It is
// a no-op unless the backend defers directory syncs.
func (b *Backend) Sync(ctx context.Context) error {
	b.mu.Lock()
	dirs := b.pendingDirs
	b.pendingDirs = map[string]bool{}
	b.mu.Unlock()
	var first error
	for dir := range dirs {
		// Every directory is tried (a failure of one says nothing about
		// the others); what fails stays pending for the next call.
		err := ctx.Err()
		if err == nil {
			// A directory gone meanwhile was pruned by Delete: every
			// object written into it was deleted, nothing to make durable.
			if err = b.ops.syncDir(dir); err == nil || errors.Is(err, fs.ErrNotExist) {
				continue
			}
			err = fmt.Errorf("file backend: sync %s: %w", dir, classify(err))
		}
		if first == nil {
			first = err
		}
		b.mu.Lock()
		b.pendingDirs[dir] = true
		b.mu.Unlock()
	}
	return first
}

// ensureDir makes sure dir, which lies below the root, exists. It fsyncs the
// parent of every directory it finds missing, so that the new entry is
// durable before an object is stored in it. (A concurrent writer may have
// created the directory but not yet synced its parent; syncing it again is
// harmless.)
func (b *Backend) ensureDir(dir string) error {
	if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
		return nil
	}
	rel, err := filepath.Rel(b.root, dir)
	if err != nil || rel == "." {
		return err
	}
	cur := b.root
	for _, elem := range strings.Split(rel, string(filepath.Separator)) {
		parent := cur
		cur = filepath.Join(cur, elem)
		if fi, err := os.Stat(cur); err == nil && fi.IsDir() {
			continue
		}
		if err := b.ops.mkdir(cur); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
		if err := b.ops.syncDir(parent); err != nil {
			return err
		}
	}
	return nil
}

// Get reads the object into buf, growing it to the object's size.
func (b *Backend) Get(ctx context.Context, name string, buf []byte) ([]byte, error) {
	if !backend.ValidName(name) {
		return nil, badName("get", name)
	}
	if err := ctx.Err(); err != nil {
		return nil, opErr("get", name, err)
	}
	f, err := os.Open(b.path(name))
	if err != nil {
		return nil, opErr("get", name, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, opErr("get", name, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, notFound("get", name, fi)
	}
	size := fi.Size()
	if size < 0 || size != int64(int(size)) {
		return nil, opErr("get", name, fmt.Errorf("object of %d bytes does not fit in memory", size))
	}
	buf = slices.Grow(buf[:0], int(size))[:size]
	for off := 0; off < len(buf); {
		if err := ctx.Err(); err != nil {
			return nil, opErr("get", name, err)
		}
		n := min(len(buf)-off, chunkSize)
		if _, err := io.ReadFull(f, buf[off:off+n]); err != nil {
			if err == io.ErrUnexpectedEOF || err == io.EOF {
				err = fmt.Errorf("%s shrank while being read", f.Name())
			}
			return nil, opErr("get", name, err)
		}
		off += n
	}
	return buf, nil
}

// Stat returns the object's size and modification time.
func (b *Backend) Stat(ctx context.Context, name string) (backend.Info, error) {
	if !backend.ValidName(name) {
		return backend.Info{}, badName("stat", name)
	}
	if err := ctx.Err(); err != nil {
		return backend.Info{}, opErr("stat", name, err)
	}
	fi, err := os.Stat(b.path(name))
	if err != nil {
		return backend.Info{}, opErr("stat", name, err)
	}
	if !fi.Mode().IsRegular() {
		return backend.Info{}, notFound("stat", name, fi)
	}
	return backend.Info{Name: name, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// Delete removes the object and fsyncs its directory, so that the object
// does not reappear after a crash. It leaves empty directories in place.
func (b *Backend) Delete(ctx context.Context, name string) error {
	if !backend.ValidName(name) {
		return badName("delete", name)
	}
	if err := ctx.Err(); err != nil {
		return opErr("delete", name, err)
	}
	path := b.path(name)
	fi, err := os.Lstat(path)
	if err != nil {
		return opErr("delete", name, err)
	}
	if fi.IsDir() {
		return notFound("delete", name, fi)
	}
	if err := b.ops.remove(path); err != nil {
		return opErr("delete", name, err)
	}
	if err := b.ops.syncDir(filepath.Dir(path)); err != nil {
		return opErr("delete", name, err)
	}
	b.prune(name)
	return nil
}

// prune removes the directories of name that its deletion left empty,
// below the first path element (versions/<uid>/<snapshot>/ once its last
// chunk is gone). The fixed shards of blocks/ stay. A directory another
// Put is about to use may go: Put makes it again.
func (b *Backend) prune(name string) {
	if strings.HasPrefix(name, "blocks/") {
		return
	}
	for dir := filepath.Dir(name); strings.Contains(dir, "/"); dir = filepath.Dir(dir) {
		if err := os.Remove(filepath.Join(b.root, filepath.FromSlash(dir))); err != nil {
			return // not empty (or gone): stop
		}
	}
}

// List calls fn for every object whose name starts with prefix. It walks
// only the deepest directory that the prefix determines ("blocks/3f" for
// the prefix "blocks/3f/" or "blocks/3f0"), and skips temporary files and
// files whose names are not valid object names.
func (b *Backend) List(ctx context.Context, prefix string, fn func(backend.Info) error) error {
	if err := ctx.Err(); err != nil {
		return opErr("list", prefix, err)
	}
	start := b.root
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		// Every object under the prefix lives below prefix[:i]; if that
		// is no valid name, no valid object has the prefix (and we must
		// not walk outside the root for a prefix like "../").
		if !backend.ValidName(prefix[:i]) {
			return nil
		}
		start = b.path(prefix[:i])
	}
	var fnErr error
	err := filepath.WalkDir(start, func(path string, d fs.DirEntry, err error) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err != nil {
			if path == start && isNotExist(err) {
				return filepath.SkipAll // nothing has the prefix
			}
			if isNotExist(err) {
				return nil // removed while we walk
			}
			return err
		}
		if path == start {
			if !d.IsDir() {
				return filepath.SkipAll
			}
			return nil
		}
		if strings.HasPrefix(d.Name(), ".") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		rel, err := filepath.Rel(b.root, path)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			dir := rel + "/"
			if !strings.HasPrefix(dir, prefix) && !strings.HasPrefix(prefix, dir) {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() || !strings.HasPrefix(rel, prefix) || !backend.ValidName(rel) {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			if isNotExist(err) {
				return nil
			}
			return err
		}
		if err := fn(backend.Info{Name: rel, Size: fi.Size(), ModTime: fi.ModTime()}); err != nil {
			fnErr = err
			return err
		}
		return nil
	})
	if fnErr != nil {
		return fnErr
	}
	if err != nil {
		return opErr("list", prefix, err)
	}
	return nil
}

// CleanTemp removes the temporary files of Puts of names starting with
// prefix ("blocks/", or "" for all) that are older than olderThan: the
// debris of writers killed in mid-Put (backend.TempCleaner). See the
// function CleanTemp.
func (b *Backend) CleanTemp(ctx context.Context, prefix string, olderThan time.Duration) (int, error) {
	dir := strings.TrimSuffix(prefix, "/")
	if prefix != "" && (!strings.HasSuffix(prefix, "/") || !backend.ValidName(dir)) {
		return 0, fmt.Errorf("file backend: clean temporary files under %q: %w (want a prefix ending in '/')", prefix, backend.ErrBadName)
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("file backend: clean temporary files: %w", err)
	}
	root := b.root
	if dir != "" {
		root = b.path(dir)
		if _, err := os.Stat(root); isNotExist(err) {
			return 0, nil // nothing was ever written there
		}
	}
	return cleanTemp(ctx, root, olderThan)
}

// CleanTemp removes the temporary files below root that are older than
// olderThan: the debris of writers killed in mid-Put. It returns how many
// it removed. Pass an age well above the longest Put (an hour, say), so as
// not to pull a temporary file from under a live writer, whose Put would
// then fail. It keeps going after an error and returns the first one.
func CleanTemp(root string, olderThan time.Duration) (int, error) {
	return cleanTemp(context.Background(), root, olderThan)
}

func cleanTemp(ctx context.Context, root string, olderThan time.Duration) (int, error) {
	// The real clock, as the kernel's that stamped the files' mtimes.
	cutoff := clock.System.Now().Add(-olderThan)
	removed := 0
	var first error
	note := func(err error) {
		if first == nil {
			first = fmt.Errorf("file backend: clean temporary files: %w", classify(err))
		}
	}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		if err != nil {
			if !isNotExist(err) || path == root {
				note(err)
			}
			return nil
		}
		if path == root {
			return nil
		}
		if d.IsDir() {
			if strings.HasPrefix(d.Name(), ".") {
				return filepath.SkipDir // not ours
			}
			return nil
		}
		if !strings.HasPrefix(d.Name(), tempPrefix) || !d.Type().IsRegular() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			if !isNotExist(err) {
				note(err)
			}
			return nil
		}
		if !fi.ModTime().Before(cutoff) {
			return nil
		}
		if err := os.Remove(path); err != nil {
			if !isNotExist(err) {
				note(err)
			}
			return nil
		}
		removed++
		return nil
	})
	if err != nil {
		note(err)
	}
	return removed, first
}

// isNotExist reports whether err says a path does not exist, also when a
// path element is a file rather than a directory ("obj/x" with "obj" an
// object).
func isNotExist(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}

// permanentErrnos are the errors no retry can fix. fs.ErrPermission
// matches EACCES and EPERM.
var permanentErrnos = []error{syscall.ENOSPC, syscall.EDQUOT, syscall.EROFS, fs.ErrPermission}

// classify marks err permanent if no retry can fix it.
func classify(err error) error {
	for _, target := range permanentErrnos {
		if errors.Is(err, target) {
			return backend.Permanent(err)
		}
	}
	return err
}

// opErr wraps err with the operation and name, maps a missing file to
// backend.ErrNotFound (except for put, where it means a directory vanished
// or a path element is an object) and marks permanent errors.
func opErr(op, name string, err error) error {
	switch {
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
	case isNotExist(err) && op != "put":
		return fmt.Errorf("file backend: %s %q: %w: %w", op, name, backend.ErrNotFound, err)
	default:
		err = classify(err)
	}
	return fmt.Errorf("file backend: %s %q: %w", op, name, err)
}

// notFound reports a name that exists on disk but is no object (such as a
// directory holding longer names).
func notFound(op, name string, fi fs.FileInfo) error {
	return fmt.Errorf("file backend: %s %q: %w (%s is a %v)", op, name, backend.ErrNotFound, fi.Name(), fi.Mode().Type())
}

func badName(op, name string) error {
	return fmt.Errorf("file backend: %s %q: %w", op, name, backend.ErrBadName)
}
