package config

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	_ "time/tzdata" // time zones work without the system zoneinfo
)

// Section names, as they must be written.
const (
	sectionDefaults = "DEFAULTS"
	sectionMeta     = "MetaBackend"
	sectionData     = "DataBackend"
	sectionNBD      = "NBD"
)

// sectionOrder lists the sections with a fixed name in the order used in
// messages. The [Encryption<N>] sections (see encryptionSectionVersion) come
// after them.
var sectionOrder = []string{sectionDefaults, sectionMeta, sectionData, sectionNBD}

// keyDef describes one key: its lower-case name, whether it must be
// present, what it means (used in "missing" messages) and how to store a
// value. set returns "" on success or the problem, phrased to follow
// "[Section] key: ".
type keyDef struct {
	name     string
	required bool
	what     string
	set      func(p *parser, value string) string
}

// keys holds the known keys of each section with a fixed name, in
// documentation order; see keysOf.
var keys = map[string][]keyDef{
	sectionDefaults: append([]keyDef{
		{name: "block_size", set: func(p *parser, v string) string {
			n, msg := parseBlockSize(p.key, v)
			p.cfg.Defaults.BlockSize = n
			return msg
		}},
		{name: "log_file", set: func(p *parser, v string) string {
			if v == "" {
				p.cfg.Defaults.LogFile = ""
				return ""
			}
			path, msg := p.path(v)
			p.cfg.Defaults.LogFile = path
			return msg
		}},
		{name: "log_level", set: func(p *parser, v string) string {
			s, msg := oneOf(v, "log level", "debug", "info", "warn", "error")
			p.cfg.Defaults.LogLevel = s
			return msg
		}},
		{name: "disallow_rm_when_younger_than_days", set: func(p *parser, v string) string {
			n, msg := p.parseIntRange(v, 0, MaxDisallowRmDays, "0 = no check")
			p.cfg.Defaults.DisallowRmWhenYoungerThanDays = n
			return msg
		}},
		{name: "workers", set: func(p *parser, v string) string {
			n, msg := p.parseIntRange(v, 0, MaxWorkers, "0 = one per CPU")
			p.cfg.Defaults.Workers = n
			return msg
		}},
		{name: "compression", set: func(p *parser, v string) string {
			s, msg := oneOf(v, "compression", "none", "zstd")
			p.cfg.Defaults.Compression = s
			return msg
		}},
		{name: "compression_level", set: func(p *parser, v string) string {
			n, msg := p.parseIntRange(v, MinCompressionLevel, MaxCompressionLevel, "1 fastest, 2 default, 3 better, 4 best")
			p.cfg.Defaults.CompressionLevel = n
			return msg
		}},
		{name: "timezone", set: func(p *parser, v string) string {
			if _, err := time.LoadLocation(v); err != nil || v == "" {
				return fmt.Sprintf("%q is not a time zone (expected an IANA name such as UTC or Europe/Berlin, or Local)", v)
			}
			p.cfg.Defaults.Timezone = v
			return ""
		}},
	}, encryptionDefaultsKeys...),
	sectionMeta: {
		{name: "type", set: func(p *parser, v string) string {
			s, msg := oneOf(v, "metadata backend type", "bbolt")
			p.cfg.Meta.Type = s
			return msg
		}},
		{name: "path", required: true, what: "the path of the bbolt database file", set: func(p *parser, v string) string {
			if v == "" {
				return "empty value (expected the path of the bbolt database file)"
			}
			path, msg := p.path(v)
			p.cfg.Meta.Path = path
			return msg
		}},
	},
	sectionData: append([]keyDef{
		{name: "type", set: func(p *parser, v string) string {
			s, msg := oneOf(v, "data backend type", dataTypeFile, dataTypeS3)
			p.cfg.Data.Type = s
			return msg
		}},
		// Required with type file only: see finishData.
		{name: "path", set: func(p *parser, v string) string {
			if v == "" {
				return "empty value (expected the directory of the data backend)"
			}
			path, msg := p.path(v)
			p.cfg.Data.Path = path
			return msg
		}},
		{name: "simultaneous_writes", set: func(p *parser, v string) string {
			n, msg := p.parseIntRange(v, 1, MaxSimultaneous, "")
			p.cfg.Data.SimultaneousWrites = n
			return msg
		}},
		{name: "simultaneous_reads", set: func(p *parser, v string) string {
			n, msg := p.parseIntRange(v, 1, MaxSimultaneous, "")
			p.cfg.Data.SimultaneousReads = n
			return msg
		}},
	}, s3Keys...),
	sectionNBD: nbdKeys,
}

// keysOf returns the known keys of section, nil for an unknown section.
func keysOf(section string) []keyDef {
	if _, ok := encryptionSectionVersion(section); ok {
		return encryptionKeys
	}
	return keys[section]
}

