package catalog

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/zeebo/blake3"

	"github.com/backy/backy/blockstore/backend"
	"github.com/backy/backy/blockstore/object"
	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/versions/manifest"
)

// States of a version's snapshot, as Check reports them.
const (
	// StateOK: the snapshot the metastore recorded is in the backend (with
	// a deep check: it reads completely and describes the version as the
	// metastore has it).
	StateOK = "ok"
	// StatePending: the metastore knows the snapshot is missing or stale;
	// the next Sync writes it. Not damage.
	StatePending = "pending"
	// StateMissing: the snapshot the metastore recorded is not in the
	// backend.
	StateMissing = "missing"
	// StateDamaged: some of its chunks are missing or have an impossible
	// size, or (deep) it does not read, or describes another state of the
	// version than the metastore's.
	StateDamaged = "damaged"
)

// The stored size of a chunk object: at least an object header (27
// bytes), at most a ChunkSize plaintext plus header and tag (FORMAT.md).
const (
	minChunkObject = 27
	maxChunkObject = ChunkSize + 4096
)

// CheckResult is the outcome of Check.
type CheckResult struct {
	State  string
	Reason string
}

// Check checks the snapshot of version uid that the metastore db
// recorded as current. Without deep it lists versions/<uid>/ only (no
// reads, no keys): the recorded snapshot must be there with chunks
// 0..n-1 and no gap, each of a possible stored size. With deep it also
// reads the snapshot completely (every chunk opens, the stream and its
// trailer verify) and compares it with the metastore: the version object
// (but its last scrub, which snapshots do not follow) and, page by page,
// the block map with the records of its blocks (object, sizes, encryption
// version, compression; not the invalid flag).
//
// A version whose snapshot the metastore knows to be stale is StatePending.
// A problem is reported only if the metastore still records the same
// snapshot afterwards: a concurrent Sync that replaced it is not damage.
// The caller holds the version's lock (shared is enough).
func (c *Catalog) Check(ctx context.Context, db *metastore.DB, uid string, deep bool) (CheckResult, error) {
	v, st, isStale, err := db.SnapshotOf(uid)
	if err != nil {
		return CheckResult{}, err
	}
	if isStale || v.Status == metastore.StatusIncomplete || v.Removing {
		return CheckResult{State: StatePending}, nil
	}
	res, err := c.check(ctx, db, v, st, deep)
	if err != nil || res.State == StateOK {
		return res, err
	}
	_, now, nowStale, err := db.SnapshotOf(uid)
	if err != nil {
		return CheckResult{}, err
	}
	if nowStale || now.Gen != st.Gen || now.Tag != st.Tag {
		return CheckResult{State: StatePending}, nil
	}
	return res, nil
}

