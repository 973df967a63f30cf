package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/backy/backy/blockstore/backend/s3/s3test"
)

// bench holds the settings of one benchmark run and the figures it collects.
type bench struct {
	ctx   context.Context
	backy string // absolute path of the binary under test
	dir   string // work directory; everything is written below it
	size  int64
	runs  int
	drop  bool // drop the page cache before every timed step
	rep   *report
	start time.Time
	s3    *s3test.Server // the local S3 server, nil with -skip-s3
	nbd   bool           // time nbdcopy through 'backy nbd' (not -skip-nbd)
}

// result is one finished command: wall time, peak RSS and stdout.
type result struct {
	secs   float64
	rssKiB int64
	out    []byte
	stderr []byte
}

// version is the part of backy's version JSON the benchmark checks.
type version struct {
	UID          string `json:"uid"`
	Status       string `json:"status"`
	BytesWritten int64  `json:"bytes_written"`
}

func (b *bench) logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "[%4.0fs] %s\n", time.Since(b.start).Seconds(), fmt.Sprintf(format, a...))
}

func (b *bench) path(name string) string { return filepath.Join(b.dir, name) }

// command runs name with args (extra environment in env) and times it.
func (b *bench) command(env []string, name string, args ...string) (result, error) {
	cmd := exec.CommandContext(b.ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	res := result{secs: time.Since(start).Seconds(), out: stdout.Bytes(), stderr: stderr.Bytes()}
	if cmd.ProcessState != nil {
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			res.rssKiB = ru.Maxrss // KiB on Linux
		}
	}
	if err != nil {
		return res, fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return res, nil
}

// runBacky runs one backy command (with --json) against store: the
// default store in that directory, or, if store names a .cfg file, the
// store that configuration describes.
func (b *bench) runBacky(store, cmd string, args ...string) (result, error) {
	env := []string{"BACKY_HOME=" + store, "BACKY_CONFIG="}
	if strings.HasSuffix(store, ".cfg") {
		env = []string{"BACKY_CONFIG=" + store}
	}
	return b.command(env, b.backy, append([]string{cmd, "--json"}, args...)...)
}

// benchKey is the (public, benchmark-only) key of the encrypted stores.
const benchKey = "62656e63686d61726b206b6579206f6e6c792c206e6f74206120736563726574"

// encryptedConfig writes a configuration for the store in directory store
// (laid out like the default store) with zstd compression and AES-256-GCM
// encryption at version 1, and returns its path.
func (b *bench) encryptedConfig(store string) (string, error) {
	cfg := store + "-enc.cfg"
	text := fmt.Sprintf("[DEFAULTS]\ncompression = zstd\nencryption_version = 1\nencryption_cipher = aes-256-gcm\nencryption_key = %s\n"+
		"[MetaBackend]\npath = %s\n[DataBackend]\npath = %s\n", benchKey, filepath.Join(store, "backy.db"), filepath.Join(store, "data"))
	return cfg, os.WriteFile(cfg, []byte(text), 0o600)
}

// dropCaches flushes dirty pages and empties the page cache, so that the
// next step reads from disk.
func (b *bench) dropCaches() error {
	if !b.drop {
		return nil
	}
	syscall.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0); err != nil {
		return fmt.Errorf("drop caches: %w", err)
	}
	return nil
}

// step times fn with a cold cache and records it in r.
func (b *bench) step(r *row, fn func() (result, error)) (result, error) {
	if err := b.dropCaches(); err != nil {
		return result{}, err
	}
	res, err := fn()
	if err != nil {
		return res, fmt.Errorf("%s: %w", r.Name, err)
	}
	r.add(res)
	return res, nil
}

// backup times 'backy backup' and checks that it made a valid version.
func (b *bench) backup(r *row, store string, args ...string) (version, error) {
	var v version
	res, err := b.step(r, func() (result, error) { return b.runBacky(store, "backup", args...) })
	if err != nil {
		return v, err
	}
	if err := json.Unmarshal(res.out, &v); err != nil {
		return v, fmt.Errorf("%s: version JSON: %w", r.Name, err)
	}
	if v.Status != "valid" {
		return v, fmt.Errorf("%s: version %s is %q, want valid", r.Name, v.UID, v.Status)
	}
	r.Note = "wrote " + mib(v.BytesWritten)
	return v, nil
}

