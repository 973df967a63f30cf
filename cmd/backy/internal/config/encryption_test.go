package config

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/backy/backy/internal/unprivileged"
)

// Test keys. They are only ever used by these tests.
var (
	hexKey1 = strings.Repeat("0123456789abcdef", 4)
	hexKey2 = strings.Repeat("fedcba9876543210", 4)
	hexKey3 = strings.Repeat("a5", 32)
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.TrimSpace(s))
	if err != nil || len(b) != 32 {
		t.Fatalf("bad test key %q", s)
	}
	return b
}

// fakeFile is the content and mode of a file for fakeSecretFiles.
type fakeFile struct {
	data string
	mode fs.FileMode
}

// fakeSecretFiles makes key and passphrase files be read from files
// (absolute paths) for the rest of the test.
func fakeSecretFiles(t testing.TB, files map[string]fakeFile) {
	t.Helper()
	old := readSecretFile
	readSecretFile = func(path string, limit int64) ([]byte, fs.FileMode, error) {
		f, ok := files[path]
		if !ok {
			return nil, 0, &fs.PathError{Op: "open", Path: path, Err: fs.ErrNotExist}
		}
		data := []byte(f.data)
		if int64(len(data)) > limit+1 {
			data = data[:limit+1]
		}
		return data, f.mode, nil
	}
	t.Cleanup(func() { readSecretFile = old })
}

// configDir is the directory of testName.
var configDir = filepath.Dir(testName)

