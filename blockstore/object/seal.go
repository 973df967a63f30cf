package object

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
	"github.com/zeebo/blake3"
	"golang.org/x/crypto/chacha20poly1305"

	"github.com/backy/backy/internal/block"
)

// Key seals and opens the payloads of one encryption version.
type Key struct {
	EncVersion uint16
	Cipher     Cipher
	ID         [KeyIDSize]byte
	aead       cipher.AEAD
}

// NewKey makes the key of encryption version encVersion (>= 1) from 32
// bytes of key material. Its ID is derived from the material, so a reader
// can tell a wrong key from damaged data before it tries to decrypt.
func NewKey(encVersion uint16, c Cipher, material []byte) (*Key, error) {
	if encVersion == 0 {
		return nil, errors.New("encryption version 0 means no encryption and takes no key")
	}
	if len(material) != 32 {
		return nil, fmt.Errorf("key for encryption version %d must be 32 bytes, got %d", encVersion, len(material))
	}
	k := &Key{EncVersion: encVersion, Cipher: c}
	var err error
	switch c {
	case CipherAES256GCM:
		var b cipher.Block
		if b, err = aes.NewCipher(material); err == nil {
			k.aead, err = cipher.NewGCM(b)
		}
	case CipherXChaCha20Poly1305:
		k.aead, err = chacha20poly1305.NewX(material)
	default:
		return nil, fmt.Errorf("encryption version %d: unsupported cipher %s", encVersion, c)
	}
	if err != nil {
		return nil, fmt.Errorf("encryption version %d: %w", encVersion, err)
	}
	d := blake3.NewDeriveKey("backy 2026-11 key id")
	_, _ = d.Write(material)
	copy(k.ID[:], d.Sum(nil))
	return k, nil
}

// Keys finds the key of an encryption version when opening an object.
type Keys interface {
	// Key returns the key of encryption version v, or an error wrapping
	// ErrNoKey when it is not configured.
	Key(v uint16) (*Key, error)
}

// Compressor compresses one payload. *zstd.Encoder satisfies it.
type Compressor interface {
	EncodeAll(src, dst []byte) []byte
}

// Decompressor reverses a Compressor. *zstd.Decoder satisfies it.
type Decompressor interface {
	DecodeAll(input, dst []byte) ([]byte, error)
}

// SealOptions says how Seal transforms a payload.
type SealOptions struct {
	Kind Kind
	// Compressor, when set, compresses the payload; the result is kept only
	// if it is smaller than the plaintext.
	Compressor Compressor
	// Key, when set, encrypts the payload; nil stores it in the clear.
	Key *Key
	// Scratch, when set, is reused for the compressed intermediate.
	Scratch *[]byte
	// Rand supplies nonces; crypto/rand when nil.
	Rand io.Reader
}

// Seal appends the stored form of plain, whose identity is id, to dst and
// returns it. The identity and the header are bound into the AEAD's
// additional data, so the object opens only under the same identity.
func Seal(dst, plain []byte, id block.ID, o SealOptions) ([]byte, error) {
	if len(plain) > MaxPlainSize {
		return nil, fmt.Errorf("payload of %d bytes exceeds the %d-byte limit", len(plain), MaxPlainSize)
	}
	h := Header{Kind: o.Kind, PlainSize: uint32(len(plain))}
	payload := plain
	if o.Compressor != nil && len(plain) > 0 {
		var scratch []byte
		if o.Scratch != nil {
			scratch = (*o.Scratch)[:0]
		}
		c := o.Compressor.EncodeAll(plain, scratch)
		if o.Scratch != nil {
			*o.Scratch = c
		}
		if len(c) < len(plain) {
			payload = c
			h.Compression = block.CompressionZstd
		}
	}
	if o.Key != nil {
		h.Cipher, h.EncVersion, h.KeyID = o.Key.Cipher, o.Key.EncVersion, o.Key.ID
		h.Nonce = make([]byte, o.Key.aead.NonceSize())
		r := o.Rand
		if r == nil {
			r = rand.Reader
		}
		if _, err := io.ReadFull(r, h.Nonce); err != nil {
			return nil, fmt.Errorf("reading nonce: %w", err)
		}
	}
	start := len(dst)
	dst = h.AppendHeader(dst)
	if o.Key == nil {
		return append(dst, payload...), nil
	}
	aad := make([]byte, 0, len(dst)-start+block.IDSize)
	aad = append(append(aad, dst[start:]...), id[:]...)
	return o.Key.aead.Seal(dst, h.Nonce, payload, aad), nil
}

