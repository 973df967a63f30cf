package keyring

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/backy/backy/blockstore/object"
)

var testTime = time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)

func testRegistrations() map[string]Registration {
	return map[string]Registration{
		"raw": {Format: 1, EncVersion: 1, Cipher: object.CipherAES256GCM, KeyID: [8]byte{1, 2, 3, 4, 5, 6, 7, 8}, Registered: testTime},
		"passphrase": {Format: 1, EncVersion: 2, Cipher: object.CipherXChaCha20Poly1305, KeyID: [8]byte{0xff, 0xfe},
			KDF:        &KDF{Name: "argon2id", Salt: bytes.Repeat([]byte{0xab}, 16), Time: 3, MemoryKiB: 65536, Threads: 4},
			Registered: testTime},
		"max": {Format: 1, EncVersion: 65535, Cipher: object.CipherAES256GCM,
			KDF:        &KDF{Name: "argon2id", Salt: bytes.Repeat([]byte{1}, 64), Time: 100, MemoryKiB: 4 << 20, Threads: 255},
			Registered: time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC)},
	}
}

func TestRegistrationLayout(t *testing.T) {
	b, err := testRegistrations()["passphrase"].Marshal()
	if err != nil {
		t.Fatal(err)
	}
	want := `{"format":1,"encryption_version":2,"cipher":"xchacha20-poly1305","key_id":"fffe000000000000",` +
		`"kdf":{"name":"argon2id","salt":"abababababababababababababababab","time":3,"memory_kib":65536,"threads":4},` +
		`"registered":"2026-11-22T10:00:00Z"}` + "\n"
	if string(b) != want {
		t.Errorf("Marshal =\n%s\nwant\n%s", b, want)
	}
	b, err = testRegistrations()["raw"].Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "kdf") {
		t.Errorf("raw-key registration has a kdf: %s", b)
	}
	if got := ObjectName(2); got != "keys/2.json" {
		t.Errorf("ObjectName(2) = %q", got)
	}
	if got := ObjectName(65535); got != "keys/65535.json" {
		t.Errorf("ObjectName(65535) = %q", got)
	}
}

func TestRegistrationRoundTrip(t *testing.T) {
	for name, r := range testRegistrations() {
		t.Run(name, func(t *testing.T) {
			b, err := r.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			got, err := ParseRegistration(b)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, r) {
				t.Errorf("round trip: got %+v, want %+v", got, r)
			}
		})
	}
}

func TestParseRegistrationErrors(t *testing.T) {
	const kdf = `"kdf":{"name":"argon2id","salt":"abababababababababababababababab","time":3,"memory_kib":65536,"threads":4}`
	valid := `{"format":1,"encryption_version":2,"cipher":"aes-256-gcm","key_id":"0102030405060708",` + kdf + `,"registered":"2026-11-22T10:00:00Z"}`
	if _, err := ParseRegistration([]byte(valid)); err != nil {
		t.Fatalf("valid registration refused: %v", err)
	}
	for _, tc := range []struct {
		name, old, new, want string
	}{
		{"not json", valid, "{", "invalid key registration"},
		{"trailing data", valid, valid + "x", "invalid"},
		{"newer format", `"format":1`, `"format":2`, "upgrade backy"},
		{"format 0", `"format":1`, `"format":0`, "format 0"},
		{"no format", `"format":1,`, ``, "format 0"},
		{"format string", `"format":1`, `"format":"1"`, "numeric format"},
		{"version 0", `"encryption_version":2`, `"encryption_version":0`, "encryption version 0"},
		{"version too big", `"encryption_version":2`, `"encryption_version":65536`, "out of range"},
		{"version fraction", `"encryption_version":2`, `"encryption_version":2.5`, "invalid"},
		{"cipher none", `"aes-256-gcm"`, `"none"`, "unknown cipher"},
		{"cipher unknown", `"aes-256-gcm"`, `"AES-256-GCM"`, "unknown cipher"},
		{"key id short", `"0102030405060708"`, `"01020304050607"`, "key_id"},
		{"key id long", `"0102030405060708"`, `"010203040506070809"`, "key_id"},
		{"key id not hex", `"0102030405060708"`, `"010203040506070g"`, "key_id"},
		{"kdf scrypt", `"argon2id"`, `"scrypt"`, "not supported"},
		{"kdf argon2i", `"argon2id"`, `"argon2i"`, "not supported"},
		{"kdf empty", kdf, `"kdf":{}`, "kdf"},
		{"salt short", `"abababababababababababababababab"`, `"abababababababababababababab"`, "salt"},
		{"salt long", `"abababababababababababababababab"`, `"` + strings.Repeat("ab", 65) + `"`, "salt"},
		{"salt not hex", `"abababababababababababababababab"`, `"zz"`, "salt"},
		{"time 0", `"time":3`, `"time":0`, "time"},
		{"time 101", `"time":3`, `"time":101`, "time"},
		{"memory below 8 KiB per thread", `"memory_kib":65536`, `"memory_kib":31`, "memory"},
		{"memory above 4 GiB", `"memory_kib":65536`, `"memory_kib":4194305`, "memory"},
		{"memory negative", `"memory_kib":65536`, `"memory_kib":-1`, "memory"},
		{"threads 0", `"threads":4`, `"threads":0`, "threads"},
		{"threads 256", `"threads":4`, `"threads":256`, "threads"},
		{"no registered time", `,"registered":"2026-11-22T10:00:00Z"`, ``, "time"},
		{"registered before 1970", `2026-11-22T10:00:00Z`, `1969-12-31T23:59:59Z`, "time"},
		{"registered beyond 9999 in UTC", `2026-11-22T10:00:00Z`, `9999-12-31T23:00:00-02:00`, "time"},
		{"registered not a time", `"2026-11-22T10:00:00Z"`, `"yesterday"`, "invalid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := strings.Replace(valid, tc.old, tc.new, 1)
			if in == valid {
				t.Fatalf("test case does not change the input")
			}
			_, err := ParseRegistration([]byte(in))
			if !errors.Is(err, ErrBadRegistration) {
				t.Fatalf("got %v, want ErrBadRegistration", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error spans lines: %q", err)
			}
		})
	}
}

