package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"
)

// blockSize is backy's default block size: the unit of hints and of the
// changed-block figures.
const blockSize = 4 << 20

// fakeTime is the fixed time of the staged files and of mkfs.ext4.
const fakeTime = 1700000000

// writeRandom writes size bytes of a ChaCha8 stream: every 4 MiB block differs.
func writeRandom(path string, size int64) error {
	rng := rand.NewChaCha8(sha256.Sum256([]byte("backy-bench random data")))
	buf := make([]byte, blockSize)
	return writeFile(path, size, func() []byte { _, _ = rng.Read(buf); return buf })
}

// writeZeros writes size zero bytes (allocated on disk, not a hole).
func writeZeros(path string, size int64) error {
	buf := make([]byte, blockSize)
	return writeFile(path, size, func() []byte { return buf })
}

func writeFile(path string, size int64, next func() []byte) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	for off := int64(0); off < size; off += blockSize {
		if _, err := f.Write(next()[:min(blockSize, size-off)]); err != nil {
			f.Close()
			return err
		}
	}
	return syncClose(f)
}

// sparseFile makes a file of size bytes that is one hole.
func sparseFile(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return err
	}
	return syncClose(f)
}

func syncClose(f *os.File) error {
	err := f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func sha256File(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// ext4Info describes the ext4 image and how it was changed.
type ext4Info struct {
	StagedBytes   int64    `json:"staged_bytes"`
	StagedEntries int64    `json:"staged_entries"`
	HardLinked    int64    `json:"hard_linked_files"`
	Copied        int64    `json:"copied_files"`
	MkfsSeconds   float64  `json:"mkfs_seconds"`
	DebugfsWrites []string `json:"debugfs_writes"`
	DebugfsRemove string   `json:"debugfs_remove"`
	Blocks        int64    `json:"blocks"`
	DebugfsBlocks int      `json:"blocks_changed_by_debugfs"`
	Overwritten   []int64  `json:"blocks_overwritten"`
	ChangedBlocks []int64  `json:"changed_blocks"`
}

// stageSources are copied into the image in this order until it is full enough.
var stageSources = []string{"/usr/share/doc", "/usr/share/man", "/usr/lib/python3*", "/usr/bin", "/usr/include", "/usr/lib", "/usr/share"}

// simplePath is a path debugfs takes without quoting.
var simplePath = regexp.MustCompile(`^[A-Za-z0-9._/+-]+$`)

var errStageFull = errors.New("stage full")

// stage fills dir with real files of this machine (hard links when on the
// same file system) until maxBytes of 4 KiB blocks or maxEntries inodes.
func stage(dir string, maxBytes, maxEntries int64, info *ext4Info) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	dev := fi.Sys().(*syscall.Stat_t).Dev
	visit := func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil // unreadable: leave it out
		}
		dst := filepath.Join(dir, p)
		if _, err := os.Lstat(dst); err == nil {
			return nil // staged already, from an earlier source
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		cost := int64(4096)
		switch {
		case d.Type().IsRegular():
			cost = (fi.Size() + 4095) &^ 4095
		case d.Type()&fs.ModeSymlink != 0:
			cost = 0
		case !d.IsDir():
			return nil // devices, sockets, pipes
		}
		if info.StagedBytes+cost > maxBytes || info.StagedEntries >= maxEntries {
			return errStageFull
		}
		switch {
		case d.IsDir():
			err = os.Mkdir(dst, 0o755)
		case d.Type().IsRegular():
			if err := linkOrCopy(p, dst, fi.Sys().(*syscall.Stat_t).Dev == dev, info); err != nil {
				_ = os.Remove(dst)
				return nil // unreadable: leave it out
			}
			if info.DebugfsRemove == "" && fi.Size() >= 64<<10 && simplePath.MatchString(p) {
				info.DebugfsRemove = p
			}
		default:
			var target string
			if target, err = os.Readlink(p); err == nil {
				err = os.Symlink(target, dst)
			}
		}
		info.StagedBytes += cost
		info.StagedEntries++
		return err
	}
	for _, pattern := range stageSources {
		roots, _ := filepath.Glob(pattern)
		for _, root := range roots {
			if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(root)), 0o755); err != nil {
				return err
			}
			if err := filepath.WalkDir(root, visit); err != nil {
				if errors.Is(err, errStageFull) {
					return nil
				}
				return err
			}
		}
	}
	return nil
}