// Open checks an object and appends its plaintext to dst. keys may be nil
// for a store without encryption; dec may be nil when no object is
// compressed. On any error no data is returned. Open does not compare the
// plaintext with id's hash: the caller does (see blockstore.Store.Get).
func Open(dst, obj []byte, id block.ID, keys Keys, dec Decompressor) ([]byte, Header, error) {
	return open(dst, obj, id, keys, dec, false)
}

// OpenInPlace is Open for a caller that owns obj and no longer needs it:
// an encrypted payload is decrypted within obj instead of into a fresh
// buffer, which saves an allocation of the payload's size per object. obj's
// contents are undefined afterwards, whether or not Open succeeds.
func OpenInPlace(dst, obj []byte, id block.ID, keys Keys, dec Decompressor) ([]byte, Header, error) {
	return open(dst, obj, id, keys, dec, true)
}

func open(dst, obj []byte, id block.ID, keys Keys, dec Decompressor, inPlace bool) ([]byte, Header, error) {
	h, hsize, err := ParseHeader(obj)
	if err != nil {
		return nil, h, err
	}
	payload := obj[hsize:]
	if h.Cipher != CipherNone {
		if keys == nil {
			return nil, h, fmt.Errorf("%w: object is encrypted at version %d and no key is configured", ErrNoKey, h.EncVersion)
		}
		k, err := keys.Key(h.EncVersion)
		if err != nil {
			return nil, h, err
		}
		if k.Cipher != h.Cipher || k.ID != h.KeyID {
			return nil, h, fmt.Errorf("%w: object was sealed with key %x (%s), the configured key of encryption version %d is %x (%s)",
				ErrAuth, h.KeyID, h.Cipher, h.EncVersion, k.ID, k.Cipher)
		}
		aad := make([]byte, 0, hsize+block.IDSize)
		aad = append(append(aad, obj[:hsize]...), id[:]...)
		// Decrypt into a fresh buffer unless the caller gave us obj: the
		// payload is not ours to overwrite otherwise.
		var into []byte
		if inPlace {
			into = payload[:0]
		}
		plain, err := k.aead.Open(into, h.Nonce, payload, aad)
		if err != nil {
			return nil, h, ErrAuth
		}
		payload = plain
	}
	out := dst
	switch h.Compression {
	case block.CompressionNone:
		out = append(out, payload...)
	case block.CompressionZstd:
		if dec == nil {
			return nil, h, fmt.Errorf("%w: no decompressor", ErrDecompress)
		}
		out, err = dec.DecodeAll(payload, out)
		if err != nil {
			return nil, h, fmt.Errorf("%w: %v", ErrDecompress, err)
		}
	}
	if len(out)-len(dst) != int(h.PlainSize) {
		return nil, h, fmt.Errorf("%w: %d bytes, header says %d", ErrSizeMismatch, len(out)-len(dst), h.PlainSize)
	}
	return out, h, nil
}

// NewZstdDecoder returns a decoder safe for concurrent DecodeAll calls that
// refuses to produce more than MaxPlainSize bytes.
func NewZstdDecoder() (*zstd.Decoder, error) {
	return zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(MaxPlainSize), zstd.WithDecoderMaxWindow(MaxPlainSize))
}
