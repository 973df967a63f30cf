package keyring

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/backy/backy/blockstore/backend"
	"github.com/backy/backy/blockstore/backend/file"
	"github.com/backy/backy/blockstore/object"
	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/internal/clock"
)

// fakeRegistry is an in-memory Registry with register-if-absent semantics.
// winner simulates a lost race: RegisterEncVersion of a version listed
// there finds that registration already stored by "another process".
type fakeRegistry struct {
	mu       sync.Mutex
	regs     map[uint16][]byte
	winner   map[uint16][]byte
	err      error
	register int // calls of RegisterEncVersion
}

func newRegistry() *fakeRegistry { return &fakeRegistry{regs: map[uint16][]byte{}} }

func (f *fakeRegistry) EncVersions() (map[uint16][]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	out := map[uint16][]byte{}
	for v, b := range f.regs {
		out[v] = bytes.Clone(b)
	}
	return out, nil
}

func (f *fakeRegistry) RegisterEncVersion(v uint16, reg []byte) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.register++
	if w, ok := f.winner[v]; ok {
		if _, ok := f.regs[v]; !ok {
			f.regs[v] = bytes.Clone(w)
		}
	}
	if old, ok := f.regs[v]; ok {
		return bytes.Clone(old), nil
	}
	f.regs[v] = bytes.Clone(reg)
	return bytes.Clone(reg), nil
}

func (f *fakeRegistry) get(v uint16) []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.regs[v]
}

// syncBuffer collects log output from concurrent Loads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// cheapKDF is Argon2id with the smallest parameters the bounds allow and a
// fresh salt, so that tests run fast.
func cheapKDF() (KDF, error) {
	salt := make([]byte, 16)
	_, _ = rand.Read(salt)
	return KDF{Name: KDFArgon2id, Salt: salt, Time: 1, MemoryKiB: 64, Threads: 1}, nil
}

type env struct {
	be  *file.Backend
	reg *fakeRegistry
	log *syncBuffer
}

func newEnv(t *testing.T) *env {
	t.Helper()
	be, err := file.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return &env{be: be, reg: newRegistry(), log: &syncBuffer{}}
}

