package keyring

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/backy/backy/blockstore/backend"
	"github.com/backy/backy/blockstore/object"
	"github.com/backy/backy/internal/clock"
)

// ErrWrongKey: the configured key material of an encryption version is not
// the one the store registered for it (another key id, another cipher, or
// a raw key where the store has a passphrase, or the reverse).
var ErrWrongKey = errors.New("wrong encryption key")

// Source is the key material the operator configured for one encryption
// version. Exactly one of Key and Passphrase is set.
type Source struct {
	EncVersion uint16
	Cipher     object.Cipher
	// Key is a raw 32-byte key.
	Key []byte
	// Passphrase is turned into the key by the registration's KDF.
	Passphrase []byte
	// Origin says where the material came from, for messages
	// ("encryption_key_file /etc/backy.key", "[Encryption1] passphrase").
	// It must never contain the material itself.
	Origin string
}

func (s Source) validate() error {
	switch {
	case s.EncVersion == 0:
		return fmt.Errorf("%s: encryption version 0 is unencrypted and takes no key", s.Origin)
	case s.Cipher != object.CipherAES256GCM && s.Cipher != object.CipherXChaCha20Poly1305:
		return fmt.Errorf("encryption version %d (%s): unsupported cipher %s: use %s or %s",
			s.EncVersion, s.Origin, s.Cipher, object.CipherAES256GCM, object.CipherXChaCha20Poly1305)
	case len(s.Key) > 0 && len(s.Passphrase) > 0:
		return fmt.Errorf("encryption version %d (%s): both a key and a passphrase are set: configure only one", s.EncVersion, s.Origin)
	case len(s.Key) == 0 && len(s.Passphrase) == 0:
		return fmt.Errorf("encryption version %d (%s): neither a key nor a passphrase is set (or it is empty)", s.EncVersion, s.Origin)
	case len(s.Key) > 0 && len(s.Key) != keySize:
		return fmt.Errorf("encryption version %d (%s): the key is %d bytes, it must be %d (64 hex digits)", s.EncVersion, s.Origin, len(s.Key), keySize)
	}
	return nil
}

// isPassphrase reports whether s is a passphrase rather than a raw key.
func (s Source) isPassphrase() bool { return len(s.Passphrase) > 0 }

// material names the kind of material for messages.
func (s Source) material() string {
	if s.isPassphrase() {
		return "passphrase"
	}
	return "key"
}

// Registry is where the store registers its encryption versions: the
// metastore. Both methods are atomic.
type Registry interface {
	// EncVersions returns every registered version's registration bytes.
	EncVersions() (map[uint16][]byte, error)
	// RegisterEncVersion stores reg as the registration of v unless v is
	// already registered, and returns the registration that is stored
	// (reg, or the one that was there first).
	RegisterEncVersion(v uint16, reg []byte) ([]byte, error)
}

// Options tune Load. The zero value is valid.
type Options struct {
	// Rand supplies the salt of a new passphrase registration when NewKDF
	// is nil; crypto/rand when nil.
	Rand io.Reader
	// Clock gives the registration time; clock.System when nil.
	Clock clock.Clock
	// NewKDF gives the KDF of a new passphrase registration; DefaultKDF
	// (with Rand) when nil. Tests pass cheap parameters.
	NewKDF func() (KDF, error)
	// Log receives what Load did (registrations, adoptions, repairs); no
	// logging when nil. Nothing secret is ever logged.
	Log *slog.Logger
	// Recover makes the registration of a configured version that
	// neither the registry nor the backend has (keys/<N>.json lost with
	// the metastore) again from the configured raw key, if the store's
	// objects at that version carry its cipher and key id (a few object
	// headers are read), and rewrites keys/<N>.json. For commands that
	// work without a metastore (rebuild-metastore, ls and restore
	// --from-backend); see recover.go.
	Recover bool
}

// Ring holds the verified keys of the configured encryption versions. It is
// immutable once Load returns and safe for concurrent use.
type Ring struct {
	write uint16
	keys  map[uint16]*object.Key
	regs  map[uint16]Registration
	// missing says, per configured version whose registration is lost
	// and cannot be recovered (a passphrase), what is missing.
	missing map[uint16]string
}

var _ object.Keys = (*Ring)(nil)