func TestEncryptionValid(t *testing.T) {
	key1, key2, key3 := unhex(t, hexKey1), unhex(t, hexKey2), unhex(t, hexKey3)
	kf := filepath.Join(configDir, "keys", "k2")
	pf := filepath.Clean("/secret/pp")
	fakeSecretFiles(t, map[string]fakeFile{
		kf:                                {hexKey2 + "\n", 0o600},
		pf:                                {"pass phrase\n", 0o400},
		filepath.Clean("/secret/k-upper"): {strings.ToUpper(hexKey3), 0o600},
		filepath.Clean("/secret/crlf"):    {"pp\r\n", 0o600},
		filepath.Clean("/secret/two"):     {"pp\n\n", 0o600},
		filepath.Clean("/secret/no-nl"):   {" pp ", 0o600},
		filepath.Clean("/secret/k-space"): {" \t\n" + hexKey1 + " \r\n\n", 0o600},
	})
	for _, tt := range []struct {
		name string
		in   string // appended to required
		want Encryption
	}{
		{"none", "", Encryption{}},
		{"version 0", "[DEFAULTS]\nencryption_version = 0\n", Encryption{}},
		{"inline key", "[DEFAULTS]\nencryption_version = 1\nencryption_key = " + hexKey1 + "\n",
			Encryption{Version: 1, Cipher: "aes-256-gcm", Keys: []Key{{1, "aes-256-gcm", key1, nil, "encryption_key in [DEFAULTS]"}}}},
		{"inline key upper case", "[DEFAULTS]\nencryption_version = 1\nencryption_key = " + strings.ToUpper(hexKey1) + "\n",
			Encryption{Version: 1, Cipher: "aes-256-gcm", Keys: []Key{{1, "aes-256-gcm", key1, nil, "encryption_key in [DEFAULTS]"}}}},
		{"key before version", "[DEFAULTS]\nencryption_key = " + hexKey1 + "\nencryption_version = 4\n",
			Encryption{Version: 4, Cipher: "aes-256-gcm", Keys: []Key{{4, "aes-256-gcm", key1, nil, "encryption_key in [DEFAULTS]"}}}},
		{"max version", "[DEFAULTS]\nencryption_version = 65535\nencryption_key = " + hexKey1 + "\n",
			Encryption{Version: 65535, Cipher: "aes-256-gcm", Keys: []Key{{65535, "aes-256-gcm", key1, nil, "encryption_key in [DEFAULTS]"}}}},
		{"leading zeros in value", "[DEFAULTS]\nencryption_version = 007\nencryption_key = " + hexKey1 + "\n",
			Encryption{Version: 7, Cipher: "aes-256-gcm", Keys: []Key{{7, "aes-256-gcm", key1, nil, "encryption_key in [DEFAULTS]"}}}},
		{"xchacha inline passphrase trimmed", "[DEFAULTS]\nencryption_version = 7\nencryption_cipher = xchacha20-poly1305\nencryption_passphrase =   pass word #1; x  \n",
			Encryption{Version: 7, Cipher: "xchacha20-poly1305", Keys: []Key{{7, "xchacha20-poly1305", nil, []byte("pass word #1; x"), "encryption_passphrase in [DEFAULTS]"}}}},
		{"explicit aes", "[DEFAULTS]\nencryption_version = 1\nencryption_cipher = aes-256-gcm\nencryption_passphrase = p\n",
			Encryption{Version: 1, Cipher: "aes-256-gcm", Keys: []Key{{1, "aes-256-gcm", nil, []byte("p"), "encryption_passphrase in [DEFAULTS]"}}}},
		{"passphrase with separators", "[DEFAULTS]\nencryption_version = 1\nencryption_passphrase: a=b:c\n",
			Encryption{Version: 1, Cipher: "aes-256-gcm", Keys: []Key{{1, "aes-256-gcm", nil, []byte("a=b:c"), "encryption_passphrase in [DEFAULTS]"}}}},
		{"upper-case keys", "[DEFAULTS]\nENCRYPTION_VERSION = 2\nEncryption_Key_File = keys/k2\n",
			Encryption{Version: 2, Cipher: "aes-256-gcm", Keys: []Key{{2, "aes-256-gcm", key2, nil, "encryption_key_file " + kf}}}},
		{"key file relative", "[DEFAULTS]\nencryption_version = 2\nencryption_key_file = ./keys/../keys/k2\n",
			Encryption{Version: 2, Cipher: "aes-256-gcm", Keys: []Key{{2, "aes-256-gcm", key2, nil, "encryption_key_file " + kf}}}},
		{"key file upper case", "[DEFAULTS]\nencryption_version = 2\nencryption_key_file = /secret/k-upper\n",
			Encryption{Version: 2, Cipher: "aes-256-gcm", Keys: []Key{{2, "aes-256-gcm", key3, nil, "encryption_key_file " + filepath.Clean("/secret/k-upper")}}}},
		{"key file whitespace", "[DEFAULTS]\nencryption_version = 2\nencryption_key_file = /secret/k-space\n",
			Encryption{Version: 2, Cipher: "aes-256-gcm", Keys: []Key{{2, "aes-256-gcm", key1, nil, "encryption_key_file " + filepath.Clean("/secret/k-space")}}}},
		{"passphrase file", "[DEFAULTS]\nencryption_version = 3\nencryption_passphrase_file = /secret/pp\n",
			Encryption{Version: 3, Cipher: "aes-256-gcm", Keys: []Key{{3, "aes-256-gcm", nil, []byte("pass phrase"), "encryption_passphrase_file " + pf}}}},
		{"passphrase file CRLF", "[DEFAULTS]\nencryption_version = 3\nencryption_passphrase_file = /secret/crlf\n",
			Encryption{Version: 3, Cipher: "aes-256-gcm", Keys: []Key{{3, "aes-256-gcm", nil, []byte("pp"), "encryption_passphrase_file " + filepath.Clean("/secret/crlf")}}}},
		{"passphrase file one newline removed", "[DEFAULTS]\nencryption_version = 3\nencryption_passphrase_file = /secret/two\n",
			Encryption{Version: 3, Cipher: "aes-256-gcm", Keys: []Key{{3, "aes-256-gcm", nil, []byte("pp\n"), "encryption_passphrase_file " + filepath.Clean("/secret/two")}}}},
		{"passphrase file no newline", "[DEFAULTS]\nencryption_version = 3\nencryption_passphrase_file = /secret/no-nl\n",
			Encryption{Version: 3, Cipher: "aes-256-gcm", Keys: []Key{{3, "aes-256-gcm", nil, []byte(" pp "), "encryption_passphrase_file " + filepath.Clean("/secret/no-nl")}}}},
		{"current version in a section", "[DEFAULTS]\nencryption_version = 2\n[Encryption2]\ncipher = xchacha20-poly1305\nkey = " + hexKey2 + "\n",
			Encryption{Version: 2, Cipher: "xchacha20-poly1305", Keys: []Key{{2, "xchacha20-poly1305", key2, nil, "[Encryption2] key"}}}},
		{"section before DEFAULTS", "[Encryption1]\nkey = " + hexKey1 + "\n[DEFAULTS]\nencryption_version = 1\n",
			Encryption{Version: 1, Cipher: "aes-256-gcm", Keys: []Key{{1, "aes-256-gcm", key1, nil, "[Encryption1] key"}}}},
		{"old keys while unencrypted", "[Encryption1]\npassphrase = old\n",
			Encryption{Keys: []Key{{1, "aes-256-gcm", nil, []byte("old"), "[Encryption1] passphrase"}}}},
		{"sorted", "[Encryption3]\nKEY_FILE = /secret/k-upper\n[DEFAULTS]\nencryption_version = 2\nencryption_key = " + hexKey2 + "\n[Encryption1]\npassphrase_file = /secret/pp\ncipher = xchacha20-poly1305\n",
			Encryption{Version: 2, Cipher: "aes-256-gcm", Keys: []Key{
				{1, "xchacha20-poly1305", nil, []byte("pass phrase"), "[Encryption1] passphrase_file " + pf},
				{2, "aes-256-gcm", key2, nil, "encryption_key in [DEFAULTS]"},
				{3, "aes-256-gcm", key3, nil, "[Encryption3] key_file " + filepath.Clean("/secret/k-upper")},
			}}},
		{"large section numbers", "[Encryption65535]\nkey = " + hexKey1 + "\n[Encryption10]\npassphrase: x\n",
			Encryption{Keys: []Key{{10, "aes-256-gcm", nil, []byte("x"), "[Encryption10] passphrase"}, {65535, "aes-256-gcm", key1, nil, "[Encryption65535] key"}}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse(testName, []byte(required+tt.in))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			w := want()
			w.Encryption = tt.want
			if !reflect.DeepEqual(c, w) {
				t.Errorf("got\n%#v\nwant\n%#v", c.Encryption, w.Encryption)
			}
			if c.Warnings != nil {
				t.Errorf("warnings %q", c.Warnings)
			}
			checkParsed(t, c)
		})
	}
}

