package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const examplePath = "../../../../backy.cfg.example"

// required is the smallest valid file: the two required paths.
const required = "[MetaBackend]\npath = /m/backy.db\n[DataBackend]\npath = /d\n"

// testName is the file name used in tests; absolute so results do not
// depend on the working directory.
var testName = filepath.Join(string(filepath.Separator)+"etc", "backy", "backy.cfg")

func abs(t testing.TB, p string) string {
	t.Helper()
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// want returns the config a file consisting of required plus some keys at
// their defaults parses to, for tests to modify.
func want() *Config {
	c := defaults()
	c.File = testName
	c.Meta.Path = filepath.Clean("/m/backy.db")
	c.Data.Path = filepath.Clean("/d")
	return c
}

func TestParseExample(t *testing.T) {
	data, err := os.ReadFile(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	c, err := Parse(examplePath, data)
	if err != nil {
		t.Fatalf("backy.cfg.example does not parse: %v", err)
	}
	w := &Config{
		File: abs(t, examplePath),
		Defaults: Defaults{
			BlockSize:                     4 << 20,
			LogFile:                       filepath.Clean("/var/log/backy.log"),
			LogLevel:                      "info",
			DisallowRmWhenYoungerThanDays: 0,
			Workers:                       0,
			Compression:                   "zstd",
			CompressionLevel:              1,
			Timezone:                      "UTC",
		},
		Meta: Meta{Type: "bbolt", Path: filepath.Clean("/var/lib/backy/backy.db")},
		Data: Data{Type: "file", Path: filepath.Clean("/var/lib/backy/data"), SimultaneousWrites: 4, SimultaneousReads: 4},
		NBD:  NBD{Listen: "127.0.0.1:10809", TLS: "off"},
	}
	if !reflect.DeepEqual(c, w) {
		t.Errorf("example parsed to\n%+v\nwant\n%+v", c, w)
	}
	// The example documents (and sets) every key, in its section; the
	// encryption keys other than encryption_version are documented
	// commented out, since setting them needs a key, and so are the keys
	// of [DataBackend] type = s3, since the example uses type = file, and
	// the TLS keys of [NBD], since they need a certificate.
	text := string(data)
	for _, sec := range sectionOrder {
		start := strings.Index(text, "\n["+sec+"]\n")
		if start < 0 {
			t.Fatalf("example has no [%s] section", sec)
		}
		body := text[start+len(sec)+3:]
		if end := strings.Index(body, "\n["); end >= 0 {
			body = body[:end]
		}
		for _, kd := range keys[sec] {
			prefix := ""
			if strings.HasPrefix(kd.name, "encryption_") && kd.name != "encryption_version" || sec == sectionData && isS3Key(kd.name) || sec == sectionNBD && kd.name != "listen" {
				prefix = "# "
			}
			re := regexp.MustCompile(`(?m)^` + prefix + kd.name + ` = `)
			if !re.MatchString(body) {
				t.Errorf("example does not set [%s] %s", sec, kd.name)
			}
		}
	}
}

func TestParseDefaults(t *testing.T) {
	c, err := Parse(testName, []byte(required))
	if err != nil {
		t.Fatal(err)
	}
	w := want()
	if !reflect.DeepEqual(c, w) {
		t.Errorf("got %+v, want %+v", c, w)
	}
	if c.Defaults.BlockSize != 4<<20 || c.Defaults.LogLevel != "info" || c.Defaults.LogFile != "" ||
		c.Defaults.Workers != 0 || c.Defaults.DisallowRmWhenYoungerThanDays != 0 ||
		c.Meta.Type != "bbolt" || c.Data.Type != "file" ||
		c.Data.SimultaneousReads != 4 || c.Data.SimultaneousWrites != 4 {
		t.Errorf("unexpected defaults: %+v", c)
	}
}

var validTests = []struct {
	name string
	in   string // appended to required unless it contains [MetaBackend]
	mod  func(c *Config)
}{
	{"empty DEFAULTS", "[DEFAULTS]\n", func(c *Config) {}},
	{"block size bytes", "[DEFAULTS]\nblock_size = 65536\n", func(c *Config) { c.Defaults.BlockSize = 65536 }},
	{"block size KiB", "[DEFAULTS]\nblock_size = 64KiB\n", func(c *Config) { c.Defaults.BlockSize = 64 << 10 }},
	{"block size K", "[DEFAULTS]\nblock_size = 128k\n", func(c *Config) { c.Defaults.BlockSize = 128 << 10 }},
	{"block size MiB", "[DEFAULTS]\nblock_size = 8MiB\n", func(c *Config) { c.Defaults.BlockSize = 8 << 20 }},
	{"block size mib lower", "[DEFAULTS]\nblock_size = 8mib\n", func(c *Config) { c.Defaults.BlockSize = 8 << 20 }},
	{"block size M", "[DEFAULTS]\nblock_size = 1M\n", func(c *Config) { c.Defaults.BlockSize = 1 << 20 }},
	{"block size blank before suffix", "[DEFAULTS]\nblock_size = 4096 KiB\n", func(c *Config) { c.Defaults.BlockSize = 4 << 20 }},
	{"block size max", "[DEFAULTS]\nblock_size = 64MiB\n", func(c *Config) { c.Defaults.BlockSize = 64 << 20 }},
	{"block size 16m", "[DEFAULTS]\nblock_size = 16m\n", func(c *Config) { c.Defaults.BlockSize = 16 << 20 }},
	{"block size odd multiple", "[DEFAULTS]\nblock_size = 69632\n", func(c *Config) { c.Defaults.BlockSize = 69632 }},
	{"colon separator", "[DEFAULTS]\nworkers: 3\n", func(c *Config) { c.Defaults.Workers = 3 }},
	{"upper-case key", "[DEFAULTS]\nWORKERS = 3\nLog_Level = debug\n", func(c *Config) { c.Defaults.Workers = 3; c.Defaults.LogLevel = "debug" }},
	{"whitespace", "[DEFAULTS]\n   workers   =    7   \n\t log_level\t=\twarn\t\n", func(c *Config) { c.Defaults.Workers = 7; c.Defaults.LogLevel = "warn" }},
	{"comments and blanks", "# a\n; b\n\n   # c\n\t; d\n[DEFAULTS]\n# workers = 9\nworkers = 2\n", func(c *Config) { c.Defaults.Workers = 2 }},
	{"log levels error", "[DEFAULTS]\nlog_level = error\n", func(c *Config) { c.Defaults.LogLevel = "error" }},
	{"disallow rm", "[DEFAULTS]\ndisallow_rm_when_younger_than_days = 30\n", func(c *Config) { c.Defaults.DisallowRmWhenYoungerThanDays = 30 }},
	{"log file absolute", "[DEFAULTS]\nlog_file = /var/log/backy.log\n", func(c *Config) { c.Defaults.LogFile = filepath.Clean("/var/log/backy.log") }},
	{"log file empty", "[DEFAULTS]\nlog_file =\n", func(c *Config) {}},
	{"log file relative", "[DEFAULTS]\nlog_file = log/backy.log\n", func(c *Config) {
		c.Defaults.LogFile = filepath.Join(filepath.Dir(testName), "log", "backy.log")
	}},
	{"hash in value", "[DEFAULTS]\nlog_file = /var/log/a#b;c\n", func(c *Config) { c.Defaults.LogFile = filepath.Clean("/var/log/a#b;c") }},
	{"equals in value", "[DEFAULTS]\nlog_file = /var/log/a=b:c\n", func(c *Config) { c.Defaults.LogFile = filepath.Clean("/var/log/a=b:c") }},
	{"simultaneous", "[DataBackend]\npath = /d\nsimultaneous_writes = 1\nsimultaneous_reads = 16\n[MetaBackend]\npath = /m/backy.db\ntype = bbolt\n", func(c *Config) {
		c.Data.SimultaneousWrites = 1
		c.Data.SimultaneousReads = 16
	}},
	{"types", "[DataBackend]\ntype = file\npath = /d\n[MetaBackend]\ntype = bbolt\npath = /m/backy.db\n", func(c *Config) {}},
	{"relative paths", "[MetaBackend]\npath = backy.db\n[DataBackend]\npath = ./store/../data/\n", func(c *Config) {
		c.Meta.Path = filepath.Join(filepath.Dir(testName), "backy.db")
		c.Data.Path = filepath.Join(filepath.Dir(testName), "data")
	}},
	{"parent relative path", "[MetaBackend]\npath = ../db/backy.db\n[DataBackend]\npath = /d\n", func(c *Config) {
		c.Meta.Path = filepath.Join(filepath.Dir(filepath.Dir(testName)), "db", "backy.db")
	}},
	{"unclean absolute path", "[MetaBackend]\npath = /m//x/../backy.db\n[DataBackend]\npath = /d/\n", func(c *Config) {}},
	{"CRLF and BOM", "\uFEFF[MetaBackend]\r\npath = /m/backy.db\r\n[DataBackend]\r\npath = /d\r\n", func(c *Config) {}},
	{"no trailing newline", "[MetaBackend]\npath = /m/backy.db\n[DataBackend]\npath = /d", func(c *Config) {}},
	{"header with blanks around", "  [DEFAULTS]  \nworkers = 1\n", func(c *Config) { c.Defaults.Workers = 1 }},
	{"max days", "[DEFAULTS]\ndisallow_rm_when_younger_than_days = 36500\n", func(c *Config) { c.Defaults.DisallowRmWhenYoungerThanDays = 36500 }},
	{"max workers", "[DEFAULTS]\nworkers = 256\n", func(c *Config) { c.Defaults.Workers = 256 }},
	{"max simultaneous", "[DataBackend]\npath = /d\nsimultaneous_writes = 1024\nsimultaneous_reads = 1024\n[MetaBackend]\npath = /m/backy.db\n", func(c *Config) {
		c.Meta.Path, c.Data.Path = "/m/backy.db", "/d"
		c.Data.SimultaneousWrites, c.Data.SimultaneousReads = 1024, 1024
	}},
}

func fullInput(in string) string {
	if strings.Contains(in, "[MetaBackend]") {
		return in
	}
	return required + in
}

func TestParseValid(t *testing.T) {
	for _, tt := range validTests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse(testName, []byte(fullInput(tt.in)))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			w := want()
			tt.mod(w)
			if !reflect.DeepEqual(c, w) {
				t.Errorf("got\n%+v\nwant\n%+v", c, w)
			}
		})
	}
}