func (e *env) opts() Options {
	return Options{
		Clock:  clock.NewFake(testTime.Add(1500 * time.Millisecond)),
		NewKDF: cheapKDF,
		Log:    slog.New(slog.NewTextHandler(e.log, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

func (e *env) load(t *testing.T, write uint16, sources ...Source) (*Ring, error) {
	t.Helper()
	return Load(t.Context(), e.reg, e.be, sources, write, e.opts())
}

func (e *env) mustLoad(t *testing.T, write uint16, sources ...Source) *Ring {
	t.Helper()
	r, err := e.load(t, write, sources...)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return r
}

// backendCopy returns the backend's keys/<v>.json, or nil if it is missing.
func (e *env) backendCopy(t *testing.T, v uint16) []byte {
	t.Helper()
	b, err := e.be.Get(t.Context(), ObjectName(v), nil)
	if errors.Is(err, backend.ErrNotFound) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func rawKey(fill byte) []byte { return bytes.Repeat([]byte{fill}, 32) }

func rawSource(v uint16, fill byte) Source {
	return Source{EncVersion: v, Cipher: object.CipherAES256GCM, Key: rawKey(fill), Origin: fmt.Sprintf("[Encryption%d] key_file /etc/backy-%d.key", v, v)}
}

func passSource(v uint16, pass string) Source {
	return Source{EncVersion: v, Cipher: object.CipherXChaCha20Poly1305, Passphrase: []byte(pass), Origin: fmt.Sprintf("[Encryption%d] passphrase_file /etc/backy-%d.pass", v, v)}
}

func keyID(t *testing.T, v uint16, c object.Cipher, material []byte) [object.KeyIDSize]byte {
	t.Helper()
	k, err := object.NewKey(v, c, material)
	if err != nil {
		t.Fatal(err)
	}
	return k.ID
}

// assertNoSecrets fails if s contains any of the secrets, raw or in hex.
func assertNoSecrets(t *testing.T, what, s string, secrets ...[]byte) {
	t.Helper()
	for _, sec := range secrets {
		if len(sec) < 6 {
			continue // too short to tell a leak from a coincidence; tests use longer ones
		}
		for _, form := range []string{string(sec), hex.EncodeToString(sec), strings.ToUpper(hex.EncodeToString(sec)), fmt.Sprintf("%v", sec)} {
			if strings.Contains(s, form) {
				t.Errorf("%s contains a secret (%q): %s", what, form, s)
			}
		}
	}
}

func TestNewRawKeyRegistration(t *testing.T) {
	for _, c := range []object.Cipher{object.CipherAES256GCM, object.CipherXChaCha20Poly1305} {
		t.Run(c.String(), func(t *testing.T) {
			e := newEnv(t)
			src := rawSource(1, 7)
			src.Cipher = c
			ring := e.mustLoad(t, 1, src)
			inReg, inBackend := e.reg.get(1), e.backendCopy(t, 1)
			if inReg == nil || !bytes.Equal(inReg, inBackend) {
				t.Fatalf("registry %q and backend %q differ", inReg, inBackend)
			}
			r, err := ParseRegistration(inReg)
			if err != nil {
				t.Fatal(err)
			}
			want := Registration{Format: 1, EncVersion: 1, Cipher: c, KeyID: keyID(t, 1, c, rawKey(7)), Registered: testTime.Add(time.Second)}
			if !reflect.DeepEqual(r, want) {
				t.Errorf("registration %+v, want %+v", r, want)
			}
			if k := ring.WriteKey(); k == nil || k.ID != want.KeyID || k.EncVersion != 1 || ring.WriteVersion() != 1 {
				t.Errorf("WriteKey = %+v", k)
			}
			if !ring.Has(1) || ring.Has(2) || ring.Has(0) {
				t.Error("Has is wrong")
			}
			if got := ring.Registered(); len(got) != 1 || got[0].KeyID != want.KeyID {
				t.Errorf("Registered = %+v", got)
			}
			// A second Load verifies and changes nothing.
			calls := e.reg.register
			ring2 := e.mustLoad(t, 1, src)
			if ring2.WriteKey().ID != want.KeyID || e.reg.register != calls || !bytes.Equal(e.backendCopy(t, 1), inReg) {
				t.Error("second Load changed the registration")
			}
		})
	}
}

func TestUnencryptedStore(t *testing.T) {
	e := newEnv(t)
	ring := e.mustLoad(t, 0)
	if ring.WriteKey() != nil || ring.WriteVersion() != 0 || len(ring.Registered()) != 0 {
		t.Errorf("ring of an unencrypted store: %+v", ring)
	}
	if _, err := ring.Key(0); !errors.Is(err, object.ErrNoKey) {
		t.Errorf("Key(0) = %v", err)
	}
	// A configured key of a version the store does not use is ignored.
	ring = e.mustLoad(t, 0, rawSource(3, 1))
	if ring.Has(3) || e.reg.get(3) != nil || e.backendCopy(t, 3) != nil {
		t.Error("an unused version was registered")
	}
	if !strings.Contains(e.log.String(), "ignoring") {
		t.Errorf("no debug log of the ignored key: %s", e.log)
	}
}

func TestPassphraseRegistration(t *testing.T) {
	e := newEnv(t)
	first := e.mustLoad(t, 1, passSource(1, "correct horse battery staple"))
	r, err := ParseRegistration(e.reg.get(1))
	if err != nil {
		t.Fatal(err)
	}
	if r.KDF == nil || r.KDF.Name != "argon2id" || r.KDF.Time != 1 || r.KDF.MemoryKiB != 64 || len(r.KDF.Salt) != 16 {
		t.Fatalf("KDF = %+v", r.KDF)
	}
	if !bytes.Equal(e.reg.get(1), e.backendCopy(t, 1)) {
		t.Fatal("backend copy differs")
	}
	want, err := r.KDF.Derive([]byte("correct horse battery staple"))
	if err != nil {
		t.Fatal(err)
	}
	if id := keyID(t, 1, object.CipherXChaCha20Poly1305, want); id != r.KeyID || first.WriteKey().ID != id {
		t.Fatalf("key id %x, registered %x", id, r.KeyID)
	}

	for _, tc := range []struct {
		name  string
		pass  string
		write uint16
		err   error
	}{
		{"same passphrase", "correct horse battery staple", 1, nil},
		{"same passphrase, read only", "correct horse battery staple", 0, nil},
		{"different passphrase", "correct horse battery stapler", 1, ErrWrongKey},
		{"different passphrase, read only", "Tr0ub4dor&3", 0, ErrWrongKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := passSource(1, tc.pass)
			ring, err := e.load(t, tc.write, src)
			if !errors.Is(err, tc.err) {
				t.Fatalf("Load = %v, want %v", err, tc.err)
			}
			if err != nil {
				msg := err.Error()
				for _, part := range []string{"encryption version 1", src.Origin, hex.EncodeToString(r.KeyID[:]), "check the passphrase"} {
					if !strings.Contains(msg, part) {
						t.Errorf("error %q does not mention %q", msg, part)
					}
				}
				assertNoSecrets(t, "error", msg, []byte(tc.pass))
				return
			}
			if k, _ := ring.Key(1); k.ID != r.KeyID {
				t.Errorf("key id %x, want %x", k.ID, r.KeyID)
			}
		})
	}
	assertNoSecrets(t, "log", e.log.String(), []byte("correct horse"), []byte("Tr0ub4dor"), want)
}

func TestVerifyErrors(t *testing.T) {
	e := newEnv(t)
	e.mustLoad(t, 1, rawSource(1, 1))
	e.mustLoad(t, 2, rawSource(1, 1), passSource(2, "pass two"))
	raw1, _ := ParseRegistration(e.reg.get(1))
	keyHex := hex.EncodeToString(raw1.KeyID[:])

	xchacha := rawSource(1, 1)
	xchacha.Cipher = object.CipherXChaCha20Poly1305
	passFor1 := passSource(1, "open sesame")
	passFor1.Cipher = object.CipherAES256GCM
	rawFor2 := rawSource(2, 2)
	rawFor2.Cipher = object.CipherXChaCha20Poly1305
	short := rawSource(1, 1)
	short.Key = short.Key[:16]
	both := rawSource(1, 1)
	both.Passphrase = []byte("open sesame")
	neither := rawSource(1, 1)
	neither.Key = nil
	empty := passSource(1, "")
	emptyKey := passSource(1, "open sesame")
	emptyKey.Key = []byte{}
	emptyKey.Cipher = object.CipherAES256GCM
	zero := rawSource(0, 1)

	for _, tc := range []struct {
		name    string
		write   uint16
		sources []Source
		err     error    // nil: any error
		mention []string // parts of the message
	}{
		{"wrong raw key", 1, []Source{rawSource(1, 2)}, ErrWrongKey,
			[]string{"encryption version 1", rawSource(1, 2).Origin, keyHex, "not this store's key", "check the key"}},
		{"wrong raw key of an old version", 2, []Source{rawSource(1, 9), passSource(2, "pass two")}, ErrWrongKey,
			[]string{"encryption version 1", keyHex}},
		{"cipher mismatch", 1, []Source{xchacha}, ErrWrongKey,
			[]string{"encryption version 1", "registered aes-256-gcm", "xchacha20-poly1305", xchacha.Origin}},
		{"passphrase for a raw key", 1, []Source{passFor1}, ErrWrongKey,
			[]string{"encryption version 1", "raw key", passFor1.Origin}},
		{"raw key for a passphrase", 2, []Source{rawFor2}, ErrWrongKey,
			[]string{"encryption version 2", "passphrase", rawFor2.Origin}},
		{"no key for the write version", 2, []Source{rawSource(1, 1)}, object.ErrNoKey,
			[]string{"encryption version 2", "encryption_key, encryption_key_file, encryption_passphrase or encryption_passphrase_file"}},
		{"no key for a new write version", 3, nil, object.ErrNoKey,
			[]string{"encryption version 3", "encryption_passphrase_file"}},
		{"short key", 1, []Source{short}, nil, []string{"16 bytes", "32"}},
		{"key and passphrase", 1, []Source{both}, nil, []string{"only one"}},
		{"neither", 1, []Source{neither}, nil, []string{"neither"}},
		{"empty passphrase", 1, []Source{empty}, nil, []string{"empty"}},
		{"empty key slice and a passphrase is a passphrase", 1, []Source{emptyKey}, ErrWrongKey, []string{"registered a raw key"}},
		{"version 0", 1, []Source{zero, rawSource(1, 1)}, nil, []string{"version 0"}},
		{"cipher none", 1, []Source{{EncVersion: 1, Key: rawKey(1), Origin: "encryption_key"}}, nil, []string{"cipher none"}},
		{"duplicate version", 1, []Source{rawSource(1, 1), rawSource(1, 1)}, nil, []string{"configured twice"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ring, err := e.load(t, tc.write, tc.sources...)
			if err == nil || ring != nil {
				t.Fatalf("Load succeeded")
			}
			if tc.err != nil && !errors.Is(err, tc.err) {
				t.Fatalf("Load = %v, want %v", err, tc.err)
			}
			for _, part := range tc.mention {
				if !strings.Contains(err.Error(), part) {
					t.Errorf("error %q does not mention %q", err, part)
				}
			}
			for _, s := range tc.sources {
				assertNoSecrets(t, "error", err.Error(), s.Key, s.Passphrase)
			}
		})
	}
	if e.reg.get(3) != nil || e.backendCopy(t, 3) != nil {
		t.Error("a failed Load registered a version")
	}
}

func TestBadRegistryRegistration(t *testing.T) {
	e := newEnv(t)
	e.reg.regs[4] = []byte(`{"format":1}`)
	if _, err := e.load(t, 0); !errors.Is(err, ErrBadRegistration) || !strings.Contains(err.Error(), "encryption version 4") {
		t.Errorf("Load = %v", err)
	}
	good, _ := testRegistrations()["raw"].Marshal() // registers version 1
	e.reg.regs[4] = good
	if _, err := e.load(t, 0); !errors.Is(err, ErrBadRegistration) || !strings.Contains(err.Error(), "registers encryption version 1") {
		t.Errorf("Load = %v", err)
	}
	e.reg.regs = map[uint16][]byte{}
	e.reg.err = errors.New("database closed")
	if _, err := e.load(t, 0); err == nil || !strings.Contains(err.Error(), "database closed") {
		t.Errorf("Load = %v", err)
	}
}

func TestRingKeyUnconfigured(t *testing.T) {
	e := newEnv(t)
	e.mustLoad(t, 1, rawSource(1, 1))
	ring := e.mustLoad(t, 2, rawSource(2, 2)) // version 1 registered, not configured
	id1 := keyID(t, 1, object.CipherAES256GCM, rawKey(1))
	for _, tc := range []struct {
		v       uint16
		mention []string
	}{
		{1, []string{"encryption version 1", hex.EncodeToString(id1[:]), "[Encryption1]", "aes-256-gcm"}},
		{9, []string{"encryption version 9", "not registered", "[Encryption9]"}},
	} {
		_, err := ring.Key(tc.v)
		if !errors.Is(err, object.ErrNoKey) {
			t.Fatalf("Key(%d) = %v", tc.v, err)
		}
		for _, part := range tc.mention {
			if !strings.Contains(err.Error(), part) {
				t.Errorf("Key(%d): %q does not mention %q", tc.v, err, part)
			}
		}
	}
	if k, err := ring.Key(2); err != nil || k.EncVersion != 2 {
		t.Errorf("Key(2) = %v, %v", k, err)
	}
	regs := ring.Registered()
	if len(regs) != 2 || regs[0].EncVersion != 1 || regs[1].EncVersion != 2 {
		t.Errorf("Registered = %+v", regs)
	}
}

func TestAdoptFromBackend(t *testing.T) {
	for _, tc := range []struct {
		name  string
		src   Source
		write uint16
	}{
		{"raw key, write version", rawSource(1, 5), 1},
		{"raw key, old version", rawSource(1, 5), 0},
		{"passphrase, write version", passSource(1, "adopt me"), 1},
		{"passphrase, old version", passSource(1, "adopt me"), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			orig := e.mustLoad(t, 1, tc.src)
			stored := e.backendCopy(t, 1)
			// The metastore is restored from a copy older than the
			// registration; the backend still has it.
			e.reg = newRegistry()
			wrong := tc.src
			if wrong.Key != nil {
				wrong.Key = rawKey(6)
			} else {
				wrong.Passphrase = []byte("adopt you")
			}
			if _, err := e.load(t, tc.write, wrong); !errors.Is(err, ErrWrongKey) || !strings.Contains(err.Error(), wrong.Origin) {
				t.Fatalf("wrong key: Load = %v", err)
			}
			if e.reg.get(1) != nil {
				t.Fatal("an unverified registration was adopted")
			}
			ring := e.mustLoad(t, tc.write, tc.src)
			if !bytes.Equal(e.reg.get(1), stored) || !bytes.Equal(e.backendCopy(t, 1), stored) {
				t.Fatalf("adopted %q, backend has %q", e.reg.get(1), stored)
			}
			if k, err := ring.Key(1); err != nil || k.ID != orig.WriteKey().ID {
				t.Fatalf("adopted key: %v, %v", k, err)
			}
			if !strings.Contains(e.log.String(), "adopted") {
				t.Errorf("adoption not logged: %s", e.log)
			}
		})
	}
	t.Run("corrupt backend copy", func(t *testing.T) {
		e := newEnv(t)
		if err := e.be.Put(t.Context(), ObjectName(1), []byte("not json")); err != nil {
			t.Fatal(err)
		}
		_, err := e.load(t, 1, rawSource(1, 1))
		if !errors.Is(err, ErrBadRegistration) || !strings.Contains(err.Error(), "keys/1.json") || !strings.Contains(err.Error(), "encryption version 1") {
			t.Fatalf("Load = %v", err)
		}
	})
}

func TestBackendCopyRepaired(t *testing.T) {
	other, _ := testRegistrations()["raw"].Marshal() // a valid registration, not this store's
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, e *env)
	}{
		{"missing", func(t *testing.T, e *env) {
			if err := e.be.Delete(t.Context(), ObjectName(1)); err != nil {
				t.Fatal(err)
			}
		}},
		{"different", func(t *testing.T, e *env) {
			if err := e.be.Put(t.Context(), ObjectName(1), other); err != nil {
				t.Fatal(err)
			}
		}},
		{"garbage", func(t *testing.T, e *env) {
			if err := e.be.Put(t.Context(), ObjectName(1), []byte{0, 1, 2}); err != nil {
				t.Fatal(err)
			}
		}},
		{"one byte changed", func(t *testing.T, e *env) {
			b := e.backendCopy(t, 1)
			b[len(b)-1] = ' '
			if err := e.be.Put(t.Context(), ObjectName(1), b); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.mustLoad(t, 1, passSource(1, "repair"))
			want := e.reg.get(1)
			tc.setup(t, e)
			e.mustLoad(t, 1, passSource(1, "repair"))
			if got := e.backendCopy(t, 1); !bytes.Equal(got, want) {
				t.Fatalf("backend copy %q, want %q", got, want)
			}
			if !bytes.Equal(e.reg.get(1), want) {
				t.Fatal("the registry changed")
			}
		})
	}
	t.Run("not repaired for a read-only version", func(t *testing.T) {
		e := newEnv(t)
		e.mustLoad(t, 1, rawSource(1, 1))
		_ = e.be.Delete(t.Context(), ObjectName(1))
		e.mustLoad(t, 0, rawSource(1, 1))
		if e.backendCopy(t, 1) != nil {
			t.Fatal("Load wrote a backend copy for a version it does not write")
		}
	})
}

func TestRegistrationRace(t *testing.T) {
	// The winner registered version 1 with its own salt (or time) between
	// the loser's EncVersions and RegisterEncVersion.
	for _, tc := range []struct {
		name   string
		winner Source
		loser  Source
		err    error
	}{
		{"same passphrase, other salt", passSource(1, "race"), passSource(1, "race"), nil},
		{"same raw key, other time", rawSource(1, 3), rawSource(1, 3), nil},
		{"different passphrase", passSource(1, "race"), passSource(1, "ecar"), ErrWrongKey},
		{"different raw key", rawSource(1, 3), rawSource(1, 4), ErrWrongKey},
		{"different cipher", rawSource(1, 3), func() Source { s := rawSource(1, 3); s.Cipher = object.CipherXChaCha20Poly1305; return s }(), ErrWrongKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newEnv(t)
			o := w.opts()
			o.Clock = clock.NewFake(testTime.Add(-time.Hour))
			if _, err := Load(t.Context(), w.reg, w.be, []Source{tc.winner}, 1, o); err != nil {
				t.Fatal(err)
			}
			winner := w.reg.get(1)

			e := newEnv(t)
			e.reg.winner = map[uint16][]byte{1: winner}
			ring, err := e.load(t, 1, tc.loser)
			if !errors.Is(err, tc.err) {
				t.Fatalf("Load = %v, want %v", err, tc.err)
			}
			if err != nil {
				if got := e.backendCopy(t, 1); got != nil {
					t.Fatalf("a losing wrong key wrote the backend copy %q", got)
				}
				return
			}
			if !bytes.Equal(e.reg.get(1), winner) || !bytes.Equal(e.backendCopy(t, 1), winner) {
				t.Fatalf("registry %q, backend %q, winner %q", e.reg.get(1), e.backendCopy(t, 1), winner)
			}
			r, _ := ParseRegistration(winner)
			if ring.WriteKey().ID != r.KeyID || ring.Registered()[0].Registered != r.Registered {
				t.Fatalf("loser uses %x, winner registered %x", ring.WriteKey().ID, r.KeyID)
			}
		})
	}
	t.Run("adopted backend copy loses", func(t *testing.T) {
		// The backend holds an older registration of the same key; a
		// concurrent process registers first with other bytes. The
		// backend copy must end up as the winner's.
		old := newEnv(t)
		o := old.opts()
		o.Clock = clock.NewFake(testTime.Add(-time.Hour))
		if _, err := Load(t.Context(), old.reg, old.be, []Source{passSource(1, "race")}, 1, o); err != nil {
			t.Fatal(err)
		}
		w := newEnv(t)
		w.mustLoad(t, 1, passSource(1, "race"))
		winner := w.reg.get(1)

		e := newEnv(t)
		e.be = old.be
		e.reg.winner = map[uint16][]byte{1: winner}
		ring := e.mustLoad(t, 0, passSource(1, "race"))
		if !ring.Has(1) || !bytes.Equal(e.backendCopy(t, 1), winner) || !bytes.Equal(e.reg.get(1), winner) {
			t.Fatalf("backend %q, registry %q, winner %q", e.backendCopy(t, 1), e.reg.get(1), winner)
		}
	})
}

