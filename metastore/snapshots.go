package metastore

import (
	"encoding/binary"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/backy/backy/internal/block"
)

// Metadata snapshots (schema 3).
//
// Every complete version has a copy of its metadata in the data backend
// (package versions/catalog writes it), so that the backend alone can
// rebuild a lost metastore. The metastore tracks which copies are stale
// with generation numbers: meta "gen" is a counter that every transaction
// changing a version (putVersion) or the object a block record names
// advances. Bucket "vmeta" keeps per version the generation of its last
// change and the generation and tag of its snapshot in the backend; meta
// "records_gen" is the generation of the last change of an object name
// (a damaged block stored again, migrate-encryption). A version's snapshot
// is stale when it is older than either: the writer reads the version and
// the current generation in one transaction, writes the snapshot under
// that generation and records it with SetSnapshot.

var (
	// Since schema 3.
	bktVMeta      = []byte("vmeta")
	keyGen        = []byte("gen")
	keyRecordsGen = []byte("records_gen")
)

// vmetaSize is the length of a vmeta value: changed gen, snapshot gen
// (uint64 BE each), snapshot tag (uint32 BE).
const vmetaSize = 20

// ErrTrashed: an imported record names an object queued for deletion.
var ErrTrashed = errors.New("object is queued for deletion")

// SnapshotState is the metadata-snapshot bookkeeping of one version.
type SnapshotState struct {
	// Changed is the generation of the version's last change.
	Changed uint64
	// Gen and Tag name the version's snapshot in the backend (Gen 0: none
	// written yet).
	Gen uint64
	Tag uint32
}

func decodeVMeta(v []byte) SnapshotState {
	if len(v) != vmetaSize {
		return SnapshotState{}
	}
	return SnapshotState{
		Changed: binary.BigEndian.Uint64(v[0:8]),
		Gen:     binary.BigEndian.Uint64(v[8:16]),
		Tag:     binary.BigEndian.Uint32(v[16:20]),
	}
}

func encodeVMeta(s SnapshotState) []byte {
	b := make([]byte, 0, vmetaSize)
	b = binary.BigEndian.AppendUint64(b, s.Changed)
	b = binary.BigEndian.AppendUint64(b, s.Gen)
	return binary.BigEndian.AppendUint32(b, s.Tag)
}

// nextGen advances and returns the store's generation counter.
func nextGen(tx *bolt.Tx) (uint64, error) {
	m := tx.Bucket(bktMeta)
	g := getU64(m, keyGen) + 1
	return g, putU64(m, keyGen, g)
}

// markChanged records that version uid changed in this transaction.
func markChanged(tx *bolt.Tx, uid string) error {
	g, err := nextGen(tx)
	if err != nil {
		return err
	}
	b := tx.Bucket(bktVMeta)
	s := decodeVMeta(b.Get([]byte(uid)))
	s.Changed = g
	return b.Put([]byte(uid), encodeVMeta(s))
}

// markRecordsChanged records that a block record now names another
// object: every version's snapshot may name the old one.
func markRecordsChanged(tx *bolt.Tx) error {
	g, err := nextGen(tx)
	if err != nil {
		return err
	}
	return putU64(tx.Bucket(bktMeta), keyRecordsGen, g)
}

func stale(s SnapshotState, recordsGen uint64) bool {
	return s.Gen == 0 || s.Gen < s.Changed || s.Gen < recordsGen
}

// PendingSnapshots returns the uids of the versions whose snapshot in the
// backend is missing or stale, oldest first. Incomplete versions and
// versions being removed have none.
func (db *DB) PendingSnapshots() ([]string, error) {
	vs, err := db.Versions(func(v *Version) bool { return v.Status != StatusIncomplete && !v.Removing })
	if err != nil {
		return nil, err
	}
	var out []string
	err = db.view(func(tx *bolt.Tx) error {
		rg := getU64(tx.Bucket(bktMeta), keyRecordsGen)
		vm := tx.Bucket(bktVMeta)
		for _, v := range vs {
			if stale(decodeVMeta(vm.Get([]byte(v.UID))), rg) {
				out = append(out, v.UID)
			}
		}
		return nil
	})
	return out, err
}

// SnapshotVersion returns version uid together with the current
// generation, read in one transaction: a snapshot made from what the
// caller reads afterwards is at least as new as that generation.
func (db *DB) SnapshotVersion(uid string) (*Version, uint64, error) {
	var v *Version
	var gen uint64
	err := db.view(func(tx *bolt.Tx) error {
		raw := tx.Bucket(bktVersions).Get([]byte(uid))
		if raw == nil {
			return fmt.Errorf("%w: %s", ErrVersionNotFound, uid)
		}
		var err error
		v, err = decodeVersion([]byte(uid), raw)
		gen = getU64(tx.Bucket(bktMeta), keyGen)
		return err
	})
	return v, gen, err
}