// encryptionErrorTests are complete files, checked like errorTests.
var encryptionErrorTests = []struct {
	name     string
	in       string
	line     int
	key      string
	contains []string
}{
	// encryption_version
	{"version negative", "[DEFAULTS]\nencryption_version = -1\n" + required, 2, "encryption_version", []string{"too small"}},
	{"version word", "[DEFAULTS]\nencryption_version = one\n" + required, 2, "encryption_version", []string{"not an integer"}},
	{"version too big", "[DEFAULTS]\nencryption_version = 65536\n" + required, 2, "encryption_version", []string{`"65536" is out of range`, "0, unencrypted, to 65535"}},
	{"version overflow", "[DEFAULTS]\nencryption_version = 99999999999999999999\n" + required, 2, "encryption_version", []string{"out of range", "0, unencrypted, to 65535"}},
	{"version duplicate", "[DEFAULTS]\nencryption_version = 1\nencryption_version = 2\n" + required, 3, "encryption_version", []string{"duplicate key", "line 2"}},
	{"version without key", "[DEFAULTS]\nencryption_version = 2\n" + required, 2, "encryption_version", []string{
		"no key for encryption version 2", "encryption_key, encryption_key_file, encryption_passphrase or encryption_passphrase_file in [DEFAULTS]",
		"[Encryption2] section with one of key, key_file, passphrase or passphrase_file", "openssl rand -hex 32"}},
	{"version without key, other sections", "[DEFAULTS]\n\nencryption_version = 3\nencryption_cipher = xchacha20-poly1305\n[Encryption1]\nkey = " + hexKey1 + "\n[Encryption4]\nkey = " + hexKey2 + "\n" + required,
		3, "encryption_version", []string{"no key for encryption version 3", "[Encryption3]"}},

	// ciphers
	{"cipher unknown", "[DEFAULTS]\nencryption_cipher = aes-128-gcm\n" + required, 2, "encryption_cipher", []string{`"aes-128-gcm" is not a valid cipher`, "aes-256-gcm, xchacha20-poly1305"}},
	{"cipher case", "[Encryption1]\ncipher = AES-256-GCM\n" + required, 2, "cipher", []string{"[Encryption1]", `"AES-256-GCM"`, "aes-256-gcm, xchacha20-poly1305"}},
	{"cipher none", "[Encryption1]\ncipher = none\nkey = " + hexKey1 + "\n" + required, 2, "cipher", []string{"not a valid cipher"}},
	{"cipher while unencrypted", "[DEFAULTS]\nencryption_cipher = xchacha20-poly1305\n" + required, 2, "encryption_cipher", []string{"encryption_version is 0", "set encryption_version = N"}},
	{"cipher with key in section", "[DEFAULTS]\nencryption_version = 2\nencryption_cipher = xchacha20-poly1305\n[Encryption2]\nkey = " + hexKey1 + "\n" + required,
		3, "encryption_cipher", []string{"[Encryption2] (line 4)", "set cipher = xchacha20-poly1305 there"}},

	// inline keys and passphrases
	{"key short", "[DEFAULTS]\nencryption_version = 1\nencryption_key = abcdef\n" + required, 3, "encryption_key", []string{
		"not a 256-bit key", "exactly 64 hexadecimal digits, got 6 characters", "not shown", "openssl rand -hex 32"}},
	{"key long", "[DEFAULTS]\nencryption_key = " + hexKey1 + "00\n" + required, 2, "encryption_key", []string{"got 66 characters"}},
	{"key not hex", "[DEFAULTS]\nencryption_key = " + hexKey1[:63] + "g\n" + required, 2, "encryption_key", []string{"not all hexadecimal digits"}},
	{"key 0x", "[DEFAULTS]\nencryption_key = 0x" + hexKey1[:62] + "\n" + required, 2, "encryption_key", []string{"not all hexadecimal digits"}},
	{"key non-ASCII", "[DEFAULTS]\nencryption_key = " + hexKey1[:63] + "é\n" + required, 2, "encryption_key", []string{"not all hexadecimal digits"}},
	{"key empty", "[DEFAULTS]\nencryption_key =\n" + required, 2, "encryption_key", []string{"got 0 characters"}},
	{"key inline comment", "[DEFAULTS]\nencryption_key = " + hexKey1 + " # k1\n" + required, 2, "encryption_key", []string{"got 69 characters", "inline comments are not supported"}},
	{"section key short", "[Encryption5]\nkey = 1234\n" + required, 2, "key", []string{"[Encryption5]", "got 4 characters"}},
	{"passphrase empty", "[DEFAULTS]\nencryption_passphrase = \t\n" + required, 2, "encryption_passphrase", []string{"empty value", "trimmed"}},
	{"section passphrase empty", "[Encryption1]\npassphrase =\n" + required, 2, "passphrase", []string{"[Encryption1]", "empty value"}},
	{"key file empty", "[DEFAULTS]\nencryption_key_file =\n" + required, 2, "encryption_key_file", []string{"empty value", "path of a file"}},
	{"passphrase file empty", "[Encryption1]\npassphrase_file =\n" + required, 2, "passphrase_file", []string{"empty value"}},
	{"key file nul", "[DEFAULTS]\nencryption_key_file = /a\x00b\n" + required, 2, "encryption_key_file", []string{"NUL"}},
	{"key file tilde user", "[DEFAULTS]\nencryption_key_file = ~root/k\n" + required, 2, "encryption_key_file", []string{"~user"}},

	// one key per version
	{"two keys in DEFAULTS", "[DEFAULTS]\nencryption_version = 1\nencryption_key = " + hexKey1 + "\nencryption_passphrase = p\n" + required, 4, "encryption_passphrase", []string{
		"encryption_key is already set on line 3", "at most one of encryption_key, encryption_key_file, encryption_passphrase or encryption_passphrase_file"}},
	{"two keys in DEFAULTS, bad second", "[DEFAULTS]\nencryption_passphrase = p\nencryption_key = x\n" + required, 3, "encryption_key", []string{"encryption_passphrase is already set on line 2"}},
	{"key twice in DEFAULTS", "[DEFAULTS]\nencryption_key = " + hexKey1 + "\nENCRYPTION_KEY = " + hexKey2 + "\n" + required, 3, "encryption_key", []string{"duplicate key", "line 2"}},
	{"two keys in section", "[Encryption1]\nkey = " + hexKey1 + "\npassphrase = p\n" + required, 3, "passphrase", []string{"[Encryption1]", "key is already set on line 2", "exactly one of key, key_file, passphrase or passphrase_file"}},
	{"section without key", "[Encryption1]\nkey = " + hexKey1 + "\n[Encryption2]\ncipher = aes-256-gcm\n" + required, 3, "", []string{"[Encryption2] no key", "exactly one of key, key_file, passphrase or passphrase_file", "openssl rand -hex 32"}},
	{"empty section", "[DEFAULTS]\nencryption_version = 1\n[Encryption1]\n" + required, 3, "", []string{"[Encryption1] no key"}},
	{"passphrase file missing", "[DEFAULTS]\nencryption_version = 2\nencryption_passphrase_file = /nonexistent/backy-pp\n" + required, 3, "encryption_passphrase_file", []string{"cannot read"}},
	{"conflict", "[DEFAULTS]\nencryption_version = 2\nencryption_key = " + hexKey1 + "\n[Encryption1]\nkey = " + hexKey1 + "\n[Encryption2]\npassphrase = p\n" + required,
		6, "", []string{"[Encryption2] encryption version 2 has a key both in this section and in [DEFAULTS] (encryption_key on line 3)", "keep only one"}},
	{"conflict section first", "[Encryption2]\npassphrase = p\n[DEFAULTS]\nencryption_passphrase = q\nencryption_version = 2\n" + required,
		1, "", []string{"both in this section and in [DEFAULTS] (encryption_passphrase on line 4)"}},

	// key material while unencrypted
	{"key with version 0", "[DEFAULTS]\nencryption_key = " + hexKey1 + "\n" + required, 2, "encryption_key", []string{"encryption_version is 0", "set encryption_version = N"}},
	{"passphrase with version 0", "[DEFAULTS]\nencryption_version = 0\nencryption_passphrase = p\n" + required, 3, "encryption_passphrase", []string{"encryption_version is 0", "set encryption_version"}},
	{"material and cipher with version 0", "[DEFAULTS]\nencryption_cipher = aes-256-gcm\nencryption_passphrase = p\n" + required, 3, "encryption_passphrase", []string{"encryption_version is 0"}},

	// sections
	{"section 0", "[Encryption0]\n" + required, 1, "", []string{`invalid encryption section "[Encryption0]"`, "version 0 means unencrypted", "[EncryptionN] with N an encryption version from 1 to 65535"}},
	{"section 00", "[Encryption00]\n" + required, 1, "", []string{"version 0 means unencrypted"}},
	{"section leading zero", "[Encryption01]\n" + required, 1, "", []string{`"[Encryption01]"`, "leading zeros", "did you mean [Encryption1]?"}},
	{"section too big", "[Encryption65536]\n" + required, 1, "", []string{"out of range", "1 to 65535"}},
	{"section overflow", "[Encryption99999999999999999999]\n" + required, 1, "", []string{"out of range"}},
	{"section letters", "[EncryptionX]\n" + required, 1, "", []string{`invalid encryption section "[EncryptionX]"`, "e.g. [Encryption1]"}},
	{"section no number", "[Encryption]\n" + required, 1, "", []string{`"[Encryption]": has no encryption version`}},
	{"section negative", "[Encryption-1]\n" + required, 1, "", []string{"invalid encryption section"}},
	{"section plus", "[Encryption+1]\n" + required, 1, "", []string{"invalid encryption section"}},
	{"section suffix", "[Encryption1a]\n" + required, 1, "", []string{"invalid encryption section"}},
	{"section lower case", "[encryption1]\n" + required, 1, "", []string{"case-sensitive", "did you mean [Encryption1]?"}},
	{"section upper case", "[ENCRYPTION12]\n" + required, 1, "", []string{"did you mean [Encryption12]?"}},
	{"section space", "[Encryption 1]\n" + required, 1, "", []string{"did you mean [Encryption1]?"}},
	{"section duplicate", "[Encryption1]\nkey = " + hexKey1 + "\n[Encryption1]\n" + required, 3, "", []string{"duplicate section [Encryption1]", "line 1"}},
	{"section unknown key", "[Encryption1]\nversion = 1\n" + required, 2, "version", []string{"[Encryption1]", "unknown key", "cipher, key, key_file, passphrase, passphrase_file"}},
	{"DEFAULTS key in section", "[Encryption1]\nencryption_key = " + hexKey1 + "\n" + required, 2, "encryption_key", []string{"[Encryption1]", "unknown key"}},
	{"section key in DEFAULTS", "[DEFAULTS]\nkey = " + hexKey1 + "\n" + required, 2, "key", []string{"[DEFAULTS]", "unknown key", "encryption_version", "encryption_passphrase_file"}},
	{"encryption key in MetaBackend", "[MetaBackend]\npath = /m\nencryption_version = 1\n[DataBackend]\npath = /d\n", 3, "encryption_version", []string{"[MetaBackend]", "unknown key"}},
	{"passphrase line without separator", "[DEFAULTS]\nencryption_passphrase hunter2\n" + required, 2, "", []string{`a line starting with "encryption_passphrase" (the rest is not shown)`, "neither", "expected encryption_passphrase = <value>"}},
}

