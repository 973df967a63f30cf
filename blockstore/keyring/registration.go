package keyring

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"time"

	"golang.org/x/crypto/argon2"

	"github.com/backy/backy/blockstore/object"
)

// RegistrationFormat is the layout of a key registration this code writes.
// ParseRegistration refuses newer formats and asks for a newer backy.
const RegistrationFormat = 1

// KDFArgon2id is the only key derivation function of format 1.
const KDFArgon2id = "argon2id"

// Bounds on the parameters of a registration's KDF. They keep a damaged or
// hostile registration from making Load spin for hours or allocate more
// than 4 GiB, and they refuse parameters too weak to be a real KDF.
const (
	MinSaltSize  = 16
	MaxSaltSize  = 64
	MinKDFTime   = 1
	MaxKDFTime   = 100
	MaxMemoryKiB = 4 << 20 // 4 GiB
	// The minimum memory is 8 KiB per thread, as argon2 requires.
	minMemoryKiBPerThread = 8
)

// keySize is the length of every key: both ciphers take 32 bytes.
const keySize = 32

// ErrBadRegistration: a key registration that is not valid JSON of a known
// format or holds values out of range.
var ErrBadRegistration = errors.New("invalid key registration")

// KDF describes how the key of a passphrase-protected encryption version is
// derived: Argon2id(passphrase, Salt, Time, MemoryKiB, Threads) gives the
// 32-byte key. None of it is secret.
type KDF struct {
	Name      string
	Salt      []byte
	Time      uint32
	MemoryKiB uint32
	Threads   uint8
}

// Default parameters of DefaultKDF: the second recommendation of RFC 9106
// (section 4), t=3, m=64 MiB, p=4.
const (
	DefaultKDFTime      = 3
	DefaultKDFMemoryKiB = 64 << 10
	DefaultKDFThreads   = 4
	DefaultSaltSize     = 16
)

// DefaultKDF returns Argon2id with the default parameters and a fresh
// random 16-byte salt from crypto/rand.
func DefaultKDF() (KDF, error) { return defaultKDF(rand.Reader) }

func defaultKDF(r io.Reader) (KDF, error) {
	salt := make([]byte, DefaultSaltSize)
	if _, err := io.ReadFull(r, salt); err != nil {
		return KDF{}, fmt.Errorf("drawing a KDF salt: %w", err)
	}
	return KDF{Name: KDFArgon2id, Salt: salt, Time: DefaultKDFTime, MemoryKiB: DefaultKDFMemoryKiB, Threads: DefaultKDFThreads}, nil
}

// Validate reports whether k is a KDF this backy uses: Argon2id with
// parameters inside the bounds above.
func (k KDF) Validate() error {
	switch {
	case k.Name != KDFArgon2id:
		return fmt.Errorf("kdf %s is not supported (only %s)", quote(k.Name), KDFArgon2id)
	case len(k.Salt) < MinSaltSize || len(k.Salt) > MaxSaltSize:
		return fmt.Errorf("kdf salt of %d bytes, want %d to %d", len(k.Salt), MinSaltSize, MaxSaltSize)
	case k.Time < MinKDFTime || k.Time > MaxKDFTime:
		return fmt.Errorf("kdf time %d out of range %d..%d", k.Time, MinKDFTime, MaxKDFTime)
	case k.Threads < 1:
		return fmt.Errorf("kdf threads %d out of range 1..255", k.Threads)
	case k.MemoryKiB < minMemoryKiBPerThread*uint32(k.Threads) || k.MemoryKiB > MaxMemoryKiB:
		return fmt.Errorf("kdf memory %d KiB out of range %d..%d KiB for %d threads",
			k.MemoryKiB, minMemoryKiBPerThread*uint32(k.Threads), MaxMemoryKiB, k.Threads)
	}
	return nil
}

// Derive returns the 32-byte key derived from passphrase. It refuses
// parameters that Validate refuses. The caller should clear the result once
// it has made an object.Key from it.
func (k KDF) Derive(passphrase []byte) ([]byte, error) {
	if err := k.Validate(); err != nil {
		return nil, err
	}
	return argon2.IDKey(passphrase, k.Salt, k.Time, k.MemoryKiB, k.Threads, keySize), nil
}

