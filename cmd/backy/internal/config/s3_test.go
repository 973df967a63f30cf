package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/backy/backy/internal/unprivileged"
)

// isS3Key reports whether name is a key of [DataBackend] for type s3 only.
func isS3Key(name string) bool {
	for _, kd := range s3Keys {
		if kd.name == name {
			return true
		}
	}
	return false
}

// s3Head is the start of every s3 test file: line 3 is the [DataBackend]
// header, so the first key of a test is on line 4.
const s3Head = "[MetaBackend]\npath = /m/backy.db\n[DataBackend]\n"

// s3Input returns a complete file whose [DataBackend] section holds the
// lines of in.
func s3Input(in string) string { return s3Head + in }

// s3Want returns the config "type = s3\nbucket = backy\n" parses to, for
// tests to modify.
func s3Want() *Config {
	c := want()
	c.Data = Data{
		Type:               "s3",
		SimultaneousWrites: 16,
		SimultaneousReads:  16,
		S3: S3{
			Bucket:         "backy",
			Region:         "us-east-1",
			ConnectTimeout: 10 * time.Second,
			RequestTimeout: 2 * time.Minute,
			RetryFor:       5 * time.Minute,
		},
	}
	return c
}

// Fake files of the s3 tests, see s3Files.
var (
	s3IDFile     = filepath.Clean("/secret/s3-id")
	s3SecretFile = filepath.Clean("/secret/s3-secret")
	s3RelIDFile  = filepath.Join(configDir, "keys", "id")
)

// s3Files fakes the credential files of the s3 tests.
func s3Files(t testing.TB) {
	fakeSecretFiles(t, map[string]fakeFile{
		s3IDFile:                                  {" \tAKIDFROMFILE \r\n\n", 0o644},
		s3SecretFile:                              {"secret from file\n", 0o600},
		s3RelIDFile:                               {"RELID", 0o600},
		filepath.Clean("/secret/crlf"):            {"crlf secret\r\n", 0o600},
		filepath.Clean("/secret/no-nl"):           {" spaced ", 0o400},
		filepath.Clean("/secret/token"):           {"tok/en+==\n", 0o600},
		filepath.Clean("/secret/world-readable"):  {"secret\n", 0o644},
		filepath.Clean("/secret/group-readable"):  {"secret\n", 0o640},
		filepath.Clean("/secret/empty"):           {"", 0o600},
		filepath.Clean("/secret/newline"):         {"\n", 0o600},
		filepath.Clean("/secret/crlf-only"):       {"\r\n", 0o600},
		filepath.Clean("/secret/blank"):           {" \t\n", 0o600},
		filepath.Clean("/secret/two-lines"):       {"first-line-secret\nsecond-line\n", 0o600},
		filepath.Clean("/secret/two-newlines"):    {"secret\n\n", 0o600},
		filepath.Clean("/secret/two-words"):       {"AKID SECRETWORD\n", 0o600},
		filepath.Clean("/secret/big"):             {strings.Repeat("s", maxSecretFileSize+1), 0o600},
		filepath.Clean("/secret/big-ok"):          {strings.Repeat("s", maxSecretFileSize-1) + "\n", 0o600},
		filepath.Clean("/secret/control-char-id"): {"AK\x01ID", 0o600},
	})
}

