package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// S3 holds the keys of [DataBackend] with type = s3: a bucket of Amazon S3
// or of an S3-compatible server (MinIO, Ceph RGW, versitygw, ...). Its
// String and GoString methods leave the secret access key and the session
// token out, so a Config can be logged.
type S3 struct {
	// Bucket is the name of the bucket, which must exist (backy does not
	// create buckets): 3 to 63 characters, lower-case letters, digits, '.'
	// and '-', starting and ending with a letter or digit, no "..".
	// Required.
	Bucket string
	// Prefix is the key prefix of every object, without leading or
	// trailing '/': names of lower-case letters, digits, '.', '_' and '-'
	// separated by single '/', none of them "." or "..", at most 512
	// characters. "" (the default) puts the objects at the root of the
	// bucket.
	Prefix string
	// Region is the region of the bucket, used to sign requests. Default
	// "us-east-1".
	Region string
	// Endpoint is "" (the default) for AWS, else the URL of an
	// S3-compatible server: http:// or https://, a host, an optional port
	// and path (kept, without trailing '/'), no user, query or fragment,
	// e.g. "http://127.0.0.1:7070".
	Endpoint string
	// PathStyle addresses the bucket in the URL path
	// (http://host/bucket/key) instead of in the host name
	// (http://bucket.host/key). Default: true if Endpoint is set, false
	// otherwise.
	PathStyle bool
	// AccessKeyID and SecretAccessKey are both set or both "": "" takes
	// the credentials from the environment and the shared AWS
	// configuration at run time. SessionToken may be set only with them.
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string
	// Profile is the profile of the shared AWS configuration to take the
	// credentials and settings from, "" for the default. Never set
	// together with AccessKeyID.
	Profile string
	// ConnectTimeout bounds connecting to the server and RequestTimeout
	// one attempt of a request, body included. Both are > 0 and <= 24h;
	// default 10s and 2m.
	ConnectTimeout, RequestTimeout time.Duration
	// RetryFor is how long a request that fails with transient errors
	// (no answer, timeouts, 5xx, throttling) is retried, with exponential
	// backoff and jitter, from its first attempt: 0 (no retries) to 24h;
	// default 5m.
	RetryFor time.Duration
	// MaxAttempts, 1 to 100, also caps the attempts of such a request
	// (whichever limit comes first ends the retries); 0, the default when
	// it is not set, is no cap: RetryFor alone decides.
	MaxAttempts int
	// StorageClass is the storage class of new objects, upper-case
	// letters, digits and '_' (e.g. STANDARD_IA), passed to the server as
	// it is; "" (the default) leaves the choice to the server.
	StorageClass string
	// BandwidthRead and BandwidthWrite limit the bytes per second read
	// from and written to the server; 0 (the default) is no limit, else
	// at least 64 KiB.
	BandwidthRead, BandwidthWrite int64
}

// String describes s without its secrets.
func (s S3) String() string {
	set := func(v string) string {
		if v == "" {
			return "(none)"
		}
		return "(set)"
	}
	return fmt.Sprintf("{Bucket:%s Prefix:%s Region:%s Endpoint:%s PathStyle:%t AccessKeyID:%s SecretAccessKey:%s SessionToken:%s Profile:%s ConnectTimeout:%v RequestTimeout:%v RetryFor:%v MaxAttempts:%d StorageClass:%s BandwidthRead:%d BandwidthWrite:%d}",
		s.Bucket, s.Prefix, s.Region, s.Endpoint, s.PathStyle, s.AccessKeyID, set(s.SecretAccessKey), set(s.SessionToken), s.Profile,
		s.ConnectTimeout, s.RequestTimeout, s.RetryFor, s.MaxAttempts, s.StorageClass, s.BandwidthRead, s.BandwidthWrite)
}

// GoString is String, so that %#v does not print the secrets either.
func (s S3) GoString() string { return "config.S3" + s.String() }

// Data backend types.
const (
	dataTypeFile = "file"
	dataTypeS3   = "s3"
)