// Key returns the key of encryption version v. A version without a
// configured key yields an error wrapping object.ErrNoKey that says how to
// configure it.
func (r *Ring) Key(v uint16) (*object.Key, error) {
	if k, ok := r.keys[v]; ok {
		return k, nil
	}
	if v == 0 {
		return nil, fmt.Errorf("%w: encryption version 0 is unencrypted and has no key", object.ErrNoKey)
	}
	if why, ok := r.missing[v]; ok {
		return nil, fmt.Errorf("%w: %s", object.ErrNoKey, why)
	}
	if reg, ok := r.regs[v]; ok {
		return nil, fmt.Errorf("%w: encryption version %d (%s, key id %x) is not configured: add an [Encryption%d] section with its key to the config",
			object.ErrNoKey, v, reg.Cipher, reg.KeyID, v)
	}
	return nil, fmt.Errorf("%w: encryption version %d is not registered in this store and not configured: add an [Encryption%d] section with its key to the config",
		object.ErrNoKey, v, v)
}

// WriteKey returns the key new objects are sealed with, or nil when the
// write version is 0 (no encryption).
func (r *Ring) WriteKey() *object.Key { return r.keys[r.write] }

// WriteVersion returns the encryption version new objects are written at
// (0: unencrypted).
func (r *Ring) WriteVersion() uint16 { return r.write }

// Has reports whether the key of encryption version v is configured and
// verified.
func (r *Ring) Has(v uint16) bool { return r.keys[v] != nil }

// Registered returns the store's registrations known to the ring (those of
// the registry, plus any adopted or created by Load), by version.
func (r *Ring) Registered() []Registration {
	out := make([]Registration, 0, len(r.regs))
	for _, v := range slices.Sorted(maps.Keys(r.regs)) {
		out = append(out, r.regs[v].clone())
	}
	return out
}