func (c *Catalog) check(ctx context.Context, db *metastore.DB, v *metastore.Version, st metastore.SnapshotState, deep bool) (CheckResult, error) {
	dir := snapshotDir(v.UID, st.Gen, st.Tag)
	sizes := map[int]int64{}
	err := c.be.List(ctx, dir, func(info backend.Info) error {
		uid, gen, tag, seq, ok := parseName(info.Name)
		if ok && uid == v.UID && gen == st.Gen && tag == st.Tag {
			sizes[seq] = info.Size
		}
		return nil
	})
	if err != nil {
		return CheckResult{}, fmt.Errorf("listing the metadata of version %s in the backend: %w", v.UID, err)
	}
	if len(sizes) == 0 {
		return CheckResult{State: StateMissing, Reason: fmt.Sprintf("its metadata snapshot %s, recorded in the metastore, is not in the data backend", dir)}, nil
	}
	seqs := make([]int, 0, len(sizes))
	for s := range sizes {
		seqs = append(seqs, s)
	}
	sort.Ints(seqs)
	n := seqs[len(seqs)-1] + 1
	if len(seqs) != n {
		var gaps []string
		for i := 0; i < n && len(gaps) < 5; i++ {
			if _, ok := sizes[i]; !ok {
				gaps = append(gaps, chunkName(dir, i))
			}
		}
		return CheckResult{State: StateDamaged, Reason: fmt.Sprintf("its metadata snapshot %s lacks %d of its %d chunks (%s)", dir, n-len(seqs), n, strings.Join(gaps, ", "))}, nil
	}
	for _, s := range seqs {
		if sz := sizes[s]; sz < minChunkObject || sz > maxChunkObject {
			return CheckResult{State: StateDamaged, Reason: fmt.Sprintf("chunk %s of its metadata snapshot has %d bytes, a chunk object has %d to %d", chunkName(dir, s), sz, minChunkObject, maxChunkObject)}, nil
		}
	}
	if !deep {
		return CheckResult{State: StateOK}, nil
	}
	ref := Ref{UID: v.UID, Gen: st.Gen, Tag: st.Tag, Chunks: n, Contiguous: true}
	var pages [][32]byte
	got, _, err := c.Read(ctx, ref, func(_ *metastore.Version, p manifest.Page) error {
		pages = append(pages, pageDigest(p.IDs, func(i int) block.Record { r, _ := p.Record(p.IDs[i]); return r }))
		return nil
	})
	if err != nil {
		if Skippable(err) {
			return CheckResult{State: StateDamaged, Reason: fmt.Sprintf("its metadata snapshot %s does not read: %v", dir, err)}, nil
		}
		if errors.Is(err, object.ErrNoKey) && ctx.Err() == nil {
			// Sealed under a key no longer configured: rebuild-metastore
			// could not read it either. Written again, it is sealed at the
			// configured encryption version.
			return CheckResult{State: StateDamaged, Reason: fmt.Sprintf("its metadata snapshot %s cannot be opened with the configured keys (rebuild-metastore could not read it): %v", dir, err)}, nil
		}
		return CheckResult{}, fmt.Errorf("reading the metadata of version %s from the backend: %w", v.UID, err)
	}
	if field := versionDiff(got, v); field != "" {
		return CheckResult{State: StateDamaged, Reason: fmt.Sprintf("its metadata snapshot %s describes another state of the version (%s differs from the metastore's)", dir, field)}, nil
	}
	k := 0
	diff := ""
	err = db.WalkMap(v.UID, func(ch metastore.MapChunk) error {
		if k >= len(pages) {
			diff = fmt.Sprintf("the snapshot has %d page(s) of the block map, the metastore more", len(pages))
			return errStop
		}
		d := pageDigest(ch.IDs, func(i int) block.Record { return ch.Records[i] })
		if d != pages[k] {
			diff = fmt.Sprintf("page %d of the block map (blocks from %d) differs from the metastore's", k, ch.First)
			return errStop
		}
		k++
		return nil
	})
	switch {
	case errors.Is(err, metastore.ErrCorrupt):
		// The metastore's own map is damaged: the scrub reports that;
		// there is nothing to compare with.
		return CheckResult{State: StateOK}, nil
	case err != nil && !errors.Is(err, errStop):
		return CheckResult{}, err
	}
	if diff == "" && k != len(pages) {
		diff = fmt.Sprintf("the snapshot has %d page(s) of the block map, the metastore %d", len(pages), k)
	}
	if diff != "" {
		return CheckResult{State: StateDamaged, Reason: fmt.Sprintf("its metadata snapshot %s describes another block map: %s", dir, diff)}, nil
	}
	return CheckResult{State: StateOK}, nil
}

var errStop = errors.New("stop")

// pageDigest hashes a page's entries with what the snapshot must agree on
// of their records.
func pageDigest(ids []block.ID, rec func(i int) block.Record) [32]byte {
	h := blake3.New()
	var b [32 + 16 + 4 + 4 + 2 + 1]byte
	for i, id := range ids {
		e := append(b[:0], id[:]...)
		if !id.IsSparse() {
			r := rec(i)
			e = append(e, r.Name[:]...)
			e = binary.BigEndian.AppendUint32(e, r.Size)
			e = binary.BigEndian.AppendUint32(e, r.StoredSize)
			e = binary.BigEndian.AppendUint16(e, r.EncVersion)
			e = append(e, byte(r.Compression))
		}
		_, _ = h.Write(e)
	}
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out
}

// versionDiff names the first field of the version object in which a
// snapshot's copy differs from the metastore's ("" when none does). The
// last scrub and deep-scrub records are left out (they change without
// making the snapshot stale),
// and blocks_done is taken as WriteVersion writes it.
func versionDiff(snap, db *metastore.Version) string {
	norm := func(v *metastore.Version) map[string]json.RawMessage {
		c := *v
		c.LastScrub, c.LastDeepScrub = nil, nil
		c.BlocksDone = min(c.BlocksDone, c.Blocks())
		if c.Labels == nil {
			c.Labels = map[string]string{}
		}
		raw, _ := json.Marshal(&c)
		var m map[string]json.RawMessage
		_ = json.Unmarshal(raw, &m)
		return m
	}
	a, b := norm(snap), norm(db)
	keys := make([]string, 0, len(a)+len(b))
	for k := range a {
		keys = append(keys, k)
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		if !bytes.Equal(a[k], b[k]) {
			return k
		}
	}
	return ""
}
