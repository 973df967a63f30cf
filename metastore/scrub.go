package metastore

import (
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/metastore/blockmap"
)

// ScrubChunk is one page position of a version's map as a scrub sees it:
// the page's entries with their records (as WalkMap gives them) and what
// is wrong with the page or its entries in the metastore.
type ScrubChunk struct {
	MapChunk
	// Page is the position of the page in the map; PageID its id.
	Page   int
	PageID blockmap.PageID
	// Problem says why the page itself is unusable (missing, not matching
	// its id, undecodable, not reference-counted); IDs is then empty and
	// First is the position the page would start at.
	Problem string
	// Unreferenced lists the entries (indexes into IDs) whose block record
	// counts no reference although this page names it.
	Unreferenced []int
}

// checkPage reads page pid in tx, checking that it exists, matches its id,
// decodes and is reference-counted. It returns the entries, or a problem.
func checkPage(tx *bolt.Tx, pid blockmap.PageID) ([]block.ID, string) {
	raw := tx.Bucket(bktPages).Get(pid[:])
	switch {
	case raw == nil:
		return nil, fmt.Sprintf("page %s does not exist", pid)
	case blockmap.Sum(raw) != pid:
		return nil, fmt.Sprintf("page %s does not match its id", pid)
	case getU64(tx.Bucket(bktPageRefs), pid[:]) == 0:
		return nil, fmt.Sprintf("page %s counts no reference", pid)
	}
	ids, err := blockmap.Decode(raw)
	if err != nil {
		return nil, fmt.Sprintf("page %s: %v", pid, err)
	}
	return ids, ""
}

// ScrubMap calls fn for each page position of version uid's map, in order,
// like WalkMap, but a page or entry in a bad state does not stop the walk:
// it is described in the chunk. Each page is read in its own short
// transaction; the caller holds a version lock. Only an unreadable page
// list (or fn's error) ends the walk with an error.
func (db *DB) ScrubMap(uid string, fn func(ScrubChunk) error) error {
	pages, err := db.PageList(uid)
	if err != nil {
		return err
	}
	var first int64
	for i, pid := range pages {
		c := ScrubChunk{Page: i, PageID: pid}
		err := db.view(func(tx *bolt.Tx) error {
			ids, problem := checkPage(tx, pid)
			if problem != "" {
				c.Problem = problem
				c.MapChunk = MapChunk{First: first}
				return nil
			}
			var err error
			c.MapChunk, c.Unreferenced, err = readChunk(tx, first, ids)
			return err
		})
		if err != nil {
			return err
		}
		if err := fn(c); err != nil {
			return err
		}
		if c.Problem != "" {
			first += blockmap.PageEntries // every page but the last is full
		} else {
			first += int64(len(c.IDs))
		}
	}
	return nil
}

// versionSound reports whether version v is complete and whole in tx: not
// being removed, every block backed up (blocks_done and the map both cover
// the version's size), every page present, matching its id and counted,
// every page but the last full, and every non-sparse entry naming a block
// record that is counted and not invalid.
func versionSound(tx *bolt.Tx, v *Version) (bool, error) {
	n := v.Blocks()
	if v.Removing || v.BlocksDone != n {
		return false, nil
	}
	pl, err := decodePageList(v.UID, tx.Bucket(bktMaps).Get([]byte(v.UID)))
	if err != nil {
		return false, nil
	}
	if int64(len(pl)) != (n+blockmap.PageEntries-1)/blockmap.PageEntries {
		return false, nil
	}
	blocks := tx.Bucket(bktBlocks)
	var total int64
	for i, pid := range pl {
		ids, problem := checkPage(tx, pid)
		if problem != "" {
			return false, nil
		}
		if i < len(pl)-1 && len(ids) != blockmap.PageEntries {
			return false, nil
		}
		total += int64(len(ids))
		for _, id := range ids {
			if id.IsSparse() {
				continue
			}
			raw := blocks.Get(id[:])
			if raw == nil {
				return false, nil
			}
			r, err := decodeRecord(id[:], raw)
			if err != nil {
				return false, err
			}
			if r.Invalid || r.Refs == 0 {
				return false, nil
			}
		}
	}
	return total == n, nil
}

// Revalidate makes version uid valid again if it is invalid and now sound:
// complete, its map whole, and no block of its map invalid (see
// MarkValid). It reports whether the status changed. Valid and incomplete
// versions are left as they are.
func (db *DB) Revalidate(uid string) (bool, error) {
	changed := false
	err := db.update(func(tx *bolt.Tx) error {
		changed = false
		raw := tx.Bucket(bktVersions).Get([]byte(uid))
		if raw == nil {
			return fmt.Errorf("%w: %s", ErrVersionNotFound, uid)
		}
		v, err := decodeVersion([]byte(uid), raw)
		if err != nil || v.Status != StatusInvalid {
			return err
		}
		ok, err := versionSound(tx, v)
		if err != nil || !ok {
			return err
		}
		v.Status = StatusValid
		changed = true
		return putVersion(tx, v)
	})
	return changed, err
}

