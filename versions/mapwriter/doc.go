// Package mapwriter is backy's one map writer: it builds a version's block
// map in a store from positions an engine supplies in order, stores the
// blocks the store lacks, and commits the map to the metastore. The backup
// engine (and so the NBD copy-on-write commit, which is a backup) and the
// copy engine (versions/replicate) both write through it.
//
// # What it does
//
// The engine's reader emits one job per position of the map (or per whole
// page reused from an existing version), in order. W workers turn each job
// into a Result: the engine's Work function tests, hashes or looks up what
// is its own and calls Writer.Store for a block to be stored. Store
// deduplicates: a block the store holds as a valid record is referenced; two
// workers meeting the same new block share one upload (an in-flight map,
// held until the block's record is committed); any other block is stored
// (its bytes given, or read through Config.Fetch only now). One committer
// puts results back in map order (a ring as large as the window of jobs
// outstanding), fills pages, lets the engine fold its statistics
// (Config.Count, Config.Progress), and commits every CommitInterval or 8
// full pages: new block records, the pages from the first uncommitted one
// on (the partial tail page rewritten each time), blocks_done and the
// engine's version fields (Config.Update), in one metastore transaction.
// The engine calls Commit itself for the last commits (final marks the
// version complete in the same transaction).
//
// # Guarantees
//
//   - A record only names a durable object: the block store is flushed
//     before every commit (cleanup's exactness rests on it).
//   - The committed prefix is exact: blocks_done counts the positions
//     committed (a reused page counts its entries, so a short last page is
//     not counted as a full one), never more than Config.End.
//   - A block deduplicated against and removed by a concurrent cleanup
//     before the commit makes the commit fail with
//     metastore.MissingBlocksError; the writer fetches it again
//     (Config.Refetch), stores it and retries. Each retry fixes at least one
//     block, so the retries are bounded by the blocks deduplicated since the
//     last commit, not by a constant.
//   - An object stored by this run that another writer stored first comes
//     back from the commit as redundant: it is deleted and forgotten from
//     the trash (left to cleanup when that fails).
//   - A worker's error is recorded before the worker counts as done, so a
//     committer finding the results closed early reports that error, not a
//     gap in the map.
//   - Memory: a ring of 4 x (workers + 2) results, one page of entries
//     being filled and the pages since the last commit; no allocation per
//     position beyond an in-flight entry for each block stored.
//
// # What it must never do
//
// It reads no source and no source store (the engine's Fetch and Refetch
// do, verifying what they return), decides no version's status (the
// engine's Update does), takes no lock (the engine holds the writers lock
// and the version's exclusive lock), and imports no engine and no concrete
// backend. It never commits a record before its object is durable.
package mapwriter
