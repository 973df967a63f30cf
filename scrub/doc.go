// Package scrub proves that a store still holds what its metastore says:
// scrub checks metadata consistency and that every referenced object exists
// with the expected size and a valid header, without reading data;
// deep-scrub reads every (sampled) block and verifies its authentication
// tag and BLAKE3 hash, optionally against the source image. Each shared
// block is checked once per run; every failure is recorded (the block and
// every version using it become invalid) and reported, and the scrub goes
// on after each one.
//
// The metastore's own consistency check (metastore.DB.Check) is the first
// piece of it and is used by the tests of every package that writes.
package scrub