// Defaults of type s3.
const (
	defaultS3SimultaneousWrites = 16
	defaultS3SimultaneousReads  = 16
	defaultS3Region             = "us-east-1"
	defaultS3ConnectTimeout     = 10 * time.Second
	defaultS3RequestTimeout     = 2 * time.Minute
	defaultS3RetryFor           = 5 * time.Minute

	maxS3Attempts     = 100
	maxS3Timeout      = 24 * time.Hour
	maxS3PrefixLen    = 512
	minS3BucketLen    = 3
	maxS3BucketLen    = 63
	maxS3NameLen      = 64 // region, storage class
	maxS3ProfileLen   = 128
	minS3BandwidthBPS = 64 << 10
)

// The credential keys; each also exists with the suffix "_file".
const (
	s3AccessKeyID     = "access_key_id"
	s3SecretAccessKey = "secret_access_key"
	s3SessionToken    = "session_token"
	s3Profile         = "profile"
	fileSuffix        = "_file"
)

// s3What describes the value of each credential key, for messages.
var s3What = map[string]string{
	s3AccessKeyID:     "the access key ID",
	s3SecretAccessKey: "the secret access key",
	s3SessionToken:    "the session token",
}

// s3Keys are the keys of [DataBackend] that only type = s3 has, in
// documentation order.
var s3Keys = []keyDef{
	{name: "bucket", set: func(p *parser, v string) string {
		msg := checkBucket(v)
		p.cfg.Data.S3.Bucket = v
		return msg
	}},
	{name: "prefix", set: func(p *parser, v string) string {
		s, msg := normalizePrefix(v)
		p.cfg.Data.S3.Prefix = s
		return msg
	}},
	{name: "region", set: func(p *parser, v string) string {
		msg := checkRegion(v)
		p.cfg.Data.S3.Region = v
		return msg
	}},
	{name: "endpoint", set: func(p *parser, v string) string {
		s, msg := parseEndpoint(v)
		p.cfg.Data.S3.Endpoint = s
		return msg
	}},
	{name: "path_style", set: func(p *parser, v string) string {
		b, ok := parseBool(v)
		if !ok {
			return fmt.Sprintf("%s is not a boolean (expected true or false; yes/no, on/off and 1/0 work too)", quote(v))
		}
		p.cfg.Data.S3.PathStyle = b
		return ""
	}},
	{name: s3AccessKeyID, set: credentialSetter(s3AccessKeyID, false)},
	{name: s3AccessKeyID + fileSuffix, set: credentialSetter(s3AccessKeyID, true)},
	{name: s3SecretAccessKey, set: credentialSetter(s3SecretAccessKey, false)},
	{name: s3SecretAccessKey + fileSuffix, set: credentialSetter(s3SecretAccessKey, true)},
	{name: s3SessionToken, set: credentialSetter(s3SessionToken, false)},
	{name: s3SessionToken + fileSuffix, set: credentialSetter(s3SessionToken, true)},
	{name: s3Profile, set: func(p *parser, v string) string {
		msg := checkProfile(v)
		p.cfg.Data.S3.Profile = v
		return msg
	}},
	{name: "connect_timeout", set: func(p *parser, v string) string {
		d, msg := parseTimeout(v)
		p.cfg.Data.S3.ConnectTimeout = d
		return msg
	}},
	{name: "request_timeout", set: func(p *parser, v string) string {
		d, msg := parseTimeout(v)
		p.cfg.Data.S3.RequestTimeout = d
		return msg
	}},
	{name: "retry_for", set: func(p *parser, v string) string {
		d, msg := parseRetryFor(v)
		p.cfg.Data.S3.RetryFor = d
		return msg
	}},
	{name: "max_attempts", set: func(p *parser, v string) string {
		n, msg := parseInt(v, 1)
		if msg != "" || n > maxS3Attempts {
			msg = fmt.Sprintf("%s is not an integer from 1 to %d (expected e.g. 5; 1 means no retries; leave it out to let retry_for alone decide)", quote(v), maxS3Attempts)
		}
		p.cfg.Data.S3.MaxAttempts = n
		return msg
	}},
	{name: "storage_class", set: func(p *parser, v string) string {
		msg := checkStorageClass(v)
		if msg == "" {
			switch v {
			case "GLACIER", "DEEP_ARCHIVE":
				p.warnf("objects of storage class %s cannot be read before they are restored, so restore and scrub fail on them (expected a storage class with immediate access, e.g. STANDARD_IA or GLACIER_IR)", v)
			}
		}
		p.cfg.Data.S3.StorageClass = v
		return msg
	}},
	{name: "bandwidth_read", set: func(p *parser, v string) string {
		n, msg := parseBandwidth(p.key, v)
		p.cfg.Data.S3.BandwidthRead = n
		return msg
	}},
	{name: "bandwidth_write", set: func(p *parser, v string) string {
		n, msg := parseBandwidth(p.key, v)
		p.cfg.Data.S3.BandwidthWrite = n
		return msg
	}},
}