func (k *KDF) equal(o *KDF) bool {
	if k == nil || o == nil {
		return k == nil && o == nil
	}
	return k.Name == o.Name && bytes.Equal(k.Salt, o.Salt) && k.Time == o.Time && k.MemoryKiB == o.MemoryKiB && k.Threads == o.Threads
}

func (k *KDF) clone() *KDF {
	if k == nil {
		return nil
	}
	c := *k
	c.Salt = slices.Clone(k.Salt)
	return &c
}

// Registration records which key an encryption version uses: its cipher,
// the id of its key (object.Key.ID) and, for a passphrase, how the key is
// derived. It is kept in the metastore and as ObjectName(EncVersion) in the
// backend; see the package documentation.
type Registration struct {
	Format     int
	EncVersion uint16
	Cipher     object.Cipher
	KeyID      [object.KeyIDSize]byte
	KDF        *KDF // nil for a raw 32-byte key
	Registered time.Time
}

// ObjectName is the backend object holding the registration of encryption
// version v: "keys/<v>.json".
func ObjectName(v uint16) string { return "keys/" + strconv.Itoa(int(v)) + ".json" }

// wireRegistration is the JSON layout (docs: design, "Key registration").
// Numbers are decoded as int64 so that out-of-range values get a message of
// ours rather than a decoder error.
type wireRegistration struct {
	Format     int64     `json:"format"`
	EncVersion int64     `json:"encryption_version"`
	Cipher     string    `json:"cipher"`
	KeyID      string    `json:"key_id"`
	KDF        *wireKDF  `json:"kdf,omitempty"`
	Registered time.Time `json:"registered"`
}

type wireKDF struct {
	Name      string `json:"name"`
	Salt      string `json:"salt"`
	Time      int64  `json:"time"`
	MemoryKiB int64  `json:"memory_kib"`
	Threads   int64  `json:"threads"`
}

// Marshal returns the JSON form of r, one line ending in a newline. It
// refuses a registration that ParseRegistration would refuse.
func (r Registration) Marshal() ([]byte, error) {
	if err := r.validate(); err != nil {
		return nil, err
	}
	w := wireRegistration{
		Format:     int64(r.Format),
		EncVersion: int64(r.EncVersion),
		Cipher:     r.Cipher.String(),
		KeyID:      hex.EncodeToString(r.KeyID[:]),
		Registered: r.Registered.UTC(),
	}
	if r.KDF != nil {
		w.KDF = &wireKDF{
			Name:      r.KDF.Name,
			Salt:      hex.EncodeToString(r.KDF.Salt),
			Time:      int64(r.KDF.Time),
			MemoryKiB: int64(r.KDF.MemoryKiB),
			Threads:   int64(r.KDF.Threads),
		}
	}
	b, err := json.Marshal(w)
	if err != nil {
		return nil, fmt.Errorf("encoding the registration of encryption version %d: %w", r.EncVersion, err)
	}
	return append(b, '\n'), nil
}

// ParseRegistration decodes and validates a registration. Every error wraps
// ErrBadRegistration; a registration of a newer format asks for a newer
// backy. Unknown JSON fields are ignored (a later backy may add optional
// ones without changing the format).
func ParseRegistration(b []byte) (Registration, error) {
	r, err := parseRegistration(b)
	if err != nil {
		return Registration{}, err
	}
	return r, nil
}

