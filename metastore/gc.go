package metastore

import (
	"bytes"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/backy/backy/internal/block"
)

// Garbage collection (backy cleanup).
//
// A block enters the gc bucket in the transaction in which its reference
// count reaches zero, and leaves it in the one in which it rises again.
// CollectGarbage removes, in one transaction, records whose count it finds
// zero in that same transaction, and moves their objects to the trash; the
// caller then deletes the objects and calls ForgetTrash. A writer that
// deduplicated against such a block before its record went finds it
// missing in its own commit transaction (MissingBlocksError) and stores
// the block again; a writer that committed first raised the count, so the
// block is not collected. bbolt serialises the two transactions, so no
// grace period and no clock are involved.

// Collected is one batch of garbage collection: records deleted and whose
// objects are now in the trash.
type Collected struct {
	// Records are the deleted block records (reference count zero); their
	// objects are in the trash.
	Records []block.Record
	// Stale counts gc entries that named no zero-count record (an entry
	// left by an older version of backy); they were dropped.
	Stale int
	// Kept counts zero-count blocks left alone (CollectGarbageKeeping).
	Kept int
	// Last is the last gc key looked at; pass it as after to continue.
	Last block.ID
	// Done reports that the gc bucket was scanned to its end.
	Done bool
}

// CollectGarbage looks at up to limit entries of the gc bucket after the
// identity after (exclusive; block.Sparse starts at the beginning) and, in
// one transaction, deletes every block record among them whose reference
// count is still zero: record and gc entry go, the store counters and
// encryption statistics drop, and the object's name goes to the trash. The
// caller deletes the objects from the backend and then calls ForgetTrash.
func (db *DB) CollectGarbage(after block.ID, limit int) (Collected, error) {
	return db.CollectGarbageKeeping(after, limit, nil)
}

// CollectGarbageKeeping is CollectGarbage that leaves alone (record, gc
// entry and object) every zero-count block for which keep returns true:
// blocks that a version the metastore does not know (its metadata is only
// in the backend) still uses. They are counted in Collected.Kept.
func (db *DB) CollectGarbageKeeping(after block.ID, limit int, keep func(block.Record) bool) (Collected, error) {
	if limit <= 0 {
		limit = 1024
	}
	var res Collected
	err := db.update(func(tx *bolt.Tx) error {
		res = Collected{Last: after}
		s := db.state(tx)
		// Collect the keys first: deleting under a bbolt cursor skips keys.
		var ids []block.ID
		c := s.gc.Cursor()
		k, _ := c.Seek(after[:])
		if k != nil && bytes.Equal(k, after[:]) {
			k, _ = c.Next()
		}
		for ; k != nil && len(ids) < limit; k, _ = c.Next() {
			if len(k) != block.IDSize {
				return fmt.Errorf("%w: gc entry %x", ErrCorrupt, k)
			}
			var id block.ID
			copy(id[:], k)
			ids = append(ids, id)
		}
		res.Done = k == nil
		for _, id := range ids {
			res.Last = id
			r, ok, err := s.record(id)
			if err != nil {
				return err
			}
			if !ok || r.Refs != 0 {
				// The bucket holds exactly the zero-count records (Check);
				// an entry that does not is dropped, never acted on.
				res.Stale++
				if err := s.gc.Delete(id[:]); err != nil {
					return err
				}
				continue
			}
			if keep != nil && keep(r.Record) {
				res.Kept++
				continue
			}
			if err := s.blocks.Delete(id[:]); err != nil {
				return err
			}
			if err := s.gc.Delete(id[:]); err != nil {
				return err
			}
			if err := s.addStored(r.Record, -1); err != nil {
				return err
			}
			if err := s.trash.Put(r.Name[:], id[:]); err != nil {
				return err
			}
			res.Records = append(res.Records, r.Record)
		}
		return nil
	})
	return res, err
}

// RecordedNames scans up to scan block records after the identity after
// (exclusive; block.Sparse starts at the beginning) and returns the object
// names among them whose first byte lies in [lo, hi] (the 2-hex-digit
// shard of ObjectName). It returns the last identity looked at; done
// reports that the scan reached the end. The orphan sweep builds, shard
// range by shard range, the set of names the metastore knows from it.
func (db *DB) RecordedNames(lo, hi byte, after block.ID, scan int) (names []block.Name, last block.ID, done bool, err error) {
	if scan <= 0 {
		scan = 65536
	}
	err = db.view(func(tx *bolt.Tx) error {
		names, done, last = nil, false, after
		c := tx.Bucket(bktBlocks).Cursor()
		k, v := c.Seek(after[:])
		if k != nil && bytes.Equal(k, after[:]) {
			k, v = c.Next()
		}
		for n := 0; n < scan && k != nil; n++ {
			if len(k) != block.IDSize || len(v) != recordSize {
				return fmt.Errorf("%w: block record %x: bad encoding (%d bytes)", ErrCorrupt, k, len(v))
			}
			copy(last[:], k)
			// The name is at offset 5 of the record (see encodeRecord).
			if b := v[5]; b >= lo && b <= hi {
				var name block.Name
				copy(name[:], v[5:5+block.NameSize])
				names = append(names, name)
			}
			k, v = c.Next()
		}
		done = k == nil
		return nil
	})
	return names, last, done, err
}

// InTrash reports, for each name, whether the trash lists it.
func (db *DB) InTrash(names []block.Name) ([]bool, error) {
	out := make([]bool, len(names))
	err := db.view(func(tx *bolt.Tx) error {
		t := tx.Bucket(bktTrash)
		for i, n := range names {
			out[i] = t.Get(n[:]) != nil
		}
		return nil
	})
	return out, err
}
