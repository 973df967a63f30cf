package atomicfile

// SyncDir does nothing on Windows, which cannot fsync a directory; NTFS
// journals its metadata.
func SyncDir(dir string) error { return nil }
