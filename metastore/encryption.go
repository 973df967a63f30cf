package metastore

import (
	"bytes"
	"encoding/binary"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/metastore/blockmap"
)

// EncStat counts the block records stored at one encryption version.
type EncStat struct {
	Blocks      int64 `json:"blocks"`
	StoredBytes int64 `json:"stored_bytes"`
}

func encKey(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }

func decodeEncStat(v []byte) (EncStat, bool) {
	if len(v) != 16 {
		return EncStat{}, false
	}
	return EncStat{Blocks: int64(binary.BigEndian.Uint64(v)), StoredBytes: int64(binary.BigEndian.Uint64(v[8:]))}, true
}

// addEncStat adjusts the statistics of encryption version v by the given
// deltas; an entry whose block count reaches zero is deleted.
func addEncStat(b *bolt.Bucket, v uint16, blocks, stored int64) error {
	k := encKey(v)
	cur, _ := decodeEncStat(b.Get(k))
	cur.Blocks = max(0, cur.Blocks+blocks)
	cur.StoredBytes = max(0, cur.StoredBytes+stored)
	if cur.Blocks == 0 {
		return b.Delete(k)
	}
	val := binary.BigEndian.AppendUint64(nil, uint64(cur.Blocks))
	return b.Put(k, binary.BigEndian.AppendUint64(val, uint64(cur.StoredBytes)))
}

// EncStats returns the number and stored size of block records per
// encryption version (versions without blocks are absent).
func (db *DB) EncStats() (map[uint16]EncStat, error) {
	out := map[uint16]EncStat{}
	err := db.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bktEncStats).ForEach(func(k, v []byte) error {
			st, ok := decodeEncStat(v)
			if len(k) != 2 || !ok {
				return fmt.Errorf("%w: encstats entry %x", ErrCorrupt, k)
			}
			out[binary.BigEndian.Uint16(k)] = st
			return nil
		})
	})
	return out, err
}

// EncVersions returns the key registrations of every registered encryption
// version. The bytes are opaque to the metastore (package
// blockstore/keyring defines them).
func (db *DB) EncVersions() (map[uint16][]byte, error) {
	out := map[uint16][]byte{}
	err := db.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bktEncVersions).ForEach(func(k, v []byte) error {
			if len(k) != 2 {
				return fmt.Errorf("%w: encversions key %x", ErrCorrupt, k)
			}
			out[binary.BigEndian.Uint16(k)] = bytes.Clone(v)
			return nil
		})
	})
	return out, err
}

// RegisterEncVersion records reg as the key registration of encryption
// version v unless v is registered already. It returns the registration
// in force afterwards: reg, or the one another process recorded first.
func (db *DB) RegisterEncVersion(v uint16, reg []byte) ([]byte, error) {
	if v == 0 || len(reg) == 0 {
		return nil, fmt.Errorf("registering encryption version %d: version must be >= 1 and the registration non-empty", v)
	}
	var out []byte
	err := db.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bktEncVersions)
		if cur := b.Get(encKey(v)); cur != nil {
			out = bytes.Clone(cur)
			return nil
		}
		out = bytes.Clone(reg)
		return b.Put(encKey(v), reg)
	})
	return out, err
}

// Replacement switches a block's record to a new object holding the same
// block (written by migrate-encryption at another encryption version).
type Replacement struct {
	// Old is the object the record must still point to.
	Old block.Name
	// New is the record of the new, durable object.
	New block.Record
}

// ReplaceResult says what ReplaceObjects did. Both lists name objects now
// in the trash: the caller deletes them and calls ForgetTrash.
type ReplaceResult struct {
	// Replaced holds the old objects of the records that were switched.
	Replaced []block.Name
	// Skipped holds the new objects of replacements that were not applied
	// because the record changed meanwhile (removed, marked invalid, or
	// switched by another process).
	Skipped []block.Name
}

