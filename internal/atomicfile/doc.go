// Package atomicfile is backy's one way to put a file in place so that a
// crash never leaves part of it visible: write it under a temporary name
// in the target's directory, fsync it, rename it over the target (or, not
// replacing, renameat2 RENAME_NOREPLACE or a hard link), fsync the
// directory. WriteFile does all of it for a buffer; Create and
// File.Commit for a file written as a stream; Commit for a temporary file
// the caller made itself (a restore's or an export's, which holds an flock
// until it has its final name: Options.Locked); Move for a complete file
// written by others (a bbolt database built under a temporary name).
//
// Readers see the old file or the new one. A failure before the file has
// its name removes the temporary file; one after (a directory fsync)
// leaves the complete file in place and says so by its error.
//
// It imports nothing of backy, so that every package (the metastore, the
// migration, the file backend, the engines, the command line) can use it.
// It never decides names beyond the default ".<name>.tmp-<hex>", never
// retries, and never removes any file but its own temporary one.
package atomicfile
