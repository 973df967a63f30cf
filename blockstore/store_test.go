package blockstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/blockstore/backend"
	"github.com/backy/backy/blockstore/backend/file"
	"github.com/backy/backy/blockstore/object"
	"github.com/backy/backy/internal/block"
)

// newStore returns a store writing through a file backend in a temp dir,
// and the backend's root, so tests can damage objects on disk.
func newStore(t *testing.T, o blockstore.Options) (*blockstore.Store, string) {
	t.Helper()
	be, err := file.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	st, err := blockstore.New(be, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return st, be.Root()
}

func objectPath(root string, n block.Name) string {
	return filepath.Join(root, filepath.FromSlash(blockstore.ObjectName(n)))
}

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 1}))
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(r.Uint32())
	}
	return p
}

func compressible(n int) []byte {
	return []byte(strings.Repeat("backy compresses this line well. ", n/32+1))[:n]
}

func put(t *testing.T, st *blockstore.Store, plain []byte) block.Record {
	t.Helper()
	rec, err := st.Put(t.Context(), block.Sum(plain), plain)
	if err != nil {
		t.Fatalf("Put: %v", err)
	}
	return rec
}

type staticKeys map[uint16]*object.Key

func (k staticKeys) Key(v uint16) (*object.Key, error) {
	if key, ok := k[v]; ok {
		return key, nil
	}
	return nil, fmt.Errorf("%w: version %d", object.ErrNoKey, v)
}

func TestPutGetRoundTrip(t *testing.T) {
	key, err := object.NewKey(1, object.CipherXChaCha20Poly1305, bytes.Repeat([]byte{7}, 32))
	if err != nil {
		t.Fatal(err)
	}
	stores := []struct {
		name string
		o    blockstore.Options
	}{
		{"none", blockstore.Options{Compression: block.CompressionNone}},
		{"zstd", blockstore.Options{Compression: block.CompressionZstd}},
		{"zstd-level3", blockstore.Options{Compression: block.CompressionZstd, CompressionLevel: 3}},
		{"zstd-encrypted", blockstore.Options{Compression: block.CompressionZstd, Key: key, Keys: staticKeys{1: key}}},
	}
	data := []struct {
		name      string
		plain     []byte
		shrinks   bool // zstd makes it smaller
		wantBytes int
	}{
		{"random-64k", randomBytes(1, 64<<10), false, 64 << 10},
		{"text-64k", compressible(64 << 10), true, 64 << 10},
		{"one-byte", []byte{42}, false, 1},
		{"short-tail", randomBytes(2, 12345), false, 12345},
		{"empty", []byte{}, false, 0},
	}
	for _, s := range stores {
		t.Run(s.name, func(t *testing.T) {
			st, root := newStore(t, s.o)
			for _, d := range data {
				t.Run(d.name, func(t *testing.T) {
					rec := put(t, st, d.plain)
					if rec.ID != block.Sum(d.plain) || rec.Size != uint32(d.wantBytes) || rec.Name.IsZero() {
						t.Errorf("record %+v", rec)
					}
					fi, err := os.Stat(objectPath(root, rec.Name))
					if err != nil {
						t.Fatal(err)
					}
					if fi.Size() != int64(rec.StoredSize) {
						t.Errorf("object has %d bytes, record says %d", fi.Size(), rec.StoredSize)
					}
					wantComp := block.CompressionNone
					if s.o.Compression == block.CompressionZstd && d.shrinks {
						wantComp = block.CompressionZstd
					}
					if rec.Compression != wantComp {
						t.Errorf("compression %s, want %s", rec.Compression, wantComp)
					}
					if rec.EncVersion != st.EncVersion() {
						t.Errorf("enc version %d, want %d", rec.EncVersion, st.EncVersion())
					}
					if wantComp == block.CompressionZstd && rec.StoredSize >= rec.Size {
						t.Errorf("compressed object of %d bytes for %d plain bytes", rec.StoredSize, rec.Size)
					}
					got, err := st.Get(t.Context(), rec, make([]byte, 0, 3))
					if err != nil {
						t.Fatalf("Get: %v", err)
					}
					if !bytes.Equal(got, d.plain) {
						t.Fatalf("Get returned %d bytes that differ from the %d put", len(got), len(d.plain))
					}
					if err := st.Check(t.Context(), rec); err != nil {
						t.Errorf("Check: %v", err)
					}
				})
			}
		})
	}
}