// MarkValid records that the given blocks were read and verified intact
// (by a deep-scrub): each record that is invalid and still names the
// object that was verified (rec.Name; a record switched meanwhile is left
// alone) becomes valid again, and every invalid version whose map names
// one of those blocks becomes valid if it is now sound (see Revalidate).
// It returns the healed block ids and the uids of the versions made valid.
// Like MarkInvalid it scans every page, in one transaction; it runs only
// when damage was healed.
func (db *DB) MarkValid(recs []block.Record) ([]block.ID, []string, error) {
	if len(recs) == 0 {
		return nil, nil, nil
	}
	var healed []block.ID
	var uids []string
	err := db.update(func(tx *bolt.Tx) error {
		healed, uids = healed[:0], uids[:0]
		s := db.state(tx)
		good := map[block.ID]bool{}
		for _, want := range recs {
			r, ok, err := s.record(want.ID)
			if err != nil {
				return err
			}
			if !ok || !r.Invalid || r.Name != want.Name || good[r.ID] {
				continue
			}
			r.Invalid = false
			if err := s.putRecord(r); err != nil {
				return err
			}
			good[r.ID] = true
			healed = append(healed, r.ID)
		}
		if len(good) == 0 {
			return nil
		}
		goodPages := map[blockmap.PageID]bool{}
		err := s.pages.ForEach(func(k, v []byte) error {
			entries, err := blockmap.Decode(v)
			if err != nil {
				return nil // reported by scrubs of the versions using it
			}
			for _, e := range entries {
				if good[e] {
					var id blockmap.PageID
					copy(id[:], k)
					goodPages[id] = true
					break
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		versions := tx.Bucket(bktVersions)
		var candidates []*Version
		err = tx.Bucket(bktMaps).ForEach(func(k, v []byte) error {
			raw := versions.Get(k)
			if raw == nil {
				return nil
			}
			ver, err := decodeVersion(k, raw)
			if err != nil || ver.Status != StatusInvalid {
				return nil
			}
			pl, err := decodePageList(string(k), v)
			if err != nil {
				return nil
			}
			for _, p := range pl {
				if goodPages[p] {
					candidates = append(candidates, ver)
					break
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, ver := range candidates {
			ok, err := versionSound(tx, ver)
			if err != nil {
				return err
			}
			if !ok {
				continue
			}
			ver.Status = StatusValid
			if err := putVersion(tx, ver); err != nil {
				return err
			}
			uids = append(uids, ver.UID)
		}
		return nil
	})
	return healed, uids, err
}

// MarkVersionInvalid makes a valid version invalid (a scrub found its map
// damaged in a way no block record can carry: a page missing, an entry
// without a record). It reports whether the status changed.
func (db *DB) MarkVersionInvalid(uid string) (bool, error) {
	changed := false
	_, err := db.UpdateVersion(uid, func(v *Version) error {
		changed = v.Status == StatusValid
		if changed {
			v.Status = StatusInvalid
		}
		return nil
	})
	return changed, err
}

// SetLastScrub records the outcome of a scrub of version uid: as its
// LastScrub and, for a deep-scrub, as its LastDeepScrub.
// The snapshot in the backend is not refreshed for it (a nightly scrub of
// every version would rewrite every snapshot); it carries the outcome
// known when it was last written.
func (db *DB) SetLastScrub(uid string, r ScrubRecord) error {
	return db.update(func(tx *bolt.Tx) error {
		raw := tx.Bucket(bktVersions).Get([]byte(uid))
		if raw == nil {
			return fmt.Errorf("%w: %s", ErrVersionNotFound, uid)
		}
		v, err := decodeVersion([]byte(uid), raw)
		if err != nil {
			return err
		}
		v.LastScrub = &r
		if r.Kind == "deep-scrub" {
			d := r
			v.LastDeepScrub = &d
		}
		return putVersionQuiet(tx, v)
	})
}

// scrubRotationKey is the meta key of a scrub rotation's position.
func scrubRotationKey(name string) []byte { return []byte("scrub_rotation:" + name) }

// ScrubRotation returns the position of the sampling rotation name (a
// scrub kind and selection): where the next sampled scrub of that kind
// and selection starts, as a fraction of 2^64 (0 when none ran yet).
func (db *DB) ScrubRotation(name string) (uint64, error) {
	var pos uint64
	err := db.view(func(tx *bolt.Tx) error {
		pos = getU64(tx.Bucket(bktMeta), scrubRotationKey(name))
		return nil
	})
	return pos, err
}

// AdvanceScrubRotation moves the rotation name from position from (where
// the finished scrub started) to to. If another scrub moved it meanwhile,
// it is left where that one put it (the windows overlap rather than leave
// a gap); the result reports whether it moved.
func (db *DB) AdvanceScrubRotation(name string, from, to uint64) (bool, error) {
	moved := false
	err := db.update(func(tx *bolt.Tx) error {
		m := tx.Bucket(bktMeta)
		if getU64(m, scrubRotationKey(name)) != from {
			return nil
		}
		moved = true
		return putU64(m, scrubRotationKey(name), to)
	})
	return moved, err
}