// restore times 'backy restore' into a new file and checks its sha256.
func (b *bench) restore(r *row, store, uid, target, want string, args ...string) error {
	if err := os.Remove(target); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	args = append(args, uid, target)
	if _, err := b.step(r, func() (result, error) { return b.runBacky(store, "restore", args...) }); err != nil {
		return err
	}
	got, err := sha256File(target)
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("DATA MISMATCH: %s: restored %s has sha256 %s, the source has %s", r.Name, uid, got, want)
	}
	r.Note = "sha256 ok"
	return nil
}

// coldHash reads new files once from disk, before any step is timed, and
// returns their sha256. On a shared VM the first read of freshly written
// data can be several times slower than later ones; this keeps that cost
// out of whichever step would come first.
func (b *bench) coldHash(paths ...string) ([]string, error) {
	if err := b.dropCaches(); err != nil {
		return nil, err
	}
	sums := make([]string, len(paths))
	for i, p := range paths {
		var err error
		if sums[i], err = sha256File(p); err != nil {
			return nil, err
		}
	}
	return sums, nil
}

// cpSync copies with cp and fsyncs the copy, timing both.
func (b *bench) cpSync(src, dst string) (result, error) {
	start := time.Now()
	res, err := b.command(nil, "cp", "--reflink=never", src, dst)
	if err != nil {
		return res, err
	}
	f, err := os.OpenFile(dst, os.O_RDWR, 0)
	if err != nil {
		return res, err
	}
	if err := syncClose(f); err != nil {
		return res, err
	}
	res.secs = time.Since(start).Seconds()
	return res, nil
}

// random measures cp, backup, unchanged re-backup and restore of random data.
func (b *bench) random() error {
	src, dst, out := b.path("random.img"), b.path("cp.img"), b.path("restored.img")
	b.logf("writing %s of random data", mib(b.size))
	if err := writeRandom(src, b.size); err != nil {
		return err
	}
	sums, err := b.coldHash(src)
	if err != nil {
		return err
	}
	sum := sums[0]
	cp, cps := b.rep.row("cp random", b.size), b.rep.row("cp+sync random", b.size)
	bk, re := b.rep.row("backup random", b.size), b.rep.row("re-backup random (unchanged)", b.size)
	rs, rss := b.rep.row("restore random", b.size), b.rep.row("restore --sparse random", b.size)
	ebk, ers := b.rep.row("backup random, zstd + aes-256-gcm", b.size), b.rep.row("restore random, zstd + aes-256-gcm", b.size)
	mig := b.rep.row("migrate-encryption random (none -> zstd + aes-256-gcm)", b.size)
	mrs := b.rep.row("restore random, after migrate-encryption", b.size)
	ds := b.rep.row("deep-scrub random (--all: read + verify every block)", b.size)
	var nc *row
	if b.nbd {
		nc = b.rep.row("nbdcopy random (backy nbd --read-only on 127.0.0.1)", b.size)
	}
	var s3bk, s3rs *row
	if b.s3 != nil {
		s3bk, s3rs = b.rep.row("backup random, S3 (versitygw on 127.0.0.1)", b.size), b.rep.row("restore random, S3 (versitygw on 127.0.0.1)", b.size)
	}
	for i := 1; i <= b.runs; i++ {
		b.logf("random data, run %d/%d: cp, cp+sync, backup, re-backup, restore, restore --sparse; encrypted backup, restore; migrate-encryption", i, b.runs)
		store := b.path(fmt.Sprintf("store-random-%d", i))
		_ = os.Remove(dst)
		if _, err := b.step(cp, func() (result, error) { return b.command(nil, "cp", "--reflink=never", src, dst) }); err != nil {
			return err
		}
		_ = os.Remove(dst)
		if _, err := b.step(cps, func() (result, error) { return b.cpSync(src, dst) }); err != nil {
			return err
		}
		_ = os.Remove(dst)
		v, err := b.backup(bk, store, src, "vol")
		if err != nil {
			return err
		}
		if _, err := b.backup(re, store, src, "vol"); err != nil {
			return err
		}
		if err := b.restore(rs, store, v.UID, out, sum); err != nil {
			return err
		}
		if err := b.restore(rss, store, v.UID, out, sum, "--sparse"); err != nil {
			return err
		}
		if _, err := b.step(ds, func() (result, error) { return b.runBacky(store, "deep-scrub", "--all") }); err != nil {
			return err
		}
		if nc != nil {
			if err := b.nbdRound(nc, store, v.UID, out, sum); err != nil {
				return err
			}
		}
		// The same with compression and encryption on, in a new store.
		encStore := b.path(fmt.Sprintf("store-random-enc-%d", i))
		encCfg, err := b.encryptedConfig(encStore)
		if err != nil {
			return err
		}
		if _, err := b.runBacky(encCfg, "init"); err != nil {
			return err
		}
		ev, err := b.backup(ebk, encCfg, src, "vol")
		if err != nil {
			return err
		}
		if err := b.restore(ers, encCfg, ev.UID, out, sum); err != nil {
			return err
		}
		// Turning encryption on for the plain store: every block rewritten.
		migCfg, err := b.encryptedConfig(store)
		if err != nil {
			return err
		}
		res, err := b.step(mig, func() (result, error) { return b.runBacky(migCfg, "migrate-encryption", "--all") })
		if err != nil {
			return err
		}
		var mr struct {
			Migrated     int64 `json:"blocks_migrated"`
			BytesWritten int64 `json:"bytes_written"`
			Remaining    int64 `json:"blocks_below_target"`
		}
		if err := json.Unmarshal(res.out, &mr); err != nil || mr.Remaining != 0 || mr.Migrated == 0 {
			return fmt.Errorf("%s: result %s: %v (want every block migrated)", mig.Name, res.out, err)
		}
		mig.Note = fmt.Sprintf("%d blocks, wrote %s", mr.Migrated, mib(mr.BytesWritten))
		if err := b.restore(mrs, migCfg, v.UID, out, sum); err != nil {
			return err
		}
		if err := removeAll(store, out, encStore, encCfg, migCfg); err != nil {
			return err
		}
		if b.s3 != nil {
			if err := b.s3Round(s3bk, s3rs, i, src, out, sum); err != nil {
				return err
			}
		}
	}
	if b.s3 != nil {
		s3bk.ratio("file backup", bk)
		s3rs.ratio("file restore", rs)
	}
	for _, r := range []*row{bk, re, rs, rss, ds, ebk, ers, mig, mrs} {
		r.ratio("cp", cp)
		r.ratio("cp+sync", cps)
	}
	if nc != nil {
		nc.ratio("restore", rs)
		nc.ratio("cp", cp)
	}
	ebk.ratio("plain backup", bk)
	ers.ratio("plain restore", rs)
	return removeAll(src, dst, out)
}