// ReplaceObjects applies replacements in one transaction. A replacement is
// applied only if the block's record still points to Old and is not marked
// invalid; its reference count is kept and the store counters move from the
// old object to the new.
func (db *DB) ReplaceObjects(reps []Replacement) (ReplaceResult, error) {
	var res ReplaceResult
	if len(reps) == 0 {
		return res, nil
	}
	err := db.update(func(tx *bolt.Tx) error {
		res = ReplaceResult{}
		s := db.state(tx)
		for _, rep := range reps {
			r, ok, err := s.record(rep.New.ID)
			if err != nil {
				return err
			}
			if !ok || r.Name != rep.Old || r.Invalid || rep.New.Size != r.Size {
				if err := s.trash.Put(rep.New.Name[:], rep.New.ID[:]); err != nil {
					return err
				}
				res.Skipped = append(res.Skipped, rep.New.Name)
				continue
			}
			if err := s.addStored(r.Record, -1); err != nil {
				return err
			}
			if err := s.addStored(rep.New, 1); err != nil {
				return err
			}
			nr := storedRecord{Record: rep.New, Refs: r.Refs}
			nr.Invalid = false
			// The reference count is unchanged, so is the gc entry (and
			// the time an unreferenced block entered it).
			if err := s.blocks.Put(nr.ID[:], encodeRecord(nr)); err != nil {
				return err
			}
			if err := s.trash.Put(rep.Old[:], rep.New.ID[:]); err != nil {
				return err
			}
			res.Replaced = append(res.Replaced, rep.Old)
		}
		if len(res.Replaced) > 0 {
			return markRecordsChanged(tx)
		}
		return nil
	})
	return res, err
}

// BlocksBelow scans the block records after the identity after (exclusive;
// block.Sparse, the all-zero identity no record has, starts at the
// beginning) and returns those with an encryption
// version below target that are not marked invalid. It looks at no more
// than scan records per call and returns the last identity it looked at;
// done reports that the scan reached the end.
func (db *DB) BlocksBelow(target uint16, after block.ID, scan int) (recs []block.Record, last block.ID, done bool, err error) {
	if scan <= 0 {
		scan = 4096
	}
	err = db.view(func(tx *bolt.Tx) error {
		recs, done, last = nil, false, after
		c := tx.Bucket(bktBlocks).Cursor()
		k, v := c.Seek(after[:])
		if k != nil && bytes.Equal(k, after[:]) {
			k, v = c.Next()
		}
		for n := 0; n < scan; n++ {
			if k == nil {
				done = true
				return nil
			}
			r, err := decodeRecord(k, v)
			if err != nil {
				return err
			}
			last = r.ID
			if r.EncVersion < target && !r.Invalid {
				recs = append(recs, r.Record)
			}
			k, v = c.Next()
		}
		done = k == nil
		return nil
	})
	return recs, last, done, err
}

// TrashEntry is an object waiting in the trash to be deleted.
type TrashEntry struct {
	Name block.Name
	ID   block.ID
}

// Trash returns up to limit objects waiting in the trash: objects no record
// points to any more, whose deletion a crash interrupted.
func (db *DB) Trash(limit int) ([]TrashEntry, error) {
	var out []TrashEntry
	err := db.view(func(tx *bolt.Tx) error {
		out = nil
		c := tx.Bucket(bktTrash).Cursor()
		for k, v := c.First(); k != nil && len(out) < limit; k, v = c.Next() {
			if len(k) != block.NameSize || len(v) != block.IDSize {
				return fmt.Errorf("%w: trash entry %x", ErrCorrupt, k)
			}
			var e TrashEntry
			copy(e.Name[:], k)
			copy(e.ID[:], v)
			out = append(out, e)
		}
		return nil
	})
	return out, err
}

// EncVersionsOf counts the block references of version uid per encryption
// version of the blocks (sparse blocks are not counted). It reads each
// distinct page of the map once, in short transactions.
func (db *DB) EncVersionsOf(uid string) (map[uint16]int64, error) {
	pages, err := db.PageList(uid)
	if err != nil {
		return nil, err
	}
	counts := map[blockmap.PageID]int64{}
	order := make([]blockmap.PageID, 0, len(pages))
	for _, p := range pages {
		if counts[p] == 0 {
			order = append(order, p)
		}
		counts[p]++
	}
	out := map[uint16]int64{}
	for _, pid := range order {
		err := db.view(func(tx *bolt.Tx) error {
			raw := tx.Bucket(bktPages).Get(pid[:])
			if raw == nil {
				return fmt.Errorf("%w: page %s of version %s missing", ErrCorrupt, pid, uid)
			}
			ids, err := blockmap.Decode(raw)
			if err != nil {
				return fmt.Errorf("%w: page %s: %w", ErrCorrupt, pid, err)
			}
			b := tx.Bucket(bktBlocks)
			for _, id := range ids {
				if id.IsSparse() {
					continue
				}
				v := b.Get(id[:])
				if v == nil {
					continue // restore reports missing records itself
				}
				r, err := decodeRecord(id[:], v)
				if err != nil {
					return err
				}
				out[r.EncVersion] += counts[pid]
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}
