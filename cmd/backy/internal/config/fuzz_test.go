package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
)

// checkValid reports every validation rule an accepted config breaks.
func checkValid(t *testing.T, c *Config) {
	t.Helper()
	d := c.Defaults
	if d.BlockSize < 64<<10 || d.BlockSize > 64<<20 || d.BlockSize%4096 != 0 {
		t.Errorf("invalid BlockSize %d", d.BlockSize)
	}
	switch d.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		t.Errorf("invalid LogLevel %q", d.LogLevel)
	}
	if d.DisallowRmWhenYoungerThanDays < 0 || d.DisallowRmWhenYoungerThanDays > MaxDisallowRmDays {
		t.Errorf("invalid DisallowRmWhenYoungerThanDays %d", d.DisallowRmWhenYoungerThanDays)
	}
	if d.Workers < 0 || d.Workers > MaxWorkers {
		t.Errorf("invalid Workers %d", d.Workers)
	}
	if c.Meta.Type != "bbolt" {
		t.Errorf("invalid Meta.Type %q", c.Meta.Type)
	}
	switch c.Data.Type {
	case "file":
		if c.Data.Path == "" {
			t.Error("empty Data.Path with type file")
		}
		if !reflect.DeepEqual(c.Data.S3, S3{}) {
			t.Errorf("S3 keys with type file: %v", c.Data.S3)
		}
	case "s3":
		if c.Data.Path != "" {
			t.Errorf("Data.Path %q with type s3", c.Data.Path)
		}
		checkS3(t, c.Data.S3)
	default:
		t.Errorf("invalid Data.Type %q", c.Data.Type)
	}
	if d.CompressionLevel < MinCompressionLevel || d.CompressionLevel > MaxCompressionLevel {
		t.Errorf("invalid CompressionLevel %d", d.CompressionLevel)
	}
	if c.Data.SimultaneousWrites < 1 || c.Data.SimultaneousReads < 1 || c.Data.SimultaneousWrites > MaxSimultaneous || c.Data.SimultaneousReads > MaxSimultaneous {
		t.Errorf("invalid simultaneous writes/reads %d/%d", c.Data.SimultaneousWrites, c.Data.SimultaneousReads)
	}
	if c.Meta.Path == "" {
		t.Error("empty Meta.Path")
	}
	n := c.NBD
	if l, msg := parseListen(n.Listen); msg != "" || l != n.Listen {
		t.Errorf("invalid NBD.Listen %q", n.Listen)
	}
	switch n.TLS {
	case "off", "optional", "required":
	default:
		t.Errorf("invalid NBD.TLS %q", n.TLS)
	}
	if (n.TLSCert == "") != (n.TLSKey == "") || n.TLS != "off" && n.TLSCert == "" || n.TLSClientCA != "" && (n.TLS != "required" || n.TLSCert == "") {
		t.Errorf("invalid NBD TLS settings: %+v", n)
	}
	e := c.Encryption
	last := 0
	for _, k := range e.Keys {
		if int(k.Version) <= last {
			t.Errorf("keys not sorted by version or version 0: %v", e.Keys)
		}
		last = int(k.Version)
		if k.Cipher != "aes-256-gcm" && k.Cipher != "xchacha20-poly1305" {
			t.Errorf("invalid cipher %q", k.Cipher)
		}
		if (k.Key == nil) == (k.Passphrase == nil) || k.Key != nil && len(k.Key) != 32 || k.Passphrase != nil && len(k.Passphrase) == 0 {
			t.Errorf("%v: key %d bytes, passphrase %d bytes", k, len(k.Key), len(k.Passphrase))
		}
		if k.Origin == "" {
			t.Errorf("%v: no origin", k)
		}
		if got, ok := c.KeyFor(k.Version); !ok || !reflect.DeepEqual(got, k) {
			t.Errorf("KeyFor(%d) = %v, %v", k.Version, got, ok)
		}
	}
	if e.Keys != nil && len(e.Keys) == 0 {
		t.Error("Keys is empty, not nil")
	}
	if e.Version == 0 {
		if e.Cipher != "" {
			t.Errorf("cipher %q with encryption version 0", e.Cipher)
		}
	} else if k, ok := c.KeyFor(e.Version); !ok || k.Cipher != e.Cipher {
		t.Errorf("encryption version %d (%s): KeyFor = %v, %v", e.Version, e.Cipher, k, ok)
	}
	for _, w := range c.Warnings {
		if w == "" || strings.ContainsAny(w, "\n\r") {
			t.Errorf("bad warning %q", w)
		}
	}
}

// fuzzNBDFiles is nbdFilesByBase, made once.
var fuzzNBDFiles = sync.OnceValue(nbdFilesByBase)