// s3Round backs up src to a new bucket of the local S3 server and restores
// it, plain (no compression, no encryption) as the "backup random" row.
func (b *bench) s3Round(bk, rs *row, i int, src, out, sum string) error {
	bucket, err := b.s3.CreateBucket(b.ctx)
	if err != nil {
		return err
	}
	cfg := b.path(fmt.Sprintf("s3-%d.cfg", i))
	text := fmt.Sprintf("[MetaBackend]\npath = %s\n[DataBackend]\ntype = s3\nendpoint = %s\nbucket = %s\nregion = %s\naccess_key_id = %s\nsecret_access_key = %s\n",
		b.path(fmt.Sprintf("s3-meta-%d/backy.db", i)), b.s3.Endpoint, bucket, s3test.Region, s3test.AccessKey, s3test.SecretKey)
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		return err
	}
	if _, err := b.runBacky(cfg, "init"); err != nil {
		return err
	}
	v, err := b.backup(bk, cfg, src, "vol")
	if err != nil {
		return err
	}
	if err := b.restore(rs, cfg, v.UID, out, sum); err != nil {
		return err
	}
	return removeAll(out, cfg, b.path(fmt.Sprintf("s3-meta-%d", i)), filepath.Join(b.s3.Dir(), bucket))
}

// zeros measures backups of a file of written zeros and of a sparse file;
// neither may store a byte.
func (b *bench) zeros() error {
	zero, sparse := b.path("zeros.img"), b.path("sparse.img")
	b.logf("writing %s of zeros and a sparse file of the same size", mib(b.size))
	if err := writeZeros(zero, b.size); err != nil {
		return err
	}
	if err := sparseFile(sparse, b.size); err != nil {
		return err
	}
	if _, err := b.coldHash(zero); err != nil {
		return err
	}
	rows := []*row{b.rep.row("backup zeros (written)", b.size), b.rep.row("backup zeros (sparse file)", b.size)}
	for i := 1; i <= b.runs; i++ {
		b.logf("zeros, run %d/%d: backup of written zeros, backup of a sparse file", i, b.runs)
		store := b.path(fmt.Sprintf("store-zeros-%d", i))
		for j, src := range []string{zero, sparse} {
			v, err := b.backup(rows[j], store, src, "zeros")
			if err != nil {
				return err
			}
			if v.BytesWritten != 0 {
				return fmt.Errorf("FAIL: %s: version %s wrote %d bytes, want 0", rows[j].Name, v.UID, v.BytesWritten)
			}
		}
		if err := os.RemoveAll(store); err != nil {
			return err
		}
	}
	for _, r := range rows {
		r.Note = fmt.Sprintf("%.2f GB/s, wrote 0 B", r.gbps())
	}
	return removeAll(zero, sparse)
}