// SetSnapshot records that the snapshot (gen, tag) of version uid is
// complete in the backend, unless a newer one is recorded already. It
// reports whether it recorded it.
func (db *DB) SetSnapshot(uid string, gen uint64, tag uint32) (bool, error) {
	recorded := false
	err := db.update(func(tx *bolt.Tx) error {
		recorded = false
		if tx.Bucket(bktVersions).Get([]byte(uid)) == nil {
			return fmt.Errorf("%w: %s", ErrVersionNotFound, uid)
		}
		b := tx.Bucket(bktVMeta)
		s := decodeVMeta(b.Get([]byte(uid)))
		if gen <= s.Gen {
			return nil
		}
		s.Gen, s.Tag = gen, tag
		recorded = true
		m := tx.Bucket(bktMeta)
		if getU64(m, keyGen) < gen {
			if err := putU64(m, keyGen, gen); err != nil {
				return err
			}
		}
		return b.Put([]byte(uid), encodeVMeta(s))
	})
	return recorded, err
}

// SnapshotOf returns version uid, its snapshot bookkeeping and whether
// its snapshot in the backend is stale (missing, or older than the
// version's last change or the last switch of a record's object), read in
// one transaction.
func (db *DB) SnapshotOf(uid string) (*Version, SnapshotState, bool, error) {
	var v *Version
	var s SnapshotState
	var isStale bool
	err := db.view(func(tx *bolt.Tx) error {
		raw := tx.Bucket(bktVersions).Get([]byte(uid))
		if raw == nil {
			return fmt.Errorf("%w: %s", ErrVersionNotFound, uid)
		}
		var err error
		if v, err = decodeVersion([]byte(uid), raw); err != nil {
			return err
		}
		s = decodeVMeta(tx.Bucket(bktVMeta).Get([]byte(uid)))
		isStale = stale(s, getU64(tx.Bucket(bktMeta), keyRecordsGen))
		return nil
	})
	return v, s, isStale, err
}

// MarkSnapshotStale records that version uid's snapshot in the backend
// must be written again (a scrub found it missing or damaged): the next
// Sync writes it.
func (db *DB) MarkSnapshotStale(uid string) error {
	return db.update(func(tx *bolt.Tx) error {
		if tx.Bucket(bktVersions).Get([]byte(uid)) == nil {
			return fmt.Errorf("%w: %s", ErrVersionNotFound, uid)
		}
		return markChanged(tx, uid)
	})
}

// Snapshots returns the snapshot bookkeeping of every version that has
// an entry.
func (db *DB) Snapshots() (map[string]SnapshotState, error) {
	out := map[string]SnapshotState{}
	err := db.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bktVMeta).ForEach(func(k, v []byte) error {
			out[string(k)] = decodeVMeta(v)
			return nil
		})
	})
	return out, err
}

// Import runs fn in one write transaction: everything fn does through the
// Importer is applied together, or (when fn or the commit fails) nothing.
// Nothing an import does ever queues an object for deletion.
func (db *DB) Import(fn func(*Importer) error) error {
	return db.update(func(tx *bolt.Tx) error {
		return fn(&Importer{s: db.state(tx), db: db})
	})
}

// Importer adds versions, with their maps and block records, inside the
// transaction of Import.
type Importer struct {
	s  *txState
	db *DB
}

// HasVersion reports whether version uid exists.
func (im *Importer) HasVersion(uid string) bool {
	return im.s.tx.Bucket(bktVersions).Get([]byte(uid)) != nil
}

// EncVersion returns the registration of encryption version v, if any.
func (im *Importer) EncVersion(v uint16) ([]byte, bool) {
	r := im.s.tx.Bucket(bktEncVersions).Get(encKey(v))
	return append([]byte(nil), r...), r != nil
}

// RegisterEncVersion registers encryption version v (>= 1) unless it is
// registered already.
func (im *Importer) RegisterEncVersion(v uint16, reg []byte) error {
	if v == 0 || len(reg) == 0 {
		return fmt.Errorf("invalid registration of encryption version %d", v)
	}
	b := im.s.tx.Bucket(bktEncVersions)
	if b.Get(encKey(v)) != nil {
		return nil
	}
	return b.Put(encKey(v), reg)
}

// Record returns the metastore's record of block id, if any.
func (im *Importer) Record(id block.ID) (block.Record, bool, error) {
	r, ok, err := im.s.record(id)
	return r.Record, ok, err
}