func TestRegistrationNormalised(t *testing.T) {
	// Upper-case hex, another time zone and unknown fields are accepted;
	// the parsed value re-marshals to the canonical form.
	in := `{"format":1,"encryption_version":7,"cipher":"aes-256-gcm","key_id":"ABCDEF0102030405",` +
		`"registered":"2026-11-22T11:00:00+01:00","comment":"added later"}`
	r, err := ParseRegistration([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if r.Registered != testTime || r.KeyID != [8]byte{0xab, 0xcd, 0xef, 1, 2, 3, 4, 5} {
		t.Errorf("parsed %+v", r)
	}
	b, _ := r.Marshal()
	if want := `{"format":1,"encryption_version":7,"cipher":"aes-256-gcm","key_id":"abcdef0102030405","registered":"2026-11-22T10:00:00Z"}` + "\n"; string(b) != want {
		t.Errorf("re-marshalled %s", b)
	}
}

func TestMarshalRefusesInvalid(t *testing.T) {
	good := testRegistrations()["passphrase"]
	for _, tc := range []struct {
		name string
		edit func(*Registration)
	}{
		{"format 0", func(r *Registration) { r.Format = 0 }},
		{"format 2", func(r *Registration) { r.Format = 2 }},
		{"version 0", func(r *Registration) { r.EncVersion = 0 }},
		{"cipher none", func(r *Registration) { r.Cipher = object.CipherNone }},
		{"cipher 9", func(r *Registration) { r.Cipher = 9 }},
		{"kdf name", func(r *Registration) { r.KDF.Name = "pbkdf2" }},
		{"kdf salt", func(r *Registration) { r.KDF.Salt = r.KDF.Salt[:8] }},
		{"kdf memory", func(r *Registration) { r.KDF.MemoryKiB = 8*4 - 1 }},
		{"no time", func(r *Registration) { r.Registered = time.Time{} }},
	} {
		r := good.clone()
		tc.edit(&r)
		if _, err := r.Marshal(); !errors.Is(err, ErrBadRegistration) {
			t.Errorf("%s: Marshal = %v, want ErrBadRegistration", tc.name, err)
		}
	}
}

func TestDefaultKDF(t *testing.T) {
	a, err := DefaultKDF()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := DefaultKDF()
	if a.Name != "argon2id" || len(a.Salt) != 16 || a.Time != 3 || a.MemoryKiB != 65536 || a.Threads != 4 {
		t.Errorf("DefaultKDF = %+v", a)
	}
	if bytes.Equal(a.Salt, b.Salt) {
		t.Error("two DefaultKDF calls drew the same salt")
	}
	if err := a.Validate(); err != nil {
		t.Error(err)
	}
	if _, err := (KDF{Name: "argon2id", Salt: a.Salt, Time: 1, MemoryKiB: 4, Threads: 1}).Derive([]byte("x")); err == nil {
		t.Error("Derive accepted 4 KiB of memory")
	}
}

func TestParseCipher(t *testing.T) {
	for _, c := range []object.Cipher{object.CipherAES256GCM, object.CipherXChaCha20Poly1305} {
		if got, err := ParseCipher(c.String()); err != nil || got != c {
			t.Errorf("ParseCipher(%q) = %v, %v", c, got, err)
		}
	}
	for _, s := range []string{"", "none", "aes", "cipher(1)"} {
		if _, err := ParseCipher(s); err == nil {
			t.Errorf("ParseCipher(%q) accepted", s)
		}
	}
}

func FuzzParseRegistration(f *testing.F) {
	for _, r := range testRegistrations() {
		b, err := r.Marshal()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"format":2}`))
	f.Add([]byte(`{"format":1,"encryption_version":7,"cipher":"aes-256-gcm","key_id":"ABCDEF0102030405","registered":"2026-11-22T11:00:00+01:00"}`))
	f.Add([]byte(`{"format":1,"encryption_version":1,"cipher":"xchacha20-poly1305","key_id":"0000000000000000","kdf":null,"registered":"1970-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"format":1,"encryption_version":1,"cipher":"aes-256-gcm","key_id":"0000000000000000","kdf":{"name":"argon2id","salt":"00000000000000000000000000000000","time":1,"memory_kib":8,"threads":1},"registered":"2026-01-01T00:00:00.123456789Z"}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseRegistration(b)
		if err != nil {
			if !errors.Is(err, ErrBadRegistration) {
				t.Fatalf("error does not wrap ErrBadRegistration: %v", err)
			}
			if !reflect.DeepEqual(r, Registration{}) {
				t.Fatalf("error %v with a non-zero registration %+v", err, r)
			}
			return
		}
		m, err := r.Marshal()
		if err != nil {
			t.Fatalf("parsed %+v does not marshal: %v", r, err)
		}
		r2, err := ParseRegistration(m)
		if err != nil {
			t.Fatalf("re-marshalled %s does not parse: %v", m, err)
		}
		if !reflect.DeepEqual(r, r2) {
			t.Fatalf("round trip changed the registration:\n%+v\n%+v", r, r2)
		}
		m2, err := r2.Marshal()
		if err != nil || !bytes.Equal(m, m2) {
			t.Fatalf("marshalling is not stable: %s vs %s (%v)", m, m2, err)
		}
	})
}
