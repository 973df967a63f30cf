package metastore

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/backy/backy/internal/atomicfile"
)

// creatingSuffix marks the temporary name a new metastore is built under:
// "<path>.creating-<12 hex digits>".
const creatingSuffix = ".creating-"

// Create makes a new, empty metastore at path for the store storeID with
// the given block size. It fails with ErrExists if one is already there.
// It is Prepare and Commit in one.
func Create(path string, blockSize int64, storeID [16]byte, opts Options) (*DB, error) {
	p, err := Prepare(path, blockSize, storeID, opts)
	if err != nil {
		return nil, err
	}
	return p.Commit()
}

// Pending is a new metastore built under a temporary name beside its path
// and not yet in place. Commit puts it there, Abort removes it.
type Pending struct {
	db  *DB
	tmp string
}

// Prepare builds a new, empty metastore for path under the temporary name
// <path>.creating-<random>, complete and durable (file and directory
// synced), holding the store's identity: until Commit, it records that a
// creation of the store storeID is under way (see Creations). It fails
// with ErrExists if a metastore is at path already.
func Prepare(path string, blockSize int64, storeID [16]byte, opts Options) (*Pending, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("creating store directory: %w", err)
	}
	lk, err := lockStore(path, false)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(path); err == nil {
		lk.Unlock()
		return nil, fmt.Errorf("%w: %s", ErrExists, path)
	}
	db := &DB{path: path, opts: opts, storeLock: lk, blockSize: blockSize, storeID: storeID}
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	tmp := fmt.Sprintf("%s%s%x", path, creatingSuffix, rnd)
	bdb, err := openBolt(tmp, false, true, &bolt.Options{Timeout: time.Second})
	if err != nil {
		lk.Unlock()
		return nil, err
	}
	err = bdb.Update(func(tx *bolt.Tx) error {
		for _, b := range allBuckets {
			if _, err := tx.CreateBucket(b); err != nil {
				return err
			}
		}
		m := tx.Bucket(bktMeta)
		put := func(k, v []byte) {
			if err == nil {
				err = m.Put(k, v)
			}
		}
		put(keySchema, binary.BigEndian.AppendUint32(nil, CurrentSchema))
		put(keyStoreID, db.storeID[:])
		put(keyBlockSize, binary.BigEndian.AppendUint64(nil, uint64(blockSize)))
		put(keyCreated, []byte(db.now().UTC().Format(time.RFC3339)))
		return err
	})
	if cerr := bdb.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = atomicfile.SyncDir(filepath.Dir(path))
	}
	if err != nil {
		_ = os.Remove(tmp)
		lk.Unlock()
		return nil, fmt.Errorf("creating metastore %s: %w", path, err)
	}
	return &Pending{db: db, tmp: tmp}, nil
}

// Commit puts the new metastore in place (never replacing one that
// appeared meanwhile: ErrExists) and returns it open.
func (p *Pending) Commit() (*DB, error) {
	if err := syncedRename(p.tmp, p.db.path); err != nil {
		p.Abort()
		return nil, fmt.Errorf("creating metastore %s: %w", p.db.path, err)
	}
	return p.db, nil
}

// Abort removes the new metastore.
func (p *Pending) Abort() {
	_ = os.Remove(p.tmp)
	p.db.Close()
}

// syncedRename moves from to to, durably and never replacing a file at
// to (ErrExists).
func syncedRename(from, to string) error {
	if err := atomicfile.Move(from, to, atomicfile.Options{NoReplace: true}); err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("%w: %s", ErrExists, to)
		}
		return err
	}
	return nil
}

// Creation is what a creation of the metastore at a path left under its
// temporary name: Prepare's file of a process that died before Commit, or
// (on a file system without renameat2, where Commit links) after Commit's
// link but before it removed the name.
type Creation struct {
	Path string
	// Err is why the file could not be read (a process killed while
	// Prepare wrote it); StoreID and BlockSize are then zero.
	Err       error
	StoreID   [16]byte
	BlockSize int64
	// Versions is how many versions it holds: none for Prepare's file;
	// more would make it a second name of a metastore that was used.
	Versions int
	// InPlace: the file is the metastore at path itself (a second name).
	InPlace bool
}

// Debris reports whether the file is provably of no use: a second name of
// the metastore in place, one that cannot be read (Prepare killed while
// it wrote it), or an empty metastore (Prepare's, never put in place).
func (c Creation) Debris() bool { return c.InPlace || c.Err != nil || c.Versions == 0 }

// Creations lists what creations of the metastore at path left under
// temporary names. Only while the caller holds LockCreate (which every
// creation holds from Prepare to Commit) is each of them debris of a
// process that died; an InPlace one always is.
func Creations(path string) ([]Creation, error) {
	names, err := filepath.Glob(globEscape(path) + creatingSuffix + "*")
	if err != nil {
		return nil, err
	}
	live, _ := os.Stat(path)
	var out []Creation
	for _, name := range names {
		if !isCreatingName(path, name) {
			continue
		}
		c := Creation{Path: name}
		if fi, err := os.Stat(name); err != nil {
			continue // gone meanwhile
		} else if live != nil && os.SameFile(fi, live) {
			c.InPlace = true
			out = append(out, c)
			continue
		}
		c.Err = Guard(name, func() error {
			bdb, err := openBolt(name, true, false, &bolt.Options{Timeout: time.Second})
			if err != nil {
				return err
			}
			defer bdb.Close()
			return bdb.View(func(tx *bolt.Tx) error {
				m := tx.Bucket(bktMeta)
				if m == nil || len(m.Get(keyStoreID)) != 16 || len(m.Get(keyBlockSize)) != 8 {
					return fmt.Errorf("%w: %s holds no store identity", ErrNotBacky, name)
				}
				copy(c.StoreID[:], m.Get(keyStoreID))
				c.BlockSize = int64(binary.BigEndian.Uint64(m.Get(keyBlockSize)))
				if vs := tx.Bucket(bktVersions); vs != nil {
					c.Versions = vs.Stats().KeyN
				}
				return nil
			})
		})
		if errors.Is(c.Err, ErrBusy) {
			continue // a live process has it open: not debris
		}
		out = append(out, c)
	}
	return out, nil
}

// removeInPlaceCreations removes the second names of the metastore at
// path that a creation killed between its link and its removal of the
// temporary name left (where Commit links: see Creation): the same file,
// so nothing needs them.
func removeInPlaceCreations(path string) {
	names, _ := filepath.Glob(globEscape(path) + creatingSuffix + "*")
	if len(names) == 0 {
		return
	}
	live, err := os.Stat(path)
	if err != nil {
		return
	}
	for _, name := range names {
		if fi, err := os.Stat(name); err == nil && isCreatingName(path, name) && os.SameFile(fi, live) {
			_ = os.Remove(name)
		}
	}
}

// RemoveCreations removes the files of cs (see Creations) and their lock
// directories.
func RemoveCreations(cs []Creation) error {
	var errs []error
	for _, c := range cs {
		if err := os.Remove(c.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
		_ = os.RemoveAll(LockDir(c.Path))
	}
	return errors.Join(errs...)
}

// isCreatingName reports whether name is path's temporary name.
func isCreatingName(path, name string) bool {
	rest, ok := strings.CutPrefix(name, path+creatingSuffix)
	if !ok || len(rest) != 12 {
		return false
	}
	for _, c := range rest {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

func globEscape(s string) string {
	var b strings.Builder
	for _, c := range s {
		if strings.ContainsRune(`*?[\`, c) {
			b.WriteByte('\\')
		}
		b.WriteRune(c)
	}
	return b.String()
}