// CreateVersion records version v (with its status as given) and an empty
// map. An existing uid is refused.
func (im *Importer) CreateVersion(v *Version) error {
	if !validUID(v.UID) {
		return fmt.Errorf("invalid version uid %q", v.UID)
	}
	tx := im.s.tx
	if tx.Bucket(bktVersions).Get([]byte(v.UID)) != nil {
		return fmt.Errorf("version %s already exists", v.UID)
	}
	if err := tx.Bucket(bktMaps).Put([]byte(v.UID), []byte{}); err != nil {
		return err
	}
	return putVersion(tx, v)
}

// AppendPage appends a page of entries to version uid's map. recs holds
// records for the page's blocks; those of blocks the metastore has a
// record for already are ignored (the existing record stays), the others
// are added. A new record whose object is in the trash fails with
// ErrTrashed; a block with no record at all fails with
// *MissingBlocksError. It returns how many of recs named another object
// than the existing record of their block. A valid version that gets a
// block whose record is invalid (known damaged) becomes invalid, as
// MarkInvalid makes every version using such a block.
func (im *Importer) AppendPage(uid string, ids []block.ID, recs []block.Record) (conflicts int, err error) {
	s := im.s
	bad := false
	for _, r := range recs {
		if r.ID.IsSparse() {
			continue
		}
		if cur, ok, err := s.record(r.ID); err != nil {
			return conflicts, err
		} else if ok {
			if cur.Name != r.Name {
				conflicts++
			}
			bad = bad || cur.Invalid
			continue
		}
		bad = bad || r.Invalid
		if s.trash.Get(r.Name[:]) != nil {
			return conflicts, fmt.Errorf("%w: object %s of block %s", ErrTrashed, r.Name, r.ID.Short())
		}
		if r.EncVersion != 0 && s.tx.Bucket(bktEncVersions).Get(encKey(r.EncVersion)) == nil {
			return conflicts, fmt.Errorf("block %s is stored at encryption version %d, which is not registered", r.ID.Short(), r.EncVersion)
		}
		if err := s.putRecord(storedRecord{Record: r}); err != nil {
			return conflicts, err
		}
		if err := s.addStored(r, 1); err != nil {
			return conflicts, err
		}
	}
	maps := s.tx.Bucket(bktMaps)
	raw := maps.Get([]byte(uid))
	if raw == nil {
		return conflicts, fmt.Errorf("%w: %s", ErrVersionNotFound, uid)
	}
	missing := map[block.ID]bool{}
	pid, err := s.acquirePage(NewPage(ids), missing)
	if err != nil {
		return conflicts, err
	}
	if len(missing) > 0 {
		e := &MissingBlocksError{}
		for id := range missing {
			e.IDs = append(e.IDs, id)
		}
		return conflicts, e
	}
	next := append(append([]byte(nil), raw...), pid[:]...)
	if err := maps.Put([]byte(uid), next); err != nil {
		return conflicts, err
	}
	if bad {
		return conflicts, im.invalidate(uid)
	}
	return conflicts, nil
}

// invalidate makes version uid invalid unless it is already (or is
// incomplete: completing it decides).
func (im *Importer) invalidate(uid string) error {
	tx := im.s.tx
	raw := tx.Bucket(bktVersions).Get([]byte(uid))
	if raw == nil {
		return fmt.Errorf("%w: %s", ErrVersionNotFound, uid)
	}
	v, err := decodeVersion([]byte(uid), raw)
	if err != nil || v.Status != StatusValid {
		return err
	}
	v.Status = StatusInvalid
	return putVersion(tx, v)
}

// SetSnapshot records that version uid's snapshot (gen, tag) in the
// backend matches what was imported: the version counts as unchanged
// since. The store's generation counter moves past gen.
func (im *Importer) SetSnapshot(uid string, gen uint64, tag uint32) error {
	tx := im.s.tx
	if tx.Bucket(bktVersions).Get([]byte(uid)) == nil {
		return fmt.Errorf("%w: %s", ErrVersionNotFound, uid)
	}
	m := tx.Bucket(bktMeta)
	if getU64(m, keyGen) < gen {
		if err := putU64(m, keyGen, gen); err != nil {
			return err
		}
	}
	return tx.Bucket(bktVMeta).Put([]byte(uid), encodeVMeta(SnapshotState{Changed: gen, Gen: gen, Tag: tag}))
}

// AdvanceGen moves the store's generation counter to at least gen, so
// that snapshots written from now on are newer than gen.
func (im *Importer) AdvanceGen(gen uint64) error {
	m := im.s.tx.Bucket(bktMeta)
	if getU64(m, keyGen) >= gen {
		return nil
	}
	return putU64(m, keyGen, gen)
}

// MarkChanged records that version uid differs from its snapshot.
func (im *Importer) MarkChanged(uid string) error { return markChanged(im.s.tx, uid) }
