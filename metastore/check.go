package metastore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/metastore/blockmap"
)

// Check verifies the metastore's internal consistency: every map's pages
// exist, every page and block reference count equals the references that
// actually exist, every page entry has a block record, the gc bucket holds
// exactly the unreferenced blocks, and the store counters add up. It
// returns every problem found (nil when consistent). It holds a read
// transaction for its whole run and memory proportional to the number of
// distinct blocks, so it is meant for tests and scrubs, not hot paths.
func (db *DB) Check() ([]error, error) {
	var problems []error
	report := func(format string, args ...any) {
		problems = append(problems, fmt.Errorf("%w: "+format, append([]any{ErrCorrupt}, args...)...))
	}
	err := db.view(func(tx *bolt.Tx) error {
		pageUse := map[blockmap.PageID]uint64{}
		err := tx.Bucket(bktMaps).ForEach(func(k, v []byte) error {
			if tx.Bucket(bktVersions).Get(k) == nil {
				report("map %q has no version", k)
			}
			ids, err := decodePageList(string(k), v)
			if err != nil {
				report("%v", err)
				return nil
			}
			for _, id := range ids {
				pageUse[id]++
			}
			return nil
		})
		if err != nil {
			return err
		}
		_ = tx.Bucket(bktVersions).ForEach(func(k, _ []byte) error {
			if tx.Bucket(bktMaps).Get(k) == nil {
				report("version %s has no map", k)
			}
			return nil
		})
		blockUse := map[block.ID]uint64{}
		pages := tx.Bucket(bktPages)
		refs := tx.Bucket(bktPageRefs)
		_ = pages.ForEach(func(k, v []byte) error {
			var id blockmap.PageID
			copy(id[:], k)
			if got := getU64(refs, k); got != pageUse[id] {
				report("page %s counts %d references, maps hold %d", id, got, pageUse[id])
			}
			if blockmap.Sum(v) != id {
				report("page %s does not match its id", id)
			}
			entries, err := blockmap.Decode(v)
			if err != nil {
				report("page %s: %v", id, err)
				return nil
			}
			for _, e := range entries {
				if !e.IsSparse() {
					blockUse[e]++
				}
			}
			return nil
		})
		for id := range pageUse {
			if pages.Get(id[:]) == nil {
				report("page %s listed by a map does not exist", id)
			}
		}
		_ = refs.ForEach(func(k, _ []byte) error {
			if pages.Get(k) == nil {
				report("reference count for missing page %x", k)
			}
			return nil
		})
		var nBlocks, stored, plain uint64
		enc := map[uint16]EncStat{}
		encUsed := map[uint16]bool{}
		gc := tx.Bucket(bktGC)
		_ = tx.Bucket(bktBlocks).ForEach(func(k, v []byte) error {
			r, err := decodeRecord(k, v)
			if err != nil {
				report("%v", err)
				return nil
			}
			nBlocks++
			stored += uint64(r.StoredSize)
			plain += uint64(r.Size)
			st := enc[r.EncVersion]
			st.Blocks++
			st.StoredBytes += int64(r.StoredSize)
			enc[r.EncVersion] = st
			encUsed[r.EncVersion] = true
			if r.Refs != blockUse[r.ID] {
				report("block %s counts %d references, pages hold %d", r.ID.Short(), r.Refs, blockUse[r.ID])
			}
			if (r.Refs == 0) != (gc.Get(k) != nil) {
				report("block %s with %d references is wrongly (un)listed for gc", r.ID.Short(), r.Refs)
			}
			delete(blockUse, r.ID)
			return nil
		})
		for id := range blockUse {
			report("block %s is used by a page but has no record", id.Short())
		}
		_ = gc.ForEach(func(k, _ []byte) error {
			if tx.Bucket(bktBlocks).Get(k) == nil {
				report("gc lists block %x, which has no record", k)
			}
			return nil
		})
		m := tx.Bucket(bktMeta)
		if getU64(m, keyBlocks) != nBlocks || getU64(m, keyStoredBytes) != stored || getU64(m, keyPlainBytes) != plain {
			report("store counters (%d blocks, %d stored, %d plain) differ from the records (%d, %d, %d)",
				getU64(m, keyBlocks), getU64(m, keyStoredBytes), getU64(m, keyPlainBytes), nBlocks, stored, plain)
		}
		_ = tx.Bucket(bktEncStats).ForEach(func(k, v []byte) error {
			got, ok := decodeEncStat(v)
			if len(k) != 2 || !ok {
				report("encstats entry %x is malformed", k)
				return nil
			}
			ev := binary.BigEndian.Uint16(k)
			if want := enc[ev]; got != want {
				report("encryption version %d counts %d blocks of %d bytes, the records hold %d of %d", ev, got.Blocks, got.StoredBytes, want.Blocks, want.StoredBytes)
			}
			delete(enc, ev)
			return nil
		})
		for ev, want := range enc {
			report("encryption version %d has %d block records but no statistics", ev, want.Blocks)
		}
		for ev := range encUsed {
			if ev != 0 && tx.Bucket(bktEncVersions).Get(encKey(ev)) == nil {
				report("blocks are stored at encryption version %d, which is not registered", ev)
			}
		}
		gen := getU64(m, keyGen)
		_ = tx.Bucket(bktVMeta).ForEach(func(k, v []byte) error {
			if tx.Bucket(bktVersions).Get(k) == nil {
				report("vmeta entry for version %q, which does not exist", k)
			}
			st := decodeVMeta(v)
			if len(v) != vmetaSize || st.Changed > gen || st.Gen > gen {
				report("vmeta entry of %s is malformed or ahead of generation %d", k, gen)
			}
			return nil
		})
		_ = tx.Bucket(bktEncVersions).ForEach(func(k, v []byte) error {
			if len(k) != 2 || binary.BigEndian.Uint16(k) == 0 || len(v) == 0 {
				report("encversions entry %x is malformed", k)
			}
			return nil
		})
		return nil
	})
	return problems, err
}