var s3ValidTests = []struct {
	name string
	in   string // the lines of [DataBackend]
	mod  func(c *Config)
}{
	{"defaults", "type = s3\nbucket = backy\n", func(c *Config) {}},
	{"type after keys", "bucket = backy\nregion = eu-west-1\ntype = s3\n", func(c *Config) { c.Data.S3.Region = "eu-west-1" }},
	{"type last after credentials", "secret_access_key = s\naccess_key_id = AKID\nbucket = backy\ntype = s3\n", func(c *Config) {
		c.Data.S3.AccessKeyID, c.Data.S3.SecretAccessKey = "AKID", "s"
	}},
	{"upper-case keys", "TYPE = s3\nBucket = backy\nPATH_STYLE = yes\n", func(c *Config) { c.Data.S3.PathStyle = true }},

	// simultaneous_*
	{"simultaneous explicit", "type = s3\nbucket = backy\nsimultaneous_writes = 2\n", func(c *Config) { c.Data.SimultaneousWrites = 2 }},
	{"simultaneous explicit both", "simultaneous_reads = 64\nsimultaneous_writes = 4\ntype = s3\nbucket = backy\n", func(c *Config) {
		c.Data.SimultaneousReads, c.Data.SimultaneousWrites = 64, 4
	}},

	// bucket
	{"bucket min length", "type = s3\nbucket = a1b\n", func(c *Config) { c.Data.S3.Bucket = "a1b" }},
	{"bucket max length", "type = s3\nbucket = " + strings.Repeat("a", 63) + "\n", func(c *Config) { c.Data.S3.Bucket = strings.Repeat("a", 63) }},
	{"bucket dots and dashes", "type = s3\nbucket = 1.backy-backups.example\n", func(c *Config) { c.Data.S3.Bucket = "1.backy-backups.example" }},
	{"bucket digits", "type = s3\nbucket = 123\n", func(c *Config) { c.Data.S3.Bucket = "123" }},

	// prefix
	{"prefix", "type = s3\nbucket = backy\nprefix = hosts/db-1/v_2.x\n", func(c *Config) { c.Data.S3.Prefix = "hosts/db-1/v_2.x" }},
	{"prefix slashes trimmed", "type = s3\nbucket = backy\nprefix = /a/b/\n", func(c *Config) { c.Data.S3.Prefix = "a/b" }},
	{"prefix many slashes trimmed", "type = s3\nbucket = backy\nprefix = //a//\n", func(c *Config) { c.Data.S3.Prefix = "a" }},
	{"prefix root slash", "type = s3\nbucket = backy\nprefix = /\n", func(c *Config) {}},
	{"prefix empty", "type = s3\nbucket = backy\nprefix =\n", func(c *Config) {}},
	{"prefix dots in names", "type = s3\nbucket = backy\nprefix = .a/..b/c.\n", func(c *Config) { c.Data.S3.Prefix = ".a/..b/c." }},
	{"prefix max length", "type = s3\nbucket = backy\nprefix = /" + strings.Repeat("p", 512) + "/\n", func(c *Config) { c.Data.S3.Prefix = strings.Repeat("p", 512) }},

	// region
	{"region", "type = s3\nbucket = backy\nregion = eu-central-1\n", func(c *Config) { c.Data.S3.Region = "eu-central-1" }},
	{"region other server", "type = s3\nbucket = backy\nregion = Zone_group.1\n", func(c *Config) { c.Data.S3.Region = "Zone_group.1" }},

	// endpoint and path_style
	{"endpoint sets path style", "type = s3\nbucket = backy\nendpoint = http://127.0.0.1:7070\n", func(c *Config) {
		c.Data.S3.Endpoint, c.Data.S3.PathStyle = "http://127.0.0.1:7070", true
	}},
	{"endpoint normalized", "type = s3\nbucket = backy\nendpoint = HTTPS://s3.example.com/\n", func(c *Config) {
		c.Data.S3.Endpoint, c.Data.S3.PathStyle = "https://s3.example.com", true
	}},
	{"endpoint IPv6", "type = s3\nbucket = backy\nendpoint = http://[::1]:9000\n", func(c *Config) {
		c.Data.S3.Endpoint, c.Data.S3.PathStyle = "http://[::1]:9000", true
	}},
	{"endpoint path kept", "type = s3\nbucket = backy\nendpoint = https://gw.example.com/s3/\n", func(c *Config) {
		c.Data.S3.Endpoint, c.Data.S3.PathStyle = "https://gw.example.com/s3", true
	}},
	{"endpoint empty port", "type = s3\nbucket = backy\nendpoint = http://minio:/\n", func(c *Config) {
		c.Data.S3.Endpoint, c.Data.S3.PathStyle = "http://minio", true
	}},
	{"endpoint empty is AWS", "type = s3\nbucket = backy\nendpoint =\n", func(c *Config) {}},
	{"endpoint path style off", "type = s3\npath_style = false\nbucket = backy\nendpoint = http://minio:9000\n", func(c *Config) {
		c.Data.S3.Endpoint = "http://minio:9000"
	}},
	{"path style on without endpoint", "type = s3\nbucket = backy\npath_style = true\n", func(c *Config) { c.Data.S3.PathStyle = true }},
	{"path style 1", "type = s3\nbucket = backy\npath_style = 1\n", func(c *Config) { c.Data.S3.PathStyle = true }},
	{"path style On", "type = s3\nbucket = backy\npath_style = On\n", func(c *Config) { c.Data.S3.PathStyle = true }},
	{"path style TRUE", "type = s3\nbucket = backy\npath_style = TRUE\n", func(c *Config) { c.Data.S3.PathStyle = true }},
	{"path style no", "type = s3\nbucket = backy\nendpoint = http://h\npath_style = no\n", func(c *Config) { c.Data.S3.Endpoint = "http://h" }},
	{"path style 0", "type = s3\nbucket = backy\nendpoint = http://h\npath_style = 0\n", func(c *Config) { c.Data.S3.Endpoint = "http://h" }},
	{"path style OFF", "type = s3\nbucket = backy\nendpoint = http://h\npath_style = OFF\n", func(c *Config) { c.Data.S3.Endpoint = "http://h" }},

	// credentials
	{"inline credentials", "type = s3\nbucket = backy\naccess_key_id = AKIAIOSFODNN7EXAMPLE\nsecret_access_key = a/b+c=d #;x\n", func(c *Config) {
		c.Data.S3.AccessKeyID, c.Data.S3.SecretAccessKey = "AKIAIOSFODNN7EXAMPLE", "a/b+c=d #;x"
	}},
	{"inline credentials with token", "type = s3\nbucket = backy\nsession_token: tok=en\naccess_key_id = AKID\nsecret_access_key = sec ret\n", func(c *Config) {
		c.Data.S3.AccessKeyID, c.Data.S3.SecretAccessKey, c.Data.S3.SessionToken = "AKID", "sec ret", "tok=en"
	}},
	{"credential files", "type = s3\nbucket = backy\naccess_key_id_file = /secret/s3-id\nsecret_access_key_file = /secret/s3-secret\nsession_token_file = /secret/token\n", func(c *Config) {
		c.Data.S3.AccessKeyID, c.Data.S3.SecretAccessKey, c.Data.S3.SessionToken = "AKIDFROMFILE", "secret from file", "tok/en+=="
	}},
	{"credential files relative", "type = s3\nbucket = backy\naccess_key_id_file = keys/../keys/id\nsecret_access_key_file = /secret/crlf\n", func(c *Config) {
		c.Data.S3.AccessKeyID, c.Data.S3.SecretAccessKey = "RELID", "crlf secret"
	}},
	{"secret file without newline", "type = s3\nbucket = backy\naccess_key_id = A\nsecret_access_key_file = /secret/no-nl\n", func(c *Config) {
		c.Data.S3.AccessKeyID, c.Data.S3.SecretAccessKey = "A", " spaced "
	}},
	{"inline id and secret file", "type = s3\nbucket = backy\naccess_key_id = AKID\nsecret_access_key_file = /secret/s3-secret\n", func(c *Config) {
		c.Data.S3.AccessKeyID, c.Data.S3.SecretAccessKey = "AKID", "secret from file"
	}},
	{"profile", "type = s3\nbucket = backy\nprofile = backup-prod_1\n", func(c *Config) { c.Data.S3.Profile = "backup-prod_1" }},

	// timeouts and attempts
	{"timeouts go syntax", "type = s3\nbucket = backy\nconnect_timeout = 30s\nrequest_timeout = 1m30s\n", func(c *Config) {
		c.Data.S3.ConnectTimeout, c.Data.S3.RequestTimeout = 30*time.Second, 90*time.Second
	}},
	{"timeouts seconds", "type = s3\nbucket = backy\nconnect_timeout = 5\nrequest_timeout = 600\n", func(c *Config) {
		c.Data.S3.ConnectTimeout, c.Data.S3.RequestTimeout = 5*time.Second, 10*time.Minute
	}},
	{"timeouts max", "type = s3\nbucket = backy\nconnect_timeout = 86400\nrequest_timeout = 24h\n", func(c *Config) {
		c.Data.S3.ConnectTimeout, c.Data.S3.RequestTimeout = 24*time.Hour, 24*time.Hour
	}},
	{"timeouts small", "type = s3\nbucket = backy\nconnect_timeout = 500ms\nrequest_timeout = 0.5h\n", func(c *Config) {
		c.Data.S3.ConnectTimeout, c.Data.S3.RequestTimeout = 500*time.Millisecond, 30*time.Minute
	}},
	{"max attempts 1", "type = s3\nbucket = backy\nmax_attempts = 1\n", func(c *Config) { c.Data.S3.MaxAttempts = 1 }},
	{"retry for 0", "type = s3\nbucket = backy\nretry_for = 0\n", func(c *Config) { c.Data.S3.RetryFor = 0 }},
	{"retry for 0s", "type = s3\nbucket = backy\nretry_for = 0s\n", func(c *Config) { c.Data.S3.RetryFor = 0 }},
	{"retry for 90", "type = s3\nbucket = backy\nretry_for = 90\n", func(c *Config) { c.Data.S3.RetryFor = 90 * time.Second }},
	{"retry for 24h", "type = s3\nbucket = backy\nretry_for = 24h\n", func(c *Config) { c.Data.S3.RetryFor = 24 * time.Hour }},
	{"max attempts 100", "type = s3\nbucket = backy\nmax_attempts = 100\n", func(c *Config) { c.Data.S3.MaxAttempts = 100 }},

	// storage class
	{"storage class", "type = s3\nbucket = backy\nstorage_class = STANDARD_IA\n", func(c *Config) { c.Data.S3.StorageClass = "STANDARD_IA" }},
	{"storage class other server", "type = s3\nbucket = backy\nstorage_class = COLD2\n", func(c *Config) { c.Data.S3.StorageClass = "COLD2" }},

	// bandwidth
	{"bandwidth", "type = s3\nbucket = backy\nbandwidth_read = 50MiB\nbandwidth_write = 65536\n", func(c *Config) {
		c.Data.S3.BandwidthRead, c.Data.S3.BandwidthWrite = 50<<20, 65536
	}},
	{"bandwidth zero and G", "type = s3\nbucket = backy\nbandwidth_read = 0\nbandwidth_write = 1 GiB\n", func(c *Config) { c.Data.S3.BandwidthWrite = 1 << 30 }},
	{"bandwidth 64k", "type = s3\nbucket = backy\nbandwidth_read = 64k\n", func(c *Config) { c.Data.S3.BandwidthRead = 64 << 10 }},

	{"everything", `type = s3
bucket = backy-backups
prefix = hosts/db1
region = eu-central-1
endpoint = https://s3.eu-central-1.amazonaws.com
path_style = false
access_key_id = AKID
secret_access_key = secret
session_token = token
connect_timeout = 3s
request_timeout = 5m
retry_for = 10m
max_attempts = 7
storage_class = INTELLIGENT_TIERING
bandwidth_read = 100MiB
bandwidth_write = 10MiB
simultaneous_writes = 32
simultaneous_reads = 8
`, func(c *Config) {
		c.Data.SimultaneousWrites, c.Data.SimultaneousReads = 32, 8
		c.Data.S3 = S3{
			Bucket: "backy-backups", Prefix: "hosts/db1", Region: "eu-central-1", Endpoint: "https://s3.eu-central-1.amazonaws.com",
			AccessKeyID: "AKID", SecretAccessKey: "secret", SessionToken: "token",
			ConnectTimeout: 3 * time.Second, RequestTimeout: 5 * time.Minute, RetryFor: 10 * time.Minute, MaxAttempts: 7,
			StorageClass: "INTELLIGENT_TIERING", BandwidthRead: 100 << 20, BandwidthWrite: 10 << 20,
		}
	}},
}

func TestS3Valid(t *testing.T) {
	s3Files(t)
	for _, tt := range s3ValidTests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse(testName, []byte(s3Input(tt.in)))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			w := s3Want()
			tt.mod(w)
			w.Warnings = c.Warnings // checked by TestS3Warnings
			if !reflect.DeepEqual(c, w) {
				t.Errorf("got\n%+v\nwant\n%+v", c.Data, w.Data)
				if c.Data.S3.SecretAccessKey != w.Data.S3.SecretAccessKey || c.Data.S3.SessionToken != w.Data.S3.SessionToken {
					t.Errorf("secrets differ: got %q, %q; want %q, %q", c.Data.S3.SecretAccessKey, c.Data.S3.SessionToken, w.Data.S3.SecretAccessKey, w.Data.S3.SessionToken)
				}
			}
			checkParsed(t, c)
		})
	}
}