// finishData checks the keys of [DataBackend] as a whole once the file is
// read, whatever their order, and fills in the defaults that depend on the
// type.
func (p *parser) finishData() error {
	d := &p.cfg.Data
	lines := p.keyLine[sectionData] // nil without the section
	has := func(key string) bool { _, ok := lines[key]; return ok }
	typeLine, typeSet := lines["type"]

	if d.Type != dataTypeS3 {
		// The first s3 key, by line.
		first, firstLine := "", 0
		for _, kd := range s3Keys {
			if l, ok := lines[kd.name]; ok && (firstLine == 0 || l < firstLine) {
				first, firstLine = kd.name, l
			}
		}
		if first != "" {
			if typeSet {
				return p.errf(firstLine, sectionData, first, "needs type = s3, but line %d sets type = file (set type = s3 there, or remove %s)", typeLine, first)
			}
			return p.errf(firstLine, sectionData, first, "needs type = s3, while the data backend type is file, the default (add type = s3 to the section, or remove %s)", first)
		}
		if !has("path") {
			return p.missingKey(sectionData, "path", "the directory of the data backend")
		}
		return nil
	}

	if l, ok := lines["path"]; ok {
		return p.errf(l, sectionData, "path", "only for type = file; with type = s3 (line %d) use bucket and prefix instead (remove path)", typeLine)
	}
	if !has("bucket") {
		return p.errf(p.sectionLine[sectionData], sectionData, "bucket", "required key is missing for type = s3 (add bucket = <the name of an existing bucket> to the section; backy does not create buckets)")
	}
	// lineOf returns the credential key set in either form and its line.
	lineOf := func(name string) (string, int) {
		if l, ok := lines[name]; ok {
			return name, l
		}
		if l, ok := lines[name+fileSuffix]; ok {
			return name + fileSuffix, l
		}
		return "", 0
	}
	idKey, idLine := lineOf(s3AccessKeyID)
	secretKey, secretLine := lineOf(s3SecretAccessKey)
	tokenKey, tokenLine := lineOf(s3SessionToken)
	const fromEnv = "or neither, to take the credentials from the environment or the shared AWS configuration"
	if l, ok := lines[s3Profile]; ok && idLine > 0 {
		return p.errf(l, sectionData, s3Profile, "cannot be used together with %s (line %d): profile takes the credentials from the shared AWS configuration (remove profile or %s)", idKey, idLine, idKey)
	}
	if idLine > 0 && secretLine == 0 {
		return p.errf(idLine, sectionData, idKey, "no secret access key goes with it (set secret_access_key or secret_access_key_file too, %s)", fromEnv)
	}
	if secretLine > 0 && idLine == 0 {
		return p.errf(secretLine, sectionData, secretKey, "no access key ID goes with it (set access_key_id or access_key_id_file too, %s)", fromEnv)
	}
	if tokenLine > 0 && idLine == 0 {
		return p.errf(tokenLine, sectionData, tokenKey, "only allowed together with an access key ID and a secret access key, which the session token belongs to (set access_key_id and secret_access_key too, or remove %s)", tokenKey)
	}

	s := &d.S3
	if !has("simultaneous_writes") {
		d.SimultaneousWrites = defaultS3SimultaneousWrites
	}
	if !has("simultaneous_reads") {
		d.SimultaneousReads = defaultS3SimultaneousReads
	}
	if !has("region") {
		s.Region = defaultS3Region
	}
	if !has("path_style") {
		s.PathStyle = s.Endpoint != ""
	}
	if !has("connect_timeout") {
		s.ConnectTimeout = defaultS3ConnectTimeout
	}
	if !has("request_timeout") {
		s.RequestTimeout = defaultS3RequestTimeout
	}
	if !has("retry_for") {
		s.RetryFor = defaultS3RetryFor
	}
	return nil
}