// fuzzSecretFiles stands in for the key, passphrase and PEM files while
// fuzzing, by base name: the files of nbdFilesByBase are PEM files (e.g.
// nbd.crt, nbd.key), key* is a key file, wkey* one readable by others,
// pass* a passphrase file, bad* a file that is neither, anything else does
// not exist.
func fuzzSecretFiles(path string, limit int64) ([]byte, fs.FileMode, error) {
	base := filepath.Base(path)
	if f, ok := fuzzNBDFiles()[base]; ok {
		data := []byte(f.data)
		if int64(len(data)) > limit+1 {
			data = data[:limit+1]
		}
		return data, f.mode, nil
	}
	switch {
	case strings.HasPrefix(base, "key"):
		return []byte(hexKey1 + "\n"), 0o600, nil
	case strings.HasPrefix(base, "wkey"):
		return []byte(hexKey2), 0o644, nil
	case strings.HasPrefix(base, "pass"):
		return []byte("file passphrase\n"), 0o400, nil
	case strings.HasPrefix(base, "bad"):
		return []byte("not a key\n"), 0o600, nil
	}
	return nil, 0, &fs.PathError{Op: "open", Path: path, Err: fs.ErrNotExist}
}

// maskSecrets returns in with every character of the values of the keys
// holding secrets (encryption_key, encryption_passphrase, key, passphrase,
// secret_access_key, session_token)
// replaced by another of the same class: another hexadecimal digit for a
// hexadecimal digit, another letter for a letter, the same character for
// anything else. Also the rest of a line without separator that starts with
// such a key. Parsing the result must give the same messages: messages do
// not depend on secrets.
func maskSecrets(in string) string {
	lines := strings.Split(in, "\n")
	for i, line := range lines {
		s := line
		if i == 0 {
			s = strings.TrimPrefix(s, "\uFEFF")
		}
		trimmed := strings.TrimSpace(s)
		start := -1
		if j := strings.IndexAny(trimmed, "=:"); j >= 0 {
			switch strings.ToLower(strings.TrimSpace(trimmed[:j])) {
			case "encryption_key", "encryption_passphrase", "key", "passphrase", "secret_access_key", "session_token":
				start = j + 1
			}
		} else if name, ok := secretKeyPrefix(trimmed); ok {
			start = len(name)
		}
		if start < 0 || trimmed == "" || trimmed[0] == '#' || trimmed[0] == ';' || trimmed[0] == '[' {
			continue
		}
		// trimmed is line without its leading and trailing blanks (and
		// BOM); mask from its start + start on.
		b := []byte(line)
		for j := strings.Index(line, trimmed) + start; j < len(b); j++ {
			b[j] = maskByte(b[j])
		}
		lines[i] = string(b)
	}
	return strings.Join(lines, "\n")
}

func maskByte(c byte) byte {
	rot := func(c, lo, n byte) byte { return lo + (c-lo+1)%n }
	switch {
	case c >= '0' && c <= '9':
		return rot(c, '0', 10)
	case c >= 'a' && c <= 'f':
		return rot(c, 'a', 6)
	case c >= 'A' && c <= 'F':
		return rot(c, 'A', 6)
	case c >= 'g' && c <= 'z':
		return rot(c, 'g', 20)
	case c >= 'G' && c <= 'Z':
		return rot(c, 'G', 20)
	}
	return c
}

// checkParsed checks the rules that hold for configs read from a file on
// top of checkValid: all paths absolute and clean.
func checkParsed(t *testing.T, c *Config) {
	t.Helper()
	checkValid(t, c)
	paths := []string{c.Meta.Path, c.File}
	if c.Data.Type == "file" {
		paths = append(paths, c.Data.Path)
	}
	if c.Defaults.LogFile != "" {
		paths = append(paths, c.Defaults.LogFile)
	}
	for _, p := range []string{c.NBD.TLSCert, c.NBD.TLSKey, c.NBD.TLSClientCA} {
		if p != "" {
			paths = append(paths, p)
		}
	}
	for _, p := range paths {
		if !filepath.IsAbs(p) || filepath.Clean(p) != p || strings.IndexByte(p, 0) >= 0 {
			t.Errorf("path %q is not absolute and clean", p)
		}
	}
}

