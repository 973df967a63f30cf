package metastore

import (
	"encoding/binary"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/metastore/blockmap"
)

// PageWrite is the new content of one page position of a version's map:
// either an existing page taken verbatim (from a base version) or entries.
type PageWrite struct {
	reuse   bool
	id      blockmap.PageID
	entries []block.ID
}

// ReusePage takes an existing page as it is.
func ReusePage(id blockmap.PageID) PageWrite { return PageWrite{reuse: true, id: id} }

// NewPage makes a page of the given entries (at most blockmap.PageEntries).
func NewPage(entries []block.ID) PageWrite { return PageWrite{entries: entries} }

// Commit is one step of a writer (a backup) building a version's map.
type Commit struct {
	UID string
	// At is the first page position written. Positions before it stay;
	// positions from At on are replaced by Pages, and any beyond those are
	// dropped.
	At    int
	Pages []PageWrite
	// New holds the records of objects the writer stored for these pages.
	New []block.Record
	// Update, when set, changes the version record in the same transaction.
	Update func(*Version) error
}

// CommitResult reports what a commit left for the writer to tidy.
type CommitResult struct {
	// Redundant names objects the writer stored that another writer had
	// stored meanwhile (or that replaced nothing). They are in the trash;
	// the writer should delete them and call ForgetTrash.
	Redundant []block.Name
}

type txState struct {
	tx      *bolt.Tx
	blocks  *bolt.Bucket
	pages   *bolt.Bucket
	refs    *bolt.Bucket
	gc      *bolt.Bucket
	trash   *bolt.Bucket
	meta    *bolt.Bucket
	nowNano uint64
}

func (db *DB) state(tx *bolt.Tx) *txState {
	return &txState{
		tx: tx, blocks: tx.Bucket(bktBlocks), pages: tx.Bucket(bktPages), refs: tx.Bucket(bktPageRefs),
		gc: tx.Bucket(bktGC), trash: tx.Bucket(bktTrash), meta: tx.Bucket(bktMeta),
		nowNano: uint64(db.now().UnixNano()),
	}
}

func (s *txState) record(id block.ID) (storedRecord, bool, error) {
	v := s.blocks.Get(id[:])
	if v == nil {
		return storedRecord{}, false, nil
	}
	r, err := decodeRecord(id[:], v)
	return r, err == nil, err
}

func (s *txState) putRecord(r storedRecord) error {
	if err := s.blocks.Put(r.ID[:], encodeRecord(r)); err != nil {
		return err
	}
	if r.Refs == 0 {
		return s.gc.Put(r.ID[:], binary.BigEndian.AppendUint64(nil, s.nowNano))
	}
	return s.gc.Delete(r.ID[:])
}

// addRefs changes a block's reference count by delta.
func (s *txState) addRefs(id block.ID, delta int64) error {
	r, ok, err := s.record(id)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: page names block %s, which has no record", ErrCorrupt, id.Short())
	}
	n := int64(r.Refs) + delta
	if n < 0 {
		return fmt.Errorf("%w: block %s reference count below zero", ErrCorrupt, id.Short())
	}
	r.Refs = uint64(n)
	return s.putRecord(r)
}

func (s *txState) pageRefs(id blockmap.PageID) uint64 { return getU64(s.refs, id[:]) }

// acquirePage adds one reference to a page, creating it (and counting its
// blocks) if it is new. missing collects entries with no block record.
func (s *txState) acquirePage(w PageWrite, missing map[block.ID]bool) (blockmap.PageID, error) {
	if w.reuse {
		if s.pages.Get(w.id[:]) == nil {
			return w.id, fmt.Errorf("%w: page %s to reuse does not exist", ErrCorrupt, w.id)
		}
		return w.id, putU64(s.refs, w.id[:], s.pageRefs(w.id)+1)
	}
	enc := blockmap.Encode(w.entries)
	id := blockmap.Sum(enc)
	if n := s.pageRefs(id); n > 0 {
		return id, putU64(s.refs, id[:], n+1)
	}
	for _, e := range w.entries {
		if e.IsSparse() {
			continue
		}
		if s.blocks.Get(e[:]) == nil {
			missing[e] = true
		}
	}
	if len(missing) > 0 {
		return id, nil // the commit fails as a whole; nothing more to do here
	}
	if err := s.pages.Put(id[:], enc); err != nil {
		return id, err
	}
	if err := putU64(s.refs, id[:], 1); err != nil {
		return id, err
	}
	for _, e := range w.entries {
		if !e.IsSparse() {
			if err := s.addRefs(e, 1); err != nil {
				return id, err
			}
		}
	}
	return id, nil
}