// credentialSetter returns the set function of the credential key name
// (access_key_id, secret_access_key or session_token), or of its _file
// form if fromFile.
func credentialSetter(name string, fromFile bool) func(p *parser, v string) string {
	return func(p *parser, v string) string { return p.setCredential(name, fromFile, v) }
}

// setCredential stores the credential name, given inline or, if fromFile,
// read from the file v names. Secrets (everything but the access key ID)
// are never shown.
func (p *parser) setCredential(name string, fromFile bool, v string) string {
	key, other := name, name+fileSuffix
	if fromFile {
		key, other = other, key
	}
	if l, ok := p.keyLine[sectionData][other]; ok {
		return fmt.Sprintf("%s is already set on line %d (set one of %s and %s)", other, l, name, name+fileSuffix)
	}
	what := s3What[name]
	secret := name != s3AccessKeyID
	var val string
	if !fromFile {
		if v == "" {
			return fmt.Sprintf("empty value (expected %s after the =; whitespace around it is trimmed)", what)
		}
		if secret {
			p.noteInlineSecret(key)
		}
		val = v
	} else {
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
		if secret {
			s := string(data)
			if b, ok := strings.CutSuffix(s, "\n"); ok {
				s = strings.TrimSuffix(b, "\r")
			}
			if s == "" {
				return fmt.Sprintf("%s holds no %s (expected a file holding %s; one trailing newline is ignored)", quote(path), what[len("the "):], what)
			}
			if strings.ContainsAny(s, "\r\n") {
				return fmt.Sprintf("%s holds more than one line (expected a file holding %s alone on one line; the content is not shown)", quote(path), what)
			}
			val = s
		} else {
			val = strings.TrimSpace(string(data))
			if val == "" {
				return fmt.Sprintf("%s holds no access key ID (expected a file holding the access key ID; whitespace around it is ignored)", quote(path))
			}
			if !isToken(val) {
				return fmt.Sprintf("%s holds more than an access key ID: it contains blanks or control characters (expected a file holding the access key ID alone, e.g. AKIAIOSFODNN7EXAMPLE)", quote(path))
			}
		}
		if secret && runtime.GOOS != "windows" && mode.Perm()&0o044 != 0 {
			p.warnf("%s is readable by group or others (mode %04o; expected 0600 or 0400): restrict it with: chmod 600 %s", quote(path), uint32(mode.Perm()), path)
		}
	}
	s := &p.cfg.Data.S3
	switch name {
	case s3AccessKeyID:
		if !isToken(val) {
			return "the access key ID contains blanks or control characters (expected one word, e.g. AKIAIOSFODNN7EXAMPLE)"
		}
		s.AccessKeyID = val
	case s3SecretAccessKey:
		s.SecretAccessKey = val
	case s3SessionToken:
		s.SessionToken = val
	}
	return ""
}

// isToken reports whether s is non-empty and has no blanks or control
// characters.
func isToken(s string) bool {
	return s != "" && !strings.ContainsFunc(s, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) })
}

// printable reports whether s can be shown unquoted in a message: valid
// UTF-8, non-empty, without blanks or control characters.
func printable(s string) bool { return utf8.ValidString(s) && isToken(s) }

