// Package config reads backy's configuration file, backy.cfg, into a typed,
// validated [Config].
//
// The file is an INI file in the style of backy2:
//
//	# comment
//	; also a comment
//	[DEFAULTS]
//	block_size = 4MiB
//	log_level = info
//
//	[MetaBackend]
//	type = bbolt
//	path = /var/lib/backy/backy.db
//
//	[DataBackend]
//	type = file
//	path = /var/lib/backy/data
//
// Syntax rules:
//
//   - Only the sections [DEFAULTS], [MetaBackend], [DataBackend], [NBD] and
//     [Encryption1] to [Encryption65535] exist (an encryption section is
//     "Encryption" followed by a decimal version from 1 to 65535 without
//     leading zeros); section names are case-sensitive and each may appear
//     at most once. Any other section, such as [Encryption0],
//     [Encryption01] or [EncryptionX], is an error.
//   - Settings are "key = value" or "key: value" lines. Keys are
//     case-insensitive (they are stored lower-case) and made of letters,
//     digits and underscores; whitespace around key and value is trimmed.
//     Every key must appear inside a section, at most once per section, and
//     must be one the section knows.
//   - A line whose first non-blank character is '#' or ';' is a comment;
//     blank lines are ignored. Inline comments are NOT supported: in
//     "path = /srv/a#b" the value is "/srv/a#b", and in "workers = 4 # x"
//     the value "4 # x" is rejected as not an integer. The same holds for
//     inline passphrases: the value is the rest of the line with leading
//     and trailing whitespace trimmed.
//   - Sizes are a plain number of bytes or a number with one of the binary
//     suffixes KiB, MiB, GiB (or K, M, G meaning the same), case-insensitive,
//     e.g. 4194304, 4MiB, 4m, 4096 KiB.
//   - Relative paths are resolved against the directory holding the config
//     file; a leading "~/" (or a path of just "~") is replaced by the user's
//     home directory. "~user" forms are not supported. All paths in a parsed
//     [Config] are absolute and cleaned.
//
// # Data backend
//
// [DataBackend] type is file (the default) or s3. Type file stores the
// blocks in the directory path, which is then required. Type s3 stores
// them as objects in an existing bucket of Amazon S3 or of an
// S3-compatible server, the result being [Config].Data.S3 ([S3]); path is
// then an error and these keys exist, each an error with type file:
//
//	bucket = <bucket name>             required; 3-63 of [a-z0-9.-], alphanumeric at both ends
//	prefix = <a/b>                     key prefix, leading and trailing '/' removed; default none
//	region = <region>                  default us-east-1
//	endpoint = <http(s)://host:port>   S3-compatible server; default none, meaning AWS
//	path_style = true|false            also yes/no, on/off, 1/0; default true with endpoint
//	access_key_id[_file] = ...         together with secret_access_key[_file]
//	secret_access_key[_file] = ...
//	session_token[_file] = ...         only with the two above
//	profile = <name>                   shared AWS configuration profile; not with access_key_id
//	connect_timeout = <duration>       default 10s
//	request_timeout = <duration>       per attempt, body included; default 2m
//	retry_for = <duration>             0 (no retries) to 24h; default 5m
//	max_attempts = <1..100>            also caps the attempts; default none
//	storage_class = <CLASS>            [A-Z0-9_]+, passed through; default none
//	bandwidth_read = <size>            bytes per second, 0 (default) or 64KiB..1TiB
//	bandwidth_write = <size>
//
// The checks that involve several keys (type, path, bucket and the
// credential pairs) are made once the file is read, so the keys may come
// in any order. Durations are Go durations (30s, 2m, 1m30s) or a number
// of seconds, more than 0 and at most 24h. simultaneous_writes and
// simultaneous_reads default to 16 with type s3 (4 with type file).
//
// Each credential is given inline or, with the _file suffix, as the path
// of a file read while parsing (at most 64 KiB): an access key ID file is
// trimmed of surrounding whitespace; a secret access key or session token
// file loses one trailing "\n" or "\r\n" and must then be one non-empty
// line. Without access_key_id and secret_access_key the credentials are
// left to the environment and the shared AWS configuration at run time.
// Like encryption keys, the secret access key and the session token never
// appear in messages (nor in the String of [S3]); a secret file readable
// by group or others, and (in [Load]) a secret written inline in a file
// readable by group or others, give a warning.
//
// # NBD server
//
// [NBD] holds the settings of backy nbd, the result being [Config].NBD
// ([NBD]); every key is optional:
//
//	listen = <host:port>               port 1..65535; default 127.0.0.1:10809
//	tls_cert = <path>                  PEM certificate chain, the server's first; together with tls_key
//	tls_key = <path>                   PEM private key of the certificate, unencrypted
//	tls = off|optional|required        default off without tls_cert, optional with it, required with tls_client_ca
//	tls_client_ca = <path>             PEM CA certificates; clients must present a certificate they signed
//	max_connections = <n>              sessions at once, 1..4096; default 64
//	max_connections_per_client = <n>   connections from one IP address, 1..4096; default 16
//	handshake_timeout = <duration>     1s..10m (or seconds); default 10s
//
// The files are read while parsing (at most 1 MiB each): tls_cert must
// hold at least one certificate, tls_key a private key that is not
// encrypted, the two must make a key pair as [crypto/tls.X509KeyPair]
// (and so [crypto/tls.LoadX509KeyPair]) checks, and tls_client_ca must
// hold nothing but PEM certificates, at least one. tls = optional or
// required needs tls_cert; tls_client_ca needs tls_cert and tls =
// required (with optional, clients could skip TLS and so the certificate
// check). A tls_key file readable by group or others, and a certificate
// that has expired, give a warning. [NBD.TLSConfig] makes the server's
// [crypto/tls.Config] from the files.
//
// # Encryption
//
// [DEFAULTS] encryption_version (0 to 65535, default 0) is the encryption
// version new blocks are written with; 0 writes them unencrypted. The key
// of a version N >= 1 is given either in [DEFAULTS], next to
// encryption_version = N, by at most one of
//
//	encryption_key = <64 hexadecimal digits>
//	encryption_key_file = <path of a file holding 64 hexadecimal digits>
//	encryption_passphrase = <passphrase>
//	encryption_passphrase_file = <path of a file holding the passphrase>
//
// with encryption_cipher = aes-256-gcm (the default) or xchacha20-poly1305,
// or in an [EncryptionN] section by exactly one of key, key_file,
// passphrase, passphrase_file, with cipher = (default aes-256-gcm). The
// [EncryptionN] sections also hold the keys of older versions, needed to
// read the blocks written with them. It is an error to set key material
// (or encryption_cipher) in [DEFAULTS] while encryption_version is 0, to
// give a version a key both in [DEFAULTS] and in its section, to set
// encryption_cipher in [DEFAULTS] when the key of encryption_version is in
// an [EncryptionN] section, and to set encryption_version = N without a key
// for N.
//
// Key and passphrase files are read while parsing (at most 64 KiB). A key
// file holds 64 hexadecimal digits (e.g. the output of openssl rand -hex
// 32); whitespace around them is ignored. A passphrase file holds the
// passphrase; one trailing "\n" or "\r\n" is removed and the rest, which
// must not be empty, is the passphrase. A key or passphrase file readable
// by group or others gives a warning in Config.Warnings, not an error.
// The result is [Config].Encryption; [Config.KeyFor] looks a version's key
// up. Error messages and [Key.String] never show key material.
//
// Every problem in a file is reported as one error wrapping [ErrInvalid]
// whose one-line message names the file, the line, the section and key,
// what is wrong and what is expected, for example:
//
//	backy.cfg:12: [DEFAULTS] block_size: "4MB" is not a number of bytes (expected e.g. 4194304 or 4MiB)
//
// Every count and size has bounds (see ranges.go: workers 0..256,
// simultaneous_writes and simultaneous_reads 1..1024,
// disallow_rm_when_younger_than_days 0..36500, compression_level 1..4,
// block_size 64KiB..64MiB); a value outside them is an error naming the key
// and the range, with sizes in units ([FormatSize]):
//
//	backy.cfg:3: [DEFAULTS] workers: "1000000" is out of range: workers must be between 0 and 256 (0 = one per CPU)
//
// Which configuration is used is decided by [Resolve]: the file given with
// -c, else the file named by $BACKY_CONFIG, else the built-in default
// ([Default]) for a store in [DefaultHome].
//
// The file backy.cfg.example at the root of the repository documents every
// key; it is parsed by this package's tests so it stays valid.
package config