// TestFileDefaults: type file keeps its defaults and no S3 keys.
func TestFileDefaults(t *testing.T) {
	for _, in := range []string{required, "[DataBackend]\ntype = file\npath = /d\n[MetaBackend]\npath = /m/backy.db\n", "[DataBackend]\npath = /d\ntype = file\n[MetaBackend]\npath = /m/backy.db\n"} {
		c, err := Parse(testName, []byte(in))
		if err != nil {
			t.Fatal(err)
		}
		w := Data{Type: "file", Path: filepath.Clean("/d"), SimultaneousWrites: 4, SimultaneousReads: 4}
		if !reflect.DeepEqual(c.Data, w) {
			t.Errorf("%q: got %+v, want %+v", in, c.Data, w)
		}
	}
}

// s3ErrorTests are complete files, checked like errorTests.
var s3ErrorTests = []struct {
	name     string
	in       string
	line     int
	key      string
	contains []string
}{
	// type, path and bucket, in any order
	{"path with s3", s3Input("type = s3\nbucket = backy\npath = /d\n"), 6, "path", []string{"[DataBackend] path: only for type = file", "type = s3 (line 4)", "use bucket and prefix", "remove path"}},
	{"path before type s3", s3Input("path = /d\nbucket = backy\ntype = s3\n"), 4, "path", []string{"only for type = file", "(line 6)"}},
	{"path with s3, no bucket", s3Input("path = /d\ntype = s3\n"), 4, "path", []string{"only for type = file"}},
	{"bucket with default type", s3Input("path = /d\nbucket = backy\n"), 5, "bucket", []string{"[DataBackend] bucket: needs type = s3", "file, the default", "add type = s3 to the section, or remove bucket"}},
	{"bucket with type file", s3Input("type = file\npath = /d\nbucket = backy\n"), 6, "bucket", []string{"needs type = s3", "line 4 sets type = file", "set type = s3 there, or remove bucket"}},
	{"bucket with type file after", s3Input("bucket = backy\npath = /d\ntype = file\n"), 4, "bucket", []string{"line 6 sets type = file"}},
	{"s3 keys without path", s3Input("bucket = backy\n"), 4, "bucket", []string{"needs type = s3"}},
	{"first s3 key by line", s3Input("path = /d\nsecret_access_key = hunter2hunter2\nregion = eu-west-1\nbucket = backy\n"), 5, "secret_access_key", []string{"needs type = s3", "remove secret_access_key"}},
	{"s3 keys in file section without type", "[DataBackend]\npath = /d\nendpoint = http://127.0.0.1:7070\n[MetaBackend]\npath = /m\n", 3, "endpoint", []string{"needs type = s3"}},
	{"bucket missing", s3Input("type = s3\nprefix = a\n"), 3, "bucket", []string{"[DataBackend] bucket: required key is missing for type = s3", "add bucket = <the name of an existing bucket> to the section", "does not create buckets"}},
	{"bucket missing, only type", s3Input("\n# c\ntype = s3\n"), 3, "bucket", []string{"required key is missing"}},
	{"file path missing", s3Input("type = file\n"), 3, "path", []string{"required key is missing (add path = <the directory of the data backend> to the section)"}},
	{"meta path missing with s3", "[DataBackend]\ntype = s3\nbucket = backy\n", 0, "path", []string{"[MetaBackend]", "no [MetaBackend] section"}},
	{"type s3 twice", s3Input("type = s3\nTYPE = s3\n"), 5, "type", []string{"duplicate key", "line 4"}},
	{"bucket twice", s3Input("type = s3\nbucket = a-b\nbucket = c-d\n"), 6, "bucket", []string{"duplicate key", "line 5"}},
	{"s3 key in MetaBackend", "[MetaBackend]\npath = /m\nbucket = backy\n[DataBackend]\npath = /d\n", 3, "bucket", []string{"[MetaBackend]", "unknown key"}},
	{"s3 key in DEFAULTS", "[DEFAULTS]\nregion = eu-west-1\n" + required, 2, "region", []string{"[DEFAULTS]", "unknown key"}},
	{"unknown s3 key", s3Input("type = s3\nbucket = backy\nsecret_key = x\n"), 6, "secret_key", []string{"unknown key", "secret_access_key, secret_access_key_file"}},

	// bucket
	{"bucket empty", s3Input("type = s3\nbucket =\n"), 5, "bucket", []string{"empty value", "3 to 63 lower-case letters"}},
	{"bucket short", s3Input("type = s3\nbucket = ab\n"), 5, "bucket", []string{`"ab" is not a valid bucket name: it is 2 characters long`, "3 to 63", "e.g. backy-backups"}},
	{"bucket long", s3Input("type = s3\nbucket = " + strings.Repeat("b", 64) + "\n"), 5, "bucket", []string{"it is 64 characters long"}},
	{"bucket upper case", s3Input("type = s3\nbucket = Backy\n"), 5, "bucket", []string{`"Backy"`, "upper-case letters"}},
	{"bucket underscore", s3Input("type = s3\nbucket = back_y\n"), 5, "bucket", []string{`it contains "_"`}},
	{"bucket non-ASCII", s3Input("type = s3\nbucket = bäcky\n"), 5, "bucket", []string{`it contains "ä"`}},
	{"bucket space", s3Input("type = s3\nbucket = my bucket\n"), 5, "bucket", []string{`it contains " "`}},
	{"bucket leading dash", s3Input("type = s3\nbucket = -backy\n"), 5, "bucket", []string{"does not start and end with a letter or digit"}},
	{"bucket trailing dot", s3Input("type = s3\nbucket = backy.\n"), 5, "bucket", []string{"does not start and end with a letter or digit"}},
	{"bucket two dots", s3Input("type = s3\nbucket = back..y\n"), 5, "bucket", []string{`it contains ".."`}},
	{"bucket URL", s3Input("type = s3\nbucket = s3://backy/hosts/db1/\n"), 5, "bucket", []string{`"s3://backy/hosts/db1/" is a URL, not a bucket name`, "write bucket = backy and prefix = hosts/db1"}},
	{"bucket URL without prefix", s3Input("type = s3\nbucket = s3://backy/\n"), 5, "bucket", []string{"is a URL", "(write bucket = backy)"}},
	{"bucket with prefix", s3Input("type = s3\nbucket = backy/host1\n"), 5, "bucket", []string{"it contains '/'", "write bucket = backy and prefix = host1"}},
	{"bucket slash only", s3Input("type = s3\nbucket = backy/\n"), 5, "bucket", []string{`it contains "/"`}},
	{"bucket inline comment", s3Input("type = s3\nbucket = backy # mine\n"), 5, "bucket", []string{"not a valid bucket name", "inline comments are not supported"}},
	{"bucket control char", s3Input("type = s3\nbucket = s3://a\rb/c\n"), 5, "bucket", []string{`"s3://a\rb/c"`}},

	// prefix
	{"prefix double slash", s3Input("type = s3\nbucket = backy\nprefix = a//b\n"), 6, "prefix", []string{`"a//b" is not a valid prefix: it contains "//"`, "e.g. backy or hosts/db1"}},
	{"prefix dot", s3Input("type = s3\nbucket = backy\nprefix = a/./b\n"), 6, "prefix", []string{`it contains the name "."`}},
	{"prefix dot dot", s3Input("type = s3\nbucket = backy\nprefix = ../a\n"), 6, "prefix", []string{`it contains the name ".."`}},
	{"prefix trailing dot dot", s3Input("type = s3\nbucket = backy\nprefix = a/..\n"), 6, "prefix", []string{`the name ".."`}},
	{"prefix upper case", s3Input("type = s3\nbucket = backy\nprefix = Hosts\n"), 6, "prefix", []string{"upper-case letters"}},
	{"prefix space", s3Input("type = s3\nbucket = backy\nprefix = a b\n"), 6, "prefix", []string{`it contains " "`}},
	{"prefix backslash", s3Input("type = s3\nbucket = backy\nprefix = a\\b\n"), 6, "prefix", []string{`it contains "\\"`}},
	{"prefix too long", s3Input("type = s3\nbucket = backy\nprefix = " + strings.Repeat("p", 513) + "\n"), 6, "prefix", []string{"too long: 513 characters", "at most 512"}},

	// region
	{"region empty", s3Input("type = s3\nbucket = backy\nregion =\n"), 6, "region", []string{"empty value", "e.g. eu-central-1"}},
	{"region space", s3Input("type = s3\nbucket = backy\nregion = eu central\n"), 6, "region", []string{`"eu central" is not a region name`}},
	{"region slash", s3Input("type = s3\nbucket = backy\nregion = eu/1\n"), 6, "region", []string{"not a region name"}},
	{"region long", s3Input("type = s3\nbucket = backy\nregion = " + strings.Repeat("r", 65) + "\n"), 6, "region", []string{"not a region name", "at most 64"}},

	// endpoint
	{"endpoint without scheme", s3Input("type = s3\nbucket = backy\nendpoint = 127.0.0.1:7070\n"), 6, "endpoint", []string{`"127.0.0.1:7070" is not a URL`, "did you mean http://127.0.0.1:7070?"}},
	{"endpoint one slash", s3Input("type = s3\nbucket = backy\nendpoint = http:/host\n"), 6, "endpoint", []string{"is not a URL", "e.g. http://127.0.0.1:7070"}},
	{"endpoint ftp", s3Input("type = s3\nbucket = backy\nendpoint = ftp://host\n"), 6, "endpoint", []string{`the scheme "ftp://" is not supported`, "http:// or https://"}},
	{"endpoint s3 scheme", s3Input("type = s3\nbucket = backy\nendpoint = s3://backy\n"), 6, "endpoint", []string{`"s3://" is not supported`}},
	{"endpoint no host", s3Input("type = s3\nbucket = backy\nendpoint = http://\n"), 6, "endpoint", []string{"has no host"}},
	{"endpoint no host path", s3Input("type = s3\nbucket = backy\nendpoint = http:///x\n"), 6, "endpoint", []string{"has no host"}},
	{"endpoint port only", s3Input("type = s3\nbucket = backy\nendpoint = http://:9000\n"), 6, "endpoint", []string{"has no host"}},
	{"endpoint query", s3Input("type = s3\nbucket = backy\nendpoint = http://host/?x=1\n"), 6, "endpoint", []string{"has a query or fragment"}},
	{"endpoint empty query", s3Input("type = s3\nbucket = backy\nendpoint = http://host?\n"), 6, "endpoint", []string{"has a query or fragment"}},
	{"endpoint fragment", s3Input("type = s3\nbucket = backy\nendpoint = http://host/#x\n"), 6, "endpoint", []string{"has a query or fragment", "inline comments are not supported"}},
	{"endpoint port 0", s3Input("type = s3\nbucket = backy\nendpoint = http://host:0\n"), 6, "endpoint", []string{"port 0 is out of range", "1 to 65535"}},
	{"endpoint port big", s3Input("type = s3\nbucket = backy\nendpoint = http://host:99999\n"), 6, "endpoint", []string{"port 99999 is out of range"}},
	{"endpoint port letters", s3Input("type = s3\nbucket = backy\nendpoint = http://host:abc\n"), 6, "endpoint", []string{"is not a valid URL", "invalid port"}},
	{"endpoint space", s3Input("type = s3\nbucket = backy\nendpoint = http://my host\n"), 6, "endpoint", []string{"is not a valid URL"}},
	{"endpoint control char", s3Input("type = s3\nbucket = backy\nendpoint = http://h\x7fost\n"), 6, "endpoint", []string{"is not a valid URL"}},
	{"endpoint user", s3Input("type = s3\nbucket = backy\nendpoint = https://AKID:hunter2hunter2@s3.example.com\n"), 6, "endpoint", []string{"the URL contains '@', so it holds a user name or password, which is not shown", "set access_key_id and secret_access_key instead"}},
	{"endpoint user without scheme", s3Input("type = s3\nbucket = backy\nendpoint = AKID:hunter2hunter2@host:9000\n"), 6, "endpoint", []string{"user name or password"}},

	// path_style
	{"path style word", s3Input("type = s3\nbucket = backy\npath_style = maybe\n"), 6, "path_style", []string{`"maybe" is not a boolean`, "true or false", "yes/no, on/off and 1/0"}},
	{"path style empty", s3Input("type = s3\nbucket = backy\npath_style =\n"), 6, "path_style", []string{`"" is not a boolean`}},
	{"path style 2", s3Input("type = s3\nbucket = backy\npath_style = 2\n"), 6, "path_style", []string{"not a boolean"}},
	{"path style t", s3Input("type = s3\nbucket = backy\npath_style = t\n"), 6, "path_style", []string{"not a boolean"}},

	// credentials: values
	{"access key id empty", s3Input("type = s3\nbucket = backy\naccess_key_id =\n"), 6, "access_key_id", []string{"empty value", "the access key ID"}},
	{"access key id blank", s3Input("type = s3\nbucket = backy\naccess_key_id = AK ID\n"), 6, "access_key_id", []string{"blanks or control characters", "e.g. AKIAIOSFODNN7EXAMPLE"}},
	{"secret empty", s3Input("type = s3\nbucket = backy\nsecret_access_key = \t\n"), 6, "secret_access_key", []string{"empty value", "the secret access key", "trimmed"}},
	{"session token empty", s3Input("type = s3\nbucket = backy\nsession_token =\n"), 6, "session_token", []string{"empty value", "the session token"}},
	{"access key id file empty", s3Input("type = s3\nbucket = backy\naccess_key_id_file =\n"), 6, "access_key_id_file", []string{"empty value", "path of a file holding the access key ID"}},
	{"secret file empty value", s3Input("type = s3\nbucket = backy\nsecret_access_key_file =\n"), 6, "secret_access_key_file", []string{"empty value", "path of a file holding the secret access key"}},
	{"session token file empty value", s3Input("type = s3\nbucket = backy\nsession_token_file =\n"), 6, "session_token_file", []string{"path of a file holding the session token"}},
	{"secret file missing", s3Input("type = s3\nbucket = backy\nsecret_access_key_file = /nonexistent/backy-s3-secret\n"), 6, "secret_access_key_file", []string{`cannot read "` + filepath.Clean("/nonexistent/backy-s3-secret") + `"`, "expected a readable file holding the secret access key"}},
	{"secret file tilde user", s3Input("type = s3\nbucket = backy\nsecret_access_key_file = ~root/s\n"), 6, "secret_access_key_file", []string{"~user"}},
	{"secret file nul", s3Input("type = s3\nbucket = backy\nsecret_access_key_file = /a\x00b\n"), 6, "secret_access_key_file", []string{"NUL"}},

	// credentials: pairing
	{"id and id file", s3Input("type = s3\nbucket = backy\naccess_key_id = A\naccess_key_id_file = /x\n"), 7, "access_key_id_file", []string{"access_key_id is already set on line 6", "set one of access_key_id and access_key_id_file"}},
	{"id file and id", s3Input("type = s3\nbucket = backy\naccess_key_id_file = /secret/s3-id\naccess_key_id = A\n"), 7, "access_key_id", []string{"access_key_id_file is already set on line 6"}},
	{"secret and secret file", s3Input("type = s3\nbucket = backy\nsecret_access_key = hunter2hunter2\nsecret_access_key_file = /x\n"), 7, "secret_access_key_file", []string{"secret_access_key is already set on line 6", "set one of secret_access_key and secret_access_key_file"}},
	{"token file and token", s3Input("type = s3\nbucket = backy\nsession_token_file = /secret/token\nsession_token = hunter2hunter2\n"), 7, "session_token", []string{"session_token_file is already set on line 6"}},
	{"id without secret", s3Input("type = s3\nbucket = backy\naccess_key_id = A\n"), 6, "access_key_id", []string{"no secret access key goes with it", "set secret_access_key or secret_access_key_file too", "or neither, to take the credentials from the environment or the shared AWS configuration"}},
	{"id file without secret", s3Input("access_key_id_file = /secret/s3-id\ntype = s3\nbucket = backy\n"), 4, "access_key_id_file", []string{"no secret access key"}},
	{"secret without id", s3Input("type = s3\nbucket = backy\nsecret_access_key = hunter2hunter2\n"), 6, "secret_access_key", []string{"no access key ID goes with it", "set access_key_id or access_key_id_file too"}},
	{"secret file without id", s3Input("type = s3\nbucket = backy\nsecret_access_key_file = /secret/s3-secret\n"), 6, "secret_access_key_file", []string{"no access key ID"}},
	{"token without credentials", s3Input("type = s3\nbucket = backy\nsession_token = hunter2hunter2\n"), 6, "session_token", []string{"only allowed together with an access key ID and a secret access key", "or remove session_token"}},
	{"token file without credentials", s3Input("type = s3\nbucket = backy\nsession_token_file = /secret/token\n"), 6, "session_token_file", []string{"or remove session_token_file"}},
	{"token and secret without id", s3Input("type = s3\nbucket = backy\nsession_token = t\nsecret_access_key = s\n"), 7, "secret_access_key", []string{"no access key ID"}},
	{"profile and id", s3Input("type = s3\nbucket = backy\nprofile = p\naccess_key_id = A\nsecret_access_key = s\n"), 6, "profile", []string{"cannot be used together with access_key_id (line 7)", "remove profile or access_key_id"}},
	{"profile and id file", s3Input("access_key_id_file = /secret/s3-id\nprofile = p\ntype = s3\nbucket = backy\n"), 5, "profile", []string{"together with access_key_id_file (line 4)"}},
	{"profile empty", s3Input("type = s3\nbucket = backy\nprofile =\n"), 6, "profile", []string{"empty value", "[profile NAME]"}},
	{"profile blank", s3Input("type = s3\nbucket = backy\nprofile = my profile\n"), 6, "profile", []string{`"my profile" is not a profile name`}},
	{"profile brackets", s3Input("type = s3\nbucket = backy\nprofile = [p]\n"), 6, "profile", []string{"not a profile name", "brackets"}},

	// timeouts
	{"connect timeout 0", s3Input("type = s3\nbucket = backy\nconnect_timeout = 0\n"), 6, "connect_timeout", []string{`"0" is out of range`, "more than 0 and at most 24h"}},
	{"connect timeout 0s", s3Input("type = s3\nbucket = backy\nconnect_timeout = 0s\n"), 6, "connect_timeout", []string{"out of range"}},
	{"connect timeout negative", s3Input("type = s3\nbucket = backy\nconnect_timeout = -1s\n"), 6, "connect_timeout", []string{"out of range"}},
	{"connect timeout negative seconds", s3Input("type = s3\nbucket = backy\nconnect_timeout = -5\n"), 6, "connect_timeout", []string{"not a duration"}},
	{"request timeout too long", s3Input("type = s3\nbucket = backy\nrequest_timeout = 25h\n"), 6, "request_timeout", []string{`"25h" is out of range`}},
	{"request timeout too many seconds", s3Input("type = s3\nbucket = backy\nrequest_timeout = 86401\n"), 6, "request_timeout", []string{"out of range"}},
	{"request timeout overflow", s3Input("type = s3\nbucket = backy\nrequest_timeout = 99999999999999999999\n"), 6, "request_timeout", []string{"out of range"}},
	{"request timeout overflow duration", s3Input("type = s3\nbucket = backy\nrequest_timeout = 9999999999h\n"), 6, "request_timeout", []string{"not a duration"}},
	{"request timeout days", s3Input("type = s3\nbucket = backy\nrequest_timeout = 1d\n"), 6, "request_timeout", []string{`"1d" is not a duration`, "such as 30s, 2m or 1m30s, or a number of seconds"}},
	{"request timeout blank", s3Input("type = s3\nbucket = backy\nrequest_timeout = 30 s\n"), 6, "request_timeout", []string{"not a duration"}},
	{"request timeout empty", s3Input("type = s3\nbucket = backy\nrequest_timeout =\n"), 6, "request_timeout", []string{`"" is not a duration`}},
	{"request timeout comment", s3Input("type = s3\nbucket = backy\nrequest_timeout = 2m # two\n"), 6, "request_timeout", []string{"not a duration", "inline comments are not supported"}},

	// retry_for
	{"retry for too long", s3Input("type = s3\nbucket = backy\nretry_for = 25h\n"), 6, "retry_for", []string{`"25h" is out of range`, "from 0 (no retries) to 24h"}},
	{"retry for negative", s3Input("type = s3\nbucket = backy\nretry_for = -1m\n"), 6, "retry_for", []string{"out of range"}},
	{"retry for word", s3Input("type = s3\nbucket = backy\nretry_for = long\n"), 6, "retry_for", []string{"not a duration"}},
	{"retry for empty", s3Input("type = s3\nbucket = backy\nretry_for =\n"), 6, "retry_for", []string{"not a duration"}},

	// max_attempts
	{"max attempts 0", s3Input("type = s3\nbucket = backy\nmax_attempts = 0\n"), 6, "max_attempts", []string{`"0" is not an integer from 1 to 100`, "1 means no retries"}},
	{"max attempts 101", s3Input("type = s3\nbucket = backy\nmax_attempts = 101\n"), 6, "max_attempts", []string{`"101" is not an integer from 1 to 100`}},
	{"max attempts negative", s3Input("type = s3\nbucket = backy\nmax_attempts = -1\n"), 6, "max_attempts", []string{"from 1 to 100"}},
	{"max attempts word", s3Input("type = s3\nbucket = backy\nmax_attempts = five\n"), 6, "max_attempts", []string{"from 1 to 100"}},
	{"max attempts overflow", s3Input("type = s3\nbucket = backy\nmax_attempts = 99999999999999999999\n"), 6, "max_attempts", []string{"from 1 to 100"}},

	// storage_class
	{"storage class lower", s3Input("type = s3\nbucket = backy\nstorage_class = standard_ia\n"), 6, "storage_class", []string{`"standard_ia" is not a storage class`, "did you mean STANDARD_IA?"}},
	{"storage class dash", s3Input("type = s3\nbucket = backy\nstorage_class = Standard-IA\n"), 6, "storage_class", []string{"did you mean STANDARD_IA?"}},
	{"storage class blank", s3Input("type = s3\nbucket = backy\nstorage_class = STANDARD IA\n"), 6, "storage_class", []string{"is not a storage class", "GLACIER_IR"}},
	{"storage class empty", s3Input("type = s3\nbucket = backy\nstorage_class =\n"), 6, "storage_class", []string{"empty value", "leave storage_class out"}},
	{"storage class long", s3Input("type = s3\nbucket = backy\nstorage_class = " + strings.Repeat("S", 65) + "\n"), 6, "storage_class", []string{"is not a storage class"}},

	// bandwidth
	{"bandwidth MB", s3Input("type = s3\nbucket = backy\nbandwidth_write = 50MB\n"), 6, "bandwidth_write", []string{`"50MB" is not a number of bytes per second`, "e.g. 50MiB", "0 for no limit"}},
	{"bandwidth negative", s3Input("type = s3\nbucket = backy\nbandwidth_read = -1\n"), 6, "bandwidth_read", []string{"not a number of bytes per second"}},
	{"bandwidth fraction", s3Input("type = s3\nbucket = backy\nbandwidth_read = 1.5M\n"), 6, "bandwidth_read", []string{"not a number of bytes per second"}},
	{"bandwidth empty", s3Input("type = s3\nbucket = backy\nbandwidth_read =\n"), 6, "bandwidth_read", []string{"not a number of bytes per second"}},
	{"bandwidth too small", s3Input("type = s3\nbucket = backy\nbandwidth_write = 50\n"), 6, "bandwidth_write", []string{`"50" (50 bytes) is out of range: bandwidth_write must be between 64KiB and 1TiB per second (0 = no limit`}},
	{"bandwidth too big", s3Input("type = s3\nbucket = backy\nbandwidth_read = 1025G\n"), 6, "bandwidth_read", []string{`"1025G" (1025GiB) is out of range`, "between 64KiB and 1TiB per second"}},
	{"bandwidth just too small", s3Input("type = s3\nbucket = backy\nbandwidth_write = 65535\n"), 6, "bandwidth_write", []string{"(65535 bytes) is out of range"}},

	// simultaneous with s3
	{"s3 writes zero", s3Input("type = s3\nbucket = backy\nsimultaneous_writes = 0\n"), 6, "simultaneous_writes", []string{"simultaneous_writes must be between 1 and 1024"}},
}