// checkBucket checks that v is a valid S3 bucket name.
func checkBucket(v string) string {
	const expected = "expected the name of an existing bucket: 3 to 63 lower-case letters, digits, '.' and '-', starting and ending with a letter or digit, e.g. backy-backups"
	if v == "" {
		return "empty value (" + expected + ")"
	}
	if rest, ok := strings.CutPrefix(v, "s3://"); ok && printable(rest) {
		if b, prefix, ok := strings.Cut(rest, "/"); ok && strings.Trim(prefix, "/") != "" {
			return fmt.Sprintf("%s is a URL, not a bucket name (write bucket = %s and prefix = %s)", quote(v), b, strings.Trim(prefix, "/"))
		}
		return fmt.Sprintf("%s is a URL, not a bucket name (write bucket = %s)", quote(v), strings.TrimSuffix(rest, "/"))
	}
	if b, prefix, ok := strings.Cut(v, "/"); ok && b != "" && strings.Trim(prefix, "/") != "" && printable(v) {
		return fmt.Sprintf("%s is not a valid bucket name: it contains '/' (write bucket = %s and prefix = %s)", quote(v), b, strings.Trim(prefix, "/"))
	}
	problem := ""
	for i := 0; i < len(v) && problem == ""; i++ {
		switch c := v[i]; {
		case c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-':
		case c >= 'A' && c <= 'Z':
			problem = "it contains upper-case letters"
		default:
			r := []rune(v[i:])[0]
			problem = "it contains " + quote(string(r))
		}
	}
	alnum := func(c byte) bool { return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' }
	switch {
	case problem != "":
	case len(v) < minS3BucketLen || len(v) > maxS3BucketLen:
		problem = fmt.Sprintf("it is %d characters long", len(v))
	case !alnum(v[0]) || !alnum(v[len(v)-1]):
		problem = "it does not start and end with a letter or digit"
	case strings.Contains(v, ".."):
		problem = "it contains \"..\""
	}
	if problem != "" {
		return fmt.Sprintf("%s is not a valid bucket name: %s (%s)", quote(v), problem, expected)
	}
	return ""
}

// normalizePrefix removes leading and trailing '/' from v and checks the
// result is a valid prefix.
func normalizePrefix(v string) (string, string) {
	const expected = "expected names of lower-case letters, digits, '.', '_' and '-' separated by single '/', e.g. backy or hosts/db1; leave prefix out for the root of the bucket"
	s := strings.Trim(v, "/")
	if len(s) > maxS3PrefixLen {
		return "", fmt.Sprintf("%s is too long: %d characters (expected at most %d)", quote(v), len(s), maxS3PrefixLen)
	}
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-' || r == '/':
		case r >= 'A' && r <= 'Z':
			return "", fmt.Sprintf("%s is not a valid prefix: it contains upper-case letters (%s)", quote(v), expected)
		default:
			return "", fmt.Sprintf("%s is not a valid prefix: it contains %s (%s)", quote(v), quote(string(r)), expected)
		}
	}
	if s == "" {
		return "", ""
	}
	for _, e := range strings.Split(s, "/") {
		switch e {
		case "":
			return "", fmt.Sprintf("%s is not a valid prefix: it contains \"//\" (%s)", quote(v), expected)
		case ".", "..":
			return "", fmt.Sprintf("%s is not a valid prefix: it contains the name %s (%s)", quote(v), quote(e), expected)
		}
	}
	return s, ""
}

// checkRegion checks v is a plausible region name.
func checkRegion(v string) string {
	const expected = "expected the region of the bucket, e.g. eu-central-1; S3-compatible servers mostly use us-east-1, the default"
	if v == "" {
		return "empty value (" + expected + ")"
	}
	ok := len(v) <= maxS3NameLen
	for i := 0; i < len(v) && ok; i++ {
		c := v[i]
		ok = c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.'
	}
	if !ok {
		return fmt.Sprintf("%s is not a region name (%s; at most %d letters, digits, '-', '_' and '.')", quote(v), expected, maxS3NameLen)
	}
	return ""
}

// parseEndpoint checks that v is "" or an http:// or https:// URL with a
// host and returns it with a lower-case scheme and no trailing '/'.
func parseEndpoint(v string) (string, string) {
	const expected = "expected the http:// or https:// URL of an S3-compatible server, e.g. http://127.0.0.1:7070, or leave endpoint out for AWS"
	if v == "" {
		return "", ""
	}
	if strings.Contains(v, "@") {
		// user:password@host: the password, which may hold any
		// character, must not be shown.
		return "", "the URL contains '@', so it holds a user name or password, which is not shown (expected a URL without them, e.g. http://127.0.0.1:7070; set access_key_id and secret_access_key instead)"
	}
	scheme, _, ok := strings.Cut(v, "://")
	if !ok {
		if !strings.Contains(v, ":/") && printable(v) {
			return "", fmt.Sprintf("%s is not a URL (%s: did you mean http://%s?)", quote(v), expected, v)
		}
		return "", fmt.Sprintf("%s is not a URL (%s)", quote(v), expected)
	}
	scheme = strings.ToLower(scheme)
	if scheme != "http" && scheme != "https" {
		return "", fmt.Sprintf("%s: the scheme %s is not supported (%s)", quote(v), quote(scheme+"://"), expected)
	}
	u, err := url.Parse(v)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return "", fmt.Sprintf("%s is not a valid URL: %v (%s)", quote(v), err, expected)
	}
	switch {
	case u.Hostname() == "":
		return "", fmt.Sprintf("%s has no host (%s)", quote(v), expected)
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || strings.Contains(v, "#"):
		return "", fmt.Sprintf("%s has a query or fragment (expected a URL without ?... or #..., e.g. http://127.0.0.1:7070)", quote(v))
	}
	if port := u.Port(); port != "" {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return "", fmt.Sprintf("%s: port %s is out of range (%s; ports are 1 to 65535)", quote(v), port, expected)
		}
	}
	host := strings.TrimSuffix(u.Host, ":") // "http://host:/"
	return scheme + "://" + host + strings.TrimRight(u.EscapedPath(), "/"), ""
}

