package main

// TestConcurrentProcesses, the concurrency test of issue 4: separate backy
// processes loop backups, rm, enforce, cleanup, restores and scrubs
// against one store for a bounded time. Afterwards every remaining version
// must restore bit-identically to the image it was made from and scrub
// clean, and the store must hold exactly the blocks its versions use, with
// no orphan (no process is killed, so there is no debris).

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const (
	soakBS = 64 * e2eKiB // block size of the soak store
	// soakPool blocks (seeds 1..soakPool) are drawn on by every volume,
	// so that blocks are shared across volumes and versions.
	soakPool = 12
	// soakUnique is the first seed of the blocks made for one image.
	soakUnique = 1000
	// soakRules is the retention policy of the enforce loop.
	soakRules = "latest3,hours1"
)

// soakVolume is a volume of the soak test and the size of its images.
type soakVolume struct {
	name string
	size int64
}

func (v soakVolume) blocks() int { return int((v.size + soakBS - 1) / soakBS) }

func (v soakVolume) blockLen(i int) int64 { return min(soakBS, v.size-int64(i)*soakBS) }

// soakSpec describes an image: the seed of each block's content, 0 for a
// block of zeros (left as a hole in the source file).
type soakSpec []uint64

// soakVersion is a version a backup made, with the image it was made from.
type soakVersion struct {
	uid  string
	vol  int
	spec soakSpec
	sha  string // sha256 of the image
}

// soakStat accumulates the runs of one kind of command.
type soakStat struct {
	runs     int
	total    time.Duration
	longest  time.Duration
	outcomes map[string]int
}

type soak struct {
	t    *testing.T
	b    *e2eBox
	seed uint64
	vols []soakVolume

	stop     chan struct{}
	stopOnce sync.Once
	seeds    atomic.Uint64 // the last unique block seed handed out
	targets  atomic.Int64  // names restore targets

	mu       sync.Mutex
	versions map[string]*soakVersion // every version a backup made
	order    []string                // their uids in the order recorded
	removed  map[string]string       // uid -> who removed it (rm, enforce)
	gone     []string                // the uids removed, in the order reported
	newest   []string                // per volume: its newest version
	stats    map[string]*soakStat    // per command label
	counts   map[string]int64        // other tallies
	samples  map[string]string       // first stderr of each accepted failure
}

// soakDuration is how long the loops run: BACKY_SOAK, else 60 s (10 s
// with -short).
func soakDuration(t *testing.T) time.Duration {
	if s := os.Getenv("BACKY_SOAK"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			t.Fatalf("BACKY_SOAK=%q: want a positive duration such as 60s or 5m", s)
		}
		return d
	}
	if testing.Short() {
		return 10 * time.Second
	}
	return 60 * time.Second
}

