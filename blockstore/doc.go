// Package blockstore stores and reads blocks in a backend: it seals each
// block into its object form (package object), gives it a fresh random
// name, writes it through a backend.Backend, and on every read opens the
// object and verifies the plaintext against the block's BLAKE3 identity.
//
// A Store knows nothing of versions or the metastore: it turns (identity,
// plaintext) into a block.Record and a Record back into verified plaintext.
// Deduplication, reference counting and garbage collection happen above it.
//
// # Guarantees
//
//   - Put returns a Record only once the object is durable in the backend.
//   - Get never returns data whose BLAKE3 hash differs from the record's
//     identity: a damaged, truncated, tampered or misplaced object yields an
//     error wrapping ErrCorrupt, a missing one an error wrapping ErrMissing.
//   - Object names are random and reveal nothing about the content.
package blockstore