// releasePage drops one reference to a page, deleting it and uncounting its
// blocks when it was the last.
func (s *txState) releasePage(id blockmap.PageID) error {
	n := s.pageRefs(id)
	if n > 1 {
		return putU64(s.refs, id[:], n-1)
	}
	raw := s.pages.Get(id[:])
	if raw == nil || n == 0 {
		return fmt.Errorf("%w: released page %s does not exist", ErrCorrupt, id)
	}
	entries, err := blockmap.Decode(raw)
	if err != nil {
		return fmt.Errorf("%w: page %s: %w", ErrCorrupt, id, err)
	}
	if err := s.pages.Delete(id[:]); err != nil {
		return err
	}
	if err := s.refs.Delete(id[:]); err != nil {
		return err
	}
	for _, e := range entries {
		if !e.IsSparse() {
			if err := s.addRefs(e, -1); err != nil {
				return err
			}
		}
	}
	return nil
}

func decodePageList(uid string, raw []byte) ([]blockmap.PageID, error) {
	if len(raw)%32 != 0 {
		return nil, fmt.Errorf("%w: map of %s has %d bytes", ErrCorrupt, uid, len(raw))
	}
	out := make([]blockmap.PageID, len(raw)/32)
	for i := range out {
		copy(out[i][:], raw[i*32:])
	}
	return out, nil
}

func encodePageList(ids []blockmap.PageID) []byte {
	out := make([]byte, 0, 32*len(ids))
	for i := range ids {
		out = append(out, ids[i][:]...)
	}
	return out
}

// addStored adjusts the store-wide counters for a record added (+1) or
// removed (-1).
func (s *txState) addStored(r block.Record, sign int64) error {
	if err := addU64(s.meta, keyBlocks, sign); err != nil {
		return err
	}
	if err := addU64(s.meta, keyStoredBytes, sign*int64(r.StoredSize)); err != nil {
		return err
	}
	if err := addU64(s.meta, keyPlainBytes, sign*int64(r.Size)); err != nil {
		return err
	}
	return addEncStat(s.tx.Bucket(bktEncStats), r.EncVersion, sign, sign*int64(r.StoredSize))
}

// Commit applies one step of a writer atomically: it records the new
// objects, replaces the map's pages from c.At on, moves every reference
// count, and updates the version. If a page names a block that has no
// record (deduplicated against a block that a cleanup has removed since),
// nothing is applied and a *MissingBlocksError lists those blocks.
func (db *DB) Commit(c Commit) (CommitResult, error) {
	var res CommitResult
	err := db.update(func(tx *bolt.Tx) error {
		res = CommitResult{}
		s := db.state(tx)
		rawV := tx.Bucket(bktVersions).Get([]byte(c.UID))
		if rawV == nil {
			return fmt.Errorf("%w: %s", ErrVersionNotFound, c.UID)
		}
		v, err := decodeVersion([]byte(c.UID), rawV)
		if err != nil {
			return err
		}
		for _, r := range c.New {
			old, ok, err := s.record(r.ID)
			if err != nil {
				return err
			}
			switch {
			case ok && old.Name == r.Name:
				// Already recorded by an earlier commit of this writer.
			case !ok:
				if err := s.putRecord(storedRecord{Record: r}); err != nil {
					return err
				}
				if err := s.addStored(r, 1); err != nil {
					return err
				}
			case old.Invalid:
				// A fresh copy of a block known damaged heals every
				// version that uses it; the damaged object goes.
				if err := s.trash.Put(old.Name[:], r.ID[:]); err != nil {
					return err
				}
				if err := s.addStored(old.Record, -1); err != nil {
					return err
				}
				if err := s.addStored(r, 1); err != nil {
					return err
				}
				if err := s.putRecord(storedRecord{Record: r, Refs: old.Refs}); err != nil {
					return err
				}
				if err := markRecordsChanged(tx); err != nil {
					return err
				}
			default:
				if err := s.trash.Put(r.Name[:], r.ID[:]); err != nil {
					return err
				}
				res.Redundant = append(res.Redundant, r.Name)
			}
		}
		maps := tx.Bucket(bktMaps)
		cur, err := decodePageList(c.UID, maps.Get([]byte(c.UID)))
		if err != nil {
			return err
		}
		if c.At < 0 || c.At > len(cur) {
			return fmt.Errorf("commit at page %d of a %d-page map", c.At, len(cur))
		}
		next := append([]blockmap.PageID(nil), cur[:c.At]...)
		missing := map[block.ID]bool{}
		for _, w := range c.Pages {
			id, err := s.acquirePage(w, missing)
			if err != nil {
				return err
			}
			next = append(next, id)
		}
		if len(missing) > 0 {
			e := &MissingBlocksError{}
			for id := range missing {
				e.IDs = append(e.IDs, id)
			}
			return e
		}
		for _, id := range cur[c.At:] {
			if err := s.releasePage(id); err != nil {
				return err
			}
		}
		if err := maps.Put([]byte(c.UID), encodePageList(next)); err != nil {
			return err
		}
		if c.Update != nil {
			if err := c.Update(v); err != nil {
				return err
			}
		}
		return putVersion(tx, v)
	})
	return res, err
}

