// Package source opens what backy reads and writes: the source of a backup
// (a file or block device, by path or file:// URL) and the target of a
// restore. It knows nothing of stores or versions.
//
// A Source is read with large, sequential ReadAt calls and can tell which
// ranges of a sparse file are holes (SEEK_DATA), so an empty image is
// backed up without being read. A Target is written with WriteAt; a new
// file is built under a temporary name and renamed into place only when the
// restore succeeds, so a failed or killed restore leaves nothing behind.
package source
