package metastore

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"runtime/debug"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/backy/backy/metastore/blockmap"
)

// Salvage reads what a metastore file still holds, for rebuild-metastore:
// to compare the versions it knew with what the data backend gives back,
// and to take back from it the versions the backend lost. The file may be
// damaged. Every read opens it read-only, takes no store lock (the
// rebuild holds the store exclusively) and runs on a goroutine of its own
// with memory faults turned into panics (debug.SetPanicOnFault); a panic
// of bbolt on a damaged page is returned as an error wrapping ErrCorrupt.
// What it cannot contain (a damaged tree that makes bbolt recurse without
// end, say) callers that must survive read in a child process.
type Salvage struct {
	path string
	// StoreID and BlockSize are the metastore's identity; Schema its
	// schema version (1 to CurrentSchema: the buckets read here have one
	// layout in all of them).
	StoreID   [16]byte
	BlockSize int64
	Schema    int
}

// salvageTimeout bounds the wait for bbolt's file lock.
const salvageTimeout = 5 * time.Second

// OpenSalvage reads the identity of the metastore at path. It fails with
// ErrNotBacky or ErrCorrupt when even that is unreadable, and with
// ErrNewerSchema for a newer schema (whose layout this backy does not know).
func OpenSalvage(path string) (*Salvage, error) {
	s := &Salvage{path: path}
	err := s.view("its identity", func(tx *bolt.Tx) error {
		m := tx.Bucket(bktMeta)
		if m == nil || len(m.Get(keySchema)) != 4 {
			return fmt.Errorf("%w: %s has no schema version", ErrNotBacky, path)
		}
		s.Schema = int(binary.BigEndian.Uint32(m.Get(keySchema)))
		if s.Schema > CurrentSchema {
			return fmt.Errorf("%w: %s has schema %d, this backy reads up to %d", ErrNewerSchema, path, s.Schema, CurrentSchema)
		}
		id, bs := m.Get(keyStoreID), m.Get(keyBlockSize)
		if len(id) != 16 || len(bs) != 8 {
			return fmt.Errorf("%w: %s lacks its store identity", ErrCorrupt, path)
		}
		copy(s.StoreID[:], id)
		s.BlockSize = int64(binary.BigEndian.Uint64(bs))
		return nil
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// view runs fn in a read transaction of a fresh read-only handle, on its
// own goroutine, turning panics and memory faults into errors.
func (s *Salvage) view(what string, fn func(*bolt.Tx) error) error {
	done := make(chan error, 1)
	go func() {
		debug.SetPanicOnFault(true)
		var bdb *bolt.DB
		defer func() {
			if r := recover(); r != nil {
				if bdb != nil {
					func() {
						defer func() { _ = recover() }()
						_ = bdb.Close()
					}()
				}
				done <- fmt.Errorf("%w: %s: reading %s failed on damaged data: %v", ErrCorrupt, s.path, what, r)
			}
		}()
		var err error
		bdb, err = bolt.Open(s.path, 0o600, &bolt.Options{ReadOnly: true, Timeout: salvageTimeout})
		if err != nil {
			done <- openError(s.path, err)
			return
		}
		err = bdb.View(fn)
		if cerr := bdb.Close(); err == nil && cerr != nil {
			err = cerr
		}
		done <- err
	}()
	return <-done
}

// Versions returns every version whose record decodes, sorted like
// DB.Versions, and the keys of the records that do not.
func (s *Salvage) Versions() (vs []*Version, bad []string, err error) {
	err = s.view("its versions", func(tx *bolt.Tx) error {
		b := tx.Bucket(bktVersions)
		if b == nil {
			return fmt.Errorf("%w: %s has no versions bucket", ErrCorrupt, s.path)
		}
		vs, bad = nil, nil
		return b.ForEach(func(k, raw []byte) error {
			v, err := decodeVersion(k, raw)
			if err != nil || !validUID(v.UID) {
				bad = append(bad, fmt.Sprintf("%q", k))
				return nil
			}
			vs = append(vs, v)
			return nil
		})
	})
	if err != nil {
		return nil, nil, err
	}
	sortVersions(vs)
	return vs, bad, nil
}

// EncVersions returns the key registrations (none before schema 2).
func (s *Salvage) EncVersions() (map[uint16][]byte, error) {
	out := map[uint16][]byte{}
	err := s.view("its key registrations", func(tx *bolt.Tx) error {
		b := tx.Bucket(bktEncVersions)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			if len(k) == 2 && len(v) > 0 {
				out[binary.BigEndian.Uint16(k)] = bytes.Clone(v)
			}
			return nil
		})
	})
	return out, err
}

// WalkMap calls fn for each page of version uid's map, in order, with its
// entries and their records, checking what a damaged file could get
// wrong: the page list's length, each page present and matching its id,
// its encoding, and a record for every entry. It reads the whole map in
// one transaction (nothing else writes the file).
func (s *Salvage) WalkMap(uid string, fn func(MapChunk) error) error {
	return s.view("the map of "+uid, func(tx *bolt.Tx) error {
		maps, pages := tx.Bucket(bktMaps), tx.Bucket(bktPages)
		if maps == nil || pages == nil || tx.Bucket(bktBlocks) == nil {
			return fmt.Errorf("%w: %s lacks a bucket of block maps", ErrCorrupt, s.path)
		}
		raw := maps.Get([]byte(uid))
		if raw == nil {
			return fmt.Errorf("%w: version %s has no map", ErrCorrupt, uid)
		}
		list, err := decodePageList(uid, raw)
		if err != nil {
			return err
		}
		var first int64
		for i, pid := range list {
			enc := pages.Get(pid[:])
			if enc == nil {
				return fmt.Errorf("%w: page %d (%s) of version %s is missing", ErrCorrupt, i, pid, uid)
			}
			if blockmap.Sum(enc) != pid {
				return fmt.Errorf("%w: page %d (%s) of version %s does not match its id", ErrCorrupt, i, pid, uid)
			}
			ids, err := blockmap.Decode(enc)
			if err != nil {
				return fmt.Errorf("%w: page %d (%s) of version %s: %w", ErrCorrupt, i, pid, uid, err)
			}
			chunk, _, err := readChunk(tx, first, ids)
			if err != nil {
				return err
			}
			for j, ok := range chunk.Found {
				if !ok {
					return fmt.Errorf("%w: block %d (%s) of version %s has no record", ErrCorrupt, first+int64(j), ids[j].Short(), uid)
				}
			}
			if err := fn(chunk); err != nil {
				return err
			}
			first += int64(len(ids))
		}
		return nil
	})
}

func sortVersions(vs []*Version) {
	sort.SliceStable(vs, func(i, j int) bool {
		if !vs[i].Date.Equal(vs[j].Date) {
			return vs[i].Date.Before(vs[j].Date)
		}
		return vs[i].UID < vs[j].UID
	})
}