// ForgetTrash removes names from the trash after the caller deleted their
// objects from the backend.
func (db *DB) ForgetTrash(names []block.Name) error {
	if len(names) == 0 {
		return nil
	}
	return db.update(func(tx *bolt.Tx) error {
		t := tx.Bucket(bktTrash)
		for _, n := range names {
			if err := t.Delete(n[:]); err != nil {
				return err
			}
		}
		return nil
	})
}

// PageList returns the page ids of a version's map, in block order.
func (db *DB) PageList(uid string) ([]blockmap.PageID, error) {
	var out []blockmap.PageID
	err := db.view(func(tx *bolt.Tx) error {
		raw := tx.Bucket(bktMaps).Get([]byte(uid))
		if raw == nil {
			return fmt.Errorf("%w: %s", ErrVersionNotFound, uid)
		}
		var err error
		out, err = decodePageList(uid, raw)
		return err
	})
	return out, err
}

// Page returns the entries of one page.
func (db *DB) Page(id blockmap.PageID) ([]block.ID, error) {
	var out []block.ID
	err := db.view(func(tx *bolt.Tx) error {
		raw := tx.Bucket(bktPages).Get(id[:])
		if raw == nil {
			return fmt.Errorf("%w: page %s missing", ErrCorrupt, id)
		}
		var err error
		out, err = blockmap.Decode(raw)
		return err
	})
	return out, err
}

// Lookup is the result of looking up one block identity.
type Lookup struct {
	Record block.Record
	Found  bool
}

// LookupBlocks looks up many block identities in one transaction; out[i]
// answers ids[i].
func (db *DB) LookupBlocks(ids []block.ID, out []Lookup) error {
	return db.view(func(tx *bolt.Tx) error {
		b := tx.Bucket(bktBlocks)
		for i, id := range ids {
			out[i] = Lookup{}
			if id.IsSparse() {
				continue
			}
			v := b.Get(id[:])
			if v == nil {
				continue
			}
			r, err := decodeRecord(id[:], v)
			if err != nil {
				return err
			}
			out[i] = Lookup{Record: r.Record, Found: true}
		}
		return nil
	})
}

// MapChunk is one page's worth of a version's block map with the records
// of its blocks.
type MapChunk struct {
	First   int64          // index of the first block
	IDs     []block.ID     // identities; block.Sparse for sparse blocks
	Records []block.Record // records; zero for sparse blocks
	Found   []bool         // false where a non-sparse block has no record
}

// WalkMap calls fn for each page of version uid's map, in order, with the
// page's entries and their records. Each page is read in its own short
// transaction, so fn may take its time; the caller holds a version lock so
// that the map cannot change meanwhile.
func (db *DB) WalkMap(uid string, fn func(MapChunk) error) error {
	pages, err := db.PageList(uid)
	if err != nil {
		return err
	}
	var first int64
	for _, pid := range pages {
		var chunk MapChunk
		err := db.view(func(tx *bolt.Tx) error {
			raw := tx.Bucket(bktPages).Get(pid[:])
			if raw == nil {
				return fmt.Errorf("%w: page %s of version %s missing", ErrCorrupt, pid, uid)
			}
			ids, err := blockmap.Decode(raw)
			if err != nil {
				return fmt.Errorf("%w: page %s: %w", ErrCorrupt, pid, err)
			}
			chunk, _, err = readChunk(tx, first, ids)
			return err
		})
		if err != nil {
			return err
		}
		if err := fn(chunk); err != nil {
			return err
		}
		first += int64(len(chunk.IDs))
	}
	return nil
}

// readChunk looks up the records of a page's entries. It also returns the
// positions whose record counts no reference (an inconsistency a scrub
// reports).
func readChunk(tx *bolt.Tx, first int64, ids []block.ID) (MapChunk, []int, error) {
	c := MapChunk{First: first, IDs: ids, Records: make([]block.Record, len(ids)), Found: make([]bool, len(ids))}
	var unreferenced []int
	b := tx.Bucket(bktBlocks)
	for i, id := range ids {
		if id.IsSparse() {
			c.Found[i] = true
			continue
		}
		v := b.Get(id[:])
		if v == nil {
			continue
		}
		r, err := decodeRecord(id[:], v)
		if err != nil {
			return c, nil, err
		}
		c.Records[i], c.Found[i] = r.Record, true
		if r.Refs == 0 {
			unreferenced = append(unreferenced, i)
		}
	}
	return c, unreferenced, nil
}