// userHomeDir is os.UserHomeDir; a variable so tests can replace it.
var userHomeDir = os.UserHomeDir

// parseError is the error type of Parse. Its message is one line:
// "name:line: [section] key: msg", leaving out what is unknown.
type parseError struct {
	name    string
	line    int // 0 if the problem has no line
	section string
	key     string
	msg     string
}

func (e *parseError) Error() string {
	var b strings.Builder
	b.WriteString(e.name)
	if e.line > 0 {
		b.WriteString(":")
		b.WriteString(strconv.Itoa(e.line))
	}
	b.WriteString(": ")
	if e.section != "" {
		b.WriteString("[" + e.section + "] ")
	}
	if e.key != "" {
		b.WriteString(e.key + ": ")
	}
	b.WriteString(e.msg)
	return b.String()
}

func (e *parseError) Unwrap() error { return ErrInvalid }

type parser struct {
	name        string // for messages
	base        string // directory relative paths are resolved against
	cfg         *Config
	sectionLine map[string]int            // section -> line of its header
	keyLine     map[string]map[string]int // section -> key -> line

	// The setting being stored, for set functions.
	line         int
	section, key string

	curEnc       *encSection   // the current section if it is [Encryption<N>]
	enc          []*encSection // in file order
	defMat       *material     // key material in [DEFAULTS]
	defCipher    string        // [DEFAULTS] encryption_cipher if set
	inlineSecret keyRef        // the first key with a secret value, if any

	nbdCertPEM, nbdKeyPEM []byte // the files of [NBD] tls_cert and tls_key
}

// keyRef names one setting of the file.
type keyRef struct {
	line         int
	section, key string
}

// Parse parses data, the content of a configuration file named name. The
// name is used in messages and to resolve relative paths (against its
// directory); the file need not exist. Config.File is the absolute form of
// name (if name is "", messages say "<input>", relative paths are resolved
// against the working directory and File is "").
//
// Missing keys take their defaults, except that [MetaBackend] path is
// required, and so is [DataBackend] path with type file and [DataBackend]
// bucket with type s3. Every error wraps [ErrInvalid] and has a
// one-line message naming the file, line, section and key.
func Parse(name string, data []byte) (*Config, error) {
	c, _, err := parse(name, data)
	return c, err
}

// parse is Parse, also returning the parser for what Load needs to know.
func parse(name string, data []byte) (*Config, *parser, error) {
	p := &parser{
		name:        name,
		cfg:         defaults(),
		sectionLine: map[string]int{},
		keyLine:     map[string]map[string]int{},
	}
	if name == "" {
		p.name = "<input>"
		wd, err := os.Getwd()
		if err != nil {
			return nil, nil, &parseError{name: p.name, msg: fmt.Sprintf("cannot resolve relative paths: %v", err)}
		}
		p.base = wd
	} else {
		abs, err := filepath.Abs(name)
		if err != nil {
			return nil, nil, &parseError{name: p.name, msg: fmt.Sprintf("cannot make the file name absolute: %v", err)}
		}
		p.cfg.File = abs
		p.base = filepath.Dir(abs)
	}
	if err := p.parse(string(data)); err != nil {
		return nil, nil, err
	}
	return p.cfg, p, nil
}

func (p *parser) errf(line int, section, key, format string, args ...any) error {
	return &parseError{name: p.name, line: line, section: section, key: key, msg: fmt.Sprintf(format, args...)}
}

func (p *parser) parse(text string) error {
	text = strings.TrimPrefix(text, "\uFEFF") // UTF-8 byte order mark
	section := ""
	for i, raw := range strings.Split(text, "\n") {
		line := i + 1
		s := strings.TrimSpace(raw)
		switch {
		case s == "" || s[0] == '#' || s[0] == ';':
			continue
		case s[0] == '[':
			name, err := p.header(line, s)
			if err != nil {
				return err
			}
			section = name
			continue
		}
		k, v, ok := splitKeyValue(s)
		if !ok {
			if name, secret := secretKeyPrefix(s); secret {
				// The rest of the line may be the secret.
				return p.errf(line, section, "", "a line starting with %s (the rest is not shown) is neither a [section] header, a key = value setting nor a comment (expected %s = <value>)", quote(name), name)
			}
			return p.errf(line, "", "", "%s is neither a [section] header, a key = value setting nor a comment", quote(s))
		}
		if k == "" {
			return p.errf(line, section, "", "%s has no key before the %s (expected key = value)", quote(s), quote(s[:1]))
		}
		if !validKey(k) {
			return p.errf(line, section, "", "invalid key %s (expected a key made of letters, digits and underscores)", quote(k))
		}
		key := strings.ToLower(k)
		if section == "" {
			return p.errf(line, "", key, "setting outside of any section (expected a %s header before it)", sectionList())
		}
		if err := p.setKey(line, section, key, v); err != nil {
			return err
		}
	}
	for _, sec := range sectionOrder {
		for _, kd := range keys[sec] {
			if !kd.required {
				continue
			}
			if _, ok := p.keyLine[sec][kd.name]; ok {
				continue
			}
			return p.missingKey(sec, kd.name, kd.what)
		}
	}
	if err := p.finishData(); err != nil {
		return err
	}
	if err := p.finishNBD(); err != nil {
		return err
	}
	return p.finishEncryption()
}

