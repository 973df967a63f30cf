package main

// Issue 13 item 3: a removal cut short (rm or enforce killed) is finished
// by the next enforce or cleanup, and 'backup --resume' of such a version
// says what it is.

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/backy/backy/metastore"
)

// e2eListed is a version as 'ls --json' prints it, with its removal flag.
type e2eListed struct {
	UID      string `json:"uid"`
	Volume   string `json:"volume"`
	Status   string `json:"status"`
	Removing bool   `json:"removing"`
}

func (b *e2eBox) listed() map[string]e2eListed {
	b.t.Helper()
	out := map[string]e2eListed{}
	for _, v := range e2eDecode[[]e2eListed](b.t, b.ok("ls", "--json")) {
		out[v.UID] = v
	}
	return out
}

// e2eMarkRemoving leaves versions as a remover killed after its first
// transaction does: incomplete and "removing", with nobody holding them.
func e2eMarkRemoving(t *testing.T, b *e2eBox, uids ...string) {
	t.Helper()
	db, err := metastore.Open(filepath.Join(b.home, "backy.db"), metastore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, uid := range uids {
		if _, err := db.UpdateVersion(uid, func(v *metastore.Version) error {
			v.Status, v.Removing = metastore.StatusIncomplete, true
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
}

// e2eSnapshots counts the objects of version uid's metadata in the data
// backend.
func e2eSnapshots(t *testing.T, b *e2eBox, uid string) int {
	t.Helper()
	return int(e2eDirUsage(t, filepath.Join(b.dataDir(), "versions", strings.ToLower(uid))).files)
}

// TestInterruptedRemoval: versions left "removing" are refused by
// 'backup --resume' with a message that says so, and finished by the next
// enforce (of their volume) and cleanup, which delete their metadata in
// the backend and free their blocks; one that a live process holds is
// left alone.
func TestInterruptedRemoval(t *testing.T) {
	b := e2eNewBox(t)
	b.ok("init", "--block-size", "65536")
	img := b.path("a.img")
	var uids []string
	for i := range 4 {
		e2eRandomFile(t, img, 8*64*e2eKiB, uint64(10+i))
		uids = append(uids, b.backup(img, "a").UID)
	}
	e2eRandomFile(t, b.path("b.img"), 8*64*e2eKiB, 99)
	other := b.backup(b.path("b.img"), "b").UID
	newest := uids[3]
	e2eCopy(t, img, b.path("newest.img"))
	stuckEnforce, stuckCleanup, held := uids[0], uids[1], uids[2]
	if e2eSnapshots(t, b, stuckEnforce) == 0 {
		t.Fatalf("version %s has no metadata in the backend to begin with", stuckEnforce)
	}
	e2eMarkRemoving(t, b, stuckEnforce, stuckCleanup, held, other)

	// backup --resume: one line that says what the version is.
	r := b.fail(exitUsage, "backup", img, "a", "--resume", stuckEnforce)
	if !strings.Contains(r.stderr, "being removed") || strings.Contains(r.stderr, "only an incomplete version can be resumed") {
		t.Errorf("backup --resume of a version being removed: want a message saying it is being removed:\n%v", r)
	}

	// A live process holds one (a removal still running).
	db, err := metastore.Open(filepath.Join(b.home, "backy.db"), metastore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	lk, err := db.LockVersion(held, metastore.Exclusive)
	if err != nil {
		t.Fatal(err)
	}

	// enforce of volume a: finishes the two of a nobody holds, reports
	// them removed, leaves b's to b, and keeps the newest.
	gone := e2eDecode[[]e2eListed](t, b.ok("enforce", "latest1", "a", "--json"))
	var goneUIDs []string
	for _, v := range gone {
		goneUIDs = append(goneUIDs, v.UID)
	}
	slices.Sort(goneUIDs)
	if want := []string{stuckEnforce, stuckCleanup}; !slices.Equal(goneUIDs, want) {
		t.Errorf("enforce latest1 a removed %v, want the interrupted removals %v", goneUIDs, want)
	}
	l := b.listed()
	for _, uid := range []string{stuckEnforce, stuckCleanup} {
		if _, ok := l[uid]; ok {
			t.Errorf("%s is still listed after enforce: %+v", uid, l[uid])
		}
		if n := e2eSnapshots(t, b, uid); n != 0 {
			t.Errorf("%d objects of %s's metadata are left in the backend", n, uid)
		}
	}
	if v := l[held]; !v.Removing {
		t.Errorf("%s, held by a live process, is %+v; want it left removing", held, v)
	}
	if v := l[other]; !v.Removing {
		t.Errorf("%s of volume b is %+v; want it left to an enforce of b", other, v)
	}
	if v := l[newest]; v.Status != "valid" {
		t.Errorf("the newest version %s is %+v", newest, v)
	}

	// cleanup finishes every removal nobody holds and frees the blocks.
	lk.Unlock()
	before := b.storeStats()
	res := e2eDecode[struct {
		BlocksDeleted    int64    `json:"blocks_deleted"`
		RemovalsFinished []string `json:"removals_finished"`
	}](t, b.ok("cleanup", "--json"))
	slices.Sort(res.RemovalsFinished)
	want := []string{held, other}
	slices.Sort(want)
	if !slices.Equal(res.RemovalsFinished, want) {
		t.Errorf("cleanup finished the removals of %v, want %v", res.RemovalsFinished, want)
	}
	// 8 blocks per version, none shared: the 4 removed versions' blocks.
	if res.BlocksDeleted != 32 {
		t.Errorf("cleanup deleted %d blocks, want 32 (the 4 removed versions'; %d before)", res.BlocksDeleted, before.Blocks)
	}
	if l := b.listed(); len(l) != 1 || l[newest].Status != "valid" {
		t.Errorf("after cleanup: %+v, want only %s", l, newest)
	}
	b.restore(newest, b.path("newest.img"))
	b.ok("deep-scrub", "--all")
}

// TestEnforceKill: enforce killed with SIGKILL at seeded random points
// while it removes 15 versions. After each kill every version still listed
// as complete restores bit-identically and deep-scrubs clean, and the next
// enforce completes (finishing any removal the killed one began), leaving
// exactly what the rules keep, with reference counts exact.
func TestEnforceKill(t *testing.T) {
	seed := rand.Uint64()
	if s := os.Getenv("BACKY_KILL_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("BACKY_KILL_SEED=%q: %v", s, err)
		}
	}
	t.Logf("seed %d (BACKY_KILL_SEED=%d repeats the kill points)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 3))

	// The template store: 3 volumes of 6 versions each, 8 blocks of 64
	// KiB per image, consecutive versions sharing 6 blocks.
	const bs, nblk, nver = 64 * e2eKiB, 8, 6
	b := e2eNewBox(t)
	b.ok("init", "--block-size", strconv.Itoa(bs))
	images := map[string]string{} // uid -> a copy of its image
	newest := map[string]string{} // volume -> uid
	for vi := range 3 {
		vol := fmt.Sprintf("vol%d", vi)
		img := b.path(vol + ".img")
		e2eRandomFile(t, img, nblk*bs, uint64(1000*vi))
		for k := range nver {
			e2eScribble(t, img, int64(k%nblk)*bs, bs, uint64(1000*vi+k+1))
			e2eScribble(t, img, int64((k+3)%nblk)*bs, bs, uint64(1000*vi+k+500))
			uid := b.backup(img, vol).UID
			images[uid] = b.path(uid + ".img")
			e2eCopy(t, img, images[uid])
			newest[vol] = uid
		}
	}
	template := b.home
	enforce := []string{"enforce", "latest1", "--json"}

	// How long an uninterrupted run takes: the kill points lie in it.
	var d time.Duration
	for i := range 3 {
		m := b.with(t)
		m.setHome(b.path(fmt.Sprintf("measure%d", i)))
		e2eCloneStore(t, template, m.home)
		if r := m.ok(enforce...); i == 0 || r.dur < d {
			d = r.dur
		}
		if n := len(e2eDecode[[]e2eListed](t, m.ok(enforce...))); n != 0 {
			t.Fatalf("a second enforce removed %d versions", n)
		}
	}
	t.Logf("an uninterrupted enforce removing 15 versions takes %s", d.Round(time.Millisecond))

	const rounds = 40
	killed, stuck := 0, 0
	for round := range rounds {
		c := b.with(t)
		c.setHome(b.path(fmt.Sprintf("round%02d", round)))
		e2eCloneStore(t, template, c.home)
		// Not in the first fifth: the process starts and opens the store.
		delay := d/5 + time.Duration(rng.Int64N(int64(d)*4/5))
		if e2eEncKill(c, delay, enforce...) {
			killed++
		}
		// What the killed run left: removing versions, and complete ones
		// that must be intact.
		var complete []string
		removing := 0
		for uid, v := range c.listed() {
			switch {
			case v.Removing:
				removing++
			case v.Status == "valid":
				complete = append(complete, uid)
			default:
				t.Errorf("round %d: %s is %+v after the kill", round, uid, v)
			}
		}
		if removing > 0 {
			stuck++
		}
		slices.Sort(complete)
		for vol, uid := range newest {
			if !slices.Contains(complete, uid) {
				t.Errorf("round %d: the newest version %s of %s is not listed complete after the kill", round, uid, vol)
			}
		}
		uid := complete[rng.IntN(len(complete))]
		c.restore(uid, images[uid])
		c.ok("deep-scrub", "--all")

		// The re-run completes and leaves what the rules keep.
		c.ok(enforce...)
		l := c.listed()
		if len(l) != len(newest) {
			t.Errorf("round %d (kill after %s, %d removing): after the re-run %d versions are listed, want the %d newest: %+v",
				round, delay.Round(time.Millisecond), removing, len(l), len(newest), l)
		}
		for vol, uid := range newest {
			if v := l[uid]; v.Status != "valid" || v.Removing {
				t.Errorf("round %d: the newest version %s of %s is %+v after the re-run", round, uid, vol, v)
			}
			c.restore(uid, images[uid])
		}
		c.ok("deep-scrub", "--all")
		c.ok("cleanup")
		if st := c.storeStats(); st.Unreferenced != 0 || st.Blocks != 3*nblk {
			t.Errorf("round %d: after enforce and cleanup: %+v; want the %d blocks of the 3 versions left, none unreferenced", round, st, 3*nblk)
		}
		if err := os.RemoveAll(c.home); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d of %d runs killed before they finished; %d left removals in progress", killed, rounds, stuck)
}
