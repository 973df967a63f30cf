package blockread

import (
	"bytes"
	"fmt"
	"slices"
	"sync"

	"github.com/backy/backy/internal/block"
)

// DefaultBatch is the number of damaged blocks a Recorder records per
// MarkInvalid. MarkInvalid scans every map page of the metastore whatever
// the batch holds, so the scans, not the ids (512 KiB here), are what a
// batch costs: 16,384 ids make a million damaged blocks 62 scans.
const DefaultBatch = 16384

// Marker is what a Recorder needs of the metastore
// (metastore.DB.MarkInvalid): flag the blocks' records invalid and every
// version using them, and return those versions.
type Marker interface {
	MarkInvalid(ids []block.ID) ([]string, error)
}

// Recorder collects damaged blocks and records them with MarkInvalid in
// batches. It is safe for concurrent use.
type Recorder struct {
	m     Marker
	batch int

	mu      sync.Mutex // held while recording, so that Flush waits for a batch being recorded
	seen    map[block.ID]struct{}
	pending []block.ID
	uids    map[string]struct{}
	failed  int   // blocks whose MarkInvalid failed
	err     error // the first failure
}

// NewRecorder returns a recorder that records through m, batch blocks per
// MarkInvalid (DefaultBatch if batch <= 0; 1 records each block as it is
// added).
func NewRecorder(m Marker, batch int) *Recorder {
	if batch <= 0 {
		batch = DefaultBatch
	}
	return &Recorder{m: m, batch: batch, seen: map[block.ID]struct{}{}, uids: map[string]struct{}{}}
}

// Add adds a damaged block and reports whether it is new to the recorder
// (a block added again is recorded once). When a batch is full, it is
// recorded before Add returns. A sparse id is no stored block and is
// ignored.
func (r *Recorder) Add(id block.ID) bool {
	if id.IsSparse() {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.seen[id]; ok {
		return false
	}
	r.seen[id] = struct{}{}
	r.pending = append(r.pending, id)
	if len(r.pending) >= r.batch {
		r.record()
	}
	return true
}

// Has reports whether block id was added.
func (r *Recorder) Has(id block.ID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.seen[id]
	return ok
}

// Flush records the blocks added and not yet recorded. It returns nil if
// every block added so far is on record, else an error naming how many
// are not and the first failure (also on later calls: the operator must
// learn that the damage is not on record).
func (r *Recorder) Flush() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.pending) > 0 {
		r.record()
	}
	if r.err != nil {
		return fmt.Errorf("recording %d of %d damaged block(s) as invalid failed: %w", r.failed, len(r.seen), r.err)
	}
	return nil
}

// record records the pending blocks; the caller holds mu.
func (r *Recorder) record() {
	uids, err := r.m.MarkInvalid(r.pending)
	if err != nil {
		r.failed += len(r.pending)
		if r.err == nil {
			r.err = err
		}
	}
	for _, u := range uids {
		r.uids[u] = struct{}{}
	}
	// A new slice: MarkInvalid may keep the old one.
	r.pending = make([]block.ID, 0, min(r.batch, 1024))
}

// Blocks returns the number of distinct damaged blocks added.
func (r *Recorder) Blocks() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.seen)
}

// IDs returns the damaged blocks added, sorted.
func (r *Recorder) IDs() []block.ID {
	r.mu.Lock()
	defer r.mu.Unlock()
	ids := make([]block.ID, 0, len(r.seen))
	for id := range r.seen {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(a, b block.ID) int { return bytes.Compare(a[:], b[:]) })
	return ids
}

// Versions returns, sorted, every version that the blocks recorded so far
// made invalid (or found invalid already): the union of MarkInvalid's
// answers.
func (r *Recorder) Versions() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.uids) == 0 {
		return nil
	}
	out := make([]string, 0, len(r.uids))
	for u := range r.uids {
		out = append(out, u)
	}
	slices.Sort(out)
	return out
}
