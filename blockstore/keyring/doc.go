// Package keyring turns the key material the operator configures (a raw
// key, a key file, a passphrase) into the object.Key of each encryption
// version, checks it against what the store has registered for that
// version, and registers new versions.
//
// # Encryption versions and key ids
//
// Every stored object names the encryption version it was sealed at and the
// 8-byte id of the key (object.Key.ID, BLAKE3 in derive-key mode over the
// key). A store registers, once per version, the cipher, the key id and,
// for a passphrase, the Argon2id parameters and salt (a Registration).
// Load derives each configured key and compares its id with the
// registration before anything is read or written, so a mistyped
// passphrase or the key file of another store is reported at once, as
// ErrWrongKey naming the version and where the material came from, instead
// of as thousands of authentication failures later, or worse, as a backup
// sealed under a key nobody has. The id also lets object.Open tell a wrong
// key from damaged data.
//
// A passphrase needs the registration to be usable at all: the salt and the
// KDF parameters are in it. Raw keys need no KDF and have none.
//
// # Registration in both places, metastore first
//
// The registration is kept in the metastore (Registry, the authority) and
// as the backend object keys/<version>.json with exactly the same bytes.
// The metastore copy is what Load trusts; the backend copy makes the
// backend self-describing, so that a store whose metastore is lost or
// restored from an older copy can still derive the key of a passphrase
// (whose salt would otherwise be gone) and verify its keys.
//
// When a version is first used for writing, Load registers it in the
// metastore first (register-if-absent, atomic; if another process won the
// race, the loser verifies its key against the winner's registration and
// uses it), and only then writes the backend copy (Put, then backend.Sync).
// A crash between the two leaves a registration only in the metastore; the
// next Load finds the backend copy missing and writes it. Every Load
// likewise rewrites the write version's backend copy when it is missing or
// differs from the metastore's. The other order would let a crash leave a
// backend copy that the metastore never agreed to; a version the metastore
// lacks but the backend holds is adopted only after the configured key has
// been verified against it.
//
// # What the backend reveals
//
// Nothing in a registration is secret: cipher, key id, salt and KDF
// parameters. An attacker who controls the backend learns nothing beyond
// object sizes, key ids and the KDF salt. The key id and the salt allow an
// offline guessing attack on a passphrase at the full Argon2id cost per
// guess, which any sealed object (its authentication tag) allows as well;
// choose a strong passphrase or a raw key. Such an attacker can make Load
// fail (a corrupt or foreign keys/<n>.json is refused), and a hostile
// registration can at most make one derivation take MaxKDFTime passes over
// MaxMemoryKiB of memory; it cannot make Load accept a key it did not
// verify.
//
// # Secrets
//
// The raw key and the passphrase never appear in an error or a log record;
// messages name the material by Source.Origin. The bytes derived from a
// passphrase are cleared once object.NewKey has built its AEAD from them
// (the Key keeps only the AEAD). This is best effort: Go may copy memory
// (stack growth, the garbage collector) and the AEAD keeps its own key
// schedule, so the key stays in the process's memory while a Ring is in
// use. The caller owns Source.Key and Source.Passphrase and may clear them
// after Load returns.
//
// # Load, step by step
//
//  1. Parse every registration of the Registry (a bad one is an error
//     wrapping ErrBadRegistration that names the version).
//  2. For each Source, by version: if registered, verify it; else if the
//     backend holds keys/<v>.json, verify it against that and adopt it into
//     the Registry; else, with Options.Recover (no metastore: the
//     registration may be lost), if the store's objects at the version
//     carry the configured raw key's cipher and key id, register it again
//     and rewrite keys/<v>.json (a passphrase cannot be: its salt is gone;
//     Key then says so); else if it is the write version, register it (a
//     passphrase gets a fresh salt from Options.NewKDF); else ignore it.
//  3. The write version must have a key (else an error wrapping
//     object.ErrNoKey), and its backend copy must hold the registered
//     bytes; it is written when missing or different.
//
// The Ring implements object.Keys: Key of a version without configured
// material wraps object.ErrNoKey and says which config section to add.
package keyring
