package migrate

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/backy/backy/metastore"
)

// fixtureDB is the metastore of the schema-1 fixture, written by schema-1
// code (see cmd/backy/schema_fixture_test.go). Tests only ever copy it.
var fixtureDB = filepath.Join("..", "testdata", "schema-1", "store", "backy.db")

// copyFixture copies the schema-1 fixture database into a new temporary
// directory and returns the copy's path and the original bytes.
func copyFixture(t *testing.T) (string, []byte) {
	t.Helper()
	orig, err := os.ReadFile(fixtureDB)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "backy.db")
	if err := os.WriteFile(path, orig, 0o600); err != nil {
		t.Fatal(err)
	}
	return path, orig
}

type dump map[string]map[string]string

// dumpDB reads every key and value of every top-level bucket.
func dumpDB(t *testing.T, path string) dump {
	t.Helper()
	bdb, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer bdb.Close()
	d := dump{}
	err = bdb.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			m := map[string]string{}
			d[string(name)] = m
			return b.ForEach(func(k, v []byte) error {
				if v == nil {
					v = []byte("<nested bucket>")
				}
				m[string(k)] = string(v)
				return nil
			})
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// expectedEncStats aggregates the block records of a dump by encryption
// version, straight from the documented record layout, and cross-checks
// the totals with the store counters in meta, which schema-1 code kept.
func expectedEncStats(t *testing.T, d dump) map[uint16]metastore.EncStat {
	t.Helper()
	want := map[uint16]metastore.EncStat{}
	var n, stored int64
	for k, v := range d["blocks"] {
		if len(k) != 32 || len(v) != 37 || v[0] != 1 {
			t.Fatalf("fixture block record %x has %d bytes", k, len(v))
		}
		rec := []byte(v)
		ev := uint16(rec[2])<<8 | uint16(rec[3])
		size := int64(rec[25])<<24 | int64(rec[26])<<16 | int64(rec[27])<<8 | int64(rec[28])
		st := want[ev]
		st.Blocks++
		st.StoredBytes += size
		want[ev] = st
		n++
		stored += size
	}
	meta := d["meta"]
	if got := int64(binary.BigEndian.Uint64([]byte(meta["blocks"]))); got != n || n == 0 {
		t.Fatalf("fixture: meta counts %d blocks, the bucket holds %d", got, n)
	}
	if got := int64(binary.BigEndian.Uint64([]byte(meta["stored_bytes"]))); got != stored {
		t.Fatalf("fixture: meta counts %d stored bytes, the records %d", got, stored)
	}
	return want
}

func assertAbsent(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := os.Lstat(n); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s exists after the upgrade (err %v)", filepath.Base(n), err)
		}
	}
}

// assertOld checks that path is still the original database, untouched.
func assertOld(t *testing.T, path string, orig []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, orig) {
		t.Fatalf("%s changed although the upgrade did not complete", path)
	}
}