// Inspect says whether the metastore file at path is sound for the store
// storeID: it returns a problem (nil when it opens at the current schema
// or an older one, belongs to the store and passes Check) or an error when
// it could not look at all. It takes no store lock: the caller (rebuild)
// holds the store exclusively.
func Inspect(path string, storeID [16]byte) (problem error, err error) {
	defer func() {
		if r := recover(); r != nil { // bbolt panics on some damage
			problem, err = fmt.Errorf("%w: %v", ErrCorrupt, r), nil
		}
	}()
	db := &DB{path: path, opts: Options{LockTimeout: 10 * time.Second}}
	err = db.view(func(tx *bolt.Tx) error {
		m := tx.Bucket(bktMeta)
		if m == nil || len(m.Get(keySchema)) != 4 {
			return fmt.Errorf("%w: no schema version", ErrNotBacky)
		}
		if s := int(binary.BigEndian.Uint32(m.Get(keySchema))); s > CurrentSchema {
			return fmt.Errorf("%w: schema %d, this backy reads up to %d", ErrNewerSchema, s, CurrentSchema)
		} else if s < CurrentSchema {
			return fmt.Errorf("%w: schema %d (a healthy older metastore is upgraded by any command; rebuilding is not needed)", ErrOlderSchema, s)
		}
		id, bs := m.Get(keyStoreID), m.Get(keyBlockSize)
		if len(id) != 16 || len(bs) != 8 || [16]byte(id) != storeID {
			return fmt.Errorf("%w: it belongs to another store, or lacks its identity", ErrCorrupt)
		}
		db.storeID, db.blockSize = storeID, int64(binary.BigEndian.Uint64(bs))
		for _, b := range allBuckets {
			if tx.Bucket(b) == nil {
				return fmt.Errorf("%w: bucket %q missing", ErrCorrupt, b)
			}
		}
		return nil
	})
	switch {
	case errors.Is(err, ErrBusy):
		return nil, err
	case errors.Is(err, ErrOlderSchema):
		// Sound as far as this backy can tell: any command upgrades it.
		return nil, nil
	case err != nil:
		return err, nil
	}
	problems, err := db.Check()
	if err != nil {
		return err, nil
	}
	if len(problems) > 0 {
		return fmt.Errorf("%d inconsistencies, the first: %w", len(problems), problems[0]), nil
	}
	// The pages themselves, as bbolt sees them (after Check, which read
	// every page a bucket holds here, under guard): a freelist a writer
	// can use (a damaged one stops every write while reads still work),
	// every page reachable or free exactly once, keys in order.
	err = precheck(path, true, 10*time.Second)
	if err == nil {
		err = db.view(func(tx *bolt.Tx) error {
			// Drained to the end: the checking goroutine reads the
			// map, which must stay open until it is done.
			var first error
			for err := range tx.Check() {
				if first == nil {
					first = damaged(path, err)
				}
			}
			return first
		})
	}
	return err, nil
}