// TestConcurrentProcesses loops, in parallel backy processes on one store
// (64 KiB blocks): backups of three volumes whose images change a few
// blocks between runs and share blocks (some runs differential, with
// --from and sometimes --hints), rm of random older versions, enforce,
// cleanup (sometimes --orphans), restores of random versions (checked)
// and scrubs. Only the documented exit codes of expected races are
// accepted: 75 (in use) and 66 (removed meanwhile), where they can occur.
// Then every version left restores bit-identically, deep-scrubs and
// scrubs clean, and the store holds exactly the blocks they use.
func TestConcurrentProcesses(t *testing.T) {
	dur := soakDuration(t)
	seed := rand.Uint64()
	if s := os.Getenv("BACKY_SOAK_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("BACKY_SOAK_SEED=%q: %v", s, err)
		}
	}
	t.Logf("seed %d (BACKY_SOAK_SEED=%d repeats the choices, not the timing), loops run for %s", seed, seed, dur)
	b := e2eNewBox(t)
	s := &soak{
		t: t, b: b, seed: seed,
		vols: []soakVolume{
			{"soak-a", 256*soakBS - 1000},
			{"soak-b", 80 * soakBS},
			{"soak-c", 64*soakBS + 777},
		},
		stop:     make(chan struct{}),
		versions: map[string]*soakVersion{},
		removed:  map[string]string{},
		stats:    map[string]*soakStat{},
		counts:   map[string]int64{},
		samples:  map[string]string{},
	}
	s.seeds.Store(soakUnique)
	b.ok("init", "--block-size", strconv.Itoa(soakBS))
	if err := os.Mkdir(s.restoreDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	// A first version of each volume, before the loops start.
	rng := rand.New(rand.NewPCG(seed, 0))
	for vi, vol := range s.vols {
		spec := make(soakSpec, vol.blocks())
		for i := range spec {
			switch r := rng.IntN(10); {
			case r < 3:
				spec[i] = 1 + rng.Uint64N(soakPool)
			case r < 4:
				spec[i] = 0
			default:
				spec[i] = s.seeds.Add(1)
			}
		}
		src := s.srcPath(vi)
		sha, err := s.writeImage(src, vi, spec)
		if err != nil {
			t.Fatal(err)
		}
		v := b.backup(src, vol.name)
		s.newest = append(s.newest, "")
		s.created(&soakVersion{uid: v.UID, vol: vi, spec: spec, sha: sha})
	}

	start := time.Now()
	var wg sync.WaitGroup
	loop := func(id uint64, f func(rng *rand.Rand)) {
		wg.Go(func() { f(rand.New(rand.NewPCG(seed, id))) })
	}
	for vi := range s.vols {
		loop(uint64(1+vi), func(rng *rand.Rand) { s.backupLoop(vi, rng) })
	}
	loop(10, s.rmLoop)
	loop(11, s.enforceLoop)
	loop(12, s.cleanupLoop)
	loop(13, s.restoreLoop)
	loop(14, s.scrubLoop)
	timer := time.AfterFunc(dur, s.halt)
	wg.Wait() // every loop lets its running command finish
	timer.Stop()
	loops := time.Since(start)
	t.Logf("loops ran for %s (commands finished)", loops.Round(time.Millisecond))
	s.logCounts()
	if left, _ := os.ReadDir(s.restoreDir()); len(left) > 0 {
		t.Errorf("restores left files in the target directory: %v", left)
	}

	final := time.Now()
	s.finalChecks()
	t.Logf("final checks took %s", time.Since(final).Round(time.Millisecond))
}

