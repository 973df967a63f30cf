// Package object defines the stored form of a block: a small
// self-describing header followed by the payload, which is the block after
// the transforms that applied when it was written (compression when it
// saves space, then authenticated encryption).
//
// Seal and Open are pure functions of their inputs: they do no I/O, so they
// are fuzzed and benchmarked in isolation. Open checks, in order, the magic,
// the format version, the header checksum, the cipher's authentication tag
// (the header and the block identity are additional data, so a header or an
// object moved to another name is detected), the decompressed length, and
// leaves the final BLAKE3 comparison to the caller, who knows the expected
// identity. Each failure has its own sentinel error, and none of them ever
// returns data.
//
// The byte layout is documented in docs/FORMAT.md ("Stored block object").
package object