func TestConcurrentLoads(t *testing.T) {
	root := t.TempDir()
	reg := newRegistry()
	const n = 8
	ids := make([][object.KeyIDSize]byte, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			be, err := file.New(root)
			if err != nil {
				errs[i] = err
				return
			}
			ring, err := Load(t.Context(), reg, be, []Source{passSource(1, "together")}, 1, Options{NewKDF: cheapKDF})
			if err != nil {
				errs[i] = err
				return
			}
			ids[i] = ring.WriteKey().ID
		})
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("Load %d: %v", i, errs[i])
		}
		if ids[i] != ids[0] {
			t.Fatalf("Load %d got key id %x, Load 0 %x", i, ids[i], ids[0])
		}
	}
	be, _ := file.New(root)
	got, err := be.Get(t.Context(), ObjectName(1), nil)
	if err != nil || !bytes.Equal(got, reg.get(1)) {
		t.Fatalf("backend %q (%v), registry %q", got, err, reg.get(1))
	}
}

func TestSealOpenWithRing(t *testing.T) {
	e := newEnv(t)
	plain := []byte("a block worth keeping secret")
	id := block.Sum(plain)
	ring1 := e.mustLoad(t, 1, passSource(1, "one"))
	obj1, err := object.Seal(nil, plain, id, object.SealOptions{Kind: object.KindBlock, Key: ring1.WriteKey()})
	if err != nil {
		t.Fatal(err)
	}
	// Rotate: version 2 with a raw key; version 1 stays readable.
	ring2 := e.mustLoad(t, 2, passSource(1, "one"), rawSource(2, 2))
	obj2, err := object.Seal(nil, plain, id, object.SealOptions{Kind: object.KindBlock, Key: ring2.WriteKey()})
	if err != nil {
		t.Fatal(err)
	}
	for i, obj := range [][]byte{obj1, obj2} {
		got, h, err := object.Open(nil, obj, id, ring2, nil)
		if err != nil || !bytes.Equal(got, plain) || h.EncVersion != uint16(i+1) {
			t.Fatalf("object %d: %q, %+v, %v", i+1, got, h, err)
		}
	}
	// A ring without version 1 reports the missing key, not damage.
	ring3 := e.mustLoad(t, 2, rawSource(2, 2))
	if _, _, err := object.Open(nil, obj1, id, ring3, nil); !errors.Is(err, object.ErrNoKey) || !strings.Contains(err.Error(), "[Encryption1]") {
		t.Fatalf("Open without the key: %v", err)
	}
}

