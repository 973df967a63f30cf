package config

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"syscall"

	"github.com/backy/backy/versions/source"
)

// ErrInvalid is wrapped by every error that reports a problem in the content
// of a configuration file.
var ErrInvalid = errors.New("invalid configuration")

// ErrNotFound is wrapped by the error [Load] (and so [Resolve]) returns when
// the named configuration file does not exist.
var ErrNotFound = errors.New("configuration file not found")

// Config is a parsed and validated configuration.
type Config struct {
	// File is the absolute path of the file read, "" for the built-in
	// default.
	File     string
	Defaults Defaults
	Meta     Meta
	Data     Data
	// Encryption holds the encryption version of new blocks and the keys,
	// from the encryption_* keys of [DEFAULTS] and the [Encryption<N>]
	// sections.
	Encryption Encryption
	// NBD holds the keys of the [NBD] section, the settings of backy nbd.
	NBD NBD
	// Warnings are one-line messages about problems that do not make the
	// file invalid, such as a key file readable by other users, for the
	// caller to log. Nil if there are none.
	Warnings []string
}

// Defaults holds the keys of the [DEFAULTS] section.
type Defaults struct {
	// BlockSize is the block size in bytes used when a store is created
	// (the store records it; existing stores keep theirs). It is a multiple
	// of 4096 between 64 KiB and 64 MiB. Default 4 MiB.
	BlockSize int64
	// LogFile is the absolute path of the log file, "" for none. Logs
	// always go to stderr as well.
	LogFile string
	// LogLevel is one of "debug", "info", "warn", "error". Default "info".
	LogLevel string
	// DisallowRmWhenYoungerThanDays refuses removing versions younger than
	// this many days; 0 (the default) disables the check. It is from 0 to
	// MaxDisallowRmDays, so it converts to a time.Duration safely.
	DisallowRmWhenYoungerThanDays int
	// Workers is the number of parallel hashing/transform workers, from 0
	// to MaxWorkers; 0 (the default) means one per CPU.
	Workers int
	// Compression of new blocks: "none" (the default) or "zstd". A block is
	// stored compressed only if that makes it smaller.
	Compression string
	// CompressionLevel is the zstd level: 1 fastest (default) .. 4 best
	// (MinCompressionLevel .. MaxCompressionLevel).
	CompressionLevel int
	// Timezone is the IANA name of the zone of retention's calendar
	// buckets and of YYYY-MM-DD dates (enforce, expire); default "UTC".
	Timezone string
}

// Meta holds the keys of the [MetaBackend] section.
type Meta struct {
	// Type is the metadata backend type; only "bbolt" exists.
	Type string
	// Path is the absolute path of the bbolt database file.
	Path string
}

// Data holds the keys of the [DataBackend] section.
type Data struct {
	// Type is the data backend type: "file" (the default), a directory,
	// or "s3", a bucket of Amazon S3 or of an S3-compatible server.
	Type string
	// Path is the absolute path of the directory of the file backend; ""
	// with type s3.
	Path string
	// SimultaneousWrites and SimultaneousReads bound the concurrent
	// backend writes and reads; both from 1 to MaxSimultaneous. Default 4
	// for type file, 16 for type s3.
	SimultaneousWrites, SimultaneousReads int
	// S3 holds the keys of type s3; it is the zero S3 with type file.
	S3 S3
}

// Built-in defaults.
const (
	defaultBlockSize          = 4 << 20
	minBlockSize              = 64 << 10
	maxBlockSize              = 64 << 20
	blockSizeAlign            = 4096
	defaultLogLevel           = "info"
	defaultMetaType           = "bbolt"
	defaultDataType           = dataTypeFile
	defaultSimultaneousWrites = 4
	defaultSimultaneousReads  = 4

	// maxFileSize bounds what Load reads, so that "-c /dev/zero" fails
	// instead of eating memory.
	maxFileSize = 1 << 20
)

// defaults returns a Config with every key at its default and no paths.
func defaults() *Config {
	return &Config{
		Defaults: Defaults{
			BlockSize:        defaultBlockSize,
			LogLevel:         defaultLogLevel,
			Compression:      "none",
			CompressionLevel: 1,
			Timezone:         "UTC",
		},
		Meta: Meta{Type: defaultMetaType},
		Data: Data{
			Type:               defaultDataType,
			SimultaneousWrites: defaultSimultaneousWrites,
			SimultaneousReads:  defaultSimultaneousReads,
		},
		NBD: NBD{Listen: defaultNBDListen, TLS: TLSOff},
	}
}