// missingKey returns the error for the required key of section sec that is
// not set; what describes its value.
func (p *parser) missingKey(sec, key, what string) error {
	if hl, ok := p.sectionLine[sec]; ok {
		return p.errf(hl, sec, key, "required key is missing (add %s = <%s> to the section)", key, what)
	}
	return p.errf(0, sec, key, "required key is missing: the file has no [%s] section (add one with %s = <%s>)", sec, key, what)
}

// sectionList returns "[DEFAULTS], [MetaBackend], [DataBackend] or
// [EncryptionN] (N from 1 to 65535)".
func sectionList() string {
	return "[" + strings.Join(sectionOrder, "], [") + "] or [" + sectionEncryption + "N] (N from 1 to 65535)"
}

// suggestSection returns the section name meant by name, which differs only
// in case or blanks, or "".
func suggestSection(name string) string {
	squeezed := strings.Map(func(r rune) rune {
		if r == ' ' || r == '\t' {
			return -1
		}
		return r
	}, name)
	for _, known := range sectionOrder {
		if strings.EqualFold(squeezed, known) {
			return known
		}
	}
	if n := len(sectionEncryption); len(squeezed) > n && strings.EqualFold(squeezed[:n], sectionEncryption) {
		if _, ok := encryptionSectionVersion(sectionEncryption + squeezed[n:]); ok {
			return sectionEncryption + squeezed[n:]
		}
	}
	return ""
}

// header handles a line starting with '[' and returns the section name.
func (p *parser) header(line int, s string) (string, error) {
	if !strings.HasSuffix(s, "]") || len(s) < 2 {
		return "", p.errf(line, "", "", "malformed section header %s (expected [name] alone on the line; inline comments are not supported)", quote(s))
	}
	name := s[1 : len(s)-1]
	if keysOf(name) == nil {
		if known := suggestSection(name); known != "" {
			return "", p.errf(line, "", "", "unknown section %s (section names are case-sensitive and written without spaces: did you mean [%s]?)", quote("["+name+"]"), known)
		}
		if strings.HasPrefix(name, sectionEncryption) {
			_, msg := parseEncryptionSection(name)
			return "", p.errf(line, "", "", "invalid encryption section %s: %s", quote("["+name+"]"), msg)
		}
		return "", p.errf(line, "", "", "unknown section %s (expected %s)", quote("["+name+"]"), sectionList())
	}
	if first, dup := p.sectionLine[name]; dup {
		return "", p.errf(line, "", "", "duplicate section [%s] (first on line %d; each section may appear once)", name, first)
	}
	p.sectionLine[name] = line
	p.keyLine[name] = map[string]int{}
	p.curEnc = nil
	if v, ok := encryptionSectionVersion(name); ok {
		p.curEnc = &encSection{version: v, line: line}
		p.enc = append(p.enc, p.curEnc)
	}
	return name, nil
}

func (p *parser) setKey(line int, section, key, value string) error {
	defs := keysOf(section)
	var kd *keyDef
	for i := range defs {
		if defs[i].name == key {
			kd = &defs[i]
			break
		}
	}
	if kd == nil {
		names := make([]string, len(defs))
		for i, k := range defs {
			names[i] = k.name
		}
		return p.errf(line, section, key, "unknown key (expected one of %s)", strings.Join(names, ", "))
	}
	if first, dup := p.keyLine[section][key]; dup {
		return p.errf(line, section, key, "duplicate key (first set on line %d; each key may be set once per section)", first)
	}
	p.keyLine[section][key] = line
	p.line, p.section, p.key = line, section, key
	if msg := kd.set(p, value); msg != "" {
		if strings.ContainsAny(value, "#;") {
			msg += "; note: inline comments are not supported"
		}
		return p.errf(line, section, key, "%s", msg)
	}
	return nil
}

// splitKeyValue splits s at its first '=' or ':'.
func splitKeyValue(s string) (key, value string, ok bool) {
	i := strings.IndexAny(s, "=:")
	if i < 0 {
		return "", "", false
	}
	return strings.TrimSpace(s[:i]), strings.TrimSpace(s[i+1:]), true
}