func TestS3Errors(t *testing.T) {
	s3Files(t)
	for _, tt := range s3ErrorTests {
		t.Run(tt.name, func(t *testing.T) {
			checkParseError(t, tt.in, tt.line, tt.key, tt.contains)
		})
	}
}

// s3KeyValues has a valid value of every s3 key.
var s3KeyValues = map[string]string{
	"bucket":                 "backy",
	"prefix":                 "a/b",
	"region":                 "eu-west-1",
	"endpoint":               "http://127.0.0.1:7070",
	"path_style":             "true",
	"access_key_id":          "AKID",
	"access_key_id_file":     "/secret/s3-id",
	"secret_access_key":      "hunter2hunter2",
	"secret_access_key_file": "/secret/s3-secret",
	"session_token":          "hunter3hunter3",
	"session_token_file":     "/secret/token",
	"profile":                "backup",
	"connect_timeout":        "5s",
	"request_timeout":        "30",
	"retry_for":              "2m",
	"max_attempts":           "3",
	"storage_class":          "STANDARD_IA",
	"bandwidth_read":         "1MiB",
	"bandwidth_write":        "0",
}

// TestS3KeysNeedTypeS3: every s3 key is an error with type file, whether
// type is given or not, before or after it.
func TestS3KeysNeedTypeS3(t *testing.T) {
	s3Files(t)
	if len(s3KeyValues) != len(s3Keys) {
		t.Errorf("s3KeyValues has %d keys, s3Keys %d", len(s3KeyValues), len(s3Keys))
	}
	for _, kd := range s3Keys {
		v, ok := s3KeyValues[kd.name]
		if !ok {
			t.Errorf("no test value for %s", kd.name)
			continue
		}
		line := kd.name + " = " + v + "\n"
		for _, tt := range []struct {
			in       string
			line     int
			contains string
		}{
			{s3Input("path = /d\n" + line), 5, "the data backend type is file, the default (add type = s3 to the section, or remove " + kd.name + ")"},
			{s3Input("type = file\npath = /d\n" + line), 6, "line 4 sets type = file (set type = s3 there, or remove " + kd.name + ")"},
			{s3Input(line + "path = /d\ntype = file\n"), 4, "line 6 sets type = file"},
		} {
			msg := checkParseError(t, tt.in, tt.line, kd.name, []string{"[DataBackend] " + kd.name + ": needs type = s3", tt.contains})
			if l := leak(msg, v); l != "" && strings.HasPrefix(kd.name, "s") {
				t.Errorf("message %q shows %q of the secret", msg, l)
			}
		}
		// With type = s3 (and the keys it needs) the value is valid.
		in := "type = s3\nbucket = backy\n" + line
		switch kd.name {
		case "access_key_id", "access_key_id_file", "session_token", "session_token_file":
			in += "secret_access_key = s\n"
			if kd.name != "access_key_id" && kd.name != "access_key_id_file" {
				in += "access_key_id = A\n"
			}
		case "secret_access_key", "secret_access_key_file":
			in += "access_key_id = A\n"
		}
		if kd.name == "bucket" {
			in = "type = s3\n" + line
		}
		if _, err := Parse(testName, []byte(s3Input(in))); err != nil {
			t.Errorf("%s = %s with type = s3: %v", kd.name, v, err)
		}
	}
}