// Default returns the built-in default configuration for a store rooted at
// dir: the metadata database is dir/backy.db, the data directory dir/data,
// every other key has its default and File is "". The paths are relative
// if dir is.
func Default(dir string) *Config {
	c := defaults()
	c.Meta.Path = filepath.Join(dir, "backy.db")
	c.Data.Path = filepath.Join(dir, "data")
	return c
}

// Load reads and parses the configuration file at path. If the file does
// not exist the error wraps [ErrNotFound] (and [fs.ErrNotExist]); other read
// errors are returned wrapped as they are; problems in the content wrap
// [ErrInvalid]. Files larger than 1 MiB are rejected, and so is anything
// but a regular file (a directory, a FIFO, a device), without waiting.
//
// Besides the warnings of [Parse], Load warns (in Config.Warnings) if the
// file holds a key, a passphrase or an S3 secret access key or session
// token inline and is readable by group or others.
func Load(path string) (*Config, error) {
	// The type first: open(2) of a FIFO would wait for a writer.
	if fi, err := os.Stat(path); err == nil && !fi.Mode().IsRegular() {
		return nil, &parseError{name: path, msg: fmt.Sprintf("is %s, not a configuration file (expected a regular file)", source.DescribeMode(fi.Mode()))}
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		var pe *fs.PathError
		if errors.Is(err, fs.ErrNotExist) && errors.As(err, &pe) {
			return nil, fmt.Errorf("%w: %s: %w", ErrNotFound, path, pe.Err)
		}
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && !fi.Mode().IsRegular() { // replaced since the Stat
		return nil, &parseError{name: path, msg: fmt.Sprintf("is %s, not a configuration file (expected a regular file)", source.DescribeMode(fi.Mode()))}
	}
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if len(data) > maxFileSize {
		return nil, &parseError{name: path, msg: fmt.Sprintf("file is larger than %d bytes (expected a small INI file)", maxFileSize)}
	}
	c, p, err := parse(path, data)
	if err != nil {
		return nil, err
	}
	if s := p.inlineSecret; s.line > 0 && runtime.GOOS != "windows" {
		if fi, err := f.Stat(); err == nil && fi.Mode().Perm()&0o044 != 0 {
			w := &parseError{name: p.name, line: s.line, section: s.section, key: s.key,
				msg: fmt.Sprintf("the secret is written in the configuration file, which is readable by group or others (mode %04o; expected 0600 or 0400): restrict it with: chmod 600 %s, or move the secret to a file named by %s_file",
					uint32(fi.Mode().Perm()), path, s.key)}
			c.Warnings = append(c.Warnings, w.Error())
		}
	}
	return c, nil
}

// DefaultHome returns the directory of the default store: $BACKY_HOME if
// set and non-empty, else $XDG_DATA_HOME/backy if XDG_DATA_HOME is set and
// absolute, else ~/.local/share/backy. The home directory is taken from
// getenv as [os.UserHomeDir] would ($HOME; %USERPROFILE% on Windows, $home
// on Plan 9). The result is absolute and cleaned (a relative $BACKY_HOME is
// made absolute against the working directory).
func DefaultHome(getenv func(string) string) (string, error) {
	if h := getenv("BACKY_HOME"); h != "" {
		abs, err := filepath.Abs(h)
		if err != nil {
			return "", fmt.Errorf("config: $BACKY_HOME %q: %w", h, err)
		}
		return abs, nil
	}
	if x := getenv("XDG_DATA_HOME"); x != "" && filepath.IsAbs(x) {
		return filepath.Join(x, "backy"), nil
	}
	env := "HOME"
	switch runtime.GOOS {
	case "windows":
		env = "USERPROFILE"
	case "plan9":
		env = "home"
	}
	home := getenv(env)
	if home == "" {
		return "", fmt.Errorf("config: cannot find the default store: $BACKY_HOME and $%s are not set (set BACKY_HOME or use -c)", env)
	}
	abs, err := filepath.Abs(filepath.Join(home, ".local", "share", "backy"))
	if err != nil {
		return "", fmt.Errorf("config: $%s %q: %w", env, home, err)
	}
	return abs, nil
}

// Resolve picks the configuration to use: the file flagPath (from -c) if
// non-empty, else the file named by getenv("BACKY_CONFIG") if non-empty
// (both read with [Load]), else [Default] of [DefaultHome](getenv). The
// boolean reports whether the result is the built-in default.
func Resolve(flagPath string, getenv func(string) string) (*Config, bool, error) {
	path := flagPath
	if path == "" {
		path = getenv("BACKY_CONFIG")
	}
	if path != "" {
		c, err := Load(path)
		if err != nil {
			return nil, false, err
		}
		return c, false, nil
	}
	home, err := DefaultHome(getenv)
	if err != nil {
		return nil, false, err
	}
	return Default(home), true, nil
}