// finalChecks runs, with nothing else running: cleanup, then restores of
// every version left, deep-scrub, scrub, the orphan sweep and the counts.
func (s *soak) finalChecks() {
	t, b := s.t, s.b
	res := e2eDecode[e2eCleanupRes](t, b.ok("cleanup", "--json"))
	t.Logf("final cleanup: %d blocks deleted, %d trash objects", res.BlocksDeleted, res.TrashDeleted)

	// The versions listed are exactly those made and not removed.
	listed := b.ls()
	byUID := map[string]e2eVersion{}
	for _, v := range listed {
		byUID[v.UID] = v
	}
	var live []*soakVersion
	for _, uid := range s.order {
		v := s.versions[uid]
		_, gone := s.removed[uid]
		_, there := byUID[uid]
		switch {
		case gone && there:
			t.Errorf("version %s was removed (by %s) but is still listed: %+v", uid, s.removed[uid], byUID[uid])
		case !gone && !there:
			t.Errorf("version %s of %s vanished: nothing reported removing it", uid, s.vols[v.vol].name)
		case there:
			live = append(live, v)
		}
	}
	for uid, who := range s.removed {
		if s.versions[uid] == nil {
			t.Errorf("%s removed %s, a version no backup reported making", who, uid)
		}
	}
	for _, v := range listed {
		if s.versions[v.UID] == nil {
			t.Errorf("ls lists a version no backup reported making: %+v", v)
		} else if v.Status != "valid" {
			t.Errorf("version %s is %s, want valid: %+v", v.UID, v.Status, v)
		}
	}
	for vi, uid := range s.newest {
		if _, ok := byUID[uid]; !ok {
			t.Errorf("the newest version %s of %s is gone (removed by %q)", uid, s.vols[vi].name, s.removed[uid])
		}
	}
	perVol := make([]int, len(s.vols))
	for _, v := range live {
		perVol[v.vol]++
	}
	t.Logf("%d versions left (per volume %v) of %d made", len(live), perVol, len(s.order))

	// Every version left restores bit-identically to its image.
	restoreStart := time.Now()
	for _, v := range live {
		if byUID[v.uid].Status != "valid" {
			continue
		}
		target := filepath.Join(s.restoreDir(), "final-"+v.uid+".img")
		b.ok("restore", v.uid, target)
		if err := s.checkRestored(target, v); err != nil {
			t.Error(err)
		}
		_ = os.Remove(target)
	}
	t.Logf("final restores of %d versions took %s", len(live), time.Since(restoreStart).Round(time.Millisecond))

	for _, kind := range []string{"deep-scrub", "scrub"} {
		r := b.run(kind, "--all", "--json")
		if r.code != 0 {
			t.Errorf("want exit 0:\n%v", r)
			continue
		}
		sr := e2eDecode[e2eScrubResult](t, r)
		bad := sr.FailuresTotal != 0 || len(sr.Failures) != 0 || len(sr.InvalidVersions) != 0 || len(sr.Versions) != len(live)
		for _, v := range sr.Versions {
			bad = bad || !v.OK || v.BlocksBad != 0
		}
		if bad {
			t.Errorf("%s --all over %d versions: %+v\n%v", kind, len(live), sr, r)
		}
		t.Logf("%s --all: %d versions, %d blocks checked in %s", kind, len(sr.Versions), sr.BlocksChecked, r.dur.Round(time.Millisecond))
	}

	// Nothing was killed: the sweep must find no orphan and no temp file.
	r := b.ok("cleanup", "--orphans", "--json")
	sweep := e2eDecode[soakCleanupRes](t, r)
	if sweep.Orphans == nil || sweep.Orphans.Objects != 0 || sweep.Orphans.TempFiles != 0 || sweep.Orphans.Foreign != 0 || sweep.BlocksDeleted != 0 {
		t.Errorf("cleanup --orphans after the loops and a cleanup, with no process killed: want nothing to do, got %+v (orphans %+v)\n%v",
			sweep.soakCleanupCounts, sweep.Orphans, r)
	}

	// The store holds exactly the blocks the versions left use.
	st := b.storeStats()
	objects, temps := e2eObjectUsage(t, filepath.Join(b.dataDir(), "blocks"))
	want := map[[2]uint64]bool{}
	for _, v := range live {
		vol := s.vols[v.vol]
		for i, seed := range v.spec {
			if seed != 0 {
				want[[2]uint64{seed, uint64(vol.blockLen(i))}] = true
			}
		}
	}
	if st.Blocks != objects.files || temps != 0 || st.StoredBytes != objects.bytes {
		t.Errorf("stats --json: %+v; under %s: %d objects, %d bytes, %d temp files", st, b.dataDir(), objects.files, objects.bytes, temps)
	}
	if st.Blocks != int64(len(want)) || st.Unreferenced != 0 || st.Trash != 0 || st.Versions != len(live) {
		t.Errorf("stats --json: %+v; want %d blocks (the distinct blocks of the %d versions left), none unreferenced, no trash",
			st, len(want), len(live))
	}
	t.Logf("store: %d versions, %d blocks, %d object files, %d stored bytes", st.Versions, st.Blocks, objects.files, st.StoredBytes)
}

// soakCleanupRes is cleanup's --json output, with the orphan counters the
// shared e2eCleanupRes does not name.
type soakCleanupRes struct {
	soakCleanupCounts
	Orphans *struct {
		Objects   int64 `json:"objects_deleted"`
		Bytes     int64 `json:"bytes_freed"`
		Listed    int64 `json:"objects_listed"`
		Foreign   int64 `json:"foreign_objects"`
		TempFiles int   `json:"temp_files_removed"`
	} `json:"orphans"`
}

