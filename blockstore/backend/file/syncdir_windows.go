package file

// syncDir does nothing on Windows, which cannot fsync a directory; NTFS
// journals its metadata.
func syncDir(dir string) error { return nil }