// ext4 measures a full, a hinted differential and an unhinted backup of a
// real ext4 image, and the restore of the differential version.
func (b *bench) ext4() error {
	old, cur, out, hints := b.path("ext4-old.img"), b.path("ext4-new.img"), b.path("restored.img"), b.path("hints.json")
	info, err := b.buildExt4(old)
	if err != nil {
		return err
	}
	b.rep.Ext4 = info
	b.logf("changing the image: debugfs writes a few files from /etc and removes one; 1%% of the blocks get random bytes")
	if err := b.changeExt4(old, cur, info); err != nil {
		return err
	}
	if err := writeHints(hints, info.ChangedBlocks); err != nil {
		return err
	}
	sums, err := b.coldHash(old, cur)
	if err != nil {
		return err
	}
	sum := sums[1]
	full, diff := b.rep.row("ext4 full backup", b.size), b.rep.row("ext4 differential backup (hints)", b.size)
	again, rs := b.rep.row("ext4 re-backup changed (no hints)", b.size), b.rep.row("ext4 restore differential", b.size)
	for i := 1; i <= b.runs; i++ {
		b.logf("ext4, run %d/%d: full backup, differential backup, unhinted re-backup, restore", i, b.runs)
		store := b.path(fmt.Sprintf("store-ext4-%d", i))
		v0, err := b.backup(full, store, old, "ext4")
		if err != nil {
			return err
		}
		v1, err := b.backup(diff, store, cur, "ext4", "--from", v0.UID, "--hints", hints)
		if err != nil {
			return err
		}
		diff.Note += fmt.Sprintf(", %d blocks hinted", len(info.ChangedBlocks))
		if _, err := b.backup(again, store, cur, "ext4"); err != nil {
			return err
		}
		if err := b.restore(rs, store, v1.UID, out, sum); err != nil {
			return err
		}
		if err := removeAll(store, out); err != nil {
			return err
		}
	}
	for _, r := range []*row{diff, again, rs} {
		r.ratio("full backup", full)
	}
	return removeAll(old, cur, out, hints)
}

func removeAll(paths ...string) error {
	for _, p := range paths {
		if err := os.RemoveAll(p); err != nil {
			return err
		}
	}
	return nil
}

// row is one figure: a step timed once per run.
type row struct {
	Name     string    `json:"name"`
	Bytes    int64     `json:"bytes"`
	Seconds  []float64 `json:"seconds"`
	Median   float64   `json:"median_seconds"`
	MiBps    float64   `json:"mib_per_s"`
	MinMiBps float64   `json:"min_mib_per_s"`
	MaxMiBps float64   `json:"max_mib_per_s"`
	RSSMiB   float64   `json:"peak_rss_mib"`
	Ratios   []ratio   `json:"time_ratios,omitempty"`
	Note     string    `json:"note,omitempty"`
}

// ratio is this row's median time divided by the median time of row Of.
type ratio struct {
	Of string  `json:"of"`
	X  float64 `json:"x"`
}

const mibBytes = 1 << 20

func (r *row) add(res result) {
	r.Seconds = append(r.Seconds, res.secs)
	r.RSSMiB = max(r.RSSMiB, float64(res.rssKiB)/1024)
	s := slices.Sorted(slices.Values(r.Seconds))
	n := len(s)
	r.Median = (s[(n-1)/2] + s[n/2]) / 2
	mb := float64(r.Bytes) / mibBytes
	r.MiBps, r.MinMiBps, r.MaxMiBps = mb/r.Median, mb/s[n-1], mb/s[0]
}

func (r *row) ratio(name string, base *row) {
	r.Ratios = append(r.Ratios, ratio{name, r.Median / base.Median})
}

func (r *row) gbps() float64 { return float64(r.Bytes) / r.Median / 1e9 }
