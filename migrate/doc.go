// Package migrate upgrades what backy keeps on disk from one format to the
// next. This package is the metastore's schema ratchet; re-encrypting the
// stored blocks (migrate-encryption) lives in migrate/reencrypt.
//
// # The ratchet
//
// Steps lists every schema migration in order, one per schema version:
// Steps[i] turns schema Steps[i].From into Steps[i].To = From+1, and the
// last one ends at metastore.CurrentSchema (a test holds both). A step is
// data: a name and a function over one bbolt write transaction, which also
// sets meta "schema". Entries are never edited once released; a new schema
// appends a step (and a fixture in testdata/schema-N, see
// cmd/backy/schema_fixture_test.go).
//
// Steps work on raw bbolt, against the frozen byte layout of the schema
// they start from as docs/FORMAT.md documents it, and deliberately not
// through package metastore's Go API. That API follows the current schema:
// it expects the buckets and encodings of CurrentSchema, it is changed
// whenever the schema changes, and metastore.Open refuses an older
// database. A step written against it would read a schema-1 database
// through schema-N code and would silently change meaning the day the API
// changes; a step written against bytes keeps doing exactly what it did
// when it was released. The only use of metastore's code is the final
// verification, which is precisely the point: the migrated database must
// satisfy the current code's Check.
//
// # Upgrade
//
// Upgrade (and Open, which calls it when metastore.Open reports
// metastore.ErrOlderSchema) runs under metastore.LockStoreExclusive: it
// waits for every running command (each holds the store lock shared for
// its whole run), and commands that start meanwhile wait on their shared
// lock. Under the lock it:
//
//  1. removes the leftovers of an interrupted upgrade: <db>.migrating, its
//     lock directory <db>.migrating.locks and <db>.pre-N.tmp;
//  2. reads the schema: the current one means another process upgraded it
//     meanwhile (nothing to do); a newer one is refused
//     (metastore.ErrNewerSchema, exit 79 in the CLI);
//  3. copies the database to <db>.pre-N (N the target schema) through a
//     temporary file, fsync, rename and directory fsync. An existing
//     <db>.pre-N is overwritten: it comes either from an interrupted
//     upgrade (a copy of the same, still old, database) or from an
//     upgrade whose result was since replaced by the older database in
//     place now, which is the one to go back to;
//  4. copies the database to <db>.migrating (fsynced) and applies each step
//     in its own bbolt transaction there;
//  5. verifies the working copy: metastore.Open and metastore's full Check;
//     any problem fails the upgrade;
//  6. fsyncs the working copy, renames it over <db>, fsyncs the directory,
//     and announces the upgrade in one line through Options.Notify:
//     "backy: upgraded metastore <db> from schema 1 to 2 (the old database
//     is kept as <db>.pre-2)".
//
// # Crash safety
//
// <db> is written exactly once, by the rename in step 6, and that rename is
// atomic: before it <db> is the untouched old database, after it the
// complete, verified and fsynced new one. A process killed at any point
// therefore leaves <db> either fully old — the next command finds an older
// schema, upgrades again and removes the leftovers first — or fully new,
// with nothing left to clean (the working copy's lock directory is removed
// before the rename). A power loss before the directory fsync may undo the
// rename, which again leaves the fully old database. The working files are
// only ever touched under the exclusive lock, so no two upgrades meet.
// On an error (ENOSPC while copying, a failed step or verification, a
// cancelled context) Upgrade removes what it made, including <db>.pre-N,
// and returns an error wrapping the cause; <db> is unchanged.
//
// Memory is bounded: files are copied through a 1 MiB buffer and a step
// keeps what its doc comment says (step 1->2: one counter pair per
// encryption version).
package migrate

import "github.com/backy/backy/metastore"

// Target is the schema version migrations lead to.
const Target = metastore.CurrentSchema