// errorTests are complete files. Each must fail with a message that starts
// with "backy.cfg:<line>: " (or "backy.cfg: " if line is 0) and contains
// key (if any) and every string of contains.
var errorTests = []struct {
	name     string
	in       string
	line     int
	key      string
	contains []string
}{
	{"key before section", "workers = 1\n" + required, 1, "workers", []string{"outside of any section", "[DEFAULTS]"}},
	{"key before section after comment", "# hi\n\nblock_size = 4MiB\n" + required, 3, "block_size", []string{"outside of any section"}},
	{"neither", required + "[DEFAULTS]\nworkers\n", 6, "", []string{`"workers"`, "neither"}},
	{"neither garbage", "[DEFAULTS]\nthis is not a setting\n" + required, 2, "", []string{"neither"}},
	{"empty key", "[DEFAULTS]\n= 4\n" + required, 2, "", []string{"no key", `"="`}},
	{"empty key colon", "[DEFAULTS]\n : 4\n" + required, 2, "", []string{"no key", `":"`}},
	{"key with space", "[DEFAULTS]\nblock size = 4MiB\n" + required, 2, "", []string{`"block size"`, "invalid key"}},
	{"unknown section", "[Foo]\n" + required, 1, "", []string{"unknown section", `"[Foo]"`, "[DEFAULTS]", "[MetaBackend]", "[DataBackend]", "[EncryptionN] (N from 1 to 65535)"}},
	{"wrong case section", "[defaults]\n" + required, 1, "", []string{"unknown section", "case-sensitive", "did you mean [DEFAULTS]"}},
	{"wrong case section 2", required + "[metabackend]\n", 5, "", []string{"did you mean [MetaBackend]"}},
	{"spaces in section", "[ DEFAULTS ]\n" + required, 1, "", []string{"did you mean [DEFAULTS]"}},
	{"empty section name", "[]\n" + required, 1, "", []string{"unknown section"}},
	{"unclosed header", "[DEFAULTS\n" + required, 1, "", []string{"malformed section header"}},
	{"header with comment", "[DEFAULTS] # x\n" + required, 1, "", []string{"malformed section header", "inline comments"}},
	{"duplicate section", required + "[MetaBackend]\n", 5, "", []string{"duplicate section [MetaBackend]", "line 1"}},
	{"duplicate key", "[DEFAULTS]\nworkers = 1\nWorkers = 2\n" + required, 3, "workers", []string{"duplicate key", "line 2"}},
	{"duplicate path", "[MetaBackend]\npath = /a\npath = /b\n[DataBackend]\npath = /d\n", 3, "path", []string{"[MetaBackend]", "duplicate key", "line 2"}},
	{"unknown key", "[DEFAULTS]\ncompresion = zstd\n" + required, 2, "compresion", []string{"[DEFAULTS]", "unknown key", "block_size", "workers"}},
	{"compression unknown", "[DEFAULTS]\ncompression = lz4\n" + required, 2, "compression", []string{"lz4"}},
	{"compression level too high", "[DEFAULTS]\ncompression_level = 5\n" + required, 2, "compression_level", []string{`"5" is out of range: compression_level must be between 1 and 4`, "1 fastest"}},
	{"compression level zero", "[DEFAULTS]\ncompression_level = 0\n" + required, 2, "compression_level", []string{"compression_level must be between 1 and 4"}},
	{"unknown time zone", "[DEFAULTS]\ntimezone = Mars/Olympus\n" + required, 2, "timezone", []string{"IANA"}},
	{"empty time zone", "[DEFAULTS]\ntimezone =\n" + required, 2, "timezone", []string{"IANA"}},
	{"process_name unsupported", "[DEFAULTS]\nprocess_name = backy\n" + required, 2, "process_name", []string{"unknown key"}},
	{"key in wrong section", "[MetaBackend]\npath = /m\nworkers = 3\n[DataBackend]\npath = /d\n", 3, "workers", []string{"[MetaBackend]", "unknown key", "type, path"}},
	{"unknown data key", required + "buckets = x\n", 5, "buckets", []string{"[DataBackend]", "unknown key", "simultaneous_reads", "bucket, prefix", "bandwidth_write"}},
	{"block size 4MB", "[DEFAULTS]\nblock_size = 4MB\n" + required, 2, "block_size", []string{`"4MB" is not a number of bytes`, "expected e.g. 4194304 or 4MiB"}},
	{"block size word", "[DEFAULTS]\nblock_size = four\n" + required, 2, "block_size", []string{"not a number of bytes"}},
	{"block size empty", "[DEFAULTS]\nblock_size =\n" + required, 2, "block_size", []string{`""`, "not a number of bytes"}},
	{"block size negative", "[DEFAULTS]\nblock_size = -4MiB\n" + required, 2, "block_size", []string{"not a number of bytes"}},
	{"block size fraction", "[DEFAULTS]\nblock_size = 1.5MiB\n" + required, 2, "block_size", []string{"not a number of bytes"}},
	{"block size suffix only", "[DEFAULTS]\nblock_size = MiB\n" + required, 2, "block_size", []string{"not a number of bytes"}},
	{"block size TiB", "[DEFAULTS]\nblock_size = 1TiB\n" + required, 2, "block_size", []string{"must be between 64KiB and 64MiB"}},
	{"block size overflow", "[DEFAULTS]\nblock_size = 99999999999999999999\n" + required, 2, "block_size", []string{"not a number of bytes"}},
	{"block size overflow suffix", "[DEFAULTS]\nblock_size = 9999999999999G\n" + required, 2, "block_size", []string{"not a number of bytes"}},
	{"block size inline comment", "[DEFAULTS]\nblock_size = 4MiB # default\n" + required, 2, "block_size", []string{"not a number of bytes", "inline comments are not supported"}},
	{"block size too small", "[DEFAULTS]\nblock_size = 32KiB\n" + required, 2, "block_size", []string{`"32KiB" is invalid: block_size must be between 64KiB and 64MiB`}},
	{"block size zero", "[DEFAULTS]\nblock_size = 0\n" + required, 2, "block_size", []string{`"0" (0 bytes) is invalid`, "between 64KiB and 64MiB"}},
	{"block size too big", "[DEFAULTS]\nblock_size = 128M\n" + required, 2, "block_size", []string{`"128M" (128MiB) is invalid: block_size must be between 64KiB and 64MiB`}},
	{"block size 1G", "[DEFAULTS]\nblock_size = 1G\n" + required, 2, "block_size", []string{`"1G" (1GiB) is invalid`, "between 64KiB and 64MiB"}},
	{"block size not multiple", "[DEFAULTS]\nblock_size = 65537\n" + required, 2, "block_size", []string{`"65537" (65537 bytes) is invalid: block_size must be a multiple of 4KiB`}},
	{"block size not multiple 2", "[DEFAULTS]\nblock_size = 100000\n" + required, 2, "block_size", []string{"must be a multiple of 4KiB"}},
	{"log level bad", "[DEFAULTS]\nlog_level = verbose\n" + required, 2, "log_level", []string{`"verbose"`, "debug, info, warn, error"}},
	{"log level upper", "[DEFAULTS]\nlog_level = INFO\n" + required, 2, "log_level", []string{`"INFO"`}},
	{"log level warning", "[DEFAULTS]\nlog_level = warning\n" + required, 2, "log_level", []string{`"warning"`}},
	{"log level empty", "[DEFAULTS]\nlog_level =\n" + required, 2, "log_level", []string{`""`}},
	{"workers negative", "[DEFAULTS]\nworkers = -1\n" + required, 2, "workers", []string{`"-1" is out of range: workers must be between 0 and 256 (0 = one per CPU)`}},
	{"workers too many", "[DEFAULTS]\nworkers = 1000000\n" + required, 2, "workers", []string{`"1000000" is out of range: workers must be between 0 and 256`}},
	{"workers one too many", "[DEFAULTS]\nworkers = 257\n" + required, 2, "workers", []string{"between 0 and 256"}},
	{"workers word", "[DEFAULTS]\nworkers = many\n" + required, 2, "workers", []string{`"many" is not an integer`, "workers must be between 0 and 256"}},
	{"workers plus", "[DEFAULTS]\nworkers = +2\n" + required, 2, "workers", []string{"not an integer"}},
	{"workers empty", "[DEFAULTS]\nworkers =\n" + required, 2, "workers", []string{"not an integer"}},
	{"workers suffix", "[DEFAULTS]\nworkers = 4k\n" + required, 2, "workers", []string{"not an integer"}},
	{"workers overflow", "[DEFAULTS]\nworkers = 99999999999999999999999\n" + required, 2, "workers", []string{"out of range"}},
	{"workers inline comment", "[DEFAULTS]\nworkers = 4 ; four\n" + required, 2, "workers", []string{"not an integer", "inline comments are not supported"}},
	{"days negative", "[DEFAULTS]\ndisallow_rm_when_younger_than_days = -3\n" + required, 2, "disallow_rm_when_younger_than_days", []string{"must be between 0 and 36500"}},
	{"days too many", "[DEFAULTS]\ndisallow_rm_when_younger_than_days = 36501\n" + required, 2, "disallow_rm_when_younger_than_days", []string{`"36501" is out of range`, "must be between 0 and 36500"}},
	{"days float", "[DEFAULTS]\ndisallow_rm_when_younger_than_days = 1.5\n" + required, 2, "disallow_rm_when_younger_than_days", []string{"not an integer"}},
	{"writes zero", required + "simultaneous_writes = 0\n", 5, "simultaneous_writes", []string{"[DataBackend]", `"0" is out of range: simultaneous_writes must be between 1 and 1024`}},
	{"writes too many", required + "simultaneous_writes = 1000000\n", 5, "simultaneous_writes", []string{"simultaneous_writes must be between 1 and 1024"}},
	{"reads zero", required + "simultaneous_reads = 0\n", 5, "simultaneous_reads", []string{"simultaneous_reads must be between 1 and 1024"}},
	{"reads too many", required + "simultaneous_reads = 1025\n", 5, "simultaneous_reads", []string{`"1025" is out of range`}},
	{"reads negative", required + "simultaneous_reads = -5\n", 5, "simultaneous_reads", []string{"between 1 and 1024"}},
	{"meta type", "[MetaBackend]\ntype = sqlite\npath = /m\n[DataBackend]\npath = /d\n", 2, "type", []string{"[MetaBackend]", `"sqlite"`, "bbolt"}},
	{"meta type case", "[MetaBackend]\ntype = BBolt\npath = /m\n[DataBackend]\npath = /d\n", 2, "type", []string{"[MetaBackend]", "bbolt"}},
	{"data type unknown", required + "type = gcs\n", 5, "type", []string{"[DataBackend]", `"gcs" is not a valid data backend type`, "file, s3"}},
	{"data type case", required + "type = S3\n", 5, "type", []string{"[DataBackend]", `"S3"`, "file, s3"}},
	{"data type empty", required + "type =\n", 5, "type", []string{"[DataBackend]", "file"}},
	{"meta path empty", "[MetaBackend]\npath =\n[DataBackend]\npath = /d\n", 2, "path", []string{"[MetaBackend]", "empty value"}},
	{"data path empty", "[MetaBackend]\npath = /m\n[DataBackend]\npath = \t \n", 4, "path", []string{"[DataBackend]", "empty value"}},
	{"tilde user", "[MetaBackend]\npath = ~root/backy.db\n[DataBackend]\npath = /d\n", 2, "path", []string{"~user paths are not supported"}},
	{"nul in path", "[MetaBackend]\npath = /m\x00x\n[DataBackend]\npath = /d\n", 2, "path", []string{"NUL"}},
	{"meta path missing", "[MetaBackend]\ntype = bbolt\n[DataBackend]\npath = /d\n", 1, "path", []string{"[MetaBackend]", "required key is missing"}},
	{"data path missing", "[DEFAULTS]\n[MetaBackend]\npath = /m\n\n[DataBackend]\ntype = file\n", 5, "path", []string{"[DataBackend]", "required key is missing"}},
	{"meta section missing", "[DataBackend]\npath = /d\n", 0, "path", []string{"[MetaBackend]", "required key is missing", "no [MetaBackend] section"}},
	{"data section missing", "[MetaBackend]\npath = /m\n", 0, "path", []string{"[DataBackend]", "no [DataBackend] section"}},
	{"empty file", "", 0, "path", []string{"[MetaBackend]", "required key is missing"}},
	{"only comments", "# nothing\n; here\n", 0, "path", []string{"[MetaBackend]"}},
	{"control chars quoted", "[DEFAULTS]\nlog_level = a\rb\n" + required, 2, "log_level", []string{`"a\rb"`}},
}

