//go:build !linux

package atomicfile

// renameNoReplace moves tmp to path unless path exists: a hard link, then
// the removal of tmp.
func renameNoReplace(tmp, path string) error { return linkNoReplace(tmp, path) }