type soakCleanupCounts struct {
	BlocksDeleted int64 `json:"blocks_deleted"`
	BytesFreed    int64 `json:"bytes_freed"`
	TrashDeleted  int64 `json:"trash_objects_deleted"`
}

// backupLoop backs up volume vi again and again, changing a few blocks of
// its image before each run; a third of the runs are differential (--from
// a random version of the volume, half of them with exact hints).
func (s *soak) backupLoop(vi int, rng *rand.Rand) {
	vol := s.vols[vi]
	src, hintsPath := s.srcPath(vi), s.b.path(vol.name+".hints.json")
	s.mu.Lock()
	spec := s.versions[s.newest[vi]].spec
	s.mu.Unlock()
	for !s.stopped() {
		spec = slices.Clone(spec)
		s.mutate(vi, spec, rng)
		sha, err := s.writeImage(src, vi, spec)
		if err != nil {
			s.failf("writing %s: %v", src, err)
			return
		}
		args := []string{"backup", src, vol.name, "--json"}
		label := "backup"
		var base *soakVersion
		if rng.IntN(3) == 0 {
			base = s.pick(rng, vi, false)
		}
		var allowed []int
		if base != nil {
			// The base may be removed meanwhile (66) or be being removed (75).
			allowed = []int{exitNotFound, exitLocked}
			args = append(args, "--from", base.uid)
			label = "backup --from"
			if rng.IntN(2) == 0 {
				if err := s.writeHints(hintsPath, vi, base.spec, spec); err != nil {
					s.failf("writing %s: %v", hintsPath, err)
					return
				}
				args = append(args, "--hints", hintsPath)
				label = "backup --from --hints"
			}
		}
		r := s.run(label, args...)
		if !s.accept(label, r, allowed...) {
			continue
		}
		var v e2eVersion
		if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
			s.failf("backup printed no version object (%v):\n%v", err, r)
			return
		}
		if v.Status != "valid" || v.Volume != vol.name || v.Size != vol.size || v.BlockSize != soakBS || !e2eUIDShape(v.UID) ||
			(base != nil && v.Base != base.uid) {
			s.failf("backup made %+v, want a valid version of %s, %d bytes, base %v:\n%v", v, vol.name, vol.size, base != nil, r)
			return
		}
		s.created(&soakVersion{uid: v.UID, vol: vi, spec: spec, sha: sha})
		// Warnings of the races the engine handles.
		if strings.Contains(r.stderr, "deduplicated blocks were removed meanwhile") {
			s.tally("backups that stored again blocks a cleanup removed", 1)
		}
		if strings.Contains(r.stderr, "waiting for the writers lock") {
			s.tally("backups that waited for an orphan sweep", 1)
		}
	}
}