// linkOrCopy hard-links src to dst, or copies it when it cannot.
func linkOrCopy(src, dst string, sameFS bool, info *ext4Info) error {
	if sameFS && os.Link(src, dst) == nil {
		info.HardLinked++
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	info.Copied++
	t := time.Unix(fakeTime, 0)
	return os.Chtimes(dst, t, t)
}

// buildExt4 stages files to about 70% of the size and makes an ext4 image of them.
func (b *bench) buildExt4(img string) (*ext4Info, error) {
	info := &ext4Info{Blocks: b.size / blockSize}
	dir := b.path("stage")
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	b.logf("staging files from %s up to 70%% of %s", strings.Join(stageSources, ", "), mib(b.size))
	if err := stage(dir, b.size*7/10, b.size/16384*7/10, info); err != nil {
		return nil, fmt.Errorf("staging files: %w", err)
	}
	// Fix the times of what the benchmark created; hard-linked files are
	// the machine's own and keep theirs.
	stamp := fmt.Sprintf("@%d", fakeTime)
	if _, err := b.command(nil, "find", dir, "!", "-type", "f", "-exec", "touch", "-h", "-d", stamp, "{}", "+"); err != nil {
		return nil, err
	}
	b.logf("staged %s in %d entries (%d hard links, %d copies); building the ext4 image with mkfs.ext4 -d (takes 30-60 s)",
		mib(info.StagedBytes), info.StagedEntries, info.HardLinked, info.Copied)
	res, err := b.command([]string{fmt.Sprintf("E2FSPROGS_FAKE_TIME=%d", fakeTime)}, "mkfs.ext4", "-q", "-F", "-b", "4096",
		"-E", "lazy_itable_init=0,lazy_journal_init=0", "-d", dir, img, fmt.Sprintf("%dk", b.size>>10))
	if err != nil {
		return nil, err
	}
	info.MkfsSeconds = res.secs
	b.logf("mkfs.ext4 took %.1f s", res.secs)
	return info, nil
}

// etcFiles are written into the changed image by debugfs (those that exist).
var etcFiles = []string{"/etc/services", "/etc/protocols", "/etc/passwd", "/etc/group", "/etc/hosts", "/etc/os-release"}

// changeExt4 copies old to cur, changes a few files in cur with debugfs,
// overwrites 1% of the 4 MiB blocks with random bytes, and records in info
// which blocks differ from old.
func (b *bench) changeExt4(old, cur string, info *ext4Info) error {
	if _, err := b.command(nil, "cp", "--reflink=never", old, cur); err != nil {
		return err
	}
	cmds := []string{"mkdir /bench-etc", "cd /bench-etc"}
	for _, f := range etcFiles {
		if fi, err := os.Stat(f); err == nil && fi.Mode().IsRegular() && simplePath.MatchString(f) {
			cmds = append(cmds, fmt.Sprintf("write %s %s", f, filepath.Base(f)))
			info.DebugfsWrites = append(info.DebugfsWrites, f)
		}
	}
	if len(info.DebugfsWrites) == 0 || info.DebugfsRemove == "" {
		return fmt.Errorf("changing the image: no file of %v to write, or no staged file to remove", etcFiles)
	}
	cmds = append(cmds, "rm "+info.DebugfsRemove)
	script := b.path("debugfs.cmds")
	if err := os.WriteFile(script, []byte(strings.Join(cmds, "\n")+"\n"), 0o644); err != nil {
		return err
	}
	if err := b.debugfs(script, cur); err != nil {
		return err
	}
	changed, err := changedBlocks(old, cur)
	if err != nil {
		return err
	}
	info.DebugfsBlocks = len(changed)

	// Overwrite 1% of the blocks (at least one), chosen among those debugfs
	// left alone, with fresh random bytes.
	rng := rand.New(rand.NewPCG(1, 2))
	var candidates []int64
	for i := int64(1); i < info.Blocks; i++ { // block 0 keeps the superblock
		if !slices.Contains(changed, i) {
			candidates = append(candidates, i)
		}
	}
	rng.Shuffle(len(candidates), func(i, j int) { candidates[i], candidates[j] = candidates[j], candidates[i] })
	n := min(max(1, (info.Blocks+50)/100), int64(len(candidates)))
	info.Overwritten = candidates[:n]
	f, err := os.OpenFile(cur, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	chacha := rand.NewChaCha8(sha256.Sum256([]byte("backy-bench overwritten blocks")))
	buf := make([]byte, blockSize)
	for _, i := range info.Overwritten {
		_, _ = chacha.Read(buf)
		if _, err := f.WriteAt(buf, i*blockSize); err != nil {
			f.Close()
			return err
		}
	}
	if err := syncClose(f); err != nil {
		return err
	}
	info.ChangedBlocks, err = changedBlocks(old, cur)
	return err
}

// debugfs runs a debugfs script on img. debugfs exits 0 even when a
// command fails, so any stderr line but its banner is an error.
func (b *bench) debugfs(script, img string) error {
	res, err := b.command(nil, "debugfs", "-w", "-f", script, img)
	if err != nil {
		return err
	}
	for _, line := range strings.Split(strings.TrimSpace(string(res.stderr)), "\n") {
		if line != "" && !strings.HasPrefix(line, "debugfs ") {
			return fmt.Errorf("debugfs -w -f %s %s: %s", script, img, bytes.TrimSpace(res.stderr))
		}
	}
	return nil
}

// changedBlocks lists the indexes of the 4 MiB blocks that differ between a and b.
func changedBlocks(a, b string) ([]int64, error) {
	fa, err := os.Open(a)
	if err != nil {
		return nil, err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return nil, err
	}
	defer fb.Close()
	ba, bb := make([]byte, blockSize), make([]byte, blockSize)
	var changed []int64
	for i := int64(0); ; i++ {
		na, erra := io.ReadFull(fa, ba)
		nb, errb := io.ReadFull(fb, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			changed = append(changed, i)
		}
		if erra != nil || errb != nil {
			if (erra == io.EOF || erra == io.ErrUnexpectedEOF) && erra == errb {
				return changed, nil
			}
			return nil, fmt.Errorf("comparing %s and %s: %w", a, b, errors.Join(erra, errb))
		}
	}
}

// writeHints writes an rbd-diff hints document naming the changed blocks.
func writeHints(path string, blocks []int64) error {
	type extent struct {
		Offset int64  `json:"offset"`
		Length int64  `json:"length"`
		Exists string `json:"exists"`
	}
	ext := make([]extent, 0, len(blocks))
	for _, i := range blocks {
		ext = append(ext, extent{i * blockSize, blockSize, "true"})
	}
	data, err := json.Marshal(ext)
	if err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o644)
}