// TestS3FileErrors reads faked credential files that are not valid.
func TestS3FileErrors(t *testing.T) {
	s3Files(t)
	for _, tt := range []struct {
		key, file string
		contains  []string
	}{
		{"secret_access_key_file", "/secret/empty", []string{`"` + filepath.Clean("/secret/empty") + `" holds no secret access key`, "one trailing newline is ignored"}},
		{"secret_access_key_file", "/secret/newline", []string{"holds no secret access key"}},
		{"secret_access_key_file", "/secret/crlf-only", []string{"holds no secret access key"}},
		{"session_token_file", "/secret/empty", []string{"holds no session token"}},
		{"secret_access_key_file", "/secret/two-lines", []string{"holds more than one line", "the content is not shown"}},
		{"secret_access_key_file", "/secret/two-newlines", []string{"holds more than one line"}},
		{"session_token_file", "/secret/two-lines", []string{"holds more than one line", "the session token alone on one line"}},
		{"secret_access_key_file", "/secret/big", []string{"is larger than 65536 bytes", "the secret access key"}},
		{"access_key_id_file", "/secret/empty", []string{"holds no access key ID", "whitespace around it is ignored"}},
		{"access_key_id_file", "/secret/blank", []string{"holds no access key ID"}},
		{"access_key_id_file", "/secret/two-words", []string{"holds more than an access key ID", "blanks or control characters"}},
		{"access_key_id_file", "/secret/control-char-id", []string{"holds more than an access key ID"}},
		{"access_key_id_file", "/secret/missing", []string{`cannot read "` + filepath.Clean("/secret/missing") + `": file does not exist`, "holding the access key ID"}},
		{"session_token_file", "relative/missing", []string{`cannot read "` + filepath.Join(abs(t, "."), "relative", "missing") + `"`}},
	} {
		t.Run(tt.key+" "+tt.file, func(t *testing.T) {
			in := s3Input("type = s3\nbucket = backy\n" + tt.key + " = " + tt.file + "\n")
			msg := checkParseError(t, in, 6, tt.key, tt.contains)
			for _, secret := range []string{"first-line-secret", "second-line", "SECRETWORD"} {
				if strings.Contains(msg, secret) {
					t.Errorf("message %q shows the file's content", msg)
				}
			}
		})
	}
	// The size limit is exclusive.
	c, err := Parse(testName, []byte(s3Input("type = s3\nbucket = backy\naccess_key_id = A\nsecret_access_key_file = /secret/big-ok\n")))
	if err != nil || c.Data.S3.SecretAccessKey != strings.Repeat("s", maxSecretFileSize-1) {
		t.Errorf("file at the size limit: %v", err)
	}
}

