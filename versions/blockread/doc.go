// Package blockread is backy's one verified block reader: how every engine
// that reads stored blocks (restore, copy, scrub and deep-scrub, the NBD
// device, migrate-encryption) reads a block by its record, tells damage
// from a record that moved, and records the damage it found.
//
// # Reading
//
// Get reads a block through the keyed block store (blockstore.Store.Get,
// which verifies the object's header, its AEAD tag, the decompression, the
// length and the BLAKE3 identity); Check asks the store only whether the
// object exists with its stored size (a plain scrub). When the store says
// missing or corrupt (blockstore.ErrMissing, blockstore.ErrCorrupt), the
// engine's record may simply be old: a concurrent migrate-encryption
// switches a block's record to a new object and deletes the old one. So the
// block's record is looked up again, and if it names another object the
// read is done again there. The answer is one of:
//
//   - nil: the block was read (or checked) intact, from the record returned
//     (the followed one if it moved: an engine that caches records, or heals
//     invalid ones, looks at it).
//   - damage (IsDamage): the record still names the object that failed.
//     The store's error is returned as it is, so ErrMissing and ErrCorrupt
//     stay distinguishable (scrub reports them apart). If the block has no
//     record any more, the error also wraps ErrRemoved: damage to an engine
//     that holds a lock on a version using the block (a referenced record
//     cannot go), not to migrate-encryption, which also reads unreferenced
//     blocks that a cleanup may remove meanwhile.
//   - ErrMoving: the record named yet another object after MaxFollows
//     follows. Not damage: the block is most likely intact, and marking it
//     invalid would be a false alarm; the engine fails (or, for
//     migrate-encryption, leaves the block to the process that moves it).
//   - any other error (a backend outage, a missing key, cancellation, a
//     failed lookup) as it is: never damage.
//
// MaxFollows is 3, the same for every engine. A follow is needed only when
// a switch commits between the engine's lookup and its read; a switch
// raises the block's encryption version (migrate-encryption rewrites only
// records below its target) or replaces an invalid record, so a block can
// move only a few times in its life, and twice during one read of a few
// milliseconds only when migrations race each other. Three follows absorb
// that with room to spare, and the bound still stops a metastore that
// changes the record on every lookup from keeping a reader looping.
//
// # Recording damage
//
// A Recorder collects the ids of damaged blocks (once each, however often
// they are added) and records them with MarkInvalid, which flags the
// records invalid (no backup deduplicates against them) and makes every
// version using them invalid. It records a batch as soon as it holds Batch
// ids (DefaultBatch unless the engine asks otherwise) and the rest on
// Flush, so every damaged block is recorded however many there are, in
// transactions of bounded size: MarkInvalid scans every map page of the
// metastore, so a batch is large enough to make the scans few and small
// enough to keep each transaction short. Versions returns every version the
// recorded blocks made invalid (or found invalid). Memory: the pending
// batch plus the set of distinct ids added (about 70 bytes each), which
// dedupes and counts them; a failed MarkInvalid is counted and reported by
// Flush, and the recorder goes on with the next batch.
//
// Each engine keeps its own reaction to damage: restore zeroes and lists
// the block with --force and fails without; scrub lists a failure and
// counts it; copy stops copying that version; the device answers the client
// with an I/O error (its recorder records each block at once: Batch 1);
// migrate-encryption skips the block.
//
// The package never writes blocks, never decides what a damaged block means
// for a version beyond MarkInvalid, and never imports the metastore or an
// engine: it declares the two methods it needs of the metastore (Index,
// Marker) and of the block store (Store, Checker).
package blockread
