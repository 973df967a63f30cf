package source

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// deviceUsers says who uses the block device at path ("mounted at /mnt,
// held by dm-0 (vg0-lv)"), as far as the kernel tells: the mount points of it and its partitions
// (/proc/self/mountinfo), the devices stacked on it (holders in sysfs:
// device-mapper, md, ...) and swap (/proc/swaps). It never fails: without
// an answer it says the device is held exclusively by another process.
func deviceUsers(path string) string {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return "in use"
	}
	devs := map[uint64]string{st.Rdev: ""} // device -> partition name ("" for the device itself)
	sys := fmt.Sprintf("/sys/dev/block/%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	holderDirs := []string{filepath.Join(sys, "holders")}
	if ents, err := os.ReadDir(sys); err == nil {
		for _, e := range ents {
			part := filepath.Join(sys, e.Name())
			if _, err := os.Stat(filepath.Join(part, "partition")); err != nil {
				continue
			}
			if d, ok := readDevNumber(filepath.Join(part, "dev")); ok {
				devs[d] = e.Name()
				holderDirs = append(holderDirs, filepath.Join(part, "holders"))
			}
		}
	}
	name := func(d uint64) string {
		if p := devs[d]; p != "" {
			return " (partition " + p + ")"
		}
		return ""
	}
	var uses []string
	for _, m := range mountsOf(devs) {
		uses = append(uses, "mounted at "+m.point+name(m.dev))
	}
	for _, dir := range holderDirs {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			h := e.Name()
			if b, err := os.ReadFile(filepath.Join("/sys/class/block", h, "dm", "name")); err == nil && len(strings.TrimSpace(string(b))) > 0 {
				h += " (" + strings.TrimSpace(string(b)) + ")"
			}
			uses = append(uses, "held by "+h)
		}
	}
	if f, err := os.Open("/proc/swaps"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			var s unix.Stat_t
			if len(fields) > 0 && strings.HasPrefix(fields[0], "/") && unix.Stat(unescapeMount(fields[0]), &s) == nil && s.Mode&unix.S_IFMT == unix.S_IFBLK {
				if _, ok := devs[s.Rdev]; ok {
					uses = append(uses, "used as swap"+name(s.Rdev))
				}
			}
		}
		f.Close()
	}
	if len(uses) == 0 {
		return "opened exclusively by another process (or mounted in another mount namespace)"
	}
	return strings.Join(uses, ", ")
}

// readDevNumber reads a sysfs "dev" file ("7:0").
func readDevNumber(path string) (uint64, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	return parseDevNumber(strings.TrimSpace(string(b)))
}

func parseDevNumber(s string) (uint64, bool) {
	maj, min, ok := strings.Cut(s, ":")
	if !ok {
		return 0, false
	}
	a, err1 := strconv.ParseUint(maj, 10, 32)
	b, err2 := strconv.ParseUint(min, 10, 32)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return unix.Mkdev(uint32(a), uint32(b)), true
}

type mount struct {
	dev   uint64
	point string
}

// mountsOf lists the mounts of /proc/self/mountinfo whose device is one of
// devs, by the device number of the mount or by its source path (btrfs
// reports an anonymous device number).
func mountsOf(devs map[uint64]string) []mount {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []mount
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent maj:min root mountpoint options... - fstype source superopts
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		point := unescapeMount(fields[4])
		if d, ok := parseDevNumber(fields[2]); ok {
			if _, hit := devs[d]; hit {
				out = append(out, mount{d, point})
				continue
			}
		}
		for i, fl := range fields {
			if fl != "-" || i+2 >= len(fields) {
				continue
			}
			var s unix.Stat_t
			if src := unescapeMount(fields[i+2]); strings.HasPrefix(src, "/") && unix.Stat(src, &s) == nil && s.Mode&unix.S_IFMT == unix.S_IFBLK {
				if _, hit := devs[s.Rdev]; hit {
					out = append(out, mount{s.Rdev, point})
				}
			}
			break
		}
	}
	return out
}

// unescapeMount undoes the octal escapes (\040 for a blank) of
// /proc/self/mountinfo and /proc/swaps.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