func TestEncryptionErrors(t *testing.T) {
	for _, tt := range encryptionErrorTests {
		t.Run(tt.name, func(t *testing.T) {
			checkParseError(t, tt.in, tt.line, tt.key, tt.contains)
		})
	}
}

// TestEncryptionFiles reads real key and passphrase files.
func TestEncryptionFiles(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "etc", "backy.cfg")
	write := func(name, content string, mode fs.FileMode) string {
		t.Helper()
		p := filepath.Join(dir, name)
		writeFile(t, p, content)
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	key1 := unhex(t, hexKey1)
	k600 := write("k600", hexKey1+"\n", 0o600)
	k400 := write("k400", "  "+hexKey1, 0o400)
	k640 := write("k640", hexKey1+"\n", 0o640)
	k604 := write("k604", hexKey1+"\n", 0o604)
	p600 := write("p600", "pass\r\n", 0o600)
	p644 := write("p644", "pass\n", 0o644)
	rel := write(filepath.Join("etc", "keys", "rel.key"), hexKey1, 0o600)
	short := write("short", hexKey1[:63]+"\n", 0o600)
	raw := write("raw", string(key1), 0o600)
	empty := write("empty", "", 0o600)
	emptyPass := write("empty-pass", "\r\n", 0o600)
	big := write("big", strings.Repeat("p", maxSecretFileSize+1), 0o600)
	bigOK := write("big-ok", strings.Repeat("p", maxSecretFileSize-1)+"\n", 0o600)
	missing := filepath.Join(dir, "missing")
	subdir := filepath.Join(dir, "subdir")
	if err := os.Mkdir(subdir, 0o700); err != nil {
		t.Fatal(err)
	}
	noPerms := runtime.GOOS == "windows"

	for _, tt := range []struct {
		name    string
		in      string // DEFAULTS and Encryption sections
		key     []byte
		pass    []byte
		origin  string
		warning []string // substrings of the one warning expected, if any
		err     []string // substrings of the error
	}{
		{name: "key file 0600", in: "encryption_key_file = " + k600, key: key1, origin: "encryption_key_file " + k600},
		{name: "key file 0400", in: "encryption_key_file = " + k400, key: key1, origin: "encryption_key_file " + k400},
		{name: "key file relative", in: "encryption_key_file = keys/rel.key", key: key1, origin: "encryption_key_file " + rel},
		{name: "key file group readable", in: "encryption_key_file = " + k640, key: key1, origin: "encryption_key_file " + k640,
			warning: []string{"backy.cfg:3: [DEFAULTS] encryption_key_file: \"" + k640 + "\" is readable by group or others (mode 0640", "chmod 600 " + k640}},
		{name: "key file others readable", in: "encryption_key_file = " + k604, key: key1, origin: "encryption_key_file " + k604,
			warning: []string{"(mode 0604"}},
		{name: "passphrase file 0600", in: "encryption_passphrase_file = " + p600, pass: []byte("pass"), origin: "encryption_passphrase_file " + p600},
		{name: "passphrase file 0644", in: "encryption_passphrase_file = " + p644, pass: []byte("pass"), origin: "encryption_passphrase_file " + p644,
			warning: []string{"encryption_passphrase_file: \"" + p644 + "\" is readable by group or others (mode 0644"}},
		{name: "passphrase file at the size limit", in: "encryption_passphrase_file = " + bigOK, pass: []byte(strings.Repeat("p", maxSecretFileSize-1)), origin: "encryption_passphrase_file " + bigOK},
		{name: "section key file warning", in: "[Encryption1]\nkey_file = " + k640, key: key1, origin: "[Encryption1] key_file " + k640,
			warning: []string{"backy.cfg:4: [Encryption1] key_file: \"" + k640 + "\" is readable"}},
		{name: "section passphrase file", in: "[Encryption1]\npassphrase_file = " + p600, pass: []byte("pass"), origin: "[Encryption1] passphrase_file " + p600},

		{name: "short key file", in: "encryption_key_file = " + short, err: []string{"backy.cfg:3: [DEFAULTS] encryption_key_file: ",
			"\"" + short + "\" does not hold a 256-bit key", "exactly 64 hexadecimal digits", "got 63 characters", "openssl rand -hex 32 > " + short}},
		{name: "raw key file", in: "encryption_key_file = " + raw, err: []string{"does not hold a 256-bit key"}},
		{name: "empty key file", in: "encryption_key_file = " + empty, err: []string{"got 0 characters"}},
		{name: "passphrase file as key file", in: "encryption_key_file = " + p600, err: []string{"got 4 characters"}},
		{name: "empty passphrase file", in: "[Encryption1]\npassphrase_file = " + empty, err: []string{"[Encryption1] passphrase_file: \"" + empty + "\" holds no passphrase"}},
		{name: "newline-only passphrase file", in: "encryption_passphrase_file = " + emptyPass, err: []string{"holds no passphrase", "one trailing newline is ignored"}},
		{name: "big passphrase file", in: "encryption_passphrase_file = " + big, err: []string{"is larger than 65536 bytes"}},
		{name: "big key file", in: "encryption_key_file = " + big, err: []string{"is larger than 65536 bytes", "64 hexadecimal digits"}},
		{name: "missing key file", in: "encryption_key_file = " + missing, err: []string{"backy.cfg:3: [DEFAULTS] encryption_key_file: cannot read \"" + missing + "\": ",
			"expected a readable file holding a 256-bit key"}},
		{name: "missing passphrase file", in: "[Encryption9]\npassphrase_file = " + missing, err: []string{"[Encryption9] passphrase_file: cannot read", "holding a passphrase"}},
		{name: "directory", in: "encryption_key_file = " + subdir, err: []string{"cannot read", "is a directory"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			in := "[DEFAULTS]\nencryption_version = 1\n" + tt.in + "\n" + required
			writeFile(t, cfg, in)
			c, err := Load(cfg)
			if tt.err != nil {
				if err == nil {
					t.Fatalf("Load succeeded: %+v", c)
				}
				if !errors.Is(err, ErrInvalid) || c != nil {
					t.Errorf("got %v, %v; want an ErrInvalid error", c, err)
				}
				for _, s := range tt.err {
					if !strings.Contains(err.Error(), strings.ReplaceAll(s, "backy.cfg", cfg)) {
						t.Errorf("error %q does not contain %q", err, s)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			w := Encryption{Version: 1, Cipher: "aes-256-gcm", Keys: []Key{{1, "aes-256-gcm", tt.key, tt.pass, tt.origin}}}
			if !reflect.DeepEqual(c.Encryption, w) {
				t.Errorf("got %#v, want %#v", c.Encryption, w)
			}
			if noPerms {
				return
			}
			if tt.warning == nil {
				if c.Warnings != nil {
					t.Errorf("warnings %q", c.Warnings)
				}
				return
			}
			if len(c.Warnings) != 1 {
				t.Fatalf("warnings %q, want one", c.Warnings)
			}
			for _, s := range tt.warning {
				if !strings.Contains(c.Warnings[0], strings.ReplaceAll(s, "backy.cfg", cfg)) || strings.ContainsAny(c.Warnings[0], "\r\n") {
					t.Errorf("warning %q does not contain %q", c.Warnings[0], s)
				}
			}
		})
	}

	t.Run("unreadable", func(t *testing.T) {
		if noPerms {
			t.Skip("no permission bits")
		}
		if unprivileged.Run(t) { // root reads every file
			return
		}
		p := write("k000", hexKey1, 0)
		writeFile(t, cfg, "[DEFAULTS]\nencryption_version = 1\nencryption_key_file = "+p+"\n"+required)
		_, err := Load(cfg)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "encryption_key_file: cannot read \""+p+"\": permission denied") {
			t.Errorf("got %v", err)
		}
	})
}

// TestLoadInlineSecretWarning: Load warns about a key or passphrase in a
// configuration file that others can read.
func TestLoadInlineSecretWarning(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no permission bits")
	}
	dir := t.TempDir()
	kf := filepath.Join(dir, "k")
	writeFile(t, kf, hexKey1)
	if err := os.Chmod(kf, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		in   string
		mode fs.FileMode
		warn string
	}{
		{"inline key 0644", "[DEFAULTS]\nencryption_version = 1\nencryption_key = " + hexKey1 + "\n", 0o644,
			"backy.cfg:3: [DEFAULTS] encryption_key: the secret is written in the configuration file, which is readable by group or others (mode 0644"},
		{"inline passphrase in section 0640", "[DEFAULTS]\n[Encryption4]\npassphrase = x\n", 0o640,
			"backy.cfg:3: [Encryption4] passphrase: the secret is written in the configuration file"},
		{"inline key 0600", "[DEFAULTS]\nencryption_version = 1\nencryption_key = " + hexKey1 + "\n", 0o600, ""},
		{"key file 0644", "[DEFAULTS]\nencryption_version = 1\nencryption_key_file = " + kf + "\n", 0o644, ""},
		{"no keys 0644", "[DEFAULTS]\n", 0o644, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := filepath.Join(dir, "backy.cfg")
			writeFile(t, cfg, tt.in+required)
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
			if len(c.Warnings) != 1 || !strings.HasPrefix(c.Warnings[0], w) || !strings.Contains(c.Warnings[0], "chmod 600 "+cfg) {
				t.Errorf("warnings %q, want one starting with %q", c.Warnings, w)
			}
			// Parse alone does not know the file's mode.
			if c, err := Parse(cfg, []byte(tt.in+required)); err != nil {
				t.Errorf("Parse: %v", err)
			} else if c.Warnings != nil {
				t.Errorf("Parse: warnings %q", c.Warnings)
			}
		})
	}
}

