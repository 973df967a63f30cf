package metastore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/backy/backy/internal/clock"
)

// CurrentSchema is the schema version this code reads and writes. Each
// change of the bucket layout or of an encoding bumps it and adds a step in
// package migrate.
const CurrentSchema = 3

// Bucket and key names. They are part of the on-disk format.
var (
	bktMeta     = []byte("meta")
	bktVersions = []byte("versions")
	bktMaps     = []byte("maps")
	bktPages    = []byte("pages")
	bktPageRefs = []byte("pagerefs")
	bktBlocks   = []byte("blocks")
	bktGC       = []byte("gc")
	bktTrash    = []byte("trash")
	// Since schema 2.
	bktEncVersions = []byte("encversions")
	bktEncStats    = []byte("encstats")
	// Since schema 3: bktVMeta (snapshots.go).

	keySchema      = []byte("schema")
	keyStoreID     = []byte("store_id")
	keyBlockSize   = []byte("block_size")
	keyCreated     = []byte("created")
	keyBlocks      = []byte("blocks")
	keyStoredBytes = []byte("stored_bytes")
	keyPlainBytes  = []byte("plain_bytes")
)

var allBuckets = [][]byte{bktMeta, bktVersions, bktMaps, bktPages, bktPageRefs, bktBlocks, bktGC, bktTrash, bktEncVersions, bktEncStats, bktVMeta}

// Options configures a DB.
type Options struct {
	// LockTimeout is how long a transaction waits for another process to
	// release the database before failing with ErrBusy. Zero means 2 minutes.
	LockTimeout time.Duration
	// Now returns the current time (the creation time, the dates of new
	// versions); clock.System.Now when nil. A clock.Clock's Now fits.
	Now func() time.Time
}

// DB is a handle on a metastore file. It holds no open database between
// calls (see the package documentation), only a shared lock on the store
// that keeps schema migrations out while it lives.
type DB struct {
	path      string
	opts      Options
	storeLock *Lock
	blockSize int64
	storeID   [16]byte

	mu sync.RWMutex // serialises this process's own transactions
	// damage is set once a transaction found the file damaged (guard):
	// every later one fails with the same error.
	damage atomic.Pointer[error]
}

// SchemaOf reads the schema version of the metastore at path without
// locking the store. It returns ErrNoStore if there is none.
func SchemaOf(path string) (int, error) {
	if _, err := os.Stat(path); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return 0, fmt.Errorf("%w at %s", ErrNoStore, path)
		}
		return 0, err
	}
	schema := 0
	err := Guard(path, func() error {
		bdb, err := openBolt(path, true, false, &bolt.Options{Timeout: 2 * time.Minute})
		if err != nil {
			return err
		}
		defer bdb.Close()
		return bdb.View(func(tx *bolt.Tx) error {
			m := tx.Bucket(bktMeta)
			if m == nil || len(m.Get(keySchema)) != 4 {
				return notBacky(path)
			}
			schema = int(binary.BigEndian.Uint32(m.Get(keySchema)))
			return nil
		})
	})
	return schema, err
}

func notBacky(path string) error {
	return fmt.Errorf("%w: %s has no schema version (if it is this store's metastore, damaged, recreate it from the data backend with 'backy rebuild-metastore')", ErrNotBacky, path)
}

// Open opens the metastore at path. It fails with ErrNoStore when there is
// none, ErrNewerSchema when a newer backy wrote it, and ErrOlderSchema when
// it must be migrated first (package migrate does that).
func Open(path string, opts Options) (*DB, error) {
	if _, err := os.Stat(path); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w at %s", ErrNoStore, path)
		}
		return nil, fmt.Errorf("opening metastore: %w", err)
	}
	lk, err := lockStore(path, false)
	if err != nil {
		return nil, err
	}
	db := &DB{path: path, opts: opts, storeLock: lk}
	err = db.view(func(tx *bolt.Tx) error {
		m := tx.Bucket(bktMeta)
		if m == nil || len(m.Get(keySchema)) != 4 {
			return notBacky(path)
		}
		schema := int(binary.BigEndian.Uint32(m.Get(keySchema)))
		switch {
		case schema > CurrentSchema:
			return fmt.Errorf("%w: %s has schema %d, this backy reads up to %d: upgrade backy", ErrNewerSchema, path, schema, CurrentSchema)
		case schema < CurrentSchema:
			return fmt.Errorf("%w: %s has schema %d, this backy uses %d", ErrOlderSchema, path, schema, CurrentSchema)
		}
		bs := m.Get(keyBlockSize)
		id := m.Get(keyStoreID)
		if len(bs) != 8 || len(id) != 16 {
			return damaged(path, "it lacks its store identity")
		}
		db.blockSize = int64(binary.BigEndian.Uint64(bs))
		copy(db.storeID[:], id)
		for _, b := range allBuckets {
			if tx.Bucket(b) == nil {
				return damaged(path, fmt.Sprintf("bucket %q is missing", b))
			}
		}
		return nil
	})
	if err != nil {
		lk.Unlock()
		return nil, err
	}
	removeInPlaceCreations(path)
	return db, nil
}

