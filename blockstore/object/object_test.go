package object

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/backy/backy/internal/block"
)

type keyring map[uint16]*Key

func (k keyring) Key(v uint16) (*Key, error) {
	if key, ok := k[v]; ok {
		return key, nil
	}
	return nil, fmt.Errorf("%w: version %d", ErrNoKey, v)
}

func mustKey(t testing.TB, v uint16, c Cipher, fill byte) *Key {
	t.Helper()
	k, err := NewKey(v, c, bytes.Repeat([]byte{fill}, 32))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func payloads() map[string][]byte {
	rnd := make([]byte, 256<<10)
	_, _ = rand.Read(rnd)
	return map[string][]byte{
		"empty":  {},
		"text":   bytes.Repeat([]byte("backy stores blocks once. "), 10000),
		"random": rnd,
		"zeros":  make([]byte, 64<<10),
	}
}

func TestSealOpenRoundTrip(t *testing.T) {
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest))
	dec, err := NewZstdDecoder()
	if err != nil {
		t.Fatal(err)
	}
	keys := keyring{1: mustKey(t, 1, CipherAES256GCM, 1), 2: mustKey(t, 2, CipherXChaCha20Poly1305, 2)}
	for name, plain := range payloads() {
		for _, comp := range []bool{false, true} {
			for _, key := range []*Key{nil, keys[1], keys[2]} {
				t.Run(fmt.Sprintf("%s/zstd=%v/key=%v", name, comp, key != nil), func(t *testing.T) {
					id := block.Sum(plain)
					o := SealOptions{Kind: KindBlock, Key: key}
					if comp {
						o.Compressor = enc
					}
					obj, err := Seal([]byte("prefix"), plain, id, o)
					if err != nil {
						t.Fatal(err)
					}
					obj = obj[len("prefix"):]
					got, h, err := Open(nil, obj, id, keys, dec)
					if err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(got, plain) {
						t.Fatal("round trip changed the data")
					}
					// In place: the same plaintext from a copy of obj.
					if got, _, err := OpenInPlace(nil, bytes.Clone(obj), id, keys, dec); err != nil || !bytes.Equal(got, plain) {
						t.Fatalf("OpenInPlace: %v, equal %v", err, bytes.Equal(got, plain))
					}
					if key != nil { // unencrypted payloads are checked by BLAKE3 in blockstore
						bad := bytes.Clone(obj)
						bad[len(bad)-1] ^= 1
						if got, _, err := OpenInPlace(nil, bad, id, keys, dec); err == nil || got != nil {
							t.Fatalf("OpenInPlace of a damaged object: %d bytes, %v", len(got), err)
						}
					}
					wantZstd := comp && (name == "text" || name == "zeros")
					if (h.Compression == block.CompressionZstd) != wantZstd {
						t.Fatalf("compression = %v, want zstd=%v", h.Compression, wantZstd)
					}
					if key != nil && bytes.Contains(obj, plain[:min(len(plain), 64)]) && len(plain) > 0 {
						t.Fatal("encrypted object contains plaintext")
					}
				})
			}
		}
	}
}

// TestTamper flips every byte of the header and a sample of the payload:
// each must be detected and no data returned.
func TestTamper(t *testing.T) {
	plain := bytes.Repeat([]byte("tamper me "), 1000)
	id := block.Sum(plain)
	keys := keyring{1: mustKey(t, 1, CipherAES256GCM, 7)}
	dec, _ := NewZstdDecoder()
	enc, _ := zstd.NewWriter(nil)
	for _, key := range []*Key{nil, keys[1]} {
		obj, err := Seal(nil, plain, id, SealOptions{Kind: KindBlock, Key: key, Compressor: enc})
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < len(obj); i++ {
			if i > 64 && i%97 != 0 && i != len(obj)-1 {
				continue
			}
			bad := bytes.Clone(obj)
			bad[i] ^= 0x10
			got, _, err := Open(nil, bad, id, keys, dec)
			if err == nil && key != nil {
				t.Fatalf("key=%v: flipped byte %d not detected", key != nil, i)
			}
			if err == nil && !bytes.Equal(got, plain) {
				// Without encryption only the header is protected by
				// Open itself; the payload is caught by the caller's
				// BLAKE3 comparison, which must then fail.
				if block.Sum(got) == id {
					t.Fatalf("flipped byte %d gave different data with the same hash", i)
				}
			}
			if err != nil && got != nil {
				t.Fatalf("byte %d: error %v but data returned", i, err)
			}
		}
		// The identity is bound: the same object under another id fails.
		if key != nil {
			if _, _, err := Open(nil, obj, block.Sum([]byte("other")), keys, dec); !errors.Is(err, ErrAuth) {
				t.Fatalf("object opened under a different identity: %v", err)
			}
		}
	}
}

