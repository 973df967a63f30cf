package config

import (
	"cmp"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Encryption holds the encryption keys of a configuration: the encryption
// version new blocks are written with and the key of every version the
// configuration knows.
type Encryption struct {
	// Version is the encryption version new blocks are written with
	// ([DEFAULTS] encryption_version); 0, the default, writes them
	// unencrypted. If Version > 0, Keys holds its key.
	Version uint16
	// Cipher is the cipher of Version, "aes-256-gcm" or
	// "xchacha20-poly1305"; "" if Version is 0.
	Cipher string
	// Keys holds one key per encryption version, sorted by Version: the key
	// of Version (if > 0) and the keys of older (or newer) versions, kept
	// so that blocks written with them can be read. Nil if there are none.
	Keys []Key
}

// Key is the key material of one encryption version. Exactly one of Key and
// Passphrase is set. Its String and GoString methods leave the material out,
// so a Key can be logged.
type Key struct {
	// Version is the encryption version, >= 1.
	Version uint16
	// Cipher is "aes-256-gcm" or "xchacha20-poly1305".
	Cipher string
	// Key is the raw 256-bit key (32 bytes), or nil.
	Key []byte
	// Passphrase is a non-empty passphrase, or nil. The key is derived from
	// it with the KDF (argon2id) whose salt and parameters the store
	// records for the version.
	Passphrase []byte
	// Origin names where the material came from, for messages, without
	// revealing it: "encryption_key in [DEFAULTS]",
	// "encryption_passphrase_file /etc/backy.pass", "[Encryption1] key",
	// "[Encryption1] key_file /etc/backy-1.key", ...
	Origin string
}

// String describes k without its key material.
func (k Key) String() string {
	kind := "key"
	if k.Key == nil {
		kind = "passphrase"
	}
	return fmt.Sprintf("encryption version %d (%s, %s from %s)", k.Version, k.Cipher, kind, k.Origin)
}

// GoString is String, so that %#v does not print the key material either.
func (k Key) GoString() string { return "config.Key{" + k.String() + "}" }

// KeyFor returns the key of encryption version v and whether the
// configuration has one. The returned Key shares its byte slices with c.
func (c *Config) KeyFor(v uint16) (Key, bool) {
	i, ok := slices.BinarySearchFunc(c.Encryption.Keys, v, func(k Key, v uint16) int { return cmp.Compare(k.Version, v) })
	if !ok {
		return Key{}, false
	}
	return c.Encryption.Keys[i], true
}

const (
	// sectionEncryption is the prefix of the [Encryption<N>] sections.
	sectionEncryption = "Encryption"

	cipherAES256GCM         = "aes-256-gcm"
	cipherXChaCha20Poly1305 = "xchacha20-poly1305"
	defaultCipher           = cipherAES256GCM

	// keyHexLen is the length of a key written in hexadecimal.
	keyHexLen = 64
	// maxSecretFileSize bounds what is read of a key or passphrase file.
	maxSecretFileSize = 64 << 10

	generateKey = "generate a key with: openssl rand -hex 32"
)

var ciphers = []string{cipherAES256GCM, cipherXChaCha20Poly1305}

// The names of the key material keys, as written in an [Encryption<N>]
// section; in [DEFAULTS] they are prefixed with "encryption_".
const (
	matKey            = "key"
	matKeyFile        = "key_file"
	matPassphrase     = "passphrase"
	matPassphraseFile = "passphrase_file"
)

// encryptionKeys are the keys of every [Encryption<N>] section.
var encryptionKeys = []keyDef{
	{name: "cipher", set: func(p *parser, v string) string {
		s, msg := oneOf(v, "cipher", ciphers...)
		p.curEnc.cipher = s
		return msg
	}},
	{name: matKey, set: materialSetter(matKey)},
	{name: matKeyFile, set: materialSetter(matKeyFile)},
	{name: matPassphrase, set: materialSetter(matPassphrase)},
	{name: matPassphraseFile, set: materialSetter(matPassphraseFile)},
}

// encryptionDefaultsKeys are the encryption keys of [DEFAULTS].
var encryptionDefaultsKeys = []keyDef{
	{name: "encryption_version", set: func(p *parser, v string) string {
		n, msg := parseInt(v, 0)
		if msg == "" && n > math.MaxUint16 || strings.HasPrefix(msg, quote(v)+" is out of range") {
			msg = fmt.Sprintf("%s is out of range (expected an encryption version from 0, unencrypted, to 65535)", quote(v))
		}
		if msg != "" {
			return msg
		}
		p.cfg.Encryption.Version = uint16(n)
		return ""
	}},
	{name: "encryption_cipher", set: func(p *parser, v string) string {
		s, msg := oneOf(v, "cipher", ciphers...)
		p.defCipher = s
		return msg
	}},
	{name: "encryption_" + matKey, set: materialSetter(matKey)},
	{name: "encryption_" + matKeyFile, set: materialSetter(matKeyFile)},
	{name: "encryption_" + matPassphrase, set: materialSetter(matPassphrase)},
	{name: "encryption_" + matPassphraseFile, set: materialSetter(matPassphraseFile)},
}

// materialList returns "key, key_file, passphrase or passphrase_file", each
// name prefixed with prefix.
func materialList(prefix string) string {
	return prefix + matKey + ", " + prefix + matKeyFile + ", " + prefix + matPassphrase + " or " + prefix + matPassphraseFile
}

// encSection is one [Encryption<N>] section being parsed.
type encSection struct {
	version uint16
	line    int // of the header
	cipher  string
	mat     *material
}

func (s *encSection) name() string { return sectionEncryption + strconv.Itoa(int(s.version)) }

// material is the key material set by one key.
type material struct {
	key    string // the config key that set it, e.g. "encryption_key_file"
	line   int
	raw    []byte // the 32-byte key, or nil
	pass   []byte // the passphrase, or nil
	origin string
}

// encryptionSectionVersion reports whether name is a valid encryption
// section name, "Encryption<N>" with N in 1..65535 written without leading
// zeros, and returns N.
func encryptionSectionVersion(name string) (uint16, bool) {
	v, msg := parseEncryptionSection(name)
	return v, msg == "" && v > 0
}

// parseEncryptionSection parses a section name starting with "Encryption"
// and returns its version or the problem.
func parseEncryptionSection(name string) (uint16, string) {
	rest, ok := strings.CutPrefix(name, sectionEncryption)
	if !ok {
		return 0, "not an encryption section"
	}
	const expected = "expected [EncryptionN] with N an encryption version from 1 to 65535, e.g. [Encryption1]"
	if rest == "" {
		return 0, "has no encryption version (" + expected + ")"
	}
	for i := 0; i < len(rest); i++ {
		if rest[i] < '0' || rest[i] > '9' {
			return 0, "is not an encryption section name (" + expected + ")"
		}
	}
	if strings.TrimLeft(rest, "0") == "" {
		return 0, "encryption version 0 means unencrypted and has no key (" + expected + ")"
	}
	if rest[0] == '0' {
		return 0, fmt.Sprintf("leading zeros are not allowed (did you mean [%s%s]?)", sectionEncryption, strings.TrimLeft(rest, "0"))
	}
	n, err := strconv.ParseUint(rest, 10, 16)
	if err != nil || n == 0 {
		return 0, "encryption version out of range (" + expected + ")"
	}
	return uint16(n), ""
}

// materialSetter returns the set function of the material key name (as
// written in an [Encryption<N>] section) for [DEFAULTS] and for
// [Encryption<N>] sections.
func materialSetter(name string) func(p *parser, v string) string {
	return func(p *parser, v string) string { return p.setMaterial(name, v) }
}

// setMaterial stores the key material of the key name (without the
// "encryption_" prefix) in the current section.
func (p *parser) setMaterial(name, v string) string {
	cfgKey, where, slot := name, "", &p.defMat
	if p.curEnc != nil {
		where = "[" + p.curEnc.name() + "] "
		slot = &p.curEnc.mat
	} else {
		cfgKey = "encryption_" + name
	}
	if m := *slot; m != nil {
		if p.curEnc != nil {
			return fmt.Sprintf("%s is already set on line %d (each [EncryptionN] section holds exactly one of %s)", m.key, m.line, materialList(""))
		}
		return fmt.Sprintf("%s is already set on line %d (set at most one of %s)", m.key, m.line, materialList("encryption_"))
	}
	m := &material{key: cfgKey, line: p.line}
	switch name {
	case matKey:
		k, problem := decodeHexKey([]byte(v))
		if problem != "" {
			return fmt.Sprintf("not a 256-bit key: expected exactly %d hexadecimal digits, got %s (the value is not shown; %s)", keyHexLen, problem, generateKey)
		}
		m.raw = k
		m.origin = inlineOrigin(where, cfgKey)
		p.noteInlineSecret(cfgKey)
	case matPassphrase:
		if v == "" {
			return "empty value (expected the passphrase after the =; whitespace around it is trimmed)"
		}
		m.pass = []byte(v)
		m.origin = inlineOrigin(where, cfgKey)
		p.noteInlineSecret(cfgKey)
	case matKeyFile, matPassphraseFile:
		what := "a 256-bit key as 64 hexadecimal digits"
		if name == matPassphraseFile {
			what = "a passphrase"
		}
		if v == "" {
			return "empty value (expected the path of a file holding " + what + ")"
		}
		path, msg := p.path(v)
		if msg != "" {
			return msg
		}
		data, mode, err := readSecretFile(path, maxSecretFileSize)
		if err != nil {
			var pe *fs.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			return fmt.Sprintf("cannot read %s: %v (expected a readable file holding %s)", quote(path), err, what)
		}
		if len(data) > maxSecretFileSize {
			return fmt.Sprintf("%s is larger than %d bytes (expected a file holding %s)", quote(path), maxSecretFileSize, what)
		}
		if name == matKeyFile {
			k, problem := decodeHexKey(data)
			if problem != "" {
				return fmt.Sprintf("%s does not hold a 256-bit key: expected exactly %d hexadecimal digits (surrounding whitespace is ignored), got %s; %s > %s",
					quote(path), keyHexLen, problem, generateKey, path)
			}
			m.raw = k
		} else {
			pass := data
			if b, ok := strings.CutSuffix(string(pass), "\n"); ok {
				pass = []byte(strings.TrimSuffix(b, "\r"))
			}
			if len(pass) == 0 {
				return fmt.Sprintf("%s holds no passphrase (expected a file holding the passphrase; one trailing newline is ignored)", quote(path))
			}
			m.pass = pass
		}
		m.origin = where + cfgKey + " " + path
		if runtime.GOOS != "windows" && mode.Perm()&0o044 != 0 {
			p.warnf("%s is readable by group or others (mode %04o; expected 0600 or 0400): restrict it with: chmod 600 %s", quote(path), uint32(mode.Perm()), path)
		}
	}
	*slot = m
	return ""
}

func inlineOrigin(where, cfgKey string) string {
	if where == "" {
		return cfgKey + " in [DEFAULTS]"
	}
	return where + cfgKey
}

// decodeHexKey decodes 64 hexadecimal digits with optional surrounding
// whitespace. On failure it returns a description of what it got that does
// not reveal the content.
func decodeHexKey(b []byte) ([]byte, string) {
	s := strings.TrimSpace(string(b))
	if n := utf8.RuneCountInString(s); n != keyHexLen {
		return nil, fmt.Sprintf("%d characters", n)
	}
	k, err := hex.DecodeString(s)
	if err != nil || len(k) != keyHexLen/2 {
		return nil, fmt.Sprintf("%d characters that are not all hexadecimal digits (0-9, a-f)", keyHexLen)
	}
	return k, ""
}

// readSecretFile returns at most limit+1 bytes of the file at path and the
// file's mode. It is a variable so tests can replace it.
var readSecretFile = func(path string, limit int64) ([]byte, fs.FileMode, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	if fi.IsDir() {
		return nil, 0, errors.New("is a directory")
	}
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, 0, err
	}
	return data, fi.Mode(), nil
}