// Close releases the store lock. The DB must not be used afterwards.
func (db *DB) Close() error {
	if db.storeLock != nil {
		db.storeLock.Unlock()
		db.storeLock = nil
	}
	return nil
}

// Path returns the database file's path.
func (db *DB) Path() string { return db.path }

// BlockSize returns the store's block size, fixed at creation.
func (db *DB) BlockSize() int64 { return db.blockSize }

// StoreID returns the store's random identity, fixed at creation.
func (db *DB) StoreID() [16]byte { return db.storeID }

func (db *DB) now() time.Time {
	if db.opts.Now != nil {
		return db.opts.Now()
	}
	return clock.System.Now()
}

func (db *DB) timeout() time.Duration {
	if db.opts.LockTimeout > 0 {
		return db.opts.LockTimeout
	}
	return 2 * time.Minute
}

// view runs fn in a read transaction on a freshly opened database.
func (db *DB) view(fn func(*bolt.Tx) error) error {
	db.mu.RLock()
	defer db.mu.RUnlock()
	return db.guard(func() error {
		bdb, err := openBolt(db.path, true, false, &bolt.Options{Timeout: db.timeout()})
		if err != nil {
			return err
		}
		// Closed also when fn panics, or the file lock would stay.
		defer func() {
			if bdb != nil {
				_ = bdb.Close()
			}
		}()
		err = bdb.View(fn)
		cerr := bdb.Close()
		bdb = nil
		if err == nil && cerr != nil {
			err = fmt.Errorf("closing metastore: %w", cerr)
		}
		return err
	})
}

// update runs fn in a write transaction on a freshly opened database; the
// changes are durable (fsynced) when it returns nil. A panic in bbolt
// (a damaged file) rolls the transaction back and fails with ErrDamaged.
func (db *DB) update(fn func(*bolt.Tx) error) error {
	db.mu.Lock()
	defer db.mu.Unlock()
	return db.guard(func() error {
		bdb, err := openBolt(db.path, false, false, &bolt.Options{Timeout: db.timeout(), FreelistType: bolt.FreelistMapType})
		if err != nil {
			return err
		}
		// Closed also when fn or the commit panics: Update has rolled
		// the transaction back by then, and the file lock must go.
		defer func() {
			if bdb != nil {
				_ = bdb.Close()
			}
		}()
		err = bdb.Update(fn)
		cerr := bdb.Close()
		bdb = nil
		if err == nil && cerr != nil {
			err = fmt.Errorf("closing metastore: %w", cerr)
		}
		return err
	})
}

func getU64(b *bolt.Bucket, k []byte) uint64 {
	v := b.Get(k)
	if len(v) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

func putU64(b *bolt.Bucket, k []byte, v uint64) error {
	return b.Put(k, binary.BigEndian.AppendUint64(nil, v))
}

// addU64 adds delta (which may be negative) to a counter, never below zero.
func addU64(b *bolt.Bucket, k []byte, delta int64) error {
	v := int64(getU64(b, k)) + delta
	if v < 0 {
		v = 0
	}
	return putU64(b, k, uint64(v))
}

// StoreStats are store-wide totals.
type StoreStats struct {
	Versions     int    `json:"versions"`
	Blocks       int64  `json:"blocks"`
	StoredBytes  int64  `json:"stored_bytes"`
	PlainBytes   int64  `json:"plain_bytes"`
	Unreferenced int64  `json:"unreferenced_blocks"`
	Trash        int64  `json:"trash_objects"`
	BlockSize    int64  `json:"block_size"`
	Created      string `json:"created"`
}

// Stats returns store-wide totals.
func (db *DB) Stats() (StoreStats, error) {
	var s StoreStats
	err := db.view(func(tx *bolt.Tx) error {
		m := tx.Bucket(bktMeta)
		s.Versions = tx.Bucket(bktVersions).Stats().KeyN
		s.Blocks = int64(getU64(m, keyBlocks))
		s.StoredBytes = int64(getU64(m, keyStoredBytes))
		s.PlainBytes = int64(getU64(m, keyPlainBytes))
		s.Unreferenced = int64(tx.Bucket(bktGC).Stats().KeyN)
		s.Trash = int64(tx.Bucket(bktTrash).Stats().KeyN)
		s.BlockSize = db.blockSize
		s.Created = string(m.Get(keyCreated))
		return nil
	})
	return s, err
}