// TestPutNamesAreFresh: the same block put twice makes two objects.
func TestPutNamesAreFresh(t *testing.T) {
	st, _ := newStore(t, blockstore.Options{})
	p := randomBytes(3, 1000)
	a, b := put(t, st, p), put(t, st, p)
	if a.Name == b.Name {
		t.Fatalf("two puts share the object name %s", a.Name)
	}
}

// TestGetDetectsDamage damages objects on disk behind the store's back.
func TestGetDetectsDamage(t *testing.T) {
	for _, comp := range []block.Compression{block.CompressionNone, block.CompressionZstd} {
		t.Run(comp.String(), func(t *testing.T) {
			st, root := newStore(t, blockstore.Options{Compression: comp})
			cases := []struct {
				name   string
				damage func(t *testing.T, path string, other string)
				want   error
			}{
				{"flipped-bit-in-payload", func(t *testing.T, path, _ string) {
					b := readFile(t, path)
					b[len(b)-len(b)/3] ^= 0x10
					writeFile(t, path, b)
				}, blockstore.ErrCorrupt},
				{"flipped-bit-in-header", func(t *testing.T, path, _ string) {
					b := readFile(t, path)
					b[20] ^= 1
					writeFile(t, path, b)
				}, blockstore.ErrCorrupt},
				{"truncated", func(t *testing.T, path, _ string) {
					if err := os.Truncate(path, 100); err != nil {
						t.Fatal(err)
					}
				}, blockstore.ErrCorrupt},
				{"truncated-into-header", func(t *testing.T, path, _ string) {
					if err := os.Truncate(path, 10); err != nil {
						t.Fatal(err)
					}
				}, blockstore.ErrCorrupt},
				{"empty", func(t *testing.T, path, _ string) {
					writeFile(t, path, nil)
				}, blockstore.ErrCorrupt},
				{"extended", func(t *testing.T, path, _ string) {
					writeFile(t, path, append(readFile(t, path), 0))
				}, blockstore.ErrCorrupt},
				{"deleted", func(t *testing.T, path, _ string) {
					if err := os.Remove(path); err != nil {
						t.Fatal(err)
					}
				}, blockstore.ErrMissing},
				{"swapped-with-another-block", func(t *testing.T, path, other string) {
					writeFile(t, path, readFile(t, other))
				}, blockstore.ErrCorrupt},
				{"garbage", func(t *testing.T, path, _ string) {
					writeFile(t, path, randomBytes(9, 5000))
				}, blockstore.ErrCorrupt},
			}
			for i, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					// Same size, different content: only the hash can tell.
					plain := append(compressible(40<<10), randomBytes(uint64(10+i), 24<<10)...)
					otherPlain := append(compressible(40<<10), randomBytes(uint64(100+i), 24<<10)...)
					rec, other := put(t, st, plain), put(t, st, otherPlain)
					c.damage(t, objectPath(root, rec.Name), objectPath(root, other.Name))
					got, err := st.Get(t.Context(), rec, nil)
					if !errors.Is(err, c.want) {
						t.Fatalf("Get = %v, want %v", err, c.want)
					}
					if got != nil {
						t.Errorf("Get returned %d bytes along with the error", len(got))
					}
					if c.want == blockstore.ErrCorrupt && errors.Is(err, blockstore.ErrMissing) {
						t.Errorf("damaged object reported missing too: %v", err)
					}
					// The undamaged block still reads.
					if got, err := st.Get(t.Context(), other, nil); err != nil || !bytes.Equal(got, otherPlain) {
						t.Errorf("undamaged block: %v", err)
					}
				})
			}
		})
	}
}

// TestGetWrongRecord: a record that does not describe the object fails.
func TestGetWrongRecord(t *testing.T) {
	st, _ := newStore(t, blockstore.Options{})
	plain := randomBytes(4, 4096)
	rec := put(t, st, plain)
	cases := []struct {
		name string
		edit func(r *block.Record)
		want error
	}{
		{"other-id", func(r *block.Record) { r.ID[0] ^= 1 }, blockstore.ErrCorrupt},
		{"other-size", func(r *block.Record) { r.Size-- }, blockstore.ErrCorrupt},
		{"other-name", func(r *block.Record) { r.Name[0] ^= 1 }, blockstore.ErrMissing},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := rec
			c.edit(&r)
			if _, err := st.Get(t.Context(), r, nil); !errors.Is(err, c.want) {
				t.Errorf("Get = %v, want %v", err, c.want)
			}
		})
	}
}