func TestParseErrors(t *testing.T) {
	for _, tt := range errorTests {
		t.Run(tt.name, func(t *testing.T) {
			checkParseError(t, tt.in, tt.line, tt.key, tt.contains)
		})
	}
}

// checkParseError checks that parsing in as "backy.cfg" fails with a
// one-line message that starts with "backy.cfg:<line>: " (or "backy.cfg: "
// if line is 0) and contains key (if any) and every string of contains.
// It returns the message.
func checkParseError(t *testing.T, in string, line int, key string, contains []string) string {
	t.Helper()
	c, err := Parse("backy.cfg", []byte(in))
	if err == nil {
		t.Fatalf("Parse succeeded: %+v", c)
	}
	if c != nil {
		t.Errorf("Parse returned a config with the error %v", err)
	}
	if !errors.Is(err, ErrInvalid) {
		t.Errorf("error %q does not wrap ErrInvalid", err)
	}
	msg := err.Error()
	prefix := "backy.cfg: "
	if line > 0 {
		prefix = "backy.cfg:" + strconv.Itoa(line) + ": "
	}
	if !strings.HasPrefix(msg, prefix) {
		t.Errorf("message %q does not start with %q", msg, prefix)
	}
	if key != "" && !strings.Contains(msg, " "+key+": ") {
		t.Errorf("message %q does not name key %q", msg, key)
	}
	for _, s := range contains {
		if !strings.Contains(msg, s) {
			t.Errorf("message %q does not contain %q", msg, s)
		}
	}
	if strings.ContainsAny(msg, "\n\r") {
		t.Errorf("message %q is not one line", msg)
	}
	return msg
}