// rmLoop removes one or two random versions that are not their volume's
// newest.
func (s *soak) rmLoop(rng *rand.Rand) {
	for s.sleep(rng, 50, 250) {
		var uids []string
		for range 1 + rng.IntN(2) {
			if v := s.pick(rng, -1, true); v != nil && !slices.Contains(uids, v.uid) {
				uids = append(uids, v.uid)
			}
		}
		if len(uids) == 0 {
			continue
		}
		r := s.run("rm", append([]string{"rm", "--json"}, uids...)...)
		// In use by a restore, a scrub, a backup's --from or enforce (75),
		// or removed by enforce meanwhile (66).
		s.accept("rm", r, exitLocked, exitNotFound)
		var out struct {
			Removed []string `json:"removed"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
			s.failf("rm printed no JSON (%v):\n%v", err, r)
			return
		}
		for _, uid := range out.Removed {
			if !slices.Contains(uids, uid) {
				s.failf("rm reports removing %s, which it was not asked to:\n%v", uid, r)
			}
		}
		if r.code == 0 && len(out.Removed) != len(uids) {
			s.failf("rm exited 0 but removed only %v of %v:\n%v", out.Removed, uids, r)
		}
		s.markRemoved("rm", r, out.Removed)
	}
}

// enforceLoop applies the retention policy to all volumes, or some.
func (s *soak) enforceLoop(rng *rand.Rand) {
	for s.sleep(rng, 200, 600) {
		args := []string{"enforce", soakRules, "--json"}
		for _, vol := range s.vols {
			if rng.IntN(3) > 0 {
				args = append(args, vol.name)
			}
		}
		r := s.run("enforce", args...)
		// A version in use by another process is skipped: exit 75.
		s.accept("enforce", r, exitLocked)
		var gone []e2eVersion
		if err := json.Unmarshal([]byte(r.stdout), &gone); err != nil {
			s.failf("enforce printed no JSON array (%v):\n%v", err, r)
			return
		}
		uids := make([]string, 0, len(gone))
		for _, v := range gone {
			uids = append(uids, v.UID)
		}
		s.markRemoved("enforce", r, uids)
	}
}

// cleanupLoop runs cleanup, and every sixth time cleanup --orphans,
// which must find nothing: no process is killed.
func (s *soak) cleanupLoop(rng *rand.Rand) {
	for i := 1; s.sleep(rng, 50, 250); i++ {
		args, label := []string{"cleanup", "--json"}, "cleanup"
		orphans := i%6 == 0
		if orphans {
			args, label = append(args, "--orphans"), "cleanup --orphans"
		}
		r := s.run(label, args...)
		if !s.accept(label, r) {
			continue
		}
		var res soakCleanupRes
		if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
			s.failf("cleanup printed no JSON (%v):\n%v", err, r)
			return
		}
		s.tally("blocks deleted by cleanups", res.BlocksDeleted)
		s.tally("trash objects deleted by cleanups", res.TrashDeleted)
		if !orphans {
			continue
		}
		if res.Orphans == nil {
			s.failf("cleanup --orphans printed no orphans object:\n%v", r)
			return
		}
		s.tally("objects listed by orphan sweeps", res.Orphans.Listed)
		if res.Orphans.Objects != 0 || res.Orphans.TempFiles != 0 || res.Orphans.Foreign != 0 {
			s.t.Errorf("cleanup --orphans during the loops found debris, though no process was killed: %+v\n%v", *res.Orphans, r)
		}
	}
}

// restoreLoop restores random versions and checks what they restore.
func (s *soak) restoreLoop(rng *rand.Rand) {
	for s.sleep(rng, 0, 100) {
		v := s.pick(rng, -1, false)
		if v == nil {
			continue
		}
		target := filepath.Join(s.restoreDir(), fmt.Sprintf("r%d.img", s.targets.Add(1)))
		args := []string{"restore", v.uid, target}
		if rng.IntN(2) == 0 {
			args = append(args, "--sparse")
		}
		r := s.run("restore", args...)
		// Being removed (75), or removed meanwhile (66).
		if !s.accept("restore", r, exitLocked, exitNotFound) {
			if _, err := os.Lstat(target); !errors.Is(err, os.ErrNotExist) {
				s.failf("a failed restore left its target %s (%v):\n%v", target, err, r)
			}
			continue
		}
		if err := s.checkRestored(target, v); err != nil {
			s.failf("%v\n%v", err, r)
		}
		_ = os.Remove(target)
	}
}

// scrubLoop alternates scrub --all and deep-scrub --all --percent 30.
func (s *soak) scrubLoop(rng *rand.Rand) {
	for i := 0; s.sleep(rng, 300, 800); i++ {
		args, label := []string{"scrub", "--all", "--json"}, "scrub"
		if i%2 == 1 {
			args, label = []string{"deep-scrub", "--all", "--percent", "30", "--json"}, "deep-scrub"
		}
		r := s.run(label, args...)
		// Versions locked, being removed or incomplete are skipped and
		// listed (README, Scrubbing); one removed since the selection
		// must not fail the run either: only exit 0 is accepted.
		if !s.accept(label, r) {
			continue
		}
		var sr e2eScrubResult
		if err := json.Unmarshal([]byte(r.stdout), &sr); err != nil {
			s.failf("%s printed no JSON (%v):\n%v", label, err, r)
			return
		}
		if sr.FailuresTotal != 0 || len(sr.InvalidVersions) != 0 {
			s.failf("%s exited 0 but reports damage: %+v\n%v", label, sr, r)
		}
		s.tally("blocks checked by "+label, sr.BlocksChecked)
	}
}

// mutate changes one to four random blocks of volume vi's image spec: to
// a new block, a pool block, zeros, a copy of another block of the image,
// or a block of recently removed versions.
func (s *soak) mutate(vi int, spec soakSpec, rng *rand.Rand) {
	for range 1 + rng.IntN(4) {
		i := rng.IntN(len(spec))
		switch r := rng.IntN(10); {
		case r < 5:
			spec[i] = s.seeds.Add(1)
		case r < 7:
			spec[i] = 1 + rng.Uint64N(soakPool)
		case r < 8:
			spec[i] = 0
		case r < 9:
			spec[i] = spec[rng.IntN(len(spec))]
		default:
			// A block only recently removed versions used: unreferenced,
			// and maybe being collected while this backup deduplicates
			// against it. (Not at a short last block: that would be
			// another block.)
			s.mu.Lock()
			used := s.referenced()
			var cands []uint64
			for _, uid := range s.gone[max(0, len(s.gone)-3):] {
				if v := s.versions[uid]; v != nil {
					for _, seed := range v.spec {
						if seed != 0 && !used[seed] && !slices.Contains(cands, seed) {
							cands = append(cands, seed)
						}
					}
				}
			}
			if n := len(spec) - 1; len(cands) > 0 && n > 0 {
				spec[rng.IntN(n)] = cands[rng.IntN(len(cands))]
				s.counts["unreferenced blocks brought back"]++
			}
			s.mu.Unlock()
		}
	}
}

// block returns the content of a block of seed.
func (s *soak) block(seed uint64) []byte {
	var k [32]byte
	binary.LittleEndian.PutUint64(k[0:], seed)
	binary.LittleEndian.PutUint64(k[8:], s.seed)
	k[31] = 0x50
	b := make([]byte, soakBS)
	_, _ = rand.NewChaCha8(k).Read(b)
	return b
}

// image returns the bytes of the image spec describes for volume vi.
func (s *soak) image(vi int, spec soakSpec) []byte {
	data := make([]byte, s.vols[vi].size)
	for i, seed := range spec {
		if seed != 0 {
			copy(data[int64(i)*soakBS:], s.block(seed))
		}
	}
	return data
}

// writeImage writes the image to path, with holes for its zero blocks,
// and returns its sha256.
func (s *soak) writeImage(path string, vi int, spec soakSpec) (string, error) {
	data := s.image(vi, spec)
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	err = f.Truncate(int64(len(data)))
	for i, seed := range spec {
		if seed != 0 && err == nil {
			off := int64(i) * soakBS
			_, err = f.WriteAt(data[off:off+s.vols[vi].blockLen(i)], off)
		}
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:]), err
}

// writeHints writes the hints of the blocks that differ between the
// images from and to, as 'rbd diff' would list them.
func (s *soak) writeHints(path string, vi int, from, to soakSpec) error {
	hs := []e2eHint{}
	for i := range to {
		if from[i] != to[i] {
			hs = append(hs, e2eHint{Offset: int64(i) * soakBS, Length: s.vols[vi].blockLen(i), Exists: to[i] != 0})
		}
	}
	data, err := json.Marshal(hs)
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}

// checkRestored compares the restored file with the image of v.
func (s *soak) checkRestored(path string, v *soakVersion) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return err
	}
	if hex.EncodeToString(h.Sum(nil)) == v.sha {
		return nil
	}
	got, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	want := s.image(v.vol, v.spec)
	if len(got) != len(want) {
		return fmt.Errorf("restore of %s (%s) has %d bytes, want %d", v.uid, s.vols[v.vol].name, len(got), len(want))
	}
	var bad []string
	for i := range v.spec {
		lo, hi := int64(i)*soakBS, int64(i)*soakBS+s.vols[v.vol].blockLen(i)
		if !bytes.Equal(got[lo:hi], want[lo:hi]) {
			bad = append(bad, fmt.Sprintf("%d (seed %d)", i, v.spec[i]))
		}
	}
	return fmt.Errorf("restore of %s (%s) differs from its image in blocks %s", v.uid, s.vols[v.vol].name, strings.Join(bad, ", "))
}

// run runs backy like b.run, from any goroutine: it never calls t.Fatal.
func (s *soak) run(label string, args ...string) e2eRes {
	cmd := exec.Command(e2eBin, args...)
	cmd.Dir = s.b.dir
	cmd.Env = slices.Clone(s.b.env)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	start := time.Now()
	err := cmd.Start()
	if err == nil {
		t := time.AfterFunc(e2eCmdTimeout, func() { _ = cmd.Process.Kill() })
		err = cmd.Wait()
		t.Stop()
	}
	r := e2eRes{args: args, stdout: so.String(), stderr: se.String(), dur: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
		if r.dur >= e2eCmdTimeout {
			r.stderr += fmt.Sprintf("\n(killed: it ran for more than %s)\n", e2eCmdTimeout)
		}
	default:
		r.code = -2
		r.stderr += fmt.Sprintf("\n(not run: %v)\n", err)
	}
	e2eCheckRace(s.t, r)
	s.mu.Lock()
	st := s.stats[label]
	if st == nil {
		st = &soakStat{outcomes: map[string]int{}}
		s.stats[label] = st
	}
	st.runs++
	st.total += r.dur
	st.longest = max(st.longest, r.dur)
	st.outcomes["exit "+strconv.Itoa(r.code)]++
	s.mu.Unlock()
	return r
}

// accept reports whether r succeeded. A failure with an allowed code (an
// expected race) is counted and must be reported on stderr as documented;
// any other failure fails the test (the loops go on).
func (s *soak) accept(label string, r e2eRes, allowed ...int) bool {
	if r.code == 0 {
		return true
	}
	key := fmt.Sprintf("%s exit %d", label, r.code)
	s.mu.Lock()
	defer s.mu.Unlock()
	if !slices.Contains(allowed, r.code) {
		// The loops go on, to find what else goes wrong; the first few
		// failures of each command are printed in full.
		if s.counts["unexpected "+key]++; s.counts["unexpected "+key] <= 3 {
			s.t.Errorf("%s: unexpected exit %d (allowed: 0 %v):\n%v", label, r.code, allowed, r)
		}
		return false
	}
	if !soakErrLine(r) {
		s.t.Errorf("%s: exit %d without a 'backy: ' or JSON error line on stderr:\n%v", label, r.code, r)
	}
	if _, ok := s.samples[key]; !ok {
		s.samples[key] = strings.TrimSpace(r.stderr)
	}
	return false
}

// soakErrLine reports whether stderr holds backy's error report for r.
func soakErrLine(r e2eRes) bool {
	for _, l := range e2eLines(r.stderr) {
		if strings.HasPrefix(l, "backy: ") {
			return true
		}
		var e struct {
			Error string `json:"error"`
			Code  int    `json:"exit_code"`
		}
		if json.Unmarshal([]byte(l), &e) == nil && e.Error != "" && e.Code == r.code {
			return true
		}
	}
	return false
}

func (s *soak) failf(format string, args ...any) {
	s.t.Errorf(format, args...)
	s.halt()
}

func (s *soak) halt() { s.stopOnce.Do(func() { close(s.stop) }) }

func (s *soak) stopped() bool {
	select {
	case <-s.stop:
		return true
	default:
		return false
	}
}

// sleep waits a random time between lo and hi milliseconds, and reports
// whether the loops go on.
func (s *soak) sleep(rng *rand.Rand, lo, hi int) bool {
	select {
	case <-s.stop:
		return false
	case <-time.After(time.Duration(lo+rng.IntN(hi-lo+1)) * time.Millisecond):
		return !s.stopped()
	}
}

func (s *soak) srcPath(vi int) string { return s.b.path(s.vols[vi].name + ".img") }

func (s *soak) restoreDir() string { return s.b.path("restores") }

// created records a version a backup made.
func (s *soak) created(v *soakVersion) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.versions[v.uid] != nil {
		s.t.Errorf("two backups reported making %s", v.uid)
	}
	s.versions[v.uid] = v
	s.order = append(s.order, v.uid)
	s.newest[v.vol] = v.uid
	s.counts["backups made"]++
}

// markRemoved records the versions who reports removing. A version
// removed twice, or its volume's newest, is a bug.
func (s *soak) markRemoved(who string, r e2eRes, uids []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, uid := range uids {
		if prev, ok := s.removed[uid]; ok {
			s.t.Errorf("%s removed %s, which %s had removed already:\n%v", who, uid, prev, r)
		}
		if v := s.versions[uid]; v != nil && s.newest[v.vol] == uid {
			s.t.Errorf("%s removed %s, the newest version of %s:\n%v", who, uid, s.vols[v.vol].name, r)
		}
		s.removed[uid] = who
		s.gone = append(s.gone, uid)
		s.counts["versions removed by "+who]++
	}
}

// pick returns a random version believed to exist, of volume vi (-1: any),
// not its volume's newest if notNewest; nil if there is none.
func (s *soak) pick(rng *rand.Rand, vi int, notNewest bool) *soakVersion {
	s.mu.Lock()
	defer s.mu.Unlock()
	var cands []*soakVersion
	for _, uid := range s.order {
		v := s.versions[uid]
		if _, gone := s.removed[uid]; gone || (vi >= 0 && v.vol != vi) || (notNewest && s.newest[v.vol] == uid) {
			continue
		}
		cands = append(cands, v)
	}
	if len(cands) == 0 {
		return nil
	}
	return cands[rng.IntN(len(cands))]
}

func (s *soak) tally(what string, n int64) {
	s.mu.Lock()
	s.counts[what] += n
	s.mu.Unlock()
}

// logCounts logs what the loops did.
func (s *soak) logCounts() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, label := range slices.Sorted(maps.Keys(s.stats)) {
		st := s.stats[label]
		var outs []string
		for _, o := range slices.Sorted(maps.Keys(st.outcomes)) {
			outs = append(outs, fmt.Sprintf("%s: %d", o, st.outcomes[o]))
		}
		s.t.Logf("%-22s %4d runs (%s), mean %s, longest %s", label, st.runs, strings.Join(outs, ", "),
			(st.total / time.Duration(st.runs)).Round(time.Millisecond), st.longest.Round(time.Millisecond))
	}
	for _, what := range slices.Sorted(maps.Keys(s.counts)) {
		s.t.Logf("%s: %d", what, s.counts[what])
	}
	for _, key := range slices.Sorted(maps.Keys(s.samples)) {
		s.t.Logf("first %s: %s", key, s.samples[key])
	}
}

// referenced returns the seeds of the blocks the versions believed to
// exist use. The caller holds s.mu.
func (s *soak) referenced() map[uint64]bool {
	used := map[uint64]bool{}
	for uid, v := range s.versions {
		if _, gone := s.removed[uid]; !gone {
			for _, seed := range v.spec {
				used[seed] = true
			}
		}
	}
	return used
}
