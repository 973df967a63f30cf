// Package metastore is backy's index: a bbolt database that records the
// store's identity and schema version, every version with its statistics
// and labels, every version's block map (as content-addressed pages), and
// one record per distinct stored block with its reference count.
//
// # Sharing one database between processes
//
// bbolt allows one writer process at a time and takes a file lock for as
// long as a database is open. backy therefore never keeps the database open:
// every call opens it, runs one transaction and closes it again (about 50 µs
// for a read, 0.5 ms for a write here). Backups of different volumes in
// separate processes, a restore and an `ls` thus interleave their
// transactions instead of waiting for each other's whole run.
//
// # Buckets (schema 1)
//
//	meta      "schema" -> uint32 BE; "store_id" -> 16 bytes; "block_size" -> uint64 BE;
//	          "created" -> RFC 3339; "blocks", "stored_bytes", "plain_bytes" -> uint64 BE counters;
//	          "scrub_rotation:<kind> <selection>" -> uint64 BE: a sampling rotation's position
//	versions  uid -> JSON of Version
//	maps      uid -> the version's page list: 32-byte page ids, in block order
//	pages     page id -> encoded page (package blockmap)
//	pagerefs  page id -> uint64 BE: how many version maps list the page
//	blocks    block id (32 bytes) -> block record (see record.go), with its
//	          reference count: how many page entries name the block
//	gc        block id -> uint64 BE unix nanoseconds: blocks whose count fell to zero
//	trash     object name (16 bytes) -> block id: objects no record points to,
//	          waiting to be deleted from the backend
//
// # Reference counting
//
// A block's count is the number of entries naming it in pages that exist;
// a page exists while some version map lists it. Counts move only when a
// page is created or dropped, so an unchanged re-backup, which produces the
// same pages, touches no block record at all, and removing a version costs
// work proportional to the pages only it used. Every count change and the
// map change that causes it happen in one transaction, so the counts are
// exact at every commit point. A block whose count reaches zero enters the
// gc bucket; cleanup deletes it only after re-checking the count in a
// transaction, and a writer that deduplicated against a block re-checks in
// its commit transaction that the record still exists (MissingBlocksError
// otherwise), so a block in use is never deleted.
//
// # Guarantees and caveats
//
// Nothing returned by this package points into bbolt memory. Every method
// is safe for concurrent use by goroutines and by processes. Locks (see
// lock.go) are flock(2) locks on files beside the database, released by the
// kernel when a process dies, so they never go stale.
package metastore