// assertUpgraded checks that path holds the fully migrated fixture: the
// current schema, a clean metastore Check, the expected statistics, no key
// registration, every schema-1 entry unchanged, the old database kept
// byte-identical in .pre-N, and no working files.
func assertUpgraded(t *testing.T, path string, orig []byte) {
	t.Helper()
	origPath := filepath.Join(t.TempDir(), "orig.db")
	if err := os.WriteFile(origPath, orig, 0o600); err != nil {
		t.Fatal(err)
	}
	before := dumpDB(t, origPath)
	if s, err := metastore.SchemaOf(path); err != nil || s != metastore.CurrentSchema {
		t.Fatalf("schema after upgrade: %d, %v; want %d", s, err, metastore.CurrentSchema)
	}
	db, err := metastore.Open(path, metastore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	problems, err := db.Check()
	if err != nil || len(problems) > 0 {
		t.Fatalf("Check after upgrade: %v %v", problems, err)
	}
	stats, err := db.EncStats()
	if err != nil {
		t.Fatal(err)
	}
	if want := expectedEncStats(t, before); !maps.Equal(stats, want) {
		t.Errorf("encstats = %v, want %v", stats, want)
	}
	if regs, err := db.EncVersions(); err != nil || len(regs) != 0 {
		t.Errorf("encversions after upgrade: %v, %v; want none", regs, err)
	}
	after := dumpDB(t, path)
	if len(after["encstats"]) == 0 || after["encversions"] == nil {
		t.Errorf("buckets encstats/encversions missing or empty: %v", after)
	}
	delete(after, "encstats")
	delete(after, "encversions")
	// Schema 3: an empty vmeta bucket, no generation counters yet.
	if vm, ok := after["vmeta"]; !ok || len(vm) != 0 {
		t.Errorf("bucket vmeta missing or not empty: %v", vm)
	}
	delete(after, "vmeta")
	if got := binary.BigEndian.Uint32([]byte(after["meta"]["schema"])); got != metastore.CurrentSchema {
		t.Errorf("meta schema %d", got)
	}
	delete(after["meta"], "schema")
	delete(before["meta"], "schema")
	if !maps.EqualFunc(before, after, maps.Equal) {
		t.Errorf("the upgrade changed schema-1 entries:\nbefore %v\nafter  %v", before, after)
	}
	kept, err := os.ReadFile(backupPath(path, Target))
	if err != nil || !bytes.Equal(kept, orig) {
		t.Errorf("%s is not the original database byte for byte (err %v)", backupPath(path, Target), err)
	}
	assertAbsent(t, leftovers(path, Target)...)
}

func TestStepsContiguous(t *testing.T) {
	if len(Steps) == 0 {
		if metastore.CurrentSchema != 1 {
			t.Fatalf("no steps, but the current schema is %d", metastore.CurrentSchema)
		}
		return
	}
	if Steps[0].From != 1 {
		t.Errorf("the first step starts at schema %d, want 1", Steps[0].From)
	}
	for i, s := range Steps {
		if s.To != s.From+1 || s.Name == "" || s.Apply == nil {
			t.Errorf("step %d (%d->%d %q) is malformed", i, s.From, s.To, s.Name)
		}
		if i > 0 && s.From != Steps[i-1].To {
			t.Errorf("step %d starts at schema %d, the one before ends at %d", i, s.From, Steps[i-1].To)
		}
	}
	if last := Steps[len(Steps)-1].To; last != metastore.CurrentSchema || Target != metastore.CurrentSchema {
		t.Errorf("the steps end at schema %d, the metastore is at %d", last, metastore.CurrentSchema)
	}
	for from := 1; from <= metastore.CurrentSchema; from++ {
		if _, err := plan(Steps, from, metastore.CurrentSchema); err != nil {
			t.Errorf("no plan from schema %d: %v", from, err)
		}
	}
}

func TestUpgradeFixture(t *testing.T) {
	path, orig := copyFixture(t)
	var msgs []string
	res, err := Upgrade(context.Background(), path, Options{Notify: func(s string) { msgs = append(msgs, s) }})
	if err != nil {
		t.Fatal(err)
	}
	want := Result{From: 1, To: metastore.CurrentSchema, Backup: path + ".pre-" + strconv.Itoa(metastore.CurrentSchema)}
	if res != want {
		t.Errorf("Upgrade = %+v, want %+v", res, want)
	}
	wantMsg := "backy: upgraded metastore " + path + " from schema 1 to " + strconv.Itoa(metastore.CurrentSchema) +
		" (the old database is kept as " + want.Backup + ")"
	if len(msgs) != 1 || msgs[0] != wantMsg {
		t.Errorf("messages %q, want [%q]", msgs, wantMsg)
	}
	assertUpgraded(t, path, orig)

	// A second run (another process that found the old schema too) has
	// nothing to do and says nothing.
	now, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	msgs = nil
	res, err = Upgrade(context.Background(), path, Options{Notify: func(s string) { msgs = append(msgs, s) }})
	if err != nil || res != (Result{From: metastore.CurrentSchema, To: metastore.CurrentSchema}) || len(msgs) != 0 {
		t.Fatalf("second Upgrade = %+v, %v, messages %q; want nothing done", res, err, msgs)
	}
	assertOld(t, path, now)
	assertUpgraded(t, path, orig)
}

func TestStepIdempotent(t *testing.T) {
	// A step runs again on the same data after a crash; running it twice
	// in a row (schema reset in between) gives the same database.
	path, _ := copyFixture(t)
	bdb, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer bdb.Close()
	var first map[string]string
	for i := range 2 {
		err := bdb.Update(func(tx *bolt.Tx) error {
			if i > 0 {
				if err := setSchema(tx, 1); err != nil {
					return err
				}
			}
			if err := schema1to2(tx); err != nil {
				return err
			}
			got := map[string]string{}
			_ = tx.Bucket([]byte("encstats")).ForEach(func(k, v []byte) error { got[string(k)] = string(v); return nil })
			if i == 0 {
				first = got
			} else if !maps.Equal(first, got) {
				t.Errorf("second run: encstats %x, first %x", got, first)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

func TestOpenUpgrades(t *testing.T) {
	path, orig := copyFixture(t)
	var msgs []string
	o := Options{Notify: func(s string) { msgs = append(msgs, s) }}
	db, err := Open(context.Background(), path, metastore.Options{}, o)
	if err != nil {
		t.Fatal(err)
	}
	if db.BlockSize() != 65536 {
		t.Errorf("block size %d", db.BlockSize())
	}
	_ = db.Close()
	if len(msgs) != 1 {
		t.Errorf("messages %q, want one", msgs)
	}
	assertUpgraded(t, path, orig)
	db, err = Open(context.Background(), path, metastore.Options{}, o)
	if err != nil {
		t.Fatal(err)
	}
	_ = db.Close()
	if len(msgs) != 1 {
		t.Errorf("the second Open said %q", msgs[1:])
	}
}

func TestNewerSchemaRefused(t *testing.T) {
	path, _ := copyFixture(t)
	bdb, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = bdb.Update(func(tx *bolt.Tx) error { return setSchema(tx, metastore.CurrentSchema+1) })
	if cerr := bdb.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	newer, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Upgrade(context.Background(), path, Options{}); !errors.Is(err, metastore.ErrNewerSchema) {
		t.Errorf("Upgrade of a newer schema: %v, want ErrNewerSchema", err)
	}
	if _, err := Open(context.Background(), path, metastore.Options{}, Options{}); !errors.Is(err, metastore.ErrNewerSchema) {
		t.Errorf("Open of a newer schema: %v, want ErrNewerSchema", err)
	}
	assertOld(t, path, newer)
	assertAbsent(t, append(leftovers(path, Target), backupPath(path, Target))...)
}

func TestUpgradeNoStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "backy.db")
	if _, err := Upgrade(context.Background(), path, Options{}); !errors.Is(err, metastore.ErrNoStore) {
		t.Errorf("Upgrade without a store: %v", err)
	}
	assertAbsent(t, metastore.LockDir(path))
}

// withSteps replaces the ratchet for one test.
func withSteps(t *testing.T, steps []Step) {
	old := Steps
	Steps = steps
	t.Cleanup(func() { Steps = old })
}

func TestFailedUpgradeLeavesOriginal(t *testing.T) {
	real := Steps[len(Steps)-1]
	last := func(apply func(tx *bolt.Tx) error) []Step {
		s := append([]Step(nil), Steps...)
		s[len(s)-1] = Step{From: real.From, To: real.To, Name: real.Name, Apply: apply}
		return s
	}
	boom := errors.New("boom")
	cases := []struct {
		name  string
		steps []Step
		want  []error
	}{
		{"corrupting step", last(func(tx *bolt.Tx) error {
			if err := real.Apply(tx); err != nil {
				return err
			}
			// Bump one block's reference count: consistent to bbolt,
			// wrong to metastore's Check.
			k, v := tx.Bucket([]byte("blocks")).Cursor().First()
			v = bytes.Clone(v)
			v[36]++
			return tx.Bucket([]byte("blocks")).Put(k, v)
		}), []error{ErrVerify, metastore.ErrCorrupt}},
		{"failing step", last(func(tx *bolt.Tx) error {
			if err := real.Apply(tx); err != nil {
				return err
			}
			return boom
		}), []error{boom}},
		{"step that forgets the schema", last(func(tx *bolt.Tx) error {
			if err := real.Apply(tx); err != nil {
				return err
			}
			return setSchema(tx, real.From)
		}), nil},
		{"gap in the ratchet", Steps[:len(Steps)-1], nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			withSteps(t, c.steps)
			path, orig := copyFixture(t)
			notified := false
			_, err := Upgrade(context.Background(), path, Options{Notify: func(string) { notified = true }})
			if err == nil {
				t.Fatal("Upgrade succeeded")
			}
			t.Log(err)
			for _, w := range c.want {
				if !errors.Is(err, w) {
					t.Errorf("error %v does not wrap %v", err, w)
				}
			}
			if notified {
				t.Error("a failed upgrade was announced")
			}
			assertOld(t, path, orig)
			assertAbsent(t, append(leftovers(path, Target), backupPath(path, Target))...)
		})
	}
}

func TestUpgradeNoSpace(t *testing.T) {
	// The fixture (64 KiB) is copied twice in two writes each (a 16 KiB
	// first chunk, then the rest): fail each write in turn.
	for fail := 1; fail <= 4; fail++ {
		t.Run(strconv.Itoa(fail), func(t *testing.T) {
			calls := 0
			old := writeFile
			writeFile = func(f *os.File, b []byte) (int, error) {
				if calls++; calls == fail {
					n, _ := f.Write(b[:len(b)/2])
					return n, &os.PathError{Op: "write", Path: f.Name(), Err: syscall.ENOSPC}
				}
				return f.Write(b)
			}
			t.Cleanup(func() { writeFile = old })
			path, orig := copyFixture(t)
			_, err := Upgrade(context.Background(), path, Options{})
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("Upgrade: %v, want ENOSPC", err)
			}
			t.Log(err)
			assertOld(t, path, orig)
			assertAbsent(t, append(leftovers(path, Target), backupPath(path, Target))...)
		})
	}
}

func TestUpgradeRemovesLeftovers(t *testing.T) {
	path, orig := copyFixture(t)
	for _, n := range []string{workPath(path), backupTemp(path, Target), backupPath(path, Target)} {
		if err := os.WriteFile(n, []byte("left by a killed upgrade"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(metastore.LockDir(workPath(path))), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := Upgrade(context.Background(), path, Options{}); err != nil {
		t.Fatal(err)
	}
	assertUpgraded(t, path, orig)
}

// holdStore returns a schema-1 database at a fresh path while a metastore
// DB (a running command) holds the store lock shared: it creates a current
// store there, which takes the lock, then puts the fixture in its place.
func holdStore(t *testing.T) (string, []byte, *metastore.DB) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "backy.db")
	db, err := metastore.Create(path, 65536, [16]byte{1}, metastore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	orig, err := os.ReadFile(fixtureDB)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, orig, 0o600); err != nil {
		t.Fatal(err)
	}
	return path, orig, db
}

// stillRunning reports whether nothing arrived on ch for a while.
func stillRunning[T any](ch <-chan T) bool {
	select {
	case <-ch:
		return false
	case <-time.After(300 * time.Millisecond):
		return true
	}
}

func TestUpgradeWaitsForCommands(t *testing.T) {
	path, orig, db := holdStore(t)
	locked := make(chan struct{})
	release := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, err := Upgrade(context.Background(), path, Options{Hook: func(s string) {
			if s == "locked" {
				close(locked)
				<-release
			}
		}})
		done <- err
	}()
	if !stillRunning(locked) {
		t.Fatal("the upgrade took the store lock while a command held it")
	}
	assertOld(t, path, orig)
	_ = db.Close()
	<-locked

	// A command starting now waits for the upgrade, then opens the new
	// schema.
	opened := make(chan error, 1)
	go func() {
		db, err := metastore.Open(path, metastore.Options{})
		if err == nil {
			_ = db.Close()
		}
		opened <- err
	}()
	if !stillRunning(opened) {
		t.Fatal("a command opened the store during the upgrade")
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := <-opened; err != nil {
		t.Fatalf("the command waiting for the upgrade: %v", err)
	}
	assertUpgraded(t, path, orig)
}

func TestUpgradeCancelledWhileWaiting(t *testing.T) {
	path, orig, db := holdStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := Upgrade(ctx, path, Options{})
		done <- err
	}()
	if !stillRunning(done) {
		t.Fatal("the upgrade did not wait for the store lock")
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Upgrade: %v, want context.Canceled", err)
	}
	_ = db.Close()
	assertOld(t, path, orig)
	// The abandoned lock request gives the lock back once it gets it.
	if _, err := Upgrade(context.Background(), path, Options{}); err != nil {
		t.Fatal(err)
	}
	assertUpgraded(t, path, orig)
}
