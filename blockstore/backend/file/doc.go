// Package file is backy's local-directory backend: it stores each object as
// one file under a root directory, the object name "blocks/3f/3f0c…"
// becoming the file root/blocks/3f/3f0c….
//
// It meets the whole contract of package backend:
//
//   - Put writes to a temporary file ".tmp-<random>" in the target
//     directory, fsyncs it, renames it over the final name and fsyncs the
//     directory (and the parent of every directory it had to create; the
//     fsync and rename are internal/atomicfile's Commit), so a
//     Put that returned nil survives a crash, and a reader sees either no
//     object or a complete one, never a partial write. A failed Put removes
//     its temporary file.
//   - Temporary files start with '.', which no valid object name does, so
//     List never reports them. Writers killed in mid-Put leave them behind;
//     CleanTemp removes such debris (also as backend.TempCleaner, which
//     cleanup finds through any wrappers with backend.As).
//   - Delete fsyncs the directory, so a deleted object does not come back
//     after a crash. Empty directories are left in place, because other
//     writers may be creating objects in them.
//   - Errors that retrying cannot fix (ENOSPC, EDQUOT, EROFS, EACCES,
//     EPERM) satisfy errors.Is(err, backend.ErrPermanent) and still wrap
//     their cause.
//
// A name that is a directory on disk (because longer names live below it)
// is not an object: Get, Stat and Delete report backend.ErrNotFound for it.
package file
