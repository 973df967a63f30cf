package main

// Issue 13 item 4: what a killed 'init' (or first use of the default
// store) leaves is rolled back by the next init or first use, and never a
// store.json of a store that holds data.

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/backy/backy/blockstore/backend/s3/s3test"
)

// e2eStoreID returns the store id in the default store's store.json ("" if
// there is none).
func e2eStoreID(t *testing.T, b *e2eBox) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(b.dataDir(), "store.json"))
	if os.IsNotExist(err) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	var id struct {
		StoreID string `json:"store_id"`
	}
	if err := json.Unmarshal(data, &id); err != nil {
		t.Fatal(err)
	}
	return id.StoreID
}

// e2eCreating lists the temporary metastores beside the default store's.
func e2eCreating(t *testing.T, b *e2eBox) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(b.home, "backy.db.creating-*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestInitInterrupted builds the states a killed init leaves and checks
// what the next command makes of them.
func TestInitInterrupted(t *testing.T) {
	img := filepath.Join(t.TempDir(), "img")
	e2eRandomFile(t, img, 3*64*e2eKiB+100, 5)
	// killedBeforeLink: store.json written, the new metastore complete
	// under its temporary name, not yet linked into place.
	killedBeforeLink := func(t *testing.T) (*e2eBox, string) {
		b := e2eNewBox(t)
		b.ok("init", "--block-size", "65536")
		if err := os.Rename(filepath.Join(b.home, "backy.db"), filepath.Join(b.home, "backy.db.creating-0123456789ab")); err != nil {
			t.Fatal(err)
		}
		return b, e2eStoreID(t, b)
	}
	works := func(t *testing.T, b *e2eBox) {
		t.Helper()
		v := b.backup(img, "vol")
		if c := e2eCreating(t, b); len(c) != 0 {
			t.Errorf("temporary metastores left: %v", c)
		}
		b.restore(v.UID, img)
		b.ok("deep-scrub", "--all")
	}

	t.Run("init after a kill before the link", func(t *testing.T) {
		b, old := killedBeforeLink(t)
		r := b.ok("init", "--block-size", "65536")
		if !strings.Contains(r.stderr, "rolled back an interrupted creation of store "+old) {
			t.Errorf("init did not say it rolled back the interrupted one:\n%v", r)
		}
		if id := e2eStoreID(t, b); id == "" || id == old {
			t.Errorf("store.json holds store %q; want a new store (the interrupted one was %s)", id, old)
		}
		works(t, b)
	})
	t.Run("first use of the default store after a kill before the link", func(t *testing.T) {
		b, _ := killedBeforeLink(t)
		works(t, b)
	})
	t.Run("init after a kill while the temporary metastore was written", func(t *testing.T) {
		b := e2eNewBox(t)
		e2eWriteFile(t, filepath.Join(b.home, "backy.db.creating-a0a0a0a0a0a0"), e2eRandom(5000, 1))
		b.ok("init", "--block-size", "65536")
		works(t, b)
	})
	t.Run("any command after a kill between the link and the removal of the temporary name", func(t *testing.T) {
		b := e2eNewBox(t)
		b.ok("init", "--block-size", "65536")
		if err := os.Link(filepath.Join(b.home, "backy.db"), filepath.Join(b.home, "backy.db.creating-b1b1b1b1b1b1")); err != nil {
			t.Fatal(err)
		}
		b.ok("ls")
		works(t, b)
		b.fail(exitCantCreate, "init", "--block-size", "65536")
	})
	t.Run("S3: init after a kill before the link", func(t *testing.T) {
		srv := s3test.Start(t)
		b := e2eNewBox(t)
		bucket := srv.NewBucket(t)
		b.useS3(srv, bucket, "p", "", "")
		b.ok("init", "--block-size", "65536")
		db := b.path("backy-s3.cfg.meta/backy.db")
		if err := os.Rename(db, db+".creating-0123456789ab"); err != nil {
			t.Fatal(err)
		}
		b.fail(exitNotFound, "ls")
		r := b.ok("init", "--block-size", "65536")
		if !strings.Contains(r.stderr, "rolled back an interrupted creation") {
			t.Errorf("init did not say it rolled back the interrupted one:\n%v", r)
		}
		if m, _ := filepath.Glob(db + ".creating-*"); len(m) != 0 {
			t.Errorf("temporary metastores left: %v", m)
		}
		v := b.backup(img, "vol")
		b.restore(v.UID, img)
	})
	t.Run("a store with data whose metastore was lost is never rolled back", func(t *testing.T) {
		b := e2eNewBox(t)
		b.ok("init", "--block-size", "65536")
		// An empty metastore of this store under a temporary name, then
		// data, then the metastore lost.
		db := filepath.Join(b.home, "backy.db")
		e2eCopy(t, db, db+".creating-c2c2c2c2c2c2")
		v := b.backup(img, "vol")
		if err := os.Remove(db); err != nil {
			t.Fatal(err)
		}
		id := e2eStoreID(t, b)
		r := b.fail(exitCantCreate, "init", "--block-size", "65536")
		if !strings.Contains(r.stderr, "rebuild-metastore") {
			t.Errorf("want the rebuild-metastore hint:\n%v", r)
		}
		if e2eStoreID(t, b) != id {
			t.Fatalf("store.json of a store with data changed")
		}
		b.ok("rebuild-metastore")
		b.restore(v.UID, img)
	})
}

// TestInitKill: init killed with SIGKILL at seeded random points. After
// each kill the re-run of init completes (exit 0, or 73 when the killed
// one had finished, and then the store works), and the store backs up and
// restores bit-identically, deep-scrubs clean, and has no temporary
// metastore left.
func TestInitKill(t *testing.T) {
	seed := rand.Uint64()
	if s := os.Getenv("BACKY_KILL_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("BACKY_KILL_SEED=%q: %v", s, err)
		}
	}
	t.Logf("seed %d (BACKY_KILL_SEED=%d repeats the kill points)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 4))
	b := e2eNewBox(t)
	img := b.path("img")
	e2eRandomFile(t, img, 5*64*e2eKiB+7, 9)
	initArgs := []string{"init", "--block-size", "65536"}

	// The kill points lie within the quickest of a few uninterrupted runs.
	var d time.Duration
	for i := range 5 {
		m := b.with(t)
		m.setHome(b.path(fmt.Sprintf("measure%d", i)))
		if r := m.ok(initArgs...); i == 0 || r.dur < d {
			d = r.dur
		}
	}
	t.Logf("an uninterrupted init takes %s", d.Round(time.Millisecond))

	const rounds = 40
	killed, halfDone, temps, rolledBack := 0, 0, 0, 0
	for round := range rounds {
		c := b.with(t)
		c.setHome(b.path(fmt.Sprintf("round%02d", round)))
		delay := time.Duration(rng.Int64N(int64(d)))
		if e2eEncKill(c, delay, initArgs...) {
			killed++
		}
		_, dbErr := os.Stat(filepath.Join(c.home, "backy.db"))
		if os.IsNotExist(dbErr) && e2eStoreID(t, c) != "" {
			halfDone++
		}
		if len(e2eCreating(t, c)) > 0 {
			temps++
		}
		r := c.run(initArgs...)
		switch r.code {
		case 0:
			if strings.Contains(r.stderr, "rolled back") {
				rolledBack++
			}
		case exitCantCreate:
			// The killed init had finished: the store must work.
			if !strings.Contains(r.stderr, "store already exists") {
				t.Errorf("round %d (kill after %s): %v", round, delay.Round(time.Millisecond), r)
			}
		default:
			t.Errorf("round %d (kill after %s): the re-run of init:\n%v", round, delay.Round(time.Millisecond), r)
			continue
		}
		c.ok("ls")
		if left := e2eCreating(t, c); len(left) != 0 {
			t.Errorf("round %d: temporary metastores left: %v", round, left)
		}
		v := c.backup(img, "vol")
		c.restore(v.UID, img)
		c.ok("deep-scrub", "--all")
		if err := os.RemoveAll(c.home); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d of %d inits killed before they finished; %d left a temporary metastore, %d store.json without a metastore; %d re-runs rolled one back",
		killed, rounds, temps, halfDone, rolledBack)
}
