package migrate

import (
	"encoding/binary"
	"fmt"
	"slices"

	bolt "go.etcd.io/bbolt"

	"github.com/backy/backy/metastore"
)

// Step is one schema migration: it turns a metastore of schema From into
// one of schema To (= From+1) inside a single bbolt write transaction, and
// sets meta "schema" to To itself. It works on the raw bbolt layout of
// schema From as docs/FORMAT.md documents it, never through package
// metastore's API (see the package documentation for why).
type Step struct {
	From, To int
	// Name says what the step brings, for messages and logs.
	Name string
	// Apply migrates the database in tx. It must be idempotent on a
	// database of schema From (a step may run again after a crash, on a
	// fresh copy of the original) and must not keep memory proportional to
	// the database beyond what its doc comment says.
	Apply func(tx *bolt.Tx) error
}

// Steps is the schema ratchet: every migration, in order. Steps[i].To ==
// Steps[i+1].From, and the last step leads to metastore.CurrentSchema.
// Entries are never changed once released; a new schema appends one.
var Steps = []Step{
	{From: 1, To: 2, Name: "per-encryption-version block statistics and the key registry", Apply: schema1to2},
	{From: 2, To: 3, Name: "bookkeeping of the version metadata kept in the data backend", Apply: schema2to3},
}

// Frozen names of the layout the steps read and write. They are copies on
// purpose: the metastore's own names may change with later schemas.
var (
	bktMeta   = []byte("meta")
	bktBlocks = []byte("blocks")
	keySchema = []byte("schema")
)

// plan returns the steps leading from schema from to schema to.
func plan(steps []Step, from, to int) ([]Step, error) {
	var out []Step
	for cur := from; cur < to; {
		i := slices.IndexFunc(steps, func(s Step) bool { return s.From == cur })
		if i < 0 || steps[i].To != cur+1 {
			return nil, fmt.Errorf("no migration from schema %d to %d in this backy (it knows %s): upgrade from a backy release that does", cur, cur+1, describe(steps))
		}
		out = append(out, steps[i])
		cur = steps[i].To
	}
	return out, nil
}

func describe(steps []Step) string {
	if len(steps) == 0 {
		return "none"
	}
	return fmt.Sprintf("%d to %d", steps[0].From, steps[len(steps)-1].To)
}

// schemaIn reads meta "schema" in tx.
func schemaIn(tx *bolt.Tx) (int, error) {
	m := tx.Bucket(bktMeta)
	if m == nil || len(m.Get(keySchema)) != 4 {
		return 0, fmt.Errorf("%w: no schema version in bucket meta", metastore.ErrNotBacky)
	}
	return int(binary.BigEndian.Uint32(m.Get(keySchema))), nil
}

func setSchema(tx *bolt.Tx, v int) error {
	return tx.Bucket(bktMeta).Put(keySchema, binary.BigEndian.AppendUint32(nil, uint32(v)))
}

// Schema 2 adds (see docs/FORMAT.md for the metastore layout):
//   - bucket "encversions": u16 BE encryption version -> key registration
//     (opaque bytes); empty after the migration, as schema 1 wrote no
//     encrypted blocks;
//   - bucket "encstats": u16 BE encryption version -> u64 BE block records
//     at that version, u64 BE sum of their stored sizes; an entry exists iff
//     its count is > 0.
//
// Schema 1 block records (bucket "blocks", key = 32-byte block id) are 37
// bytes: format 1 (=1), flags 1, encryption version u16 BE at [2:4],
// compression 1, object name 16, plaintext size u32 BE, stored size u32 BE
// at [25:29], reference count u64 BE. The scan keeps one counter pair per
// encryption version met (at most 65,536), whatever the number of blocks.
func schema1to2(tx *bolt.Tx) error {
	const (
		recordSize = 37
		recordV1   = 1
	)
	if s, err := schemaIn(tx); err != nil {
		return err
	} else if s != 1 {
		return fmt.Errorf("%w: the database has schema %d, this step migrates schema 1", metastore.ErrCorrupt, s)
	}
	blocks := tx.Bucket(bktBlocks)
	if blocks == nil {
		return fmt.Errorf("%w: bucket %q missing", metastore.ErrCorrupt, bktBlocks)
	}
	if _, err := tx.CreateBucketIfNotExists([]byte("encversions")); err != nil {
		return fmt.Errorf("creating bucket encversions: %w", err)
	}
	encStats := []byte("encstats")
	if tx.Bucket(encStats) != nil {
		if err := tx.DeleteBucket(encStats); err != nil {
			return fmt.Errorf("clearing bucket encstats: %w", err)
		}
	}
	st, err := tx.CreateBucket(encStats)
	if err != nil {
		return fmt.Errorf("creating bucket encstats: %w", err)
	}
	type agg struct{ blocks, stored uint64 }
	sums := map[uint16]agg{}
	err = blocks.ForEach(func(k, v []byte) error {
		if len(k) != 32 || len(v) != recordSize || v[0] != recordV1 {
			return fmt.Errorf("%w: block record %x is not a schema-1 record (%d bytes)", metastore.ErrCorrupt, k, len(v))
		}
		ev := binary.BigEndian.Uint16(v[2:4])
		a := sums[ev]
		a.blocks++
		a.stored += uint64(binary.BigEndian.Uint32(v[25:29]))
		sums[ev] = a
		return nil
	})
	if err != nil {
		return err
	}
	for ev, a := range sums {
		val := binary.BigEndian.AppendUint64(nil, a.blocks)
		val = binary.BigEndian.AppendUint64(val, a.stored)
		if err := st.Put(binary.BigEndian.AppendUint16(nil, ev), val); err != nil {
			return fmt.Errorf("writing encstats: %w", err)
		}
	}
	return setSchema(tx, 2)
}

// Schema 3 adds bucket "vmeta" (version uid -> 20 bytes: generation of the
// version's last change, generation of its metadata snapshot in the data
// backend, uint64 BE each, and the snapshot's tag, uint32 BE) and the meta
// counters "gen" and "records_gen" (uint64 BE). The bucket starts empty
// and the counters absent (zero): no version has a snapshot yet, so the
// first command that writes snapshots writes every version's. Nothing is
// scanned.
func schema2to3(tx *bolt.Tx) error {
	if s, err := schemaIn(tx); err != nil {
		return err
	} else if s != 2 {
		return fmt.Errorf("%w: the database has schema %d, this step migrates schema 2", metastore.ErrCorrupt, s)
	}
	vmeta := []byte("vmeta")
	if tx.Bucket(vmeta) != nil {
		if err := tx.DeleteBucket(vmeta); err != nil {
			return fmt.Errorf("clearing bucket vmeta: %w", err)
		}
	}
	if _, err := tx.CreateBucket(vmeta); err != nil {
		return fmt.Errorf("creating bucket vmeta: %w", err)
	}
	m := tx.Bucket(bktMeta)
	for _, k := range []string{"gen", "records_gen"} {
		if err := m.Delete([]byte(k)); err != nil {
			return fmt.Errorf("clearing meta %s: %w", k, err)
		}
	}
	return setSchema(tx, 3)
}
