package metastore

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Naming the holder of a lock that could not be taken.
//
// An exclusive holder writes "pid N, backy CMD, since T" into the lock file
// and empties it again before it unlocks. Shared holders cannot share one
// line, so they write nothing; and a holder killed with -9 leaves its line
// behind. So the file alone can name a process that finished long ago (a
// backup, where a 'backy nbd' session holds the version shared). The kernel
// knows the live holders: /proc/locks lists every flock with its pid and
// the device and inode of its file, and lockHolders trusts the file's line
// only for a pid the kernel says holds the lock. Without /proc (not Linux,
// or not mounted) the file's line is all there is.

// procLocks and procRoot are where the kernel's view is read (tests may
// point them elsewhere).
var (
	procLocks = "/proc/locks"
	procRoot  = "/proc"
)

// lockHolders describes the processes holding a lock on the file f (at
// path), as "pid N, backy CMD, since T" per holder, or "" when none is
// known.
func lockHolders(f *os.File, path string) string {
	recorded := ""
	if b, err := os.ReadFile(path); err == nil {
		recorded = strings.TrimSpace(string(b))
	}
	pids, ok := flockHolders(f)
	if !ok {
		return recorded
	}
	var out []string
	for _, pid := range pids {
		if pid == os.Getpid() {
			out = append(out, fmt.Sprintf("pid %d, this process", pid))
			continue
		}
		if rest, found := strings.CutPrefix(recorded, "pid "+strconv.Itoa(pid)+","); found {
			out = append(out, "pid "+strconv.Itoa(pid)+","+rest)
			continue
		}
		out = append(out, describeProcess(pid))
	}
	return strings.Join(out, "; ")
}

// flockHolders returns the pids holding a flock on f, as /proc/locks
// lists them (waiters, marked "->", are not holders). ok is false when the
// kernel's view is not available.
func flockHolders(f *os.File) (pids []int, ok bool) {
	fi, err := f.Stat()
	if err != nil {
		return nil, false
	}
	st, isStat := fi.Sys().(*syscall.Stat_t)
	if !isStat {
		return nil, false
	}
	lf, err := os.Open(procLocks)
	if err != nil {
		return nil, false
	}
	defer lf.Close()
	wantDev := fmt.Sprintf("%02x:%02x:%d", unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
	ino := ":" + strconv.FormatUint(st.Ino, 10)
	seen := map[int]bool{}
	sc := bufio.NewScanner(lf)
	for sc.Scan() {
		// "1: FLOCK  ADVISORY  WRITE 1234 fe:00:9978429 0 EOF"
		fs := strings.Fields(sc.Text())
		if len(fs) < 6 || fs[1] != "FLOCK" {
			continue
		}
		pid, err := strconv.Atoi(fs[4])
		if err != nil || pid <= 0 || seen[pid] {
			continue
		}
		// The device printed is the file system's; on some (btrfs
		// subvolumes, overlayfs) stat(2) reports another one, so a
		// matching inode on another device counts when that process has
		// the file open.
		switch {
		case fs[5] == wantDev:
		case strings.HasSuffix(fs[5], ino) && hasOpen(pid, fi):
		default:
			continue
		}
		seen[pid] = true
		pids = append(pids, pid)
	}
	return pids, sc.Err() == nil
}

// hasOpen reports whether process pid has the file fi open.
func hasOpen(pid int, fi os.FileInfo) bool {
	dir := filepath.Join(procRoot, strconv.Itoa(pid), "fd")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, e := range ents {
		if o, err := os.Stat(filepath.Join(dir, e.Name())); err == nil && os.SameFile(o, fi) {
			return true
		}
	}
	return false
}

// describeProcess names process pid: "pid N, CMDLINE, since T".
func describeProcess(pid int) string {
	s := "pid " + strconv.Itoa(pid)
	b, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "cmdline"))
	if err != nil || len(b) == 0 {
		return s
	}
	args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	args[0] = filepath.Base(args[0])
	cmd := strings.Join(args, " ")
	if len(cmd) > 120 {
		cmd = cmd[:117] + "..."
	}
	s += ", " + cmd
	if t, ok := processStart(pid); ok {
		s += ", since " + t.UTC().Format(time.RFC3339)
	}
	return s
}

// processStart returns when process pid started: field 22 of
// /proc/PID/stat (clock ticks after boot, USER_HZ = 100 on Linux) after
// btime of /proc/stat.
func processStart(pid int) (time.Time, bool) {
	b, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "stat"))
	if err != nil {
		return time.Time{}, false
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return time.Time{}, false
	}
	fs := strings.Fields(string(b[i+1:]))
	// fs[0] is field 3 (state), so field 22 is fs[19].
	if len(fs) < 20 {
		return time.Time{}, false
	}
	ticks, err := strconv.ParseInt(fs[19], 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	sb, err := os.ReadFile(filepath.Join(procRoot, "stat"))
	if err != nil {
		return time.Time{}, false
	}
	for _, l := range strings.Split(string(sb), "\n") {
		if v, ok := strings.CutPrefix(l, "btime "); ok {
			bt, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return time.Time{}, false
			}
			const userHZ = 100
			return time.Unix(bt, 0).Add(time.Duration(ticks) * time.Second / userHZ), true
		}
	}
	return time.Time{}, false
}