func TestErrorMessageExample(t *testing.T) {
	in := "[DEFAULTS]\n" + strings.Repeat("\n", 10) + "block_size = 4MB\n" + required
	_, err := Parse("backy.cfg", []byte(in))
	const w = `backy.cfg:12: [DEFAULTS] block_size: "4MB" is not a number of bytes (expected e.g. 4194304 or 4MiB; suffixes K/KiB, M/MiB, G/GiB, T/TiB)`
	if err == nil || err.Error() != w {
		t.Errorf("got %v\nwant %s", err, w)
	}
}

func TestParseSize(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true},
		{"4096", 4096, true},
		{"4194304", 4 << 20, true},
		{"1K", 1 << 10, true},
		{"1k", 1 << 10, true},
		{"1KiB", 1 << 10, true},
		{"1kib", 1 << 10, true},
		{"1KIB", 1 << 10, true},
		{"4M", 4 << 20, true},
		{"4m", 4 << 20, true},
		{"4MiB", 4 << 20, true},
		{"4 MiB", 4 << 20, true},
		{"4\tMiB", 4 << 20, true},
		{"2G", 2 << 30, true},
		{"2GiB", 2 << 30, true},
		{"2gib", 2 << 30, true},
		{"007", 7, true},
		{"8589934591G", 8589934591 << 30, true},
		{"8589934592G", 0, false},
		{"9223372036854775807", 9223372036854775807, true},
		{"9223372036854775808", 0, false},
		{"", 0, false},
		{"M", 0, false},
		{"-1", 0, false},
		{"+1", 0, false},
		{"1.5M", 0, false},
		{"4MB", 0, false},
		{"4KB", 0, false},
		{"4B", 0, false},
		{"4T", 4 << 40, true},
		{"4X", 0, false},
		{"4Mi", 0, false},
		{"4 M i B", 0, false},
		{"0x10", 0, false},
		{"1_000", 0, false},
		{"4MiB ", 0, false}, // values are trimmed before; trailing blanks are not a suffix
	} {
		got, ok := parseSize(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("parseSize(%q) = %d, %v; want %d, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestRelativePathsAgainstConfigDir(t *testing.T) {
	in := "[DEFAULTS]\nlog_file = backy.log\n[MetaBackend]\npath = meta/backy.db\n[DataBackend]\npath = .\n"
	for _, name := range []string{testName, "backy.cfg", filepath.Join("conf", "sub", "backy.cfg")} {
		c, err := Parse(name, []byte(in))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		dir := filepath.Dir(abs(t, name))
		if c.File != abs(t, name) {
			t.Errorf("%s: File = %q, want %q", name, c.File, abs(t, name))
		}
		if w := filepath.Join(dir, "backy.log"); c.Defaults.LogFile != w {
			t.Errorf("%s: LogFile = %q, want %q", name, c.Defaults.LogFile, w)
		}
		if w := filepath.Join(dir, "meta", "backy.db"); c.Meta.Path != w {
			t.Errorf("%s: Meta.Path = %q, want %q", name, c.Meta.Path, w)
		}
		if c.Data.Path != dir {
			t.Errorf("%s: Data.Path = %q, want %q", name, c.Data.Path, dir)
		}
	}
}

func TestParseEmptyName(t *testing.T) {
	c, err := Parse("", []byte("[MetaBackend]\npath = x.db\n[DataBackend]\npath = /d\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.File != "" || c.Meta.Path != abs(t, "x.db") {
		t.Errorf("got File %q, Meta.Path %q", c.File, c.Meta.Path)
	}
	_, err = Parse("", []byte("[Nope]\n"))
	if err == nil || !strings.HasPrefix(err.Error(), "<input>:1: ") {
		t.Errorf("got %v, want an error starting with <input>:1:", err)
	}
}

func TestTildeExpansion(t *testing.T) {
	home := filepath.Join(t.TempDir(), "home")
	old := userHomeDir
	userHomeDir = func() (string, error) { return home, nil }
	defer func() { userHomeDir = old }()

	in := "[DEFAULTS]\nlog_file = ~/logs/backy.log\n[MetaBackend]\npath = ~/backy/backy.db\n[DataBackend]\npath = ~\n"
	c, err := Parse(testName, []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if w := filepath.Join(home, "logs", "backy.log"); c.Defaults.LogFile != w {
		t.Errorf("LogFile = %q, want %q", c.Defaults.LogFile, w)
	}
	if w := filepath.Join(home, "backy", "backy.db"); c.Meta.Path != w {
		t.Errorf("Meta.Path = %q, want %q", c.Meta.Path, w)
	}
	if c.Data.Path != home {
		t.Errorf("Data.Path = %q, want %q", c.Data.Path, home)
	}

	// "~" not at the start is an ordinary character.
	c, err = Parse(testName, []byte("[MetaBackend]\npath = /x/~/db\n[DataBackend]\npath = a~\n"))
	if err != nil {
		t.Fatal(err)
	}
	if w := filepath.Clean("/x/~/db"); c.Meta.Path != w {
		t.Errorf("Meta.Path = %q, want %q", c.Meta.Path, w)
	}
	if w := filepath.Join(filepath.Dir(testName), "a~"); c.Data.Path != w {
		t.Errorf("Data.Path = %q, want %q", c.Data.Path, w)
	}

	// No home directory: an error naming line and key.
	userHomeDir = func() (string, error) { return "", errors.New("$HOME is not defined") }
	_, err = Parse("backy.cfg", []byte("[MetaBackend]\npath = /m\n[DataBackend]\npath = ~/data\n"))
	if !errors.Is(err, ErrInvalid) || !strings.HasPrefix(err.Error(), "backy.cfg:4: [DataBackend] path: ") ||
		!strings.Contains(err.Error(), "$HOME is not defined") {
		t.Errorf("got %v", err)
	}
}

func TestDefault(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "store")
	c := Default(dir)
	w := &Config{
		Defaults: Defaults{BlockSize: 4 << 20, LogLevel: "info", Compression: "none", CompressionLevel: 1, Timezone: "UTC"},
		Meta:     Meta{Type: "bbolt", Path: filepath.Join(dir, "backy.db")},
		Data:     Data{Type: "file", Path: filepath.Join(dir, "data"), SimultaneousWrites: 4, SimultaneousReads: 4},
		NBD:      NBD{Listen: "127.0.0.1:10809", TLS: "off"},
	}
	if !reflect.DeepEqual(c, w) {
		t.Errorf("got %+v, want %+v", c, w)
	}
	// Each call returns a fresh config.
	c.Defaults.Workers = 9
	if Default(dir).Defaults.Workers != 0 {
		t.Error("Default returned shared state")
	}
	checkValid(t, c)
}

// fakeEnv returns a getenv over m.
func fakeEnv(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func homeVar() string {
	switch runtime.GOOS {
	case "windows":
		return "USERPROFILE"
	case "plan9":
		return "home"
	}
	return "HOME"
}

func TestDefaultHome(t *testing.T) {
	root := t.TempDir()
	home := filepath.Join(root, "home", "u")
	xdg := filepath.Join(root, "xdg")
	for _, tt := range []struct {
		name string
		env  map[string]string
		want string
		err  bool
	}{
		{"BACKY_HOME wins", map[string]string{"BACKY_HOME": filepath.Join(root, "b"), "XDG_DATA_HOME": xdg, homeVar(): home}, filepath.Join(root, "b"), false},
		{"BACKY_HOME cleaned", map[string]string{"BACKY_HOME": filepath.Join(root, "b") + "/x/.."}, filepath.Join(root, "b"), false},
		{"BACKY_HOME relative", map[string]string{"BACKY_HOME": "rel"}, abs(t, "rel"), false},
		{"empty BACKY_HOME ignored", map[string]string{"BACKY_HOME": "", "XDG_DATA_HOME": xdg}, filepath.Join(xdg, "backy"), false},
		{"XDG", map[string]string{"XDG_DATA_HOME": xdg, homeVar(): home}, filepath.Join(xdg, "backy"), false},
		{"relative XDG ignored", map[string]string{"XDG_DATA_HOME": "rel/xdg", homeVar(): home}, filepath.Join(home, ".local", "share", "backy"), false},
		{"home", map[string]string{homeVar(): home}, filepath.Join(home, ".local", "share", "backy"), false},
		{"nothing", map[string]string{}, "", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DefaultHome(fakeEnv(tt.env))
			if (err != nil) != tt.err {
				t.Fatalf("err = %v, want error %v", err, tt.err)
			}
			if got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
			if err != nil && !strings.Contains(err.Error(), "BACKY_HOME") {
				t.Errorf("error %q does not mention BACKY_HOME", err)
			}
		})
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "etc", "backy.cfg")
	writeFile(t, path, "[MetaBackend]\npath = backy.db\n[DataBackend]\npath = data\n[DEFAULTS]\nworkers = 2\n")
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.File != path || c.Meta.Path != filepath.Join(dir, "etc", "backy.db") ||
		c.Data.Path != filepath.Join(dir, "etc", "data") || c.Defaults.Workers != 2 {
		t.Errorf("got %+v", c)
	}

	// Missing file.
	missing := filepath.Join(dir, "nope.cfg")
	_, err = Load(missing)
	if !errors.Is(err, ErrNotFound) || !errors.Is(err, fs.ErrNotExist) || errors.Is(err, ErrInvalid) {
		t.Errorf("Load(missing) = %v, want ErrNotFound", err)
	} else if !strings.Contains(err.Error(), missing) {
		t.Errorf("error %q does not name the file", err)
	}

	// Invalid content names the path as given.
	bad := filepath.Join(dir, "bad.cfg")
	writeFile(t, bad, "[DEFAULTS]\nworkers = x\n")
	_, err = Load(bad)
	if !errors.Is(err, ErrInvalid) || !strings.HasPrefix(err.Error(), bad+":2: [DEFAULTS] workers: ") {
		t.Errorf("Load(bad) = %v", err)
	}

	// A directory, a FIFO or a device is no configuration file (exit 78),
	// refused without waiting for a FIFO's writer.
	fifo := filepath.Join(dir, "fifo.cfg")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ path, kind string }{{dir, "a directory"}, {fifo, "a FIFO"}, {"/dev/zero", "a character device"}} {
		done := make(chan error, 1)
		go func() {
			_, err := Load(tc.path)
			done <- err
		}()
		select {
		case err = <-done:
		case <-time.After(20 * time.Second):
			t.Fatalf("Load(%s) waits", tc.path)
		}
		if !errors.Is(err, ErrInvalid) || errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), tc.path+": is "+tc.kind+", not a configuration file") {
			t.Errorf("Load(%s) = %v, want ErrInvalid saying it is %s", tc.path, err, tc.kind)
		}
	}

	// Too large.
	big := filepath.Join(dir, "big.cfg")
	writeFile(t, big, strings.Repeat("#\n", maxFileSize))
	_, err = Load(big)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "larger") {
		t.Errorf("Load(big) = %v", err)
	}
}