func validKey(k string) bool {
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return k != ""
}

// quote returns s in double quotes, escaped so that it stays on one line.
func quote(s string) string { return strconv.Quote(s) }

// parseSize parses a plain number of bytes or a number followed by
// (optional blanks and) K, KiB, M, MiB, G or GiB, case-insensitive.
func parseSize(v string) (int64, bool) {
	i := 0
	for i < len(v) && v[i] >= '0' && v[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, false
	}
	n, err := strconv.ParseInt(v[:i], 10, 64)
	if err != nil {
		return 0, false
	}
	var mult int64
	switch strings.ToLower(strings.TrimLeft(v[i:], " \t")) {
	case "":
		mult = 1
	case "k", "kib":
		mult = 1 << 10
	case "m", "mib":
		mult = 1 << 20
	case "g", "gib":
		mult = 1 << 30
	case "t", "tib":
		mult = 1 << 40
	case "p", "pib":
		mult = 1 << 50
	case "e", "eib":
		mult = 1 << 60
	default:
		return 0, false
	}
	if n > math.MaxInt64/mult {
		return 0, false
	}
	return n * mult, true
}

// parseBlockSize parses the value v of the block size key.
func parseBlockSize(key, v string) (int64, string) {
	n, ok := parseSize(v)
	if !ok {
		return 0, fmt.Sprintf("%s is not a number of bytes (expected e.g. 4194304 or 4MiB; suffixes K/KiB, M/MiB, G/GiB, T/TiB)", quote(v))
	}
	if msg := CheckBlockSize(key, n); msg != "" {
		return 0, fmt.Sprintf("%s is invalid: %s", sizeValue(v, n), msg)
	}
	return n, ""
}

// parseInt parses a decimal integer >= min (no sign, no suffix).
func parseInt(v string, min int) (int, string) {
	digits := strings.TrimPrefix(v, "-")
	ok := digits != ""
	for i := 0; i < len(digits); i++ {
		if digits[i] < '0' || digits[i] > '9' {
			ok = false
			break
		}
	}
	if !ok {
		return 0, fmt.Sprintf("%s is not an integer (expected an integer >= %d)", quote(v), min)
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Sprintf("%s is out of range (expected an integer >= %d that fits in %d bits)", quote(v), min, strconv.IntSize)
	}
	if n < min {
		return 0, fmt.Sprintf("%s is too small (expected an integer >= %d)", quote(v), min)
	}
	return n, ""
}

// oneOf checks v is exactly one of allowed (case-sensitive).
func oneOf(v, what string, allowed ...string) (string, string) {
	for _, a := range allowed {
		if v == a {
			return v, ""
		}
	}
	if len(allowed) == 1 {
		return "", fmt.Sprintf("%s is not a supported %s (expected %s, the only one supported)", quote(v), what, allowed[0])
	}
	return "", fmt.Sprintf("%s is not a valid %s (expected one of %s)", quote(v), what, strings.Join(allowed, ", "))
}

// path expands a leading "~" and resolves v against the config file's
// directory; the result is absolute and cleaned.
func (p *parser) path(v string) (string, string) {
	if strings.IndexByte(v, 0) >= 0 {
		return "", fmt.Sprintf("%s contains a NUL byte (expected a path)", quote(v))
	}
	if strings.HasPrefix(v, "~") {
		rest := v[1:]
		if rest != "" && rest[0] != '/' && !(filepath.Separator != '/' && rest[0] == filepath.Separator) {
			return "", fmt.Sprintf("%s: ~user paths are not supported (expected ~/..., an absolute path or a path relative to the config file)", quote(v))
		}
		home, err := userHomeDir()
		if err != nil {
			return "", fmt.Sprintf("cannot expand ~ in %s: %v (expected an absolute path instead)", quote(v), err)
		}
		v = filepath.Join(home, rest)
	}
	if !filepath.IsAbs(v) {
		v = filepath.Join(p.base, v)
	}
	return filepath.Clean(v), ""
}

// parseDuration parses a Go duration ("30s", "2m", "1m30s") or a number of
// seconds, from lo to hi; expected describes that for the message.
func parseDuration(v string, lo, hi time.Duration, expected string) (time.Duration, string) {
	var d time.Duration
	if v != "" && strings.Trim(v, "0123456789") == "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n > int64(hi/time.Second) {
			return 0, fmt.Sprintf("%s is out of range (%s)", quote(v), expected)
		}
		d = time.Duration(n) * time.Second
	} else {
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			return 0, fmt.Sprintf("%s is not a duration (%s)", quote(v), expected)
		}
	}
	if d < lo || d > hi {
		return 0, fmt.Sprintf("%s is out of range (%s)", quote(v), expected)
	}
	return d, ""
}