// parseBool parses true/false, yes/no, on/off, 1/0, case-insensitive.
func parseBool(v string) (value, ok bool) {
	switch strings.ToLower(v) {
	case "true", "yes", "on", "1":
		return true, true
	case "false", "no", "off", "0":
		return false, true
	}
	return false, false
}

// checkProfile checks v is a plausible profile name.
func checkProfile(v string) string {
	const expected = "expected the NAME of a [profile NAME] section of ~/.aws/config, or leave profile out for the default profile or $AWS_PROFILE"
	if v == "" {
		return "empty value (" + expected + ")"
	}
	if !isToken(v) || strings.ContainsAny(v, "[]") || len(v) > maxS3ProfileLen {
		return fmt.Sprintf("%s is not a profile name (%s; at most %d characters without blanks or brackets)", quote(v), expected, maxS3ProfileLen)
	}
	return ""
}

// parseTimeout parses a Go duration ("30s", "2m", "1m30s") or a number of
// seconds, more than 0 and at most 24h.
func parseTimeout(v string) (time.Duration, string) {
	return parseDuration(v, time.Nanosecond, maxS3Timeout, "expected a duration such as 30s, 2m or 1m30s, or a number of seconds, more than 0 and at most 24h")
}

// parseRetryFor parses retry_for: a duration as for the timeouts, or 0
// (no retries).
func parseRetryFor(v string) (time.Duration, string) {
	if d, err := time.ParseDuration(v); (err == nil && d == 0) || (v != "" && strings.Trim(v, "0") == "") {
		return 0, ""
	}
	d, msg := parseTimeout(v)
	if msg != "" {
		msg = strings.Replace(msg, "more than 0 and at most 24h", "from 0 (no retries) to 24h, e.g. 5m", 1)
	}
	return d, msg
}

// checkStorageClass checks v is made of upper-case letters, digits and '_'.
func checkStorageClass(v string) string {
	const expected = "expected a storage class of the server in upper case, e.g. STANDARD, STANDARD_IA, ONEZONE_IA, INTELLIGENT_TIERING, GLACIER_IR or REDUCED_REDUNDANCY; leave storage_class out for the server's default"
	valid := func(s string) bool {
		if s == "" || len(s) > maxS3NameLen {
			return false
		}
		for i := 0; i < len(s); i++ {
			if c := s[i]; !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
				return false
			}
		}
		return true
	}
	switch {
	case v == "":
		return "empty value (" + expected + ")"
	case valid(v):
		return ""
	}
	if s := strings.ToUpper(strings.ReplaceAll(v, "-", "_")); valid(s) {
		return fmt.Sprintf("%s is not a storage class (storage classes are written in upper case, with '_' between words: did you mean %s?)", quote(v), s)
	}
	return fmt.Sprintf("%s is not a storage class (%s)", quote(v), expected)
}

// parseBandwidth parses the value v of the bandwidth key, a number of bytes
// per second in the size syntax: 0 or from 64 KiB to MaxBandwidth.
func parseBandwidth(key, v string) (int64, string) {
	n, ok := parseSize(v)
	if !ok {
		return 0, fmt.Sprintf("%s is not a number of bytes per second (expected e.g. 50MiB or 52428800; suffixes K/KiB, M/MiB, G/GiB, T/TiB; 0 for no limit)", quote(v))
	}
	if n != 0 && (n < minS3BandwidthBPS || n > MaxBandwidth) {
		return 0, fmt.Sprintf("%s is out of range: %s", sizeValue(v, n),
			RangeError(key, FormatSize(minS3BandwidthBPS), FormatSize(MaxBandwidth)+" per second", "0 = no limit; e.g. 50MiB"))
	}
	return n, ""
}