func TestResolve(t *testing.T) {
	dir := t.TempDir()
	flagCfg := filepath.Join(dir, "flag.cfg")
	envCfg := filepath.Join(dir, "env.cfg")
	writeFile(t, flagCfg, "[MetaBackend]\npath = flag.db\n[DataBackend]\npath = flagdata\n")
	writeFile(t, envCfg, "[MetaBackend]\npath = env.db\n[DataBackend]\npath = envdata\n")
	store := filepath.Join(dir, "store")

	env := map[string]string{"BACKY_CONFIG": envCfg, "BACKY_HOME": store}

	c, isDefault, err := Resolve(flagCfg, fakeEnv(env))
	if err != nil || isDefault || c.File != flagCfg || c.Meta.Path != filepath.Join(dir, "flag.db") {
		t.Errorf("flag: got %+v, %v, %v", c, isDefault, err)
	}

	c, isDefault, err = Resolve("", fakeEnv(env))
	if err != nil || isDefault || c.File != envCfg || c.Meta.Path != filepath.Join(dir, "env.db") {
		t.Errorf("env: got %+v, %v, %v", c, isDefault, err)
	}

	c, isDefault, err = Resolve("", fakeEnv(map[string]string{"BACKY_HOME": store, "BACKY_CONFIG": ""}))
	if err != nil || !isDefault || !reflect.DeepEqual(c, Default(store)) {
		t.Errorf("default: got %+v, %v, %v", c, isDefault, err)
	}

	home := filepath.Join(dir, "home")
	c, isDefault, err = Resolve("", fakeEnv(map[string]string{homeVar(): home}))
	if err != nil || !isDefault || c.Meta.Path != filepath.Join(home, ".local", "share", "backy", "backy.db") {
		t.Errorf("default home: got %+v, %v, %v", c, isDefault, err)
	}

	// A named file that does not exist is an error, not a fallback.
	_, _, err = Resolve(filepath.Join(dir, "missing.cfg"), fakeEnv(env))
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("missing flag file: %v", err)
	}
	_, _, err = Resolve("", fakeEnv(map[string]string{"BACKY_CONFIG": filepath.Join(dir, "missing.cfg"), "BACKY_HOME": store}))
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("missing env file: %v", err)
	}

	// No file and no home.
	_, _, err = Resolve("", fakeEnv(nil))
	if err == nil {
		t.Error("no environment: no error")
	}

	// Invalid file.
	writeFile(t, flagCfg, "[DEFAULTS]\n")
	_, _, err = Resolve(flagCfg, fakeEnv(env))
	if !errors.Is(err, ErrInvalid) {
		t.Errorf("invalid flag file: %v", err)
	}
}

func TestTimezoneKey(t *testing.T) {
	for _, zone := range []string{"UTC", "Europe/Berlin", "America/New_York", "Local"} {
		c, err := Parse("/etc/backy.cfg", []byte("[DEFAULTS]\ntimezone = "+zone+"\n"+required))
		if err != nil || c.Defaults.Timezone != zone {
			t.Errorf("timezone = %s: %+v, %v", zone, c, err)
		}
	}
}
