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
//   - Only the sections [DEFAULTS], [MetaBackend] and [DataBackend] exist;
//     section names are case-sensitive and each may appear at most once.
//     Any other section is an error.
//   - Settings are "key = value" or "key: value" lines. Keys are
//     case-insensitive (they are stored lower-case) and made of letters,
//     digits and underscores; whitespace around key and value is trimmed.
//     Every key must appear inside a section, at most once per section, and
//     must be one the section knows.
//   - A line whose first non-blank character is '#' or ';' is a comment;
//     blank lines are ignored. Inline comments are NOT supported: in
//     "path = /srv/a#b" the value is "/srv/a#b", and in "workers = 4 # x"
//     the value "4 # x" is rejected as not an integer.
//   - Sizes are a plain number of bytes or a number with one of the binary
//     suffixes KiB, MiB, GiB (or K, M, G meaning the same), case-insensitive,
//     e.g. 4194304, 4MiB, 4m, 4096 KiB.
//   - Relative paths are resolved against the directory holding the config
//     file; a leading "~/" (or a path of just "~") is replaced by the user's
//     home directory. "~user" forms are not supported. All paths in a parsed
//     [Config] are absolute and cleaned.
//
// Every problem in a file is reported as one error wrapping [ErrInvalid]
// whose one-line message names the file, the line, the section and key,
// what is wrong and what is expected, for example:
//
//	backy.cfg:12: [DEFAULTS] block_size: "4MB" is not a number of bytes (expected e.g. 4194304 or 4MiB)
//
// Which configuration is used is decided by [Resolve]: the file given with
// -c, else the file named by $BACKY_CONFIG, else the built-in default
// ([Default]) for a store in [DefaultHome].
//
// The file backy.cfg.example at the root of the repository documents every
// key; it is parsed by this package's tests so it stays valid.
package config