// Load turns the configured key material into the keys of a Ring,
// verifying each against the store's registration of its version, and
// registers the write version when it is new. See the package
// documentation for the steps and their order.
func Load(ctx context.Context, reg Registry, be backend.Backend, sources []Source, write uint16, o Options) (*Ring, error) {
	if reg == nil || be == nil {
		return nil, errors.New("keyring.Load needs a registry and a backend")
	}
	o.Clock = clock.Or(o.Clock)
	if o.NewKDF == nil {
		r := o.Rand
		if r == nil {
			o.NewKDF = DefaultKDF
		} else {
			o.NewKDF = func() (KDF, error) { return defaultKDF(r) }
		}
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	bySource := make(map[uint16]Source, len(sources))
	for _, s := range sources {
		if err := s.validate(); err != nil {
			return nil, err
		}
		if old, dup := bySource[s.EncVersion]; dup {
			return nil, fmt.Errorf("encryption version %d is configured twice (%s and %s): keep one", s.EncVersion, old.Origin, s.Origin)
		}
		bySource[s.EncVersion] = s
	}

	l := &loader{ctx: ctx, reg: reg, be: be, o: o,
		raw:  map[uint16][]byte{},
		regs: map[uint16]Registration{},
		keys: map[uint16]*object.Key{},
	}
	// 1. The registry's registrations.
	raw, err := reg.EncVersions()
	if err != nil {
		return nil, fmt.Errorf("reading the store's encryption versions: %w", err)
	}
	for _, v := range slices.Sorted(maps.Keys(raw)) {
		b := raw[v]
		r, err := parseFor(v, b, "the metastore's registration")
		if err != nil {
			return nil, err
		}
		l.raw[v], l.regs[v] = b, r
	}
	// Fail fast, before any slow derivation, when the write version has no
	// key at all.
	if _, ok := bySource[write]; write > 0 && !ok {
		return nil, l.noWriteKey(write)
	}

	// 2. Each source, in version order.
	copies := map[uint16]bool{}
	if write > 0 {
		copies[write] = true
	}
	for _, v := range slices.Sorted(maps.Keys(bySource)) {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		repair, err := l.load(bySource[v], v == write)
		if err != nil {
			return nil, err
		}
		if repair {
			copies[v] = true
		}
	}

	// 3. The backend copies: the write version's always, and any adopted
	// one whose backend bytes lost a registration race.
	if write > 0 && l.keys[write] == nil {
		return nil, l.noWriteKey(write)
	}
	for _, v := range slices.Sorted(maps.Keys(copies)) {
		if err := l.ensureCopy(v); err != nil {
			return nil, err
		}
	}
	return &Ring{write: write, keys: l.keys, regs: l.regs, missing: l.missing}, nil
}

type loader struct {
	ctx  context.Context
	reg  Registry
	be   backend.Backend
	o    Options
	raw  map[uint16][]byte
	regs map[uint16]Registration
	keys map[uint16]*object.Key
	// For Options.Recover (recover.go): objects still to probe, headers
	// read, and versions whose registration is lost for good.
	candidates []string
	headers    []probed
	missing    map[uint16]string
}

func (l *loader) noWriteKey(v uint16) error {
	if why, ok := l.missing[v]; ok {
		return fmt.Errorf("%w: %s", object.ErrNoKey, why)
	}
	reg := ""
	if r, ok := l.regs[v]; ok {
		reg = fmt.Sprintf(" (the store registered %s, key id %x)", r.Cipher, r.KeyID)
	}
	return fmt.Errorf("%w: encryption version %d is the write version but no key is configured for it%s: configure encryption_key, encryption_key_file, encryption_passphrase or encryption_passphrase_file",
		object.ErrNoKey, v, reg)
}

// parseFor parses the registration of version v found in where.
func parseFor(v uint16, b []byte, where string) (Registration, error) {
	r, err := ParseRegistration(b)
	if err != nil {
		return r, fmt.Errorf("encryption version %d: %s: %w", v, where, err)
	}
	if r.EncVersion != v {
		return r, fmt.Errorf("encryption version %d: %s: %w: it registers encryption version %d", v, where, ErrBadRegistration, r.EncVersion)
	}
	return r, nil
}

// derived caches the key of one source under one KDF, so that a source is
// derived once unless it meets a registration with another KDF.
type derived struct {
	key *object.Key
	kdf *KDF
	ok  bool
}

// keyFor returns the key of src under kdf (nil: src is a raw key).
func (l *loader) keyFor(src Source, kdf *KDF, d *derived) (*object.Key, error) {
	if d.ok && d.kdf.equal(kdf) && d.key.Cipher == src.Cipher {
		return d.key, nil
	}
	material := src.Key
	if kdf != nil {
		m, err := derive(l.ctx, *kdf, src.Passphrase)
		if err != nil {
			return nil, fmt.Errorf("encryption version %d: deriving the key from %s: %w", src.EncVersion, src.Origin, err)
		}
		// Best effort: the AEAD keeps its own expanded copy, this one
		// need not outlive NewKey.
		defer clear(m)
		material = m
	}
	k, err := object.NewKey(src.EncVersion, src.Cipher, material)
	if err != nil {
		return nil, err
	}
	*d = derived{key: k, kdf: kdf.clone(), ok: true}
	return k, nil
}

// derive runs Argon2id in its own goroutine so that a cancelled ctx returns
// at once (the computation itself cannot be interrupted; its result is
// cleared and dropped).
func derive(ctx context.Context, kdf KDF, passphrase []byte) ([]byte, error) {
	if err := kdf.Validate(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// The goroutine may outlive the call: give it its own copy.
	pass := bytes.Clone(passphrase)
	done := make(chan []byte, 1)
	go func() {
		k, _ := kdf.Derive(pass)
		clear(pass)
		done <- k
	}()
	select {
	case k := <-done:
		return k, nil
	case <-ctx.Done():
		go func() { clear(<-done) }()
		return nil, ctx.Err()
	}
}

// verify returns src's key if it is the key r registers.
func (l *loader) verify(src Source, r Registration, d *derived) (*object.Key, error) {
	v := src.EncVersion
	if src.Cipher != r.Cipher {
		return nil, fmt.Errorf("%w: encryption version %d: the store registered %s for this version but %s is configured with %s: set its cipher to %s",
			ErrWrongKey, v, r.Cipher, src.Origin, src.Cipher, r.Cipher)
	}
	if r.KDF != nil && !src.isPassphrase() {
		return nil, fmt.Errorf("%w: encryption version %d: the store registered a passphrase (%s) for this version but %s is a raw key: configure the passphrase",
			ErrWrongKey, v, r.KDF.Name, src.Origin)
	}
	if r.KDF == nil && src.isPassphrase() {
		return nil, fmt.Errorf("%w: encryption version %d: the store registered a raw key for this version but %s is a passphrase: configure the key",
			ErrWrongKey, v, src.Origin)
	}
	k, err := l.keyFor(src, r.KDF, d)
	if err != nil {
		return nil, err
	}
	if k.ID != r.KeyID {
		what := "the key from " + src.Origin
		if src.isPassphrase() {
			what = "the key derived from the passphrase of " + src.Origin
		}
		return nil, fmt.Errorf("%w: encryption version %d: %s is not this store's key (key id %x, the store's is %x): check the %s",
			ErrWrongKey, v, what, k.ID, r.KeyID, src.material())
	}
	return k, nil
}

// load verifies (or registers) the key of one source. It reports whether
// the version's backend copy must be checked.
func (l *loader) load(src Source, isWrite bool) (bool, error) {
	v := src.EncVersion
	var d derived
	if r, ok := l.regs[v]; ok {
		k, err := l.verify(src, r, &d)
		if err != nil {
			return false, err
		}
		l.keys[v] = k
		return false, nil
	}

	name := ObjectName(v)
	loc := l.be.Properties().Location
	b, err := l.be.Get(l.ctx, name, nil)
	switch {
	case err == nil:
		// The metastore lacks a version the backend has: it was restored
		// from an older copy, or a crash hit between the two writes of
		// another process. Verify, then adopt.
		r, err := parseFor(v, b, name+" at "+loc)
		if err != nil {
			return false, err
		}
		if _, err := l.verify(src, r, &d); err != nil {
			return false, err
		}
		won, err := l.register(src, b, &d)
		if err != nil {
			return false, err
		}
		l.o.Log.Info("adopted the backend's key registration", "encryption_version", v, "cipher", l.regs[v].Cipher.String(),
			"key_id", fmt.Sprintf("%x", l.regs[v].KeyID), "object", name)
		return !bytes.Equal(won, b), nil
	case !errors.Is(err, backend.ErrNotFound):
		return false, fmt.Errorf("encryption version %d: reading %s at %s: %w", v, name, loc, err)
	}

	if l.o.Recover {
		// Registered nowhere: if the store's objects use the version,
		// its registration was lost; make it again from the key.
		found, err := l.recoverReg(src, &d)
		if err != nil || found {
			return found && l.keys[v] != nil, err
		}
	}
	if !isWrite {
		l.o.Log.Debug("ignoring the key of an encryption version the store does not use", "encryption_version", v, "origin", src.Origin)
		return false, nil
	}
	// A new write version: register it.
	var kdf *KDF
	if src.isPassphrase() {
		k, err := l.o.NewKDF()
		if err != nil {
			return false, fmt.Errorf("encryption version %d: %w", v, err)
		}
		if err := k.Validate(); err != nil {
			return false, fmt.Errorf("encryption version %d: new KDF: %w", v, err)
		}
		kdf = &k
	}
	key, err := l.keyFor(src, kdf, &d)
	if err != nil {
		return false, err
	}
	r := Registration{
		Format:     RegistrationFormat,
		EncVersion: v,
		Cipher:     src.Cipher,
		KeyID:      key.ID,
		KDF:        kdf,
		Registered: l.o.Clock.Now().UTC().Truncate(time.Second),
	}
	b, err = r.Marshal()
	if err != nil {
		return false, err
	}
	if _, err := l.register(src, b, &d); err != nil {
		return false, err
	}
	kdfName := "none (raw key)"
	if kdf != nil {
		kdfName = kdf.Name
	}
	l.o.Log.Info("registered a new encryption version", "encryption_version", v, "cipher", l.regs[v].Cipher.String(),
		"key_id", fmt.Sprintf("%x", l.regs[v].KeyID), "kdf", kdfName, "origin", src.Origin)
	return true, nil
}

// register stores b as the registration of src's version in the registry.
// If another process registered first, src is verified against the winner.
// It records the outcome and returns the registered bytes.
func (l *loader) register(src Source, b []byte, d *derived) ([]byte, error) {
	v := src.EncVersion
	won, err := l.reg.RegisterEncVersion(v, b)
	if err != nil {
		return nil, fmt.Errorf("encryption version %d: registering its key in the metastore: %w", v, err)
	}
	r, err := parseFor(v, won, "the metastore's registration")
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(won, b) {
		l.o.Log.Info("another process registered the encryption version first; using its registration", "encryption_version", v)
	}
	k, err := l.verify(src, r, d)
	if err != nil {
		return nil, err
	}
	won = bytes.Clone(won)
	l.raw[v], l.regs[v], l.keys[v] = won, r, k
	return won, nil
}

// ensureCopy makes the backend copy of version v hold exactly the
// registered bytes, writing it (and syncing the backend) when it is missing
// or different.
func (l *loader) ensureCopy(v uint16) error {
	want := l.raw[v]
	name := ObjectName(v)
	loc := l.be.Properties().Location
	got, err := l.be.Get(l.ctx, name, nil)
	switch {
	case err == nil && bytes.Equal(got, want):
		return nil
	case err == nil:
		l.o.Log.Warn("the backend's key registration differs from the metastore's; rewriting it", "encryption_version", v, "object", name, "location", loc)
	case errors.Is(err, backend.ErrNotFound):
		l.o.Log.Info("writing the key registration to the backend", "encryption_version", v, "object", name)
	default:
		return fmt.Errorf("encryption version %d: reading %s at %s: %w", v, name, loc, err)
	}
	if err := l.be.Put(l.ctx, name, want); err != nil {
		return fmt.Errorf("encryption version %d: writing %s at %s: %w", v, name, loc, err)
	}
	if err := backend.Sync(l.ctx, l.be); err != nil {
		return fmt.Errorf("encryption version %d: writing %s at %s: %w", v, name, loc, err)
	}
	return nil
}
