// Package hints parses changed-block hints and classifies blocks for a
// differential backup.
//
// A hints document lists the byte ranges of a source that changed since a base
// snapshot, in the format written by `rbd diff --format=json` (one line or
// pretty-printed):
//
//	[{"offset":0,"length":4194304,"exists":"true"},
//	 {"offset":8388608,"length":1048576,"exists":"false"}]
//
// exists=true means the range was written and must be read again; exists=false
// means it was discarded or zeroed. [Parse] reads and validates a whole
// document; [NewMap] merges the extents into sorted interval lists and answers,
// per fixed-size block, whether the block can be taken from the base version
// ([Untouched]), must be read from the source ([Read]) or is known to be all
// zero without reading it ([Sparse]).
//
// The package has one job: parse change hints and classify blocks. It never
// reads the source and never touches a store.
package hints