func parseRegistration(b []byte) (Registration, error) {
	var r Registration
	var head struct {
		Format int64 `json:"format"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		return r, fmt.Errorf("%w: not a JSON object with a numeric format: %v", ErrBadRegistration, err)
	}
	if head.Format > RegistrationFormat {
		return r, fmt.Errorf("%w: format %d is newer than this backy supports (%d): upgrade backy", ErrBadRegistration, head.Format, RegistrationFormat)
	}
	if head.Format < 1 {
		return r, fmt.Errorf("%w: format %d", ErrBadRegistration, head.Format)
	}
	var w wireRegistration
	if err := json.Unmarshal(b, &w); err != nil {
		return r, fmt.Errorf("%w: %v", ErrBadRegistration, err)
	}
	if w.EncVersion < 1 || w.EncVersion > 65535 {
		return r, fmt.Errorf("%w: encryption version %d out of range 1..65535", ErrBadRegistration, w.EncVersion)
	}
	r.Format = int(w.Format)
	r.EncVersion = uint16(w.EncVersion)
	c, ok := parseCipher(w.Cipher)
	if !ok {
		return r, fmt.Errorf("%w: encryption version %d: unknown cipher %s", ErrBadRegistration, r.EncVersion, quote(w.Cipher))
	}
	r.Cipher = c
	id, err := hex.DecodeString(w.KeyID)
	if err != nil || len(id) != object.KeyIDSize {
		return r, fmt.Errorf("%w: encryption version %d: key_id %s is not %d hex-encoded bytes", ErrBadRegistration, r.EncVersion, quote(w.KeyID), object.KeyIDSize)
	}
	r.KeyID = [object.KeyIDSize]byte(id)
	if w.KDF != nil {
		k := &KDF{Name: w.KDF.Name}
		if k.Salt, err = hex.DecodeString(w.KDF.Salt); err != nil {
			return r, fmt.Errorf("%w: encryption version %d: kdf salt is not hex", ErrBadRegistration, r.EncVersion)
		}
		switch {
		case w.KDF.Time < MinKDFTime || w.KDF.Time > MaxKDFTime:
			return r, fmt.Errorf("%w: encryption version %d: kdf time %d out of range %d..%d", ErrBadRegistration, r.EncVersion, w.KDF.Time, MinKDFTime, MaxKDFTime)
		case w.KDF.Threads < 1 || w.KDF.Threads > 255:
			return r, fmt.Errorf("%w: encryption version %d: kdf threads %d out of range 1..255", ErrBadRegistration, r.EncVersion, w.KDF.Threads)
		case w.KDF.MemoryKiB < 1 || w.KDF.MemoryKiB > MaxMemoryKiB:
			return r, fmt.Errorf("%w: encryption version %d: kdf memory %d KiB out of range", ErrBadRegistration, r.EncVersion, w.KDF.MemoryKiB)
		}
		k.Time, k.MemoryKiB, k.Threads = uint32(w.KDF.Time), uint32(w.KDF.MemoryKiB), uint8(w.KDF.Threads)
		r.KDF = k
	}
	r.Registered = w.Registered.UTC()
	return r, r.validate()
}

// validate checks everything ParseRegistration checks, on the decoded form.
func (r Registration) validate() error {
	switch {
	case r.Format > RegistrationFormat:
		return fmt.Errorf("%w: format %d is newer than this backy supports (%d): upgrade backy", ErrBadRegistration, r.Format, RegistrationFormat)
	case r.Format < 1:
		return fmt.Errorf("%w: format %d", ErrBadRegistration, r.Format)
	case r.EncVersion < 1:
		return fmt.Errorf("%w: encryption version 0 is unencrypted and has no key", ErrBadRegistration)
	case r.Cipher != object.CipherAES256GCM && r.Cipher != object.CipherXChaCha20Poly1305:
		return fmt.Errorf("%w: encryption version %d: unsupported cipher %s", ErrBadRegistration, r.EncVersion, r.Cipher)
	}
	if r.KDF != nil {
		if err := r.KDF.Validate(); err != nil {
			return fmt.Errorf("%w: encryption version %d: %v", ErrBadRegistration, r.EncVersion, err)
		}
	}
	if y := r.Registered.UTC().Year(); r.Registered.IsZero() || y < 1970 || y > 9999 {
		return fmt.Errorf("%w: encryption version %d: registration time missing or out of range", ErrBadRegistration, r.EncVersion)
	}
	return nil
}

func (r Registration) clone() Registration {
	r.KDF = r.KDF.clone()
	return r
}

// ParseCipher returns the cipher named name ("aes-256-gcm" or
// "xchacha20-poly1305"); "none" is not an encryption cipher.
func ParseCipher(name string) (object.Cipher, error) {
	if c, ok := parseCipher(name); ok {
		return c, nil
	}
	return object.CipherNone, fmt.Errorf("unknown cipher %s: use %s or %s", quote(name), object.CipherAES256GCM, object.CipherXChaCha20Poly1305)
}

func parseCipher(name string) (object.Cipher, bool) {
	for _, c := range []object.Cipher{object.CipherAES256GCM, object.CipherXChaCha20Poly1305} {
		if name == c.String() {
			return c, true
		}
	}
	return object.CipherNone, false
}

// quote quotes an untrusted string for a message, cut to a sane length.
func quote(s string) string {
	const maxLen = 40
	if len(s) > maxLen {
		return strconv.Quote(s[:maxLen]) + "..."
	}
	return strconv.Quote(s)
}
