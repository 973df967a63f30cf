// Package migrate upgrades what backy keeps on disk from one format to the
// next: the metastore's schema (a ratchet of ordered, idempotent steps, one
// per schema version, each run under the store's exclusive lock on a copy
// kept aside as backy.db.pre-N, verified, and announced in one line), and
// the stored blocks' encryption (migrate-encryption: reseal each block at a
// newer encryption version, verify it, switch its record, delete the old
// object).
//
// Schema 1 is the first schema, so there is no step yet; metastore.Open
// refuses a newer schema (metastore.ErrNewerSchema) and reports an older
// one (metastore.ErrOlderSchema) for this package to upgrade.
package migrate

import "github.com/backy/backy/metastore"

// Target is the schema version migrations lead to.
const Target = metastore.CurrentSchema
