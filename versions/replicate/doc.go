// Package replicate copies versions from one store to another: the engine
// of 'backy copy' (a second copy of the backups, for the 3-2-1 rule). It
// is not called copy, which would shadow the builtin in every importer.
//
// A copy keeps the version's uid, volume, snapshot, labels, date, size,
// expiry date and protection; its statistics describe the copy (bytes
// read from the source store, stored in the target, deduplicated against
// what the target already held). The target's block map is the source's,
// entry for entry, so both stores hold pages with the same ids.
//
// # Data flow
//
// A reader walks the source version's map page by page and looks each
// page's blocks up in both metastores (one read transaction each). W
// workers handle one block each: sparse stays sparse; a block the target
// holds as a valid record is referenced (never an invalid one); any other
// block is read from the source store (verified against its BLAKE3
// identity and opened with the source's keys) and stored in the target
// store, which seals it with the target's encryption version, key and
// compression. Two workers meeting the same new block share one upload. A
// committer puts results back in block order and commits them to the
// target metastore as backup does: every CommitInterval (or 8 full pages),
// after Flush, so that a record only ever names a durable object; the last
// commit makes the copy valid. Workers, in-flight map and committer are
// versions/mapwriter's (backup's too); this package gives it the reader
// with its lookups, the verified read of a source block (Fetch, Refetch)
// and its per-version bookkeeping.
//
// # Interruptions, concurrency and damage
//
// The copy is created incomplete in the target and its committed prefix
// is exact, so a copy cut short (Ctrl-C, kill, a failing backend) is
// continued by the next run from the page holding its last committed
// block; blocks already recorded are found by lookup and not sent again.
// The source version is share-locked (rm and enforce cannot remove it
// meanwhile); in the target the engine holds the writers lock (so that
// 'cleanup --orphans' never takes an object being written for debris) and
// the copy's version lock exclusively. A block deduplicated against in the
// target and removed by a concurrent cleanup before the commit makes the
// commit fail with metastore.MissingBlocksError; the engine reads the
// block from the source again, stores it, and retries, as backup does.
//
// Source blocks are read through package versions/blockread. A source
// block that fails verification is never sent: nothing is recorded for it
// in the target, it is marked invalid in the source with every version
// using it (as restore does), the copy of that version stops
// there (left incomplete in the target) and the other versions are copied.
package replicate