// TestS3Warnings: secret files readable by group or others give a warning
// (not the access key ID's file); so does a storage class that cannot be
// read without a restore.
func TestS3Warnings(t *testing.T) {
	s3Files(t)
	for _, tt := range []struct {
		name string
		in   string
		want []string // substrings of the one warning, or nil for none
	}{
		{"secret file 0644", "access_key_id = A\nsecret_access_key_file = /secret/world-readable\n",
			[]string{testName + ":7: [DataBackend] secret_access_key_file: \"" + filepath.Clean("/secret/world-readable") + "\" is readable by group or others (mode 0644; expected 0600 or 0400): restrict it with: chmod 600 " + filepath.Clean("/secret/world-readable")}},
		{"session token file 0640", "access_key_id = A\nsecret_access_key = s\nsession_token_file = /secret/group-readable\n",
			[]string{"[DataBackend] session_token_file: ", "(mode 0640"}},
		{"secret file 0600", "access_key_id = A\nsecret_access_key_file = /secret/s3-secret\n", nil},
		{"secret file 0400", "access_key_id = A\nsecret_access_key_file = /secret/no-nl\n", nil},
		{"access key id file 0644", "access_key_id_file = /secret/s3-id\nsecret_access_key = s\n", nil},
		{"inline secrets", "access_key_id = A\nsecret_access_key = s\nsession_token = t\n", nil}, // Load checks the file's mode
		{"storage class GLACIER", "storage_class = GLACIER\n", []string{"[DataBackend] storage_class: objects of storage class GLACIER cannot be read before they are restored", "GLACIER_IR"}},
		{"storage class DEEP_ARCHIVE", "storage_class = DEEP_ARCHIVE\n", []string{"DEEP_ARCHIVE cannot be read"}},
		{"storage class GLACIER_IR", "storage_class = GLACIER_IR\n", nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse(testName, []byte(s3Input("type = s3\nbucket = backy\n"+tt.in)))
			if err != nil {
				t.Fatal(err)
			}
			if tt.want == nil || runtime.GOOS == "windows" && strings.Contains(tt.name, "file") {
				if c.Warnings != nil && runtime.GOOS != "windows" {
					t.Errorf("warnings %q", c.Warnings)
				}
				return
			}
			if len(c.Warnings) != 1 {
				t.Fatalf("warnings %q, want one", c.Warnings)
			}
			for _, s := range tt.want {
				if !strings.Contains(c.Warnings[0], s) {
					t.Errorf("warning %q does not contain %q", c.Warnings[0], s)
				}
			}
			checkParsed(t, c)
		})
	}
}