// noteInlineSecret remembers the first key that has a secret written in
// the configuration file itself, for Load's permission check.
func (p *parser) noteInlineSecret(key string) {
	if p.inlineSecret.line == 0 {
		p.inlineSecret = keyRef{line: p.line, section: p.section, key: key}
	}
}

// warnf adds a warning about the key being set.
func (p *parser) warnf(format string, args ...any) {
	w := &parseError{name: p.name, line: p.line, section: p.section, key: p.key, msg: fmt.Sprintf(format, args...)}
	p.cfg.Warnings = append(p.cfg.Warnings, w.Error())
}

// finishEncryption checks the encryption keys as a whole once the file is
// read and fills in p.cfg.Encryption.
func (p *parser) finishEncryption() error {
	for _, s := range p.enc {
		if s.mat == nil {
			return p.errf(s.line, s.name(), "", "no key (set exactly one of %s; %s)", materialList(""), generateKey)
		}
	}
	enc := &p.cfg.Encryption
	v := enc.Version
	d := p.keyLine[sectionDefaults]
	var current *encSection
	for _, s := range p.enc {
		if s.version == v {
			current = s
		}
	}
	if p.defMat != nil && v == 0 {
		return p.errf(p.defMat.line, sectionDefaults, p.defMat.key,
			"set while encryption_version is 0, which writes new blocks unencrypted (set encryption_version = N, e.g. 1, to encrypt new blocks with this key as encryption version N)")
	}
	if p.defMat != nil && current != nil {
		return p.errf(current.line, current.name(), "",
			"encryption version %d has a key both in this section and in [DEFAULTS] (%s on line %d), which sets the key of encryption_version %d (keep only one of them)",
			v, p.defMat.key, p.defMat.line, v)
	}
	if line, ok := d["encryption_cipher"]; ok && p.defMat == nil {
		if v == 0 {
			return p.errf(line, sectionDefaults, "encryption_cipher",
				"set while encryption_version is 0, which writes new blocks unencrypted (set encryption_version = N and a key for it, or remove encryption_cipher)")
		}
		if current != nil {
			return p.errf(line, sectionDefaults, "encryption_cipher",
				"the key of encryption version %d is in [%s] (line %d), which has its own cipher (set cipher = %s there, or remove encryption_cipher)",
				v, current.name(), current.line, p.defCipher)
		}
	}
	if v > 0 && p.defMat == nil && current == nil {
		return p.errf(d["encryption_version"], sectionDefaults, "encryption_version",
			"no key for encryption version %d (set one of %s in [DEFAULTS], or add an [Encryption%d] section with one of %s; %s)",
			v, materialList("encryption_"), v, materialList(""), generateKey)
	}

	var ks []Key
	if p.defMat != nil {
		cipher := p.defCipher
		if cipher == "" {
			cipher = defaultCipher
		}
		ks = append(ks, p.defMat.toKey(v, cipher))
	}
	for _, s := range p.enc {
		cipher := s.cipher
		if cipher == "" {
			cipher = defaultCipher
		}
		ks = append(ks, s.mat.toKey(s.version, cipher))
	}
	slices.SortFunc(ks, func(a, b Key) int { return cmp.Compare(a.Version, b.Version) })
	enc.Keys = ks
	if v > 0 {
		k, _ := p.cfg.KeyFor(v)
		enc.Cipher = k.Cipher
	}
	return nil
}

func (m *material) toKey(v uint16, cipher string) Key {
	return Key{Version: v, Cipher: cipher, Key: m.raw, Passphrase: m.pass, Origin: m.origin}
}

// secretKeyPrefix reports whether the line s starts with the name of a key
// whose value is a secret (in any case) and returns that name.
func secretKeyPrefix(s string) (string, bool) {
	for _, k := range []string{"encryption_" + matPassphrase, "encryption_" + matKey, matPassphrase, matKey, s3SecretAccessKey, s3SessionToken} {
		if len(s) >= len(k) && strings.EqualFold(s[:len(k)], k) {
			return k, true
		}
	}
	return "", false
}