func FuzzParse(f *testing.F) {
	if data, err := os.ReadFile(examplePath); err == nil {
		f.Add(string(data))
	} else {
		f.Fatal(err)
	}
	f.Add(required)
	for _, tt := range validTests {
		f.Add(fullInput(tt.in))
	}
	for _, tt := range errorTests {
		f.Add(tt.in)
	}
	for _, tt := range encryptionErrorTests {
		f.Add(tt.in)
	}
	for _, tt := range s3ValidTests {
		f.Add(s3Input(tt.in))
	}
	for _, tt := range s3ErrorTests {
		f.Add(tt.in)
	}
	for _, tt := range nbdValidTests {
		f.Add(nbdInput(tt.in))
	}
	for _, tt := range nbdErrorTests {
		f.Add(tt.in)
	}
	for _, in := range []string{
		"[DEFAULTS]\nencryption_version = 3\nencryption_cipher = xchacha20-poly1305\nencryption_key_file = /k/key3\n[Encryption1]\npassphrase = p1\n[Encryption2]\ncipher = aes-256-gcm\nkey = " + hexKey2 + "\n",
		"[DEFAULTS]\nencryption_version = 1\nencryption_passphrase_file = pass\n[Encryption2]\nkey_file = ~/wkey\n",
		"[DEFAULTS]\nencryption_version = 2\n[Encryption2]\npassphrase_file = /p/passphrase\n[Encryption65535]\nkey_file = bad\n",
		"[Encryption7]\nkey = " + hexKey3 + "\n[Encryption8]\npassphrase: a=b\n",
		"[DEFAULTS]\nencryption_version = 9\nencryption_key = " + hexKey1 + "\n",
		"[DEFAULTS]\nencryption_passphrase hunter2\n",
		"[encryption1]\n[Encryption01]\n",
	} {
		f.Add(required + in)
	}
	for _, in := range []string{
		"[DataBackend]\ntype = s3\nbucket = backy\nprefix = /a/b/\nendpoint = http://127.0.0.1:7070\naccess_key_id_file = key-id\nsecret_access_key_file = pass-secret\nsession_token_file = wkey-token\n",
		"[DataBackend]\nbucket = b.b-1\nsecret_access_key = s3cr3t/Key+x\naccess_key_id = AKID\nsession_token: tok=en\ntype = s3\npath_style = OFF\n",
		"[DataBackend]\ntype = s3\nbucket = backy\nprofile = backup\nregion = eu-central-1\nstorage_class = STANDARD_IA\nbandwidth_read = 50MiB\nbandwidth_write = 65536\n",
		"[DataBackend]\ntype = s3\nbucket = backy\nconnect_timeout = 30\nrequest_timeout = 1m30s\nmax_attempts = 100\nsimultaneous_reads = 64\n",
		"[DataBackend]\ntype = s3\nbucket = backy\nendpoint = https://u:p@s3.example.com/\n",
		"[DataBackend]\ntype = s3\nbucket = backy\nsecret_access_key hunter2\n",
		"[DataBackend]\ntype = s3\nbucket = backy\nsecret_access_key_file = bad\naccess_key_id_file = missing\n",
		"[DataBackend]\npath = /d\nbucket = backy\n",
	} {
		f.Add("[MetaBackend]\npath = /m/backy.db\n" + in)
	}
	for _, in := range []string{
		"listen = [::1]:10809\ntls_cert = tls/nbd-chain.crt\ntls_key = nbd-0640.key\ntls_client_ca = clients2.pem\n",
		"tls_cert = nbd-bundle.pem\ntls_key = nbd-bundle.pem\ntls = off\n",
		"tls = required\ntls_key = ~/nbd.key\ntls_cert = ~/nbd.crt\n",
		"tls_cert = expired.crt\ntls_key = expired.key\nlisten = backup.example.com:010809\n",
		"tls_cert = nbd.crt\ntls_key = other.key\n",
		"tls_cert = nbd.crt\ntls_key = nbd-0644.key\ntls_client_ca = clients-key.pem\n",
	} {
		f.Add(nbdInput(in))
	}
	old := readSecretFile
	readSecretFile = fuzzSecretFiles
	f.Cleanup(func() { readSecretFile = old })
	f.Fuzz(func(t *testing.T, in string) {
		c, err := Parse("backy.cfg", []byte(in))
		// Messages and warnings do not depend on secrets.
		if masked := maskSecrets(in); masked != in {
			mc, merr := Parse("backy.cfg", []byte(masked))
			switch {
			case (err == nil) != (merr == nil):
				t.Errorf("masking secrets changed the error %v to %v", err, merr)
			case err != nil && err.Error() != merr.Error():
				t.Errorf("message depends on a secret:\n%s\n%s", err, merr)
			case err == nil && !reflect.DeepEqual(c.Warnings, mc.Warnings):
				t.Errorf("warnings depend on a secret:\n%q\n%q", c.Warnings, mc.Warnings)
			}
		}
		if err != nil {
			if c != nil {
				t.Errorf("config %+v returned with error %v", c, err)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %q does not wrap ErrInvalid", err)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "backy.cfg:") || strings.ContainsAny(msg, "\n\r") {
				t.Errorf("bad message %q", msg)
			}
			return
		}
		checkParsed(t, c)
		// Parsing is deterministic.
		c2, err := Parse("backy.cfg", []byte(in))
		if err != nil || !reflect.DeepEqual(c2, c) {
			t.Errorf("second parse differs: %+v, %v", c2, err)
		}
	})
}