// TestS3Files reads real credential files next to a real configuration
// file.
func TestS3Files(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "etc", "backy.cfg")
	write := func(name, content string, mode fs.FileMode) string {
		t.Helper()
		p := filepath.Join(dir, "etc", name)
		writeFile(t, p, content)
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	id := write("s3/id", "  AKIDREAL\n", 0o644)
	secret := write("s3/secret", "real secret\n", 0o600)
	token := write("s3/token", "real-token\r\n", 0o640)
	writeFile(t, cfg, s3Input("type = s3\nbucket = backy\naccess_key_id_file = s3/id\nsecret_access_key_file = ./s3/../s3/secret\nsession_token_file = "+token+"\n"))
	if err := os.Chmod(cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := c.Data.S3
	if s.AccessKeyID != "AKIDREAL" || s.SecretAccessKey != "real secret" || s.SessionToken != "real-token" {
		t.Errorf("got %q, %q, %q", s.AccessKeyID, s.SecretAccessKey, s.SessionToken)
	}
	if runtime.GOOS != "windows" {
		// The token file is readable by group; the access key ID's file may
		// be; the configuration holds no inline secret.
		if len(c.Warnings) != 1 || !strings.Contains(c.Warnings[0], "session_token_file: \""+token+"\" is readable by group or others (mode 0640") {
			t.Errorf("warnings %q", c.Warnings)
		}
	}
	_ = id
	_ = secret

	t.Run("unreadable", func(t *testing.T) {
		if runtime.GOOS == "windows" {
			t.Skip("no permission bits")
		}
		if unprivileged.Run(t) { // root reads every file
			return
		}
		p := write("s3/k000", "secret", 0)
		writeFile(t, cfg, s3Input("type = s3\nbucket = backy\naccess_key_id = A\nsecret_access_key_file = "+p+"\n"))
		_, err := Load(cfg)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), cfg+":7: [DataBackend] secret_access_key_file: cannot read \""+p+"\": permission denied") {
			t.Errorf("got %v", err)
		}
	})
	t.Run("directory", func(t *testing.T) {
		writeFile(t, cfg, s3Input("type = s3\nbucket = backy\naccess_key_id = A\nsecret_access_key_file = "+dir+"\n"))
		_, err := Load(cfg)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "cannot read \""+dir+"\": is a directory") {
			t.Errorf("got %v", err)
		}
	})
}

// TestS3LoadInlineSecretWarning: Load warns about an inline secret access
// key or session token in a configuration file that others can read.
func TestS3LoadInlineSecretWarning(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no permission bits")
	}
	dir := t.TempDir()
	for _, tt := range []struct {
		name string
		in   string
		mode fs.FileMode
		warn string
	}{
		{"secret 0644", "access_key_id = A\nsecret_access_key = hunter2hunter2\n", 0o644,
			"backy.cfg:7: [DataBackend] secret_access_key: the secret is written in the configuration file, which is readable by group or others (mode 0644; expected 0600 or 0400): restrict it with: chmod 600 backy.cfg, or move the secret to a file named by secret_access_key_file"},
		{"token first 0604", "session_token = hunter3hunter3\naccess_key_id = A\nsecret_access_key = hunter2hunter2\n", 0o604,
			"backy.cfg:6: [DataBackend] session_token: the secret is written in the configuration file"},
		{"secret 0600", "access_key_id = A\nsecret_access_key = hunter2hunter2\n", 0o600, ""},
		{"access key id only inline 0644", "access_key_id = A\nsecret_access_key_file = " + filepath.Join(dir, "secret") + "\n", 0o644, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := filepath.Join(dir, "backy.cfg")
			writeFile(t, filepath.Join(dir, "secret"), "s\n")
			if err := os.Chmod(filepath.Join(dir, "secret"), 0o600); err != nil {
				t.Fatal(err)
			}
			writeFile(t, cfg, s3Input("type = s3\nbucket = backy\n"+tt.in))
			if err := os.Chmod(cfg, tt.mode); err != nil {
				t.Fatal(err)
			}
			c, err := Load(cfg)
			if err != nil {
				t.Fatal(err)
			}
			if tt.warn == "" {
				if c.Warnings != nil {
					t.Errorf("warnings %q", c.Warnings)
				}
				return
			}
			w := strings.ReplaceAll(tt.warn, "backy.cfg", cfg)
			if len(c.Warnings) != 1 || !strings.HasPrefix(c.Warnings[0], w) {
				t.Errorf("warnings %q, want one starting with %q", c.Warnings, w)
			}
			for _, secret := range []string{"hunter2hunter2", "hunter3hunter3"} {
				if strings.Contains(c.Warnings[0], secret) {
					t.Errorf("warning %q shows the secret", c.Warnings[0])
				}
			}
		})
	}
}

// TestS3SecretsNotShown: no error message or formatted Config shows the
// secret access key or the session token.
func TestS3SecretsNotShown(t *testing.T) {
	const secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzzSECRET"
	for _, tt := range []struct {
		name, in string
	}{
		{"secret with type file", "path = /d\nsecret_access_key = " + secret + "\n"},
		{"secret without id", "type = s3\nbucket = backy\nsecret_access_key = " + secret + "\n"},
		{"secret twice", "type = s3\nbucket = backy\nsecret_access_key = " + secret + "\nsecret_access_key = " + secret + "!\n"},
		{"secret and secret file", "type = s3\nbucket = backy\nsecret_access_key = " + secret + "\nsecret_access_key_file = /x\n"},
		{"secret file and secret", "type = s3\nbucket = backy\nsecret_access_key_file = /secret/s3-secret\nsecret_access_key = " + secret + "\n"},
		{"secret without separator", "type = s3\nbucket = backy\nsecret_access_key " + secret + "\n"},
		{"secret with path", "type = s3\nbucket = backy\npath = /d\naccess_key_id = A\nsecret_access_key = " + secret + "\n"},
		{"secret and profile", "type = s3\nbucket = backy\nprofile = p\naccess_key_id = A\nsecret_access_key = " + secret + "\n"},
		{"secret without bucket", "type = s3\naccess_key_id = A\nsecret_access_key = " + secret + "\n"},
		{"token without credentials", "type = s3\nbucket = backy\nsession_token = " + secret + "\n"},
		{"token without separator", "type = s3\nbucket = backy\nSESSION_TOKEN " + secret + "\n"},
		{"token with type file", "path = /d\nsession_token = " + secret + "\n"},
		{"secret in endpoint", "type = s3\nbucket = backy\nendpoint = https://AKID:" + secret + "@s3.example.com/\n"},
		{"secret in endpoint without scheme", "type = s3\nbucket = backy\nendpoint = AKID:" + secret + "@s3.example.com/\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s3Files(t)
			_, err := Parse("backy.cfg", []byte(s3Input(tt.in)))
			if err == nil {
				t.Fatal("Parse succeeded")
			}
			if s := leak(err.Error(), secret); s != "" {
				t.Errorf("message %q shows %q of the secret", err, s)
			}
			// Also in the wrong sections.
			for _, sec := range []string{"[DEFAULTS]", "[MetaBackend]", "[Encryption1]"} {
				in := strings.Replace(s3Input(tt.in), "[DataBackend]\n", "[DataBackend]\npath = /d\n"+sec+"\n", 1)
				_, err := Parse("backy.cfg", []byte(in))
				if err == nil {
					t.Fatalf("%s: Parse succeeded", sec)
				}
				if s := leak(err.Error(), secret); s != "" {
					t.Errorf("%s: message %q shows %q of the secret", sec, err, s)
				}
			}
		})
	}

	// Formatting a Config leaves the secrets out.
	c, err := Parse(testName, []byte(s3Input("type = s3\nbucket = backy\naccess_key_id = AKIDSHOWN\nsecret_access_key = "+secret+"\nsession_token = token-"+secret+"\n")))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{
		fmt.Sprint(c), fmt.Sprintf("%v %+v %#v %s", c, c, c, c.Data.S3), fmt.Sprintf("%+v %#v", *c, *c),
		fmt.Sprint(c.Data), fmt.Sprintf("%+v %#v", c.Data, c.Data), fmt.Sprintf("%#v %v", c.Data.S3, &c.Data.S3),
	} {
		if l := leak(s, secret); l != "" {
			t.Errorf("%q shows %q", s, l)
		}
		if !strings.Contains(s, "AKIDSHOWN") || !strings.Contains(s, "SecretAccessKey:(set)") {
			t.Errorf("%q does not show the access key ID and that a secret is set", s)
		}
	}
	if w := "config.S3{Bucket:backy Prefix: Region:us-east-1 Endpoint: PathStyle:false AccessKeyID:AKIDSHOWN SecretAccessKey:(set) SessionToken:(set) Profile: ConnectTimeout:10s RequestTimeout:2m0s RetryFor:5m0s MaxAttempts:0 StorageClass: BandwidthRead:0 BandwidthWrite:0}"; c.Data.S3.GoString() != w {
		t.Errorf("GoString() = %q, want %q", c.Data.S3.GoString(), w)
	}
	if s := (S3{}).String(); !strings.Contains(s, "SecretAccessKey:(none) SessionToken:(none)") {
		t.Errorf("String() = %q", s)
	}
}