// TestEncryptionRoundTrip writes a configuration with [DEFAULTS]
// encryption_version 3 and the keys of versions 1 and 2 in sections, with
// key and passphrase files next to it, and loads it.
func TestEncryptionRoundTrip(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "etc", "backy.cfg")
	secret := func(name, content string) string {
		p := filepath.Join(dir, "etc", "keys", name)
		writeFile(t, p, content)
		if err := os.Chmod(p, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	k3 := secret("backy-3.key", hexKey3+"\n")
	p1 := secret("passphrase-1", "correct horse battery staple\n")
	writeFile(t, cfg, `# rotated twice
[DEFAULTS]
workers = 2
encryption_version = 3
encryption_cipher = xchacha20-poly1305
encryption_key_file = keys/backy-3.key

[MetaBackend]
path = backy.db

[DataBackend]
path = data

[Encryption2]
key = `+hexKey2+`

[Encryption1]
cipher = aes-256-gcm
passphrase_file = keys/passphrase-1
`)
	if err := os.Chmod(cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	w := &Config{
		File:     cfg,
		Defaults: Defaults{BlockSize: 4 << 20, LogLevel: "info", Workers: 2, Compression: "none", CompressionLevel: 1, Timezone: "UTC"},
		Meta:     Meta{Type: "bbolt", Path: filepath.Join(dir, "etc", "backy.db")},
		Data:     Data{Type: "file", Path: filepath.Join(dir, "etc", "data"), SimultaneousWrites: 4, SimultaneousReads: 4},
		Encryption: Encryption{
			Version: 3,
			Cipher:  "xchacha20-poly1305",
			Keys: []Key{
				{Version: 1, Cipher: "aes-256-gcm", Passphrase: []byte("correct horse battery staple"), Origin: "[Encryption1] passphrase_file " + p1},
				{Version: 2, Cipher: "aes-256-gcm", Key: unhex(t, hexKey2), Origin: "[Encryption2] key"},
				{Version: 3, Cipher: "xchacha20-poly1305", Key: unhex(t, hexKey3), Origin: "encryption_key_file " + k3},
			},
		},
		NBD: NBD{Listen: "127.0.0.1:10809", TLS: "off"},
	}
	if !reflect.DeepEqual(c, w) {
		t.Errorf("got\n%#v\nwant\n%#v", c, w)
	}
	checkParsed(t, c)
	for v, origin := range map[uint16]string{1: w.Encryption.Keys[0].Origin, 2: "[Encryption2] key", 3: "encryption_key_file " + k3} {
		k, ok := c.KeyFor(v)
		if !ok || k.Version != v || k.Origin != origin {
			t.Errorf("KeyFor(%d) = %v, %v", v, k, ok)
		}
	}
	for _, v := range []uint16{0, 4, 65535} {
		if k, ok := c.KeyFor(v); ok || !reflect.DeepEqual(k, Key{}) {
			t.Errorf("KeyFor(%d) = %v, %v; want none", v, k, ok)
		}
	}
	if k, ok := Default(dir).KeyFor(1); ok {
		t.Errorf("Default: KeyFor(1) = %v", k)
	}
}

// TestSecretsNotShown: no error message, warning or formatted Key shows
// key material.
func TestSecretsNotShown(t *testing.T) {
	const pass = "Tr0ub4dor&3-horse-staple"
	badHex := "0123456789abcdefXYZW456789abcdef0123456789abcdef0123456789abcdef" // 64, not hex
	dir := t.TempDir()
	badFile := filepath.Join(dir, "bad.key")
	writeFile(t, badFile, badHex+"\n")
	longFile := filepath.Join(dir, "long.key")
	writeFile(t, longFile, hexKey3+hexKey2+"\n")
	for _, tt := range []struct {
		name, in, secret string
	}{
		{"short key", "[DEFAULTS]\nencryption_version = 1\nencryption_key = " + hexKey1[:63] + "\n", hexKey1[:63]},
		{"long key", "[DEFAULTS]\nencryption_version = 1\nencryption_key = " + hexKey1 + "0\n", hexKey1},
		{"non-hex key", "[DEFAULTS]\nencryption_version = 1\nencryption_key = " + badHex + "\n", badHex},
		{"key with comment", "[DEFAULTS]\nencryption_version = 1\nencryption_key = " + hexKey1 + " ; mine\n", hexKey1},
		{"section key", "[Encryption1]\nkey = " + badHex + "\n", badHex},
		{"key with version 0", "[DEFAULTS]\nencryption_key = " + hexKey1 + "\n", hexKey1},
		{"passphrase with version 0", "[DEFAULTS]\nencryption_passphrase = " + pass + "\n", pass},
		{"passphrase and key", "[DEFAULTS]\nencryption_passphrase = " + pass + "\nencryption_key = " + hexKey2[:10] + pass + "\n", pass},
		{"passphrase twice", "[DEFAULTS]\nencryption_passphrase = " + pass + "\nencryption_passphrase = " + pass + "!\n", pass},
		{"passphrase in wrong section", "[MetaBackend]\npassphrase = " + pass + "\n", pass},
		{"passphrase without separator", "[DEFAULTS]\nencryption_passphrase " + pass + "\n", pass},
		{"key without separator", "[Encryption2]\nKEY " + hexKey1 + "\n", hexKey1},
		{"conflict", "[DEFAULTS]\nencryption_version = 1\nencryption_passphrase = " + pass + "\n[Encryption1]\nkey = " + hexKey1 + "\n", pass},
		{"bad key file", "[DEFAULTS]\nencryption_version = 1\nencryption_key_file = " + badFile + "\n", badHex},
		{"long key file", "[DEFAULTS]\nencryption_version = 1\nencryption_key_file = " + longFile + "\n", hexKey3 + hexKey2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			in := tt.in + required
			if strings.Contains(tt.in, "[MetaBackend]") {
				in = tt.in + "path = /m\n[DataBackend]\npath = /d\n"
			}
			_, err := Parse("backy.cfg", []byte(in))
			if err == nil {
				t.Fatal("Parse succeeded")
			}
			if s := leak(err.Error(), tt.secret); s != "" {
				t.Errorf("message %q shows %q of the secret", err, s)
			}
		})
	}

	// Formatting a Config or a Key leaves the material out.
	c, err := Parse(testName, []byte(required+"[DEFAULTS]\nencryption_version = 1\nencryption_key = "+hexKey1+"\n[Encryption2]\npassphrase = "+pass+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	k1, _ := c.KeyFor(1)
	k2, _ := c.KeyFor(2)
	for _, s := range []string{
		fmt.Sprint(c), fmt.Sprintf("%v %+v %#v %s %q %x", c, c, c, k1, k2, k1), fmt.Sprintf("%+v %#v", *c, *c),
		fmt.Sprint(c.Encryption), fmt.Sprintf("%#v", c.Encryption.Keys),
	} {
		for _, secret := range []string{hexKey1, string(unhex(t, hexKey1)), hex.EncodeToString([]byte(pass)), pass} {
			if l := leak(s, secret); l != "" {
				t.Errorf("%q shows %q", s, l)
			}
		}
	}
	if w := "encryption version 2 (aes-256-gcm, passphrase from [Encryption2] passphrase)"; k2.String() != w {
		t.Errorf("String() = %q, want %q", k2.String(), w)
	}
	if w := "encryption version 1 (aes-256-gcm, key from encryption_key in [DEFAULTS])"; k1.String() != w {
		t.Errorf("String() = %q, want %q", k1.String(), w)
	}
}

// leak returns the first 8-byte piece of secret found in s, or "".
func leak(s, secret string) string {
	const n = 8
	for i := 0; i+n <= len(secret); i++ {
		if strings.Contains(s, secret[i:i+n]) {
			return secret[i : i+n]
		}
	}
	return ""
}

// TestExampleRotation parses the key rotation example of backy.cfg.example
// with its files faked.
func TestExampleRotation(t *testing.T) {
	data, err := os.ReadFile(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	for _, s := range []string{"openssl rand -hex 32", "backy migrate-encryption --all", "argon2id", "\n# [EncryptionN] sections"} {
		if !strings.Contains(text, s) {
			t.Errorf("example does not mention %q", s)
		}
	}
	for _, kd := range encryptionKeys {
		if !strings.Contains(text, "\n#   "+kd.name+" ") {
			t.Errorf("example does not document [EncryptionN] %s", kd.name)
		}
	}
	start := strings.Index(text, "#     [DEFAULTS]\n")
	if start < 0 {
		t.Fatal("example has no rotation example")
	}
	var b strings.Builder
	for _, line := range strings.Split(text[start:], "\n") {
		switch {
		case line == "#":
			b.WriteString("\n")
		case strings.HasPrefix(line, "#     "):
			b.WriteString(line[len("#     "):] + "\n")
		}
	}
	k2, p1 := filepath.Clean("/etc/backy/backy-2.key"), filepath.Clean("/etc/backy/passphrase-1")
	fakeSecretFiles(t, map[string]fakeFile{k2: {hexKey2 + "\n", 0o600}, p1: {"pass\n", 0o400}})
	c, err := Parse(testName, []byte(b.String()+required))
	if err != nil {
		t.Fatalf("rotation example:\n%s\ndoes not parse: %v", b.String(), err)
	}
	w := Encryption{Version: 2, Cipher: "aes-256-gcm", Keys: []Key{
		{1, "aes-256-gcm", nil, []byte("pass"), "[Encryption1] passphrase_file " + p1},
		{2, "aes-256-gcm", unhex(t, hexKey2), nil, "encryption_key_file " + k2},
	}}
	if !reflect.DeepEqual(c.Encryption, w) || c.Warnings != nil {
		t.Errorf("got %#v, warnings %q", c.Encryption, c.Warnings)
	}
}

// TestDecodeHexKey covers the key syntax on its own.
func TestDecodeHexKey(t *testing.T) {
	for _, tt := range []struct {
		in string
		ok bool
	}{
		{hexKey1, true},
		{strings.ToUpper(hexKey2), true},
		{"\t " + hexKey3 + "\r\n\n", true},
		{hexKey1[:62], false},
		{hexKey1 + "0", false},
		{hexKey1[:32] + " " + hexKey1[32:], false},
		{"", false},
		{strings.Repeat("é", 32), false},
		{strings.Repeat("é", 64), false},
		{string(bytes.Repeat([]byte{0xff}, 64)), false},
	} {
		k, problem := decodeHexKey([]byte(tt.in))
		if (problem == "") != tt.ok || (len(k) == 32) != tt.ok {
			t.Errorf("decodeHexKey(%q) = %x, %q", tt.in, k, problem)
		}
		if tt.ok && !bytes.Equal(k, unhex(t, tt.in)) {
			t.Errorf("decodeHexKey(%q) = %x", tt.in, k)
		}
	}
}

func TestEncryptionSectionVersion(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want uint16
		ok   bool
	}{
		{"Encryption1", 1, true},
		{"Encryption9", 9, true},
		{"Encryption10", 10, true},
		{"Encryption65535", 65535, true},
		{"Encryption65536", 0, false},
		{"Encryption0", 0, false},
		{"Encryption01", 0, false},
		{"Encryption", 0, false},
		{"encryption1", 0, false},
		{"Encryption 1", 0, false},
		{"Encryption1 ", 0, false},
		{"Encryption+1", 0, false},
		{"Encryption١", 0, false}, // Arabic-Indic digit one
		{"DEFAULTS", 0, false},
	} {
		got, ok := encryptionSectionVersion(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("encryptionSectionVersion(%q) = %d, %v; want %d, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}