func TestLoadCancelled(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := Load(ctx, e.reg, e.be, []Source{passSource(1, "x")}, 1, e.opts()); !errors.Is(err, context.Canceled) {
		t.Fatalf("Load = %v", err)
	}
	if e.reg.get(1) != nil {
		t.Fatal("a cancelled Load registered a version")
	}
	// Cancelled during a slow derivation: Load returns without waiting.
	ctx, cancel = context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	o := e.opts()
	o.NewKDF = func() (KDF, error) {
		k, err := cheapKDF()
		k.Time, k.MemoryKiB = 10, 16<<10 // some 100 ms
		return k, err
	}
	start := time.Now()
	if _, err := Load(ctx, e.reg, e.be, []Source{passSource(1, "x")}, 1, o); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Load = %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("cancelled Load took %v", d)
	}
}

func TestDefaultKDFForReal(t *testing.T) {
	if testing.Short() {
		t.Skip("derives with the real Argon2id parameters")
	}
	e := newEnv(t)
	o := e.opts()
	o.NewKDF = nil
	start := time.Now()
	ring, err := Load(t.Context(), e.reg, e.be, []Source{passSource(1, "the real thing")}, 1, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("register with the default KDF: %v", time.Since(start))
	r, _ := ParseRegistration(e.reg.get(1))
	if r.KDF == nil || r.KDF.Time != 3 || r.KDF.MemoryKiB != 64<<10 || r.KDF.Threads != 4 || len(r.KDF.Salt) != 16 {
		t.Fatalf("KDF = %+v", r.KDF)
	}
	start = time.Now()
	again, err := Load(t.Context(), e.reg, e.be, []Source{passSource(1, "the real thing")}, 1, o)
	if err != nil || again.WriteKey().ID != ring.WriteKey().ID {
		t.Fatalf("second Load: %v", err)
	}
	t.Logf("verify with the default KDF: %v", time.Since(start))
}

func TestNoSecretsInMessages(t *testing.T) {
	// Every message of a run of failures and successes, errors and logs,
	// is free of the key material.
	e := newEnv(t)
	secrets := [][]byte{rawKey(0x5a), rawKey(0xa5), []byte("hunter2-hunter2"), []byte("swordfish-swordfish")}
	var msgs []string
	note := func(_ *Ring, err error) {
		if err != nil {
			msgs = append(msgs, err.Error())
		}
	}
	raw := func(fill byte) Source { return rawSource(1, fill) }
	pass := func(p string) Source { return passSource(2, p) }
	note(e.load(t, 1, raw(0x5a)))
	note(e.load(t, 1, raw(0xa5)))
	note(e.load(t, 2, raw(0x5a), pass("hunter2-hunter2")))
	note(e.load(t, 2, raw(0x5a), pass("swordfish-swordfish")))
	note(e.load(t, 3, raw(0x5a), pass("hunter2-hunter2")))
	passRaw := passSource(1, "swordfish-swordfish")
	passRaw.Cipher = object.CipherAES256GCM
	note(e.load(t, 1, passRaw))
	ring, _ := e.load(t, 2, raw(0x5a), pass("hunter2-hunter2"))
	_, err := ring.Key(3)
	note(nil, err)
	if len(msgs) < 5 {
		t.Fatalf("expected failures, got %q", msgs)
	}
	msgs = append(msgs, e.log.String())
	for _, m := range msgs {
		assertNoSecrets(t, "message", m, secrets...)
	}
	// Sanity: the check would catch a leak.
	if !strings.Contains(fmt.Sprintf("%x", secrets[0]), hex.EncodeToString(secrets[0])) {
		t.Fatal("broken check")
	}
}