// exampleBlocks returns the indented examples of backy.cfg.example that
// start with "#     [DataBackend]", each as a file.
func exampleBlocks(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	var blocks []string
	lines := strings.Split(string(data), "\n")
	for i, line := range lines {
		if line != "#     [DataBackend]" {
			continue
		}
		var b strings.Builder
		for _, l := range lines[i:] {
			rest, ok := strings.CutPrefix(l, "#     ")
			if !ok {
				break
			}
			b.WriteString(rest + "\n")
		}
		blocks = append(blocks, b.String())
	}
	return blocks
}

// TestS3Example parses the s3 examples of backy.cfg.example.
func TestS3Example(t *testing.T) {
	data, err := os.ReadFile(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	for _, s := range []string{"type = s3", "backy does not create buckets", "backy init", "store identity", "Default: 4 with type = file, 16 with type = s3", "~/.aws", "AWS_ACCESS_KEY_ID"} {
		if !strings.Contains(text, s) {
			t.Errorf("example does not mention %q", s)
		}
	}
	// Every s3 key is documented with its default.
	for _, kd := range s3Keys {
		i := strings.Index(text, "\n# "+kd.name+" = ")
		if i < 0 {
			t.Errorf("example does not document %s", kd.name)
			continue
		}
		before := text[:i]
		para := before[strings.LastIndex(before, "\n\n")+1:]
		if !strings.Contains(para, "\n# Default: ") {
			t.Errorf("example does not give the default of %s", kd.name)
		}
	}

	blocks := exampleBlocks(t)
	if len(blocks) != 2 {
		t.Fatalf("found %d [DataBackend] examples, want 2 (MinIO, AWS)", len(blocks))
	}
	idFile, secretFile := filepath.Clean("/etc/backy/s3-access-key-id"), filepath.Clean("/etc/backy/s3-secret-access-key")
	fakeSecretFiles(t, map[string]fakeFile{idFile: {"minioadmin\n", 0o600}, secretFile: {"minio secret\n", 0o600}})
	wants := []Data{
		{Type: "s3", SimultaneousWrites: 16, SimultaneousReads: 16, S3: S3{
			Bucket: "backy", Prefix: "host1", Region: "us-east-1", Endpoint: "http://127.0.0.1:7070", PathStyle: true,
			AccessKeyID: "minioadmin", SecretAccessKey: "minio secret",
			ConnectTimeout: 10 * time.Second, RequestTimeout: 2 * time.Minute, RetryFor: 5 * time.Minute,
		}},
		{Type: "s3", SimultaneousWrites: 32, SimultaneousReads: 16, S3: S3{
			Bucket: "example-backy-backups", Prefix: "backy", Region: "eu-central-1", StorageClass: "STANDARD_IA",
			ConnectTimeout: 10 * time.Second, RequestTimeout: 2 * time.Minute, RetryFor: 5 * time.Minute,
		}},
	}
	for i, b := range blocks {
		c, err := Parse(testName, []byte("[MetaBackend]\npath = /m/backy.db\n"+b))
		if err != nil {
			t.Errorf("example:\n%s\ndoes not parse: %v", b, err)
			continue
		}
		if !reflect.DeepEqual(c.Data, wants[i]) || c.Warnings != nil {
			t.Errorf("example:\n%s\nparsed to %+v, warnings %q; want %+v", b, c.Data, c.Warnings, wants[i])
		}
		checkParsed(t, c)
	}
}

// checkS3 reports every validation rule an accepted S3 breaks.
func checkS3(t *testing.T, s S3) {
	t.Helper()
	if checkBucket(s.Bucket) != "" {
		t.Errorf("invalid Bucket %q", s.Bucket)
	}
	if p, msg := normalizePrefix(s.Prefix); msg != "" || p != s.Prefix {
		t.Errorf("invalid Prefix %q", s.Prefix)
	}
	if checkRegion(s.Region) != "" {
		t.Errorf("invalid Region %q", s.Region)
	}
	if e, msg := parseEndpoint(s.Endpoint); msg != "" || e != s.Endpoint {
		t.Errorf("invalid Endpoint %q", s.Endpoint)
	}
	if (s.AccessKeyID == "") != (s.SecretAccessKey == "") || s.SessionToken != "" && s.AccessKeyID == "" || s.Profile != "" && s.AccessKeyID != "" {
		t.Errorf("invalid credentials: %v", s)
	}
	if s.AccessKeyID != "" && !isToken(s.AccessKeyID) || strings.ContainsAny(s.SecretAccessKey+s.SessionToken, "\r\n") {
		t.Errorf("invalid credential values: %v", s)
	}
	if s.Profile != "" && checkProfile(s.Profile) != "" {
		t.Errorf("invalid Profile %q", s.Profile)
	}
	for _, d := range []time.Duration{s.ConnectTimeout, s.RequestTimeout} {
		if d <= 0 || d > 24*time.Hour {
			t.Errorf("invalid timeout %v", d)
		}
	}
	if s.MaxAttempts < 0 || s.MaxAttempts > 100 {
		t.Errorf("invalid MaxAttempts %d", s.MaxAttempts)
	}
	if s.RetryFor < 0 || s.RetryFor > 24*time.Hour {
		t.Errorf("invalid RetryFor %v", s.RetryFor)
	}
	if s.StorageClass != "" && checkStorageClass(s.StorageClass) != "" {
		t.Errorf("invalid StorageClass %q", s.StorageClass)
	}
	for _, b := range []int64{s.BandwidthRead, s.BandwidthWrite} {
		if b != 0 && (b < 64<<10 || b > MaxBandwidth) {
			t.Errorf("invalid bandwidth %d", b)
		}
	}
}

func TestParseTimeout(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"1", time.Second, true},
		{"007", 7 * time.Second, true},
		{"86400", 24 * time.Hour, true},
		{"86401", 0, false},
		{"1ns", 1, true},
		{"24h0m0s", 24 * time.Hour, true},
		{"24h0m1s", 0, false},
		{"+5s", 5 * time.Second, true},
		{"1.5m", 90 * time.Second, true},
		{"0", 0, false},
		{"00", 0, false},
		{"-0s", 0, false},
		{"", 0, false},
		{"s", 0, false},
		{"5 s", 0, false},
		{"5S", 0, false},
		{"1e3", 0, false},
	} {
		got, msg := parseTimeout(tt.in)
		if got != tt.want || (msg == "") != tt.ok {
			t.Errorf("parseTimeout(%q) = %v, %q; want %v, ok %v", tt.in, got, msg, tt.want, tt.ok)
		}
	}
}

func TestParseBool(t *testing.T) {
	for in, want := range map[string]bool{"true": true, "True": true, "YES": true, "on": true, "1": true, "false": false, "No": false, "OFF": false, "0": false} {
		if got, ok := parseBool(in); !ok || got != want {
			t.Errorf("parseBool(%q) = %v, %v", in, got, ok)
		}
	}
	for _, in := range []string{"", "t", "f", "y", "n", "2", "-1", "enabled", "truee", " true"} {
		if _, ok := parseBool(in); ok {
			t.Errorf("parseBool(%q) ok", in)
		}
	}
}