// LookupBlock looks up one block identity.
func (db *DB) LookupBlock(id block.ID) (block.Record, bool, error) {
	out := make([]Lookup, 1)
	err := db.LookupBlocks([]block.ID{id}, out)
	return out[0].Record, out[0].Found, err
}

// removeBatchPages bounds the pages released per transaction, so that
// removing a huge version never builds a huge transaction.
const removeBatchPages = 32

// BeginRemoval marks version uid incomplete and being removed, in one
// transaction: from then on no snapshot of it is written, nothing uses it
// as a base, and a removal cut short is finished by RemoveVersion (or
// versions.FinishRemovals). RemoveVersion does it first itself; a remover
// that deletes other copies of the version first (its metadata in the data
// backend) calls it before, so that a kill in between never leaves a
// complete version whose copy is gone.
func (db *DB) BeginRemoval(uid string) error {
	_, err := db.UpdateVersion(uid, func(v *Version) error {
		v.Status = StatusIncomplete
		v.Removing = true
		return nil
	})
	return err
}

// RemoveVersion deletes a version and its map, releasing its pages (and
// thereby its blocks) in bounded transactions. A removal cut short (crash)
// leaves the version marked incomplete and "removing"; running it again
// finishes the job. The caller holds the version's exclusive lock.
func (db *DB) RemoveVersion(uid string) error {
	if err := db.BeginRemoval(uid); err != nil {
		return err
	}
	for {
		done := false
		err := db.update(func(tx *bolt.Tx) error {
			s := db.state(tx)
			maps := tx.Bucket(bktMaps)
			cur, err := decodePageList(uid, maps.Get([]byte(uid)))
			if err != nil {
				return err
			}
			cut := max(0, len(cur)-removeBatchPages)
			for _, id := range cur[cut:] {
				if err := s.releasePage(id); err != nil {
					return err
				}
			}
			if cut > 0 {
				return maps.Put([]byte(uid), encodePageList(cur[:cut]))
			}
			done = true
			if err := maps.Delete([]byte(uid)); err != nil {
				return err
			}
			if err := tx.Bucket(bktVMeta).Delete([]byte(uid)); err != nil {
				return err
			}
			return tx.Bucket(bktVersions).Delete([]byte(uid))
		})
		if err != nil {
			return fmt.Errorf("removing version %s: %w", uid, err)
		}
		if done {
			db.removeVersionLock(uid)
			return nil
		}
	}
}

// MarkInvalid records that the given blocks are damaged or missing: their
// records are flagged invalid (so no backup deduplicates against them) and
// every version whose map names one of them becomes invalid. It returns
// the uids of those versions. It scans every page, so it costs time in
// proportion to the metastore; it runs only when damage is found.
func (db *DB) MarkInvalid(ids []block.ID) ([]string, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	bad := map[block.ID]bool{}
	for _, id := range ids {
		bad[id] = true
	}
	var uids []string
	err := db.update(func(tx *bolt.Tx) error {
		uids = uids[:0]
		s := db.state(tx)
		for id := range bad {
			r, ok, err := s.record(id)
			if err != nil {
				return err
			}
			if ok && !r.Invalid {
				r.Invalid = true
				if err := s.putRecord(r); err != nil {
					return err
				}
			}
		}
		badPages := map[blockmap.PageID]bool{}
		err := s.pages.ForEach(func(k, v []byte) error {
			entries, err := blockmap.Decode(v)
			if err != nil {
				return fmt.Errorf("%w: page %x: %w", ErrCorrupt, k, err)
			}
			for _, e := range entries {
				if bad[e] {
					var id blockmap.PageID
					copy(id[:], k)
					badPages[id] = true
					break
				}
			}
			return nil
		})
		if err != nil || len(badPages) == 0 {
			return err
		}
		return tx.Bucket(bktMaps).ForEach(func(k, v []byte) error {
			pl, err := decodePageList(string(k), v)
			if err != nil {
				return err
			}
			for _, p := range pl {
				if !badPages[p] {
					continue
				}
				raw := tx.Bucket(bktVersions).Get(k)
				if raw == nil {
					return nil
				}
				ver, err := decodeVersion(k, raw)
				if err != nil {
					return err
				}
				uids = append(uids, ver.UID)
				if ver.Status == StatusValid {
					ver.Status = StatusInvalid
					return putVersion(tx, ver)
				}
				// Its snapshot carries the records' invalid flags.
				return markChanged(tx, ver.UID)
			}
			return nil
		})
	})
	return uids, err
}