func TestWrongAndMissingKey(t *testing.T) {
	plain := []byte("secret block")
	id := block.Sum(plain)
	obj, err := Seal(nil, plain, id, SealOptions{Kind: KindBlock, Key: mustKey(t, 1, CipherAES256GCM, 1)})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := Open(nil, obj, id, keyring{1: mustKey(t, 1, CipherAES256GCM, 2)}, nil); !errors.Is(err, ErrAuth) {
		t.Fatalf("wrong key: %v", err)
	}
	if _, _, err := Open(nil, obj, id, keyring{}, nil); !errors.Is(err, ErrNoKey) {
		t.Fatalf("missing key: %v", err)
	}
	if _, _, err := Open(nil, obj, id, nil, nil); !errors.Is(err, ErrNoKey) {
		t.Fatalf("no keyring: %v", err)
	}
}

func TestParseHeaderErrors(t *testing.T) {
	good, _ := Seal(nil, []byte("x"), block.Sum([]byte("x")), SealOptions{Kind: KindBlock})
	newer := bytes.Clone(good)
	newer[4] = FormatVersion + 1
	for _, tc := range []struct {
		name string
		obj  []byte
		want error
	}{
		{"empty", nil, ErrTooShort},
		{"short", good[:10], ErrTooShort},
		{"magic", append([]byte("XKYO"), good[4:]...), ErrBadMagic},
		{"newer", newer, ErrNewerFormat},
		{"crc", func() []byte { b := bytes.Clone(good); b[20] ^= 1; return b }(), ErrHeaderCRC},
	} {
		if _, _, err := ParseHeader(tc.obj); !errors.Is(err, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, err, tc.want)
		}
	}
}

func FuzzOpen(f *testing.F) {
	keys := keyring{1: mustKey(f, 1, CipherAES256GCM, 1), 2: mustKey(f, 2, CipherXChaCha20Poly1305, 2)}
	enc, _ := zstd.NewWriter(nil)
	dec, _ := NewZstdDecoder()
	plain := bytes.Repeat([]byte("fuzz"), 100)
	id := block.Sum(plain)
	for _, k := range []*Key{nil, keys[1], keys[2]} {
		for _, c := range []Compressor{nil, enc} {
			obj, _ := Seal(nil, plain, id, SealOptions{Kind: KindBlock, Key: k, Compressor: c})
			f.Add(obj)
		}
	}
	f.Fuzz(func(t *testing.T, obj []byte) {
		h, n, err := ParseHeader(obj)
		if err == nil && (n > len(obj) || n != h.HeaderSize()) {
			t.Fatalf("header size %d for %d bytes", n, len(obj))
		}
		out, _, err := Open(nil, obj, id, keys, dec)
		if err != nil && out != nil {
			t.Fatal("data returned with an error")
		}
		if err == nil && len(out) > MaxPlainSize {
			t.Fatal("oversized plaintext")
		}
	})
}

func BenchmarkSeal(b *testing.B) {
	plain := make([]byte, 4<<20)
	_, _ = rand.Read(plain)
	id := block.Sum(plain)
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest))
	for _, bc := range []struct {
		name string
		o    SealOptions
	}{
		{"plain", SealOptions{}},
		{"zstd", SealOptions{Compressor: enc}},
		{"aesgcm", SealOptions{Key: mustKey(b, 1, CipherAES256GCM, 1)}},
		{"zstd+aesgcm", SealOptions{Compressor: enc, Key: mustKey(b, 1, CipherAES256GCM, 1)}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var buf, scratch []byte
			bc.o.Kind = KindBlock
			bc.o.Scratch = &scratch
			b.SetBytes(int64(len(plain)))
			for b.Loop() {
				buf, _ = Seal(buf[:0], plain, id, bc.o)
			}
		})
	}
}
