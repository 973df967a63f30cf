package keyring

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/backy/backy/blockstore/object"
	"github.com/backy/backy/internal/block"
)

// putSealed stores, under name, an object sealed with the key of src (a
// raw key) or, for a passphrase, with a key derived under kdf.
func (e *env) putSealed(t *testing.T, name string, kind object.Kind, src Source, kdf *KDF) {
	t.Helper()
	material := src.Key
	if kdf != nil {
		m, err := kdf.Derive(src.Passphrase)
		if err != nil {
			t.Fatal(err)
		}
		material = m
	}
	k, err := object.NewKey(src.EncVersion, src.Cipher, material)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := object.Seal(nil, []byte("some payload"), block.Sum([]byte(name)), object.SealOptions{Kind: kind, Key: k})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.be.Put(t.Context(), name, obj); err != nil {
		t.Fatal(err)
	}
}

const (
	testSnapName  = "versions/v019aa0c1f2e3d4c5b6a7/0000000000000002-0badf00d/00000000"
	testBlockName = "blocks/3f/3f0c0000000000000000000000000000"
)

// TestRecoverRegistration (issue 13 item 6): with Options.Recover, a
// configured raw key whose registration is in neither the registry nor
// the backend is registered again when the store's objects at its version
// carry its cipher and key id (found in a snapshot chunk or, failing
// that, a block), and keys/<N>.json is rewritten; a key with another key
// id is a wrong key and registers nothing; a version no object uses stays
// unregistered; a passphrase cannot be recovered, and the Ring says what
// is missing and what to do. Without Recover nothing changes.
func TestRecoverRegistration(t *testing.T) {
	good := rawSource(1, 7)
	t.Run("raw key, from a snapshot chunk", func(t *testing.T) {
		e := newEnv(t)
		e.putSealed(t, testSnapName, object.KindMeta, good, nil)
		o := e.opts()
		o.Recover = true
		ring, err := Load(t.Context(), e.reg, e.be, []Source{good}, 0, o)
		if err != nil {
			t.Fatal(err)
		}
		if !ring.Has(1) {
			t.Fatal("the recovered version has no key")
		}
		reg := e.reg.get(1)
		if reg == nil || !bytes.Equal(reg, e.backendCopy(t, 1)) {
			t.Fatalf("registry %q and keys/1.json %q: want the recovered registration in both", reg, e.backendCopy(t, 1))
		}
		r, err := ParseRegistration(reg)
		if err != nil || r.KeyID != keyID(t, 1, good.Cipher, good.Key) || r.Cipher != good.Cipher || r.KDF != nil {
			t.Errorf("recovered registration %+v, %v", r, err)
		}
		if !strings.Contains(e.log.String(), testSnapName) {
			t.Errorf("the log should name the object checked:\n%s", e.log)
		}
	})
	t.Run("raw key, from a block", func(t *testing.T) {
		e := newEnv(t)
		e.putSealed(t, testBlockName, object.KindBlock, good, nil)
		o := e.opts()
		o.Recover = true
		if ring, err := Load(t.Context(), e.reg, e.be, []Source{good}, 0, o); err != nil || !ring.Has(1) {
			t.Fatalf("Load = %v; want the key of version 1", err)
		}
	})
	t.Run("wrong key", func(t *testing.T) {
		e := newEnv(t)
		e.putSealed(t, testSnapName, object.KindMeta, good, nil)
		o := e.opts()
		o.Recover = true
		_, err := Load(t.Context(), e.reg, e.be, []Source{rawSource(1, 8)}, 0, o)
		if !errors.Is(err, ErrWrongKey) || !strings.Contains(err.Error(), "keys/1.json is missing") {
			t.Fatalf("Load with another key = %v, want ErrWrongKey saying keys/1.json is missing", err)
		}
		if e.reg.get(1) != nil || e.backendCopy(t, 1) != nil {
			t.Error("a wrong key was registered")
		}
		cipher := good
		cipher.Cipher = object.CipherXChaCha20Poly1305
		if _, err := Load(t.Context(), e.reg, e.be, []Source{cipher}, 0, o); !errors.Is(err, ErrWrongKey) || !strings.Contains(err.Error(), "set its cipher") {
			t.Fatalf("Load with another cipher = %v, want ErrWrongKey naming the cipher", err)
		}
	})
	t.Run("unused version", func(t *testing.T) {
		e := newEnv(t)
		e.putSealed(t, testSnapName, object.KindMeta, good, nil)
		o := e.opts()
		o.Recover = true
		ring, err := Load(t.Context(), e.reg, e.be, []Source{good, rawSource(2, 9)}, 0, o)
		if err != nil || !ring.Has(1) || ring.Has(2) || e.reg.get(2) != nil {
			t.Fatalf("Load = %v; want version 1 recovered and version 2 (no object) left alone", err)
		}
	})
	t.Run("passphrase", func(t *testing.T) {
		e := newEnv(t)
		src := passSource(1, "correct horse battery staple")
		kdf, _ := cheapKDF()
		e.putSealed(t, testSnapName, object.KindMeta, src, &kdf)
		o := e.opts()
		o.Recover = true
		ring, err := Load(t.Context(), e.reg, e.be, []Source{src}, 0, o)
		if err != nil {
			t.Fatal(err)
		}
		_, err = ring.Key(1)
		if !errors.Is(err, object.ErrNoKey) {
			t.Fatalf("Key(1) = %v, want ErrNoKey", err)
		}
		for _, want := range []string{"passphrase", "keys/1.json is missing", "salt", "backy import"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("Key(1) should say what is missing and what to do (%q): %v", want, err)
			}
		}
		if e.reg.get(1) != nil || e.backendCopy(t, 1) != nil {
			t.Error("a passphrase registration was made up")
		}
		assertNoSecrets(t, "the error", err.Error(), src.Passphrase)
		assertNoSecrets(t, "the log", e.log.String(), src.Passphrase)
	})
	t.Run("without Recover", func(t *testing.T) {
		e := newEnv(t)
		e.putSealed(t, testSnapName, object.KindMeta, good, nil)
		ring, err := e.load(t, 0, good)
		if err != nil || ring.Has(1) || e.reg.get(1) != nil || e.backendCopy(t, 1) != nil {
			t.Fatalf("Load without Recover = %v, has key %v: want the version ignored as before", err, ring != nil && ring.Has(1))
		}
	})
}
