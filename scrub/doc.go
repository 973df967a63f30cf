// Package scrub proves that a store still holds what its metastore says
// (the engine of 'backy scrub' and 'backy deep-scrub').
//
// Scrub checks each selected version's metadata (every page of its map
// exists, matches its id, decodes and is counted; every page but the last
// is full and the map covers the version's size; every entry has a block
// record of the right length that counts references) and that every
// referenced object exists with the stored size its record expects. It
// reads no data: the Backend interface has no ranged read, so an object's
// header is not looked at (Stat only); a flipped byte inside an object is
// found by deep-scrub only, and scrub needs no keys.
//
// A sample (Options.Percent below 100) is the next window of a rotation
// over the hash space of the block identities (keyed by the store id),
// whose position the metastore keeps per kind and selection
// (metastore.ScrubRotation): N runs at 100/N percent check every block
// once. A run that stops early does not move the rotation on.
//
// Deep-scrub does the same metadata checks and reads every (sampled) block
// through blockstore.Store.Get, which verifies header, AEAD tag,
// decompression, length and BLAKE3 hash. With a source image (one version
// only) it also compares every sampled block of the version, sparse blocks
// included, with the source: the source block must hash to the block's
// identity, or be all zeros for a sparse block.
//
// A block shared by several versions (or several times by one) is checked
// once per run; a page shared by versions is walked once (without a
// source). The set of checked blocks costs about 80 bytes per distinct
// block of the selection (about 20 MiB per TiB of distinct data at 4 MiB
// blocks); nothing else grows with the size of the selection except the
// listed failures (at most 10,000, the rest counted).
//
// Every failure is recorded and the run goes on: a damaged or missing
// object makes its block invalid and every version using it invalid
// (metastore.MarkInvalid); a map damaged in a way no block record can
// carry (page missing, entry without a record) makes the version invalid.
// A source mismatch is no failure: it is listed in Result.Differences,
// the version's result is "differs" (Run returns ErrDiffers when nothing
// was damaged), and it marks nothing: the stored block is intact, and the
// source may simply have changed since the snapshot. Blocks are
// checked through package versions/blockread: before a block is declared
// missing or corrupt its record is looked up again and followed if a
// concurrent migrate-encryption moved it to a new object, and the damaged
// blocks are recorded (MarkInvalid) in batches, the rest at the end of
// each version.
//
// Deep-scrub also heals: a block marked invalid that reads back intact is
// valid again (metastore.MarkValid, which also makes valid every version
// using it that is now sound), and a scrubbed invalid version with no
// invalid block left (for example after a backup stored a fresh copy of
// its damaged block) becomes valid (metastore.Revalidate). A plain scrub
// never makes anything valid: it cannot see the data.
//
// Each version is share-locked while it is scrubbed, so it cannot be
// removed meanwhile, and the outcome is recorded in Version.LastScrub (and
// Version.LastDeepScrub for a deep-scrub).
package scrub