func TestGetEncrypted(t *testing.T) {
	k1, _ := object.NewKey(1, object.CipherAES256GCM, bytes.Repeat([]byte{1}, 32))
	k1other, _ := object.NewKey(1, object.CipherAES256GCM, bytes.Repeat([]byte{2}, 32))
	be, err := file.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	w, err := blockstore.New(be, blockstore.Options{Key: k1, Keys: staticKeys{1: k1}})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	plain := randomBytes(5, 5000)
	rec := put(t, w, plain)
	if rec.EncVersion != 1 {
		t.Fatalf("enc version %d", rec.EncVersion)
	}
	cases := []struct {
		name    string
		keys    object.Keys
		want    error
		corrupt bool
	}{
		{"no-keys", nil, object.ErrNoKey, false},
		{"other-version-only", staticKeys{2: k1}, object.ErrNoKey, false},
		{"wrong-key", staticKeys{1: k1other}, blockstore.ErrCorrupt, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, err := blockstore.New(be, blockstore.Options{Keys: c.keys})
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			_, err = r.Get(t.Context(), rec, nil)
			if !errors.Is(err, c.want) {
				t.Fatalf("Get = %v, want %v", err, c.want)
			}
			if !c.corrupt && errors.Is(err, blockstore.ErrCorrupt) {
				t.Errorf("a missing key is reported as corruption: %v", err)
			}
		})
	}
}

func TestCheck(t *testing.T) {
	st, root := newStore(t, blockstore.Options{Compression: block.CompressionZstd})
	cases := []struct {
		name   string
		damage func(t *testing.T, path string)
		want   error
	}{
		{"intact", func(*testing.T, string) {}, nil},
		// Check reads no data: a flipped bit goes unnoticed.
		{"flipped-bit", func(t *testing.T, path string) {
			b := readFile(t, path)
			b[len(b)/2] ^= 1
			writeFile(t, path, b)
		}, nil},
		{"truncated", func(t *testing.T, path string) {
			if err := os.Truncate(path, 33); err != nil {
				t.Fatal(err)
			}
		}, blockstore.ErrCorrupt},
		{"grown", func(t *testing.T, path string) { writeFile(t, path, append(readFile(t, path), 1, 2)) }, blockstore.ErrCorrupt},
		{"missing", func(t *testing.T, path string) {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		}, blockstore.ErrMissing},
		{"replaced-by-directory", func(t *testing.T, path string) {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(path, 0o700); err != nil {
				t.Fatal(err)
			}
		}, blockstore.ErrMissing},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rec := put(t, st, randomBytes(uint64(50+i), 3000))
			c.damage(t, objectPath(root, rec.Name))
			err := st.Check(t.Context(), rec)
			if c.want == nil && err != nil || !errors.Is(err, c.want) {
				t.Fatalf("Check = %v, want %v", err, c.want)
			}
		})
	}
}

func TestDelete(t *testing.T) {
	st, root := newStore(t, blockstore.Options{})
	rec := put(t, st, randomBytes(6, 100))
	if err := st.Delete(t.Context(), rec.Name); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(objectPath(root, rec.Name)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("object still there: %v", err)
	}
	if _, err := st.Get(t.Context(), rec, nil); !errors.Is(err, blockstore.ErrMissing) {
		t.Errorf("Get after Delete = %v", err)
	}
	if err := st.Delete(t.Context(), rec.Name); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("second Delete = %v, want ErrNotFound", err)
	}
}

// TestCancelled: a cancelled context stops Put and Get.
func TestCancelled(t *testing.T) {
	st, root := newStore(t, blockstore.Options{})
	rec := put(t, st, randomBytes(7, 100))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := st.Put(ctx, block.Sum([]byte("x")), []byte("x")); !errors.Is(err, context.Canceled) {
		t.Errorf("Put = %v", err)
	}
	if _, err := st.Get(ctx, rec, nil); !errors.Is(err, context.Canceled) || errors.Is(err, blockstore.ErrCorrupt) || errors.Is(err, blockstore.ErrMissing) {
		t.Errorf("Get = %v", err)
	}
	// Only the first object was stored.
	n := 0
	if err := st.Backend().List(t.Context(), blockstore.BlockPrefix, func(backend.Info) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Errorf("%d objects stored, want 1 (root %s)", n, root)
	}
}

