// Package backup is backy's backup engine: it cuts a source into blocks,
// stores every block the store does not hold yet, and records the version's
// block map in the metastore.
//
// # Pipeline
//
// One reader goroutine walks the blocks in order and reads those it must
// (large sequential reads into a fixed pool of block buffers); it skips
// holes of sparse files, blocks that hints mark as discarded, and blocks or
// whole 4 GiB pages that hints say are unchanged since the base version.
// W workers test each block for zeros, hash it with BLAKE3, look it up in
// the metastore and store it when it is new (compressing and encrypting it
// through the blockstore). One committer puts results back in block order
// and commits them to the metastore every CommitInterval, one page of the
// block map at a time, with the new block records and the reference
// counts, in one transaction per commit. Workers (from the lookup on) and
// committer are versions/mapwriter's, shared with the copy engine; this
// package gives it the reader, the zero test and hash, the refetch of a
// block a cleanup removed, and the version's statistics.
//
// Memory is bounded by (workers + 2) block buffers plus one page of the map
// per uncommitted page, whatever the image size.
//
// # Crash safety
//
// A version is created incomplete and becomes valid in the transaction of
// the last commit, after every block is durable. A backup killed at any
// point leaves an incomplete version whose committed prefix is exact;
// Resume continues from it, and objects stored but not yet committed are
// debris for cleanup --orphans. A block deduplicated against is re-checked
// in the commit transaction: if a concurrent cleanup removed it meanwhile
// the engine reads it from the source again and stores it.
//
// # A source that changes
//
// A source written while it is read gives an image of no single moment.
// Run notes the source's State (size; for a regular file mtime and ctime)
// before its first read and the hashes of the first blocks it reads; after
// the last block it commits everything, compares the State and reads those
// blocks again. A difference fails the backup with ErrSourceChanged, leaves
// the version incomplete and labelled LabelSourceChanged, which Resume
// refuses. These checks are cheap, not complete: only a snapshot makes a
// live source consistent.
package backup
