package config

import (
	"fmt"
	"strconv"
	"strings"
)

// The bounds of the counts and sizes of a configuration (and of the
// command-line flags that take the same values). Every value a key may
// take is within them, so that a typo such as "workers = 1000000" is an
// error instead of gigabytes of buffers.
const (
	// MinBlockSize, MaxBlockSize and BlockSizeAlign bound block_size and
	// init --block-size.
	MinBlockSize   = minBlockSize
	MaxBlockSize   = maxBlockSize
	BlockSizeAlign = blockSizeAlign

	// MaxWorkers bounds workers (0 = one per CPU). Each worker holds up
	// to two blocks in memory.
	MaxWorkers = 256
	// MaxSimultaneous bounds simultaneous_writes and simultaneous_reads.
	MaxSimultaneous = 1024
	// MaxDisallowRmDays bounds disallow_rm_when_younger_than_days (about
	// 100 years).
	MaxDisallowRmDays = 36500
	// MinCompressionLevel and MaxCompressionLevel bound compression_level.
	MinCompressionLevel = 1
	MaxCompressionLevel = 4
	// MaxBandwidth bounds bandwidth_read and bandwidth_write (bytes per
	// second; 0 is no limit).
	MaxBandwidth = 1 << 40
	// MaxCacheMiB bounds backy nbd --cache-mib, the block cache of a
	// session in MiB.
	MaxCacheMiB = 64 << 10
)

// FormatSize formats n bytes for messages, exactly: in the largest binary
// unit that divides it ("64KiB", "4MiB", "1TiB"), else as a number of bytes
// ("65537 bytes", "1 byte"). Every message that prints a size, such as the
// ranges of the configuration keys, uses it.
func FormatSize(n int64) string {
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	if n > 0 {
		for i := len(units) - 1; i >= 0; i-- {
			if u := int64(1) << (10 * (i + 1)); n%u == 0 {
				return strconv.FormatInt(n/u, 10) + units[i]
			}
		}
	}
	if n == 1 {
		return "1 byte"
	}
	return strconv.FormatInt(n, 10) + " bytes"
}

// sizeValue returns the quoted value v of a size key, followed by its
// size n in units if that reads differently ("\"128M\" (128MiB)").
func sizeValue(v string, n int64) string {
	if f := FormatSize(n); f != v {
		return quote(v) + " (" + f + ")"
	}
	return quote(v)
}

// RangeError returns the message for a value of what (a key or flag name)
// outside [lo, hi], with lo and hi already formatted (see FormatSize):
// "<what> must be between <lo> and <hi>", followed by note in parentheses
// if note is not empty.
func RangeError(what, lo, hi, note string) string {
	s := fmt.Sprintf("%s must be between %s and %s", what, lo, hi)
	if note != "" {
		s += " (" + note + ")"
	}
	return s
}

// CheckBlockSize returns "" if n is a valid block size (a multiple of
// 4KiB between 64KiB and 64MiB), else what is wrong, phrased after what
// (e.g. "block_size" or "--block-size").
func CheckBlockSize(what string, n int64) string {
	if n < minBlockSize || n > maxBlockSize {
		return RangeError(what, FormatSize(minBlockSize), FormatSize(maxBlockSize), "e.g. 4MiB")
	}
	if n%blockSizeAlign != 0 {
		return fmt.Sprintf("%s must be a multiple of %s (e.g. 4MiB)", what, FormatSize(blockSizeAlign))
	}
	return ""
}

// parseIntRange parses the value v of the key being set as a decimal
// integer from lo to hi; note explains the range (e.g. "0 = one per CPU").
func (p *parser) parseIntRange(v string, lo, hi int, note string) (int, string) {
	want := RangeError(p.key, strconv.Itoa(lo), strconv.Itoa(hi), note)
	digits := strings.TrimPrefix(v, "-")
	if digits == "" || strings.Trim(digits, "0123456789") != "" {
		return 0, fmt.Sprintf("%s is not an integer (%s)", quote(v), want)
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return 0, fmt.Sprintf("%s is out of range: %s", quote(v), want)
	}
	return n, ""
}