// TestConcurrent puts and gets from many goroutines at once: the store's
// buffer pool must never hand one buffer to two of them (run with -race).
func TestConcurrent(t *testing.T) {
	for _, comp := range []block.Compression{block.CompressionNone, block.CompressionZstd} {
		t.Run(comp.String(), func(t *testing.T) {
			st, _ := newStore(t, blockstore.Options{Compression: comp})
			const n = 16
			plains := make([][]byte, n)
			recs := make([]block.Record, n)
			for i := range plains {
				if i%2 == 0 {
					plains[i] = randomBytes(uint64(200+i), 20000+i*100)
				} else {
					plains[i] = compressible(20000 + i*100)
				}
			}
			var wg sync.WaitGroup
			for i := range plains {
				wg.Go(func() {
					rec, err := st.Put(t.Context(), block.Sum(plains[i]), plains[i])
					if err != nil {
						t.Error(err)
					}
					recs[i] = rec
				})
			}
			wg.Wait()
			for round := range 3 {
				for i := range plains {
					wg.Go(func() {
						got, err := st.Get(t.Context(), recs[i], nil)
						if err != nil || !bytes.Equal(got, plains[i]) {
							t.Errorf("round %d block %d: %v", round, i, err)
						}
					})
				}
			}
			wg.Wait()
		})
	}
}

func TestObjectName(t *testing.T) {
	for i := range 50 {
		var n block.Name
		copy(n[:], randomBytes(uint64(i), block.NameSize))
		s := blockstore.ObjectName(n)
		if !backend.ValidName(s) {
			t.Errorf("%q is not a valid backend name", s)
		}
		h := n.String()
		if want := "blocks/" + h[:2] + "/" + h; s != want {
			t.Errorf("ObjectName = %q, want %q", s, want)
		}
		got, ok := blockstore.ParseObjectName(s)
		if !ok || got != n {
			t.Errorf("ParseObjectName(%q) = %s, %v", s, got, ok)
		}
	}
	var zero block.Name
	if got, ok := blockstore.ParseObjectName(blockstore.ObjectName(zero)); !ok || got != zero {
		t.Errorf("zero name does not round-trip")
	}
}

func TestParseObjectNameRejectsJunk(t *testing.T) {
	const h = "3f0c1122334455667788990011223344"
	for _, s := range []string{
		"",
		"blocks/",
		"blocks/3f/",
		"blocks/3f/" + h[:31],
		"blocks/3f/" + h + "0",
		"blocks/3f" + h,
		"blocks/3f//" + h,
		"blocks/3e/" + h,            // wrong shard
		"blocks/3f/" + h[:31] + "g", // not hex
		"blocks/3f-" + h,
		"block/3f/" + h,
		"/blocks/3f/" + h,
		"versions/3f/" + h,
		"blocks/3f/" + h + "/",
		"blocks/3f/3f0c11223344556677889900112233\x00\x00",
		"blocks/3F/3F0C1122334455667788990011223344", // ObjectName never writes upper case
		"blocks/3f/3F0C1122334455667788990011223344",
		"store.json",
	} {
		if n, ok := blockstore.ParseObjectName(s); ok {
			t.Errorf("ParseObjectName(%q) = %s, accepted", s, n)
		}
	}
	if _, ok := blockstore.ParseObjectName("blocks/3f/" + h); !ok {
		t.Errorf("valid name rejected")
	}
}

// FuzzParseObjectName: whatever ParseObjectName accepts, ObjectName gives
// back unchanged.
func FuzzParseObjectName(f *testing.F) {
	f.Add("blocks/3f/3f0c1122334455667788990011223344")
	f.Add("blocks/AB/AB0c1122334455667788990011223344")
	f.Fuzz(func(t *testing.T, s string) {
		n, ok := blockstore.ParseObjectName(s)
		if ok && blockstore.ObjectName(n) != s {
			t.Errorf("ParseObjectName(%q) accepted a name ObjectName writes as %q", s, blockstore.ObjectName(n))
		}
	})
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
