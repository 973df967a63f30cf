package main

// End-to-end tests of encryption, compression, key management and
// migrate-encryption through the built binary (see e2e_helpers_test.go).
// Every store here uses 64 KiB blocks and lives in its own directory,
// named by configuration files written with mode 0600 (a key in a file
// others can read earns a warning, which would be a second stderr line).
// Identifiers start with "e2eEnc".

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"maps"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/argon2"

	"github.com/backy/backy/blockstore/object"
)

// e2eEncBS is the block size of every store of these tests.
const e2eEncBS = 64 * e2eKiB

const (
	e2eEncAES    = "aes-256-gcm"
	e2eEncChaCha = "xchacha20-poly1305"
)

// e2eEncCipherByte is the cipher byte of an object header (docs/FORMAT.md).
func e2eEncCipherByte(cipher string) byte {
	switch cipher {
	case e2eEncAES:
		return 1
	case e2eEncChaCha:
		return 2
	}
	return 0
}

// e2eEncMat is the key material of one encryption version as a test
// configures it.
type e2eEncMat struct {
	kind   string // key, key_file, passphrase or passphrase_file
	secret string // the key in hex, or the passphrase
	file   string // the file holding the secret (the *_file kinds)
}

// e2eEncNewMat makes key material of the kind; a *_file kind gets its file
// (mode 0600) in dir.
func e2eEncNewMat(t *testing.T, dir, kind string, seed uint64) e2eEncMat {
	t.Helper()
	m := e2eEncMat{kind: kind}
	if strings.HasPrefix(kind, "key") {
		m.secret = hex.EncodeToString(e2eRandom(32, seed+7000))
	} else {
		// '#' and ';' are part of a passphrase, not comments.
		m.secret = fmt.Sprintf("pass phrase %x # with ; inside", e2eRandom(6, seed+7000))
	}
	if strings.HasSuffix(kind, "_file") {
		m.file = filepath.Join(dir, fmt.Sprintf("%s-%d", kind, seed))
		e2eEncSecretFile(t, m.file, m.secret+"\n")
	}
	return m
}

func (m e2eEncMat) value() string {
	if m.file != "" {
		return m.file
	}
	return m.secret
}

// line sets the material in [DEFAULTS].
func (m e2eEncMat) line() string { return "encryption_" + m.kind + " = " + m.value() }

// sectionLine sets the material in an [EncryptionN] section.
func (m e2eEncMat) sectionLine() string { return m.kind + " = " + m.value() }

// origin is how messages name the material in [DEFAULTS].
func (m e2eEncMat) origin() string {
	if m.file != "" {
		return "encryption_" + m.kind + " " + m.file
	}
	return "encryption_" + m.kind
}

func (m e2eEncMat) isKey() bool { return strings.HasPrefix(m.kind, "key") }

// raw is the 32-byte key, or nil for a passphrase.
func (m e2eEncMat) raw() []byte {
	if !m.isKey() {
		return nil
	}
	b, _ := hex.DecodeString(m.secret)
	return b
}

// secrets are the byte strings that must never appear in output or in
// the store.
func (m e2eEncMat) secrets() [][]byte {
	if m.isKey() {
		return [][]byte{[]byte(m.secret), []byte(strings.ToUpper(m.secret)), m.raw()}
	}
	return [][]byte{[]byte(m.secret)}
}

// e2eEncSecretFile writes a file only its owner can read.
func e2eEncSecretFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// e2eEncConf writes (mode 0600) a configuration of the store in directory
// store (metastore store/backy.db, data store/data) and returns its path.
// lines go into [DEFAULTS]; a line "[EncryptionN]" starts that section.
func e2eEncConf(t *testing.T, path, store string, lines ...string) string {
	t.Helper()
	var sb strings.Builder
	fmt.Fprintf(&sb, "[MetaBackend]\npath = %s\n\n[DataBackend]\npath = %s\n\n[DEFAULTS]\n",
		filepath.Join(store, "backy.db"), filepath.Join(store, "data"))
	for _, l := range lines {
		sb.WriteString(l + "\n")
	}
	e2eEncSecretFile(t, path, sb.String())
	return path
}

// e2eEncWithConfig returns the sandbox with $BACKY_CONFIG set to cfg, so
// that helpers that run backy without -c (ls, waitVersion, backup) use it.
func e2eEncWithConfig(b *e2eBox, cfg string) *e2eBox {
	c := *b
	c.env = append(slices.Clone(b.env), "BACKY_CONFIG="+cfg)
	return &c
}

// e2eEncStats is 'backy stats --json' of a store.
type e2eEncStats struct {
	Versions    int   `json:"versions"`
	Blocks      int64 `json:"blocks"`
	StoredBytes int64 `json:"stored_bytes"`
	PlainBytes  int64 `json:"plain_bytes"`
	Trash       int64 `json:"trash_objects"`
	ByEnc       map[string]struct {
		Blocks      int64 `json:"blocks"`
		StoredBytes int64 `json:"stored_bytes"`
	} `json:"blocks_by_encryption_version"`
}

func e2eEncStatsOf(b *e2eBox, cfg string) e2eEncStats {
	b.t.Helper()
	r := b.ok("-c", cfg, "stats", "--json")
	s := e2eDecode[e2eEncStats](b.t, r)
	if s.ByEnc == nil {
		b.t.Fatalf("stats --json has no blocks_by_encryption_version:\n%v", r)
	}
	return s
}

// enc returns the number of blocks per encryption version (no zeros).
func (s e2eEncStats) enc(t *testing.T) map[int]int64 {
	t.Helper()
	out := map[int]int64{}
	for k, v := range s.ByEnc {
		var n int
		if _, err := fmt.Sscan(k, &n); err != nil {
			t.Fatalf("stats --json: encryption version %q is not a number", k)
		}
		if v.Blocks != 0 {
			out[n] = v.Blocks
		}
	}
	return out
}

// wantEnc requires the blocks per encryption version to be want, and
// their sum the store's block count.
func (s e2eEncStats) wantEnc(t *testing.T, what string, want map[int]int64) {
	t.Helper()
	got := s.enc(t)
	if !maps.Equal(got, want) {
		t.Errorf("%s: stats --json shows blocks by encryption version %v, want %v", what, got, want)
	}
	var sum int64
	for _, n := range got {
		sum += n
	}
	if sum != s.Blocks {
		t.Errorf("%s: blocks by encryption version %v add up to %d, the store has %d", what, got, sum, s.Blocks)
	}
}

// e2eEncObj is the parsed header of one stored block object.
type e2eEncObj struct {
	path                string
	size                int
	compression, cipher byte
	encVersion          uint16
	keyID               string
	hsize               int // header length, CRC included
}

// e2eEncObjects parses the header of every object below data/blocks
// (temporary files of killed writers are skipped).
func e2eEncObjects(t *testing.T, data string) []e2eEncObj {
	t.Helper()
	var out []e2eEncObj
	root := filepath.Join(data, "blocks")
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && p == root {
				return fs.SkipAll
			}
			return err
		}
		if !d.Type().IsRegular() || strings.HasPrefix(d.Name(), ".") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if len(b) < 27 || string(b[:4]) != "BKYO" || len(b) < 27+int(b[22]) {
			return fmt.Errorf("%s (%d bytes) is not a stored object", p, len(b))
		}
		out = append(out, e2eEncObj{path: p, size: len(b), compression: b[6], cipher: b[7],
			encVersion: binary.BigEndian.Uint16(b[8:10]), keyID: hex.EncodeToString(b[10:18]), hsize: 27 + int(b[22])})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// e2eEncFixCRC recomputes the header CRC-32C of an object.
func e2eEncFixCRC(obj []byte) {
	n := 23 + int(obj[22])
	binary.BigEndian.PutUint32(obj[n:], crc32.Checksum(obj[:n], crc32.MakeTable(crc32.Castagnoli)))
}

// e2eEncGrep returns the files below dir (relative) that contain any of
// the needles.
func e2eEncGrep(t *testing.T, dir string, needles ...[]byte) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, n := range needles {
			if bytes.Contains(b, n) {
				rel, _ := filepath.Rel(dir, p)
				out = append(out, rel)
				break
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// e2eEncFew lists the first few names.
func e2eEncFew(names []string) string {
	if len(names) > 5 {
		return strings.Join(names[:5], ", ") + ", ..."
	}
	return strings.Join(names, ", ")
}

// e2eEncSnap returns the regular files below dir with a digest of each.
func e2eEncSnap(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			rel, _ := filepath.Rel(dir, p)
			out[rel] = e2eSHA(t, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// e2eEncSameSnap requires dir to hold exactly the files of before.
func e2eEncSameSnap(t *testing.T, what, dir string, before map[string]string) {
	t.Helper()
	after := e2eEncSnap(t, dir)
	if maps.Equal(before, after) {
		return
	}
	for k := range after {
		if _, ok := before[k]; !ok {
			t.Errorf("%s: %s was written to the data directory", what, k)
		} else if before[k] != after[k] {
			t.Errorf("%s: %s in the data directory changed", what, k)
		}
	}
	for k := range before {
		if _, ok := after[k]; !ok {
			t.Errorf("%s: %s was deleted from the data directory", what, k)
		}
	}
}

// e2eEncCopyDir copies the tree below src to dst.
func e2eEncCopyDir(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		to := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(to, 0o755)
		}
		if d.Type().IsRegular() {
			e2eCopy(t, p, to)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// e2eEncNoSecrets requires that no secret appears in any output.
func e2eEncNoSecrets(t *testing.T, r e2eRes, mats ...e2eEncMat) {
	t.Helper()
	for _, m := range mats {
		for _, s := range m.secrets() {
			if bytes.Contains([]byte(r.stdout+r.stderr), s) {
				t.Errorf("the output shows the %s:\n%v", m.kind, r)
			}
		}
	}
}

// e2eEncNoSecretsIn requires that no file below dir holds a secret.
func e2eEncNoSecretsIn(t *testing.T, dir string, mats ...e2eEncMat) {
	t.Helper()
	for _, m := range mats {
		if hit := e2eEncGrep(t, dir, m.secrets()...); len(hit) > 0 {
			t.Errorf("the %s is stored in %v below %s", m.kind, hit, dir)
		}
	}
}

// e2eEncDistinct counts the distinct blocks of the files that are not all
// zeros (the blocks a store keeps for them).
func e2eEncDistinct(t *testing.T, paths ...string) int64 {
	t.Helper()
	seen := map[string]bool{}
	zero := make([]byte, e2eEncBS)
	for _, p := range paths {
		b := e2eReadFile(t, p)
		for off := 0; off < len(b); off += e2eEncBS {
			blk := b[off:min(off+e2eEncBS, len(b))]
			if !bytes.Equal(blk, zero[:len(blk)]) {
				seen[string(blk)] = true
			}
		}
	}
	return int64(len(seen))
}

// e2eEncMarkerImage writes n blocks of random data, each holding marker
// at a few places, so that an object stored in the clear shows it.
func e2eEncMarkerImage(t *testing.T, path string, n int, marker string, seed uint64) {
	t.Helper()
	b := e2eRandom(n*e2eEncBS, seed)
	for i := range n {
		for _, at := range []int{0, 20000, 40000, e2eEncBS - len(marker)} {
			copy(b[i*e2eEncBS+at:], marker)
		}
	}
	e2eWriteFile(t, path, b)
}

// e2eEncChangeBlocks rewrites the given blocks of a copy of src (with
// marker, if not empty) and returns the copy.
func e2eEncChangeBlocks(t *testing.T, src, dst string, blocks []int, marker string, seed uint64) string {
	t.Helper()
	b := e2eReadFile(t, src)
	for i, blk := range blocks {
		nb := e2eRandom(e2eEncBS, seed+uint64(i))
		if marker != "" {
			copy(nb[1000:], marker)
		}
		copy(b[blk*e2eEncBS:], nb)
	}
	e2eWriteFile(t, dst, b)
	return dst
}

// e2eEncMarker returns a marker string that occurs nowhere by chance.
func e2eEncMarker(t *testing.T, what string) string {
	t.Helper()
	var r [12]byte
	if _, err := rand.Read(r[:]); err != nil {
		t.Fatal(err)
	}
	return "BACKY-MARKER-" + what + "-" + hex.EncodeToString(r[:])
}

// e2eEncReg is a key registration, keys/<N>.json in the backend.
type e2eEncReg struct {
	Format            int    `json:"format"`
	EncryptionVersion int    `json:"encryption_version"`
	Cipher            string `json:"cipher"`
	KeyID             string `json:"key_id"`
	KDF               *struct {
		Name      string `json:"name"`
		Salt      string `json:"salt"`
		Time      uint32 `json:"time"`
		MemoryKiB uint32 `json:"memory_kib"`
		Threads   uint8  `json:"threads"`
	} `json:"kdf"`
	Registered string `json:"registered"`
}

// e2eEncCheckReg reads keys/<v>.json of the data directory, checks it
// against the material it registers and returns it.
func e2eEncCheckReg(t *testing.T, data string, v int, cipher string, m e2eEncMat) e2eEncReg {
	t.Helper()
	path := filepath.Join(data, "keys", fmt.Sprintf("%d.json", v))
	raw := e2eReadFile(t, path)
	var reg e2eEncReg
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&reg); err != nil {
		t.Fatalf("%s is not a key registration (%v): %s", path, err, raw)
	}
	if _, err := time.Parse(time.RFC3339, reg.Registered); err != nil {
		t.Errorf("%s: registered %q is not RFC 3339", path, reg.Registered)
	}
	if reg.Format != 1 || reg.EncryptionVersion != v || reg.Cipher != cipher || len(reg.KeyID) != 16 {
		t.Errorf("%s = %s, want format 1, encryption_version %d, cipher %s, a 16-digit key_id", path, raw, v, cipher)
	}
	for _, s := range m.secrets() {
		if bytes.Contains(raw, s) {
			t.Errorf("%s holds the %s: %s", path, m.kind, raw)
		}
	}
	key := m.raw()
	if m.isKey() {
		if reg.KDF != nil {
			t.Errorf("%s: a raw key has no KDF: %s", path, raw)
		}
	} else {
		k := reg.KDF
		if k == nil || k.Name != "argon2id" || len(k.Salt) != 32 || k.Time < 1 || k.Threads < 1 || k.MemoryKiB < 8*uint32(k.Threads) {
			t.Fatalf("%s: a passphrase needs kdf argon2id with a 16-byte salt and its parameters: %s", path, raw)
		}
		salt, err := hex.DecodeString(k.Salt)
		if err != nil {
			t.Fatalf("%s: salt %q: %v", path, k.Salt, err)
		}
		key = argon2.IDKey([]byte(m.secret), salt, k.Time, k.MemoryKiB, k.Threads, 32)
	}
	ck, err := object.NewKey(uint16(v), object.Cipher(e2eEncCipherByte(cipher)), key)
	if err != nil {
		t.Fatal(err)
	}
	if want := hex.EncodeToString(ck.ID[:]); reg.KeyID != want {
		t.Errorf("%s: key_id %s, but the configured %s has key id %s", path, reg.KeyID, m.kind, want)
	}
	return reg
}

// e2eEncMixedImage writes an image of 64 KiB blocks: text blocks (each
// distinct, compressible, holding marker), random blocks, zero blocks,
// repeated blocks and a partial last block.
func e2eEncMixedImage(t *testing.T, path, marker string, seed uint64) {
	t.Helper()
	var img bytes.Buffer
	for i := range 12 {
		var blk bytes.Buffer
		for j := 0; blk.Len() < e2eEncBS; j++ {
			fmt.Fprintf(&blk, "block %d line %d of image %d: %s, the quick brown fox\n", i, j, seed, marker)
		}
		img.Write(blk.Bytes()[:e2eEncBS])
	}
	rnd := e2eRandom(6*e2eEncBS, seed)
	img.Write(rnd)
	img.Write(make([]byte, 3*e2eEncBS))
	for range 3 {
		img.Write(rnd[:e2eEncBS])
	}
	img.Write(e2eRandom(9999, seed+1))
	e2eWriteFile(t, path, img.Bytes())
}

// TestEncryptRoundTrip backs up and restores with every combination of
// compression, cipher and kind of key material, and checks what the store
// keeps: blocks at the configured encryption version and cipher, the key
// registration without the key, and the data unreadable in the backend.
func TestEncryptRoundTrip(t *testing.T) {
	t.Parallel()
	type tc struct{ comp, cipher, mat string }
	var cases []tc
	for _, comp := range []string{"none", "zstd"} {
		cases = append(cases, tc{comp, "", ""})
		for _, c := range []string{e2eEncAES, e2eEncChaCha} {
			for _, m := range []string{"key", "key_file"} {
				cases = append(cases, tc{comp, c, m})
			}
		}
	}
	// argon2id costs about a second a command: one passphrase per cipher.
	cases = append(cases, tc{"none", e2eEncAES, "passphrase_file"}, tc{"zstd", e2eEncChaCha, "passphrase_file"})
	for i, c := range cases {
		name := "compression=" + c.comp + ",unencrypted"
		if c.cipher != "" {
			name = "compression=" + c.comp + "," + c.cipher + "," + c.mat
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := e2eNewBox(t)
			marker := e2eEncMarker(t, "RT")
			img := b.path("mixed.img")
			e2eEncMixedImage(t, img, marker, uint64(i))
			distinct := e2eEncDistinct(t, img)
			store := b.path("store")
			data := filepath.Join(store, "data")
			ver := 0
			lines := []string{"compression = " + c.comp, "compression_level = 3"}
			var mat e2eEncMat
			if c.cipher != "" {
				ver = map[string]int{e2eEncAES: 1, e2eEncChaCha: 7}[c.cipher]
				mat = e2eEncNewMat(t, b.dir, c.mat, uint64(100+i))
				lines = append(lines, fmt.Sprintf("encryption_version = %d", ver), "encryption_cipher = "+c.cipher, mat.line())
			}
			cfg := e2eEncConf(t, b.path("backy.cfg"), store, lines...)
			var outs []e2eRes
			clean := func(r e2eRes) e2eRes {
				t.Helper()
				if r.stderr != "" {
					t.Errorf("unexpected stderr:\n%v", r)
				}
				outs = append(outs, r)
				return r
			}

			r := clean(b.ok("-c", cfg, "init", "--block-size", "65536"))
			want := "encryption off"
			if ver > 0 {
				want = fmt.Sprintf("encryption version %d", ver)
			}
			if !strings.Contains(r.stdout, want) {
				t.Errorf("init should say %q:\n%v", want, r)
			}
			v := e2eDecode[e2eVersion](t, clean(b.ok("-c", cfg, "backup", img, "vol", "--json")))
			target := b.path("restored.img")
			clean(b.ok("-c", cfg, "restore", v.UID, target))
			e2eSameFile(t, target, img)

			st := e2eEncStatsOf(b, cfg)
			if st.Blocks != distinct {
				t.Errorf("the store holds %d blocks, the image has %d distinct non-zero blocks", st.Blocks, distinct)
			}
			st.wantEnc(t, "after the backup", map[int]int64{ver: distinct})
			if c.comp == "zstd" && st.StoredBytes >= st.PlainBytes {
				t.Errorf("compression zstd: %d stored bytes for %d plain bytes of a mostly compressible image", st.StoredBytes, st.PlainBytes)
			}
			if c.comp == "none" && st.StoredBytes < st.PlainBytes {
				t.Errorf("compression none: %d stored bytes for %d plain bytes", st.StoredBytes, st.PlainBytes)
			}

			objs := e2eEncObjects(t, data)
			if int64(len(objs)) != distinct {
				t.Errorf("the data directory holds %d objects, want %d", len(objs), distinct)
			}
			var keyIDs []string
			compressed := 0
			for _, o := range objs {
				if o.cipher != e2eEncCipherByte(c.cipher) || int(o.encVersion) != ver {
					t.Errorf("object %s: cipher %d at encryption version %d, want cipher %d at version %d",
						o.path, o.cipher, o.encVersion, e2eEncCipherByte(c.cipher), ver)
				}
				if o.compression == 1 {
					compressed++
				}
				if !slices.Contains(keyIDs, o.keyID) {
					keyIDs = append(keyIDs, o.keyID)
				}
			}
			if c.comp == "none" && compressed > 0 || c.comp == "zstd" && compressed < 12 {
				t.Errorf("compression %s: %d of %d objects are compressed (the image has 12 text blocks)", c.comp, compressed, len(objs))
			}
			found := e2eEncGrep(t, data, []byte(marker))
			keys, _ := os.ReadDir(filepath.Join(data, "keys"))
			if ver == 0 {
				if c.comp == "none" && len(found) == 0 {
					t.Errorf("no object holds the marker, although the store is neither encrypted nor compressed")
				}
				if len(keys) != 0 {
					t.Errorf("an unencrypted store has key registrations: %v", keys)
				}
				return
			}
			if len(found) > 0 {
				t.Errorf("encrypted objects show their plaintext: %v hold the marker", found)
			}
			if len(keys) != 1 || keys[0].Name() != fmt.Sprintf("%d.json", ver) {
				t.Errorf("the backend's keys/ holds %v, want %d.json", keys, ver)
			}
			reg := e2eEncCheckReg(t, data, ver, c.cipher, mat)
			if !slices.Equal(keyIDs, []string{reg.KeyID}) {
				t.Errorf("the objects carry key ids %v, want the registered %s", keyIDs, reg.KeyID)
			}
			e2eEncNoSecretsIn(t, store, mat)
			for _, r := range outs {
				e2eEncNoSecrets(t, r, mat)
			}
		})
	}
}

// e2eEncBadBlocks is the part of 'restore --json' output listing what was
// not restored.
type e2eEncBadBlocks struct {
	BadBlocks []struct {
		Index  int64  `json:"index"`
		Offset int64  `json:"offset"`
		Length int64  `json:"length"`
		Reason string `json:"reason"`
	} `json:"bad_blocks"`
}

// TestTamper damages one object of an encrypted store in many ways: every
// restore refuses it (exit 70, one line, no target); with --force the
// block is zeros in the target and listed, and the rest is intact.
func TestTamper(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	key := e2eEncNewMat(t, b.dir, "key_file", 21)
	pristine := b.path("pristine")
	img := b.path("src.img")
	e2eRandomFile(t, img, 10*e2eEncBS+4321, 22)
	src := e2eReadFile(t, img)
	cfg := e2eEncConf(t, b.path("pristine.cfg"), pristine, "encryption_version = 1", key.line())
	b.ok("-c", cfg, "init", "--block-size", "65536")
	v := e2eDecode[e2eVersion](t, b.ok("-c", cfg, "backup", img, "vol", "--json"))
	objs := e2eEncObjects(t, filepath.Join(pristine, "data"))
	if len(objs) != 11 {
		t.Fatalf("%d objects stored for 11 distinct blocks", len(objs))
	}
	victim := objs[len(objs)/2]
	rel, _ := filepath.Rel(pristine, victim.path)
	if victim.hsize != 27+12 || victim.cipher != 1 {
		t.Fatalf("object %s: header of %d bytes, cipher %d; want AES-256-GCM (39 bytes)", rel, victim.hsize, victim.cipher)
	}

	flip := func(off int, fixCRC bool) func([]byte) []byte {
		return func(o []byte) []byte {
			at := off
			if at < 0 {
				at += len(o)
			}
			o[at] ^= 0x02
			if fixCRC {
				e2eEncFixCRC(o)
			}
			return o
		}
	}
	cases := []struct {
		name   string
		mutate func([]byte) []byte // nil deletes the object
		reason string
	}{
		{"payload", flip(victim.hsize+1000, false), "corrupt"},
		{"authentication tag", flip(-1, false), "corrupt"},
		{"key id", flip(12, false), "corrupt"},
		{"key id, header CRC fixed", flip(12, true), "corrupt"},
		{"plaintext size", flip(20, false), "corrupt"},
		{"plaintext size, header CRC fixed", flip(20, true), "corrupt"},
		// 1 -> 3: a version the store does not have. The record says 1: the
		// object is damaged, not sealed under a key to configure.
		{"encryption version, header CRC fixed", flip(9, true), "corrupt"},
		{"cipher, header CRC fixed", flip(7, true), "corrupt"},
		{"nonce", flip(23, false), "corrupt"},
		{"nonce, header CRC fixed", flip(23+5, true), "corrupt"},
		{"header CRC", flip(victim.hsize-1, false), "corrupt"},
		{"truncated by one byte", func(o []byte) []byte { return o[:len(o)-1] }, "corrupt"},
		{"truncated into the header", func(o []byte) []byte { return o[:20] }, "corrupt"},
		{"truncated to nothing", func(o []byte) []byte { return o[:0] }, "corrupt"},
		{"deleted", nil, "missing"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			b := b.with(t)
			for _, force := range []bool{false, true} {
				// A fresh copy each time: a restore that finds the damage
				// marks the block invalid in the metastore.
				dir := b.path(fmt.Sprintf("case-%d-%v", i, force))
				store := filepath.Join(dir, "store")
				e2eEncCopyDir(t, pristine, store)
				cfg := e2eEncConf(t, filepath.Join(dir, "backy.cfg"), store, "encryption_version = 1", key.line())
				obj := filepath.Join(store, rel)
				if c.mutate == nil {
					if err := os.Remove(obj); err != nil {
						t.Fatal(err)
					}
				} else if err := os.WriteFile(obj, c.mutate(e2eReadFile(t, obj)), 0o644); err != nil {
					t.Fatal(err)
				}
				out := filepath.Join(dir, "out")
				if err := os.Mkdir(out, 0o755); err != nil {
					t.Fatal(err)
				}
				target := filepath.Join(out, "restored.img")
				if !force {
					r := b.fail(70, "-c", cfg, "restore", v.UID, target)
					if !strings.Contains(r.stderr, c.reason) {
						t.Errorf("the message should say the block is %s:\n%v", c.reason, r)
					}
					if ents, _ := os.ReadDir(out); len(ents) != 0 {
						t.Errorf("a refused restore left %d file(s) in the target's directory (%s...)", len(ents), ents[0].Name())
					}
					continue
				}
				r := b.run("-c", cfg, "restore", v.UID, target, "--force", "--json")
				if r.code != 70 {
					t.Errorf("restore --force of a version with a damaged block: want exit 70 (blocks not restored):\n%v", r)
				}
				if l := e2eLines(r.stderr); len(l) != 1 {
					t.Errorf("restore --force --json: want one stderr line (the JSON error), got %d:\n%v", len(l), r)
				}
				res := e2eDecode[e2eEncBadBlocks](t, r)
				if len(res.BadBlocks) != 1 || !strings.Contains(res.BadBlocks[0].Reason, c.reason) {
					t.Fatalf("restore --force should list the one damaged block as %s:\n%v", c.reason, r)
				}
				bad := res.BadBlocks[0]
				if bad.Offset != bad.Index*e2eEncBS || bad.Length != min(e2eEncBS, int64(len(src))-bad.Offset) {
					t.Fatalf("restore --force lists block %d at %d, %d bytes: not a block of the version", bad.Index, bad.Offset, bad.Length)
				}
				got := e2eReadFile(t, target)
				if len(got) != len(src) {
					t.Fatalf("restore --force wrote %d bytes, want %d", len(got), len(src))
				}
				if !bytes.Equal(got[bad.Offset:bad.Offset+bad.Length], make([]byte, bad.Length)) {
					t.Errorf("block %d (listed as not restored) is not zeros in the target: unverified data was written", bad.Index)
				}
				copy(got[bad.Offset:], src[bad.Offset:bad.Offset+bad.Length])
				if !bytes.Equal(got, src) {
					t.Errorf("restore --force: the blocks other than %d differ from the source", bad.Index)
				}
			}
		})
	}
}

// TestWrongKey: a key that is not the store's stops backup, restore and
// migrate-encryption (exit 77, one line naming the version and where the
// key came from, without any key) before they write anything; a version
// whose key is not configured is refused before the target is created.
func TestWrongKey(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	keyA := e2eEncNewMat(t, b.dir, "key_file", 31)
	store := b.path("store")
	data := filepath.Join(store, "data")
	cfgA := e2eEncConf(t, b.path("a.cfg"), store, "encryption_version = 1", keyA.line())
	b.ok("-c", cfgA, "init", "--block-size", "65536")
	img := b.path("a.img")
	e2eRandomFile(t, img, 12*e2eEncBS, 32)
	v := e2eDecode[e2eVersion](t, b.ok("-c", cfgA, "backup", img, "vol", "--json"))
	img2 := e2eEncChangeBlocks(t, img, b.path("b.img"), []int{1, 2}, "", 33)
	before := e2eEncSnap(t, data)

	for _, kind := range []string{"key_file", "key"} {
		t.Run(kind, func(t *testing.T) {
			b := b.with(t)
			keyB := e2eEncNewMat(t, b.dir, kind, 34)
			cfgB := e2eEncConf(t, b.path("b-"+kind+".cfg"), store, "encryption_version = 1", keyB.line())
			target := b.path("wrong-" + kind + ".img")
			for _, args := range [][]string{
				{"backup", img2, "vol"},
				{"restore", v.UID, target},
				{"migrate-encryption", "--all"},
				{"restore", v.UID, target, "--force"},
			} {
				r := b.fail(77, append([]string{"-c", cfgB}, args...)...)
				if !strings.Contains(r.stderr, "encryption version 1") || !strings.Contains(r.stderr, keyB.origin()) {
					t.Errorf("%s with a wrong key: the message should name encryption version 1 and %q:\n%v", args[0], keyB.origin(), r)
				}
				e2eEncNoSecrets(t, r, keyA, keyB)
				if _, err := os.Stat(target); err == nil {
					t.Fatalf("%s with a wrong key created the restore target", args[0])
				}
			}
			e2eEncSameSnap(t, "commands with a wrong key", data, before)
			if uids := e2eEncWithConfig(b, cfgA).lsUIDs(); !slices.Equal(uids, []string{v.UID}) {
				t.Errorf("after commands with a wrong key the store lists %v, want only %s", uids, v.UID)
			}
		})
	}

	t.Run("missing key", func(t *testing.T) {
		b := b.with(t)
		// Rotated to version 2 without keeping version 1's key.
		moved := b.path("missing/store")
		e2eEncCopyDir(t, store, moved)
		keyB := e2eEncNewMat(t, b.dir, "key_file", 35)
		cfgR := e2eEncConf(t, b.path("missing/r.cfg"), moved, "encryption_version = 2", "encryption_cipher = "+e2eEncChaCha, keyB.line())
		target := b.path("missing/restored.img")
		for _, args := range [][]string{{"restore", v.UID, target}, {"migrate-encryption", "--all"}} {
			r := b.fail(77, append([]string{"-c", cfgR}, args...)...)
			if !strings.Contains(r.stderr, "encryption version 1") || !strings.Contains(r.stderr, "[Encryption1]") {
				t.Errorf("%s: the message should name encryption version 1 and tell to add an [Encryption1] section:\n%v", args[0], r)
			}
			e2eEncNoSecrets(t, r, keyA, keyB)
			if _, err := os.Stat(target); err == nil {
				t.Fatalf("%s without the key of version 1 created the restore target", args[0])
			}
		}
		// With the key in [Encryption1] it restores.
		cfgOK := e2eEncConf(t, b.path("missing/ok.cfg"), moved, "encryption_version = 2", "encryption_cipher = "+e2eEncChaCha,
			keyB.line(), "[Encryption1]", keyA.sectionLine())
		b.ok("-c", cfgOK, "restore", v.UID, target)
		e2eSameFile(t, target, img)
	})
}

// TestDedupAcrossEncryption: turning encryption on stores nothing again
// for unchanged data; changed blocks are stored at the new version.
func TestDedupAcrossEncryption(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	store := b.path("store")
	data := filepath.Join(store, "data")
	key := e2eEncNewMat(t, b.dir, "key_file", 41)
	plain := e2eEncConf(t, b.path("plain.cfg"), store)
	enc := e2eEncConf(t, b.path("enc.cfg"), store, "encryption_version = 1", key.line())
	b.ok("-c", plain, "init", "--block-size", "65536")
	img := b.path("disk.img")
	e2eRandomFile(t, img, 32*e2eEncBS, 42)

	v0 := e2eDecode[e2eVersion](t, b.ok("-c", plain, "backup", img, "vol", "--json"))
	objs0 := e2eEncObjects(t, data)
	if len(objs0) != 32 {
		t.Fatalf("%d objects for 32 distinct blocks", len(objs0))
	}
	e2eEncStatsOf(b, plain).wantEnc(t, "unencrypted backup", map[int]int64{0: 32})

	v1 := e2eDecode[e2eVersion](t, b.ok("-c", enc, "backup", img, "vol", "--json"))
	if v1.BytesWritten != 0 || v1.BytesDeduplicated != v1.Size {
		t.Errorf("backup of the unchanged image after turning encryption on: bytes_written %d, bytes_deduplicated %d of %d; want all deduplicated",
			v1.BytesWritten, v1.BytesDeduplicated, v1.Size)
	}
	if objs := e2eEncObjects(t, data); len(objs) != len(objs0) {
		t.Errorf("the unchanged backup added %d block objects", len(objs)-len(objs0))
	}
	e2eEncStatsOf(b, enc).wantEnc(t, "unchanged encrypted backup", map[int]int64{0: 32})

	changed := []int{5, 17, 31}
	img2 := e2eEncChangeBlocks(t, img, b.path("disk2.img"), changed, "", 43)
	v2 := e2eDecode[e2eVersion](t, b.ok("-c", enc, "backup", img2, "vol", "--json"))
	if n := int64(len(changed)); v2.BytesWritten < n*e2eEncBS || v2.BytesWritten > n*(e2eEncBS+e2eObjOverhead) {
		t.Errorf("backup with %d changed blocks wrote %d bytes, want those blocks only", n, v2.BytesWritten)
	}
	objs2 := e2eEncObjects(t, data)
	if len(objs2) != len(objs0)+len(changed) {
		t.Errorf("%d objects after changing %d blocks, want %d", len(objs2), len(changed), len(objs0)+len(changed))
	}
	enc1 := 0
	for _, o := range objs2 {
		if o.encVersion == 1 && o.cipher == 1 {
			enc1++
		} else if o.encVersion != 0 || o.cipher != 0 {
			t.Errorf("object %s: cipher %d at version %d", o.path, o.cipher, o.encVersion)
		}
	}
	if enc1 != len(changed) {
		t.Errorf("%d objects at encryption version 1, want the %d changed blocks", enc1, len(changed))
	}
	e2eEncStatsOf(b, enc).wantEnc(t, "changed encrypted backup", map[int]int64{0: 32, 1: int64(len(changed))})
	e2eEncCheckReg(t, data, 1, e2eEncAES, key)

	eb := e2eEncWithConfig(b, enc)
	eb.restore(v0.UID, img)
	eb.restore(v1.UID, img)
	eb.restore(v2.UID, img2)
	// The unencrypted version needs no key; the changed one does.
	e2eEncWithConfig(b, plain).restore(v0.UID, img)
	target := b.path("nokey.img")
	r := b.fail(77, "-c", plain, "restore", v2.UID, target)
	if !strings.Contains(r.stderr, "[Encryption1]") {
		t.Errorf("the message should tell to add an [Encryption1] section:\n%v", r)
	}
	if _, err := os.Stat(target); err == nil {
		t.Error("a restore refused for a missing key created its target")
	}
}

// e2eEncMigrateResult is 'migrate-encryption --json'.
type e2eEncMigrateResult struct {
	Target         int     `json:"target_encryption_version"`
	Examined       int64   `json:"blocks_examined"`
	Migrated       int64   `json:"blocks_migrated"`
	Skipped        int64   `json:"blocks_skipped"`
	BytesRead      int64   `json:"bytes_read"`
	BytesWritten   int64   `json:"bytes_written"`
	ObjectsDeleted int64   `json:"objects_deleted"`
	Remaining      int64   `json:"blocks_below_target"`
	Duration       float64 `json:"duration_seconds"`
	Failures       []any   `json:"failures"`
}

// e2eEncMigrate runs migrate-encryption --json, which must succeed, and
// checks the fields of its output.
func e2eEncMigrate(b *e2eBox, cfg string, args ...string) e2eEncMigrateResult {
	b.t.Helper()
	r := b.ok(append([]string{"-c", cfg, "migrate-encryption", "--json"}, args...)...)
	var raw map[string]json.RawMessage
	if err := json.Unmarshal([]byte(r.stdout), &raw); err != nil {
		b.t.Fatalf("migrate-encryption --json: %v:\n%v", err, r)
	}
	for _, k := range []string{"target_encryption_version", "blocks_examined", "blocks_migrated", "blocks_skipped", "bytes_read",
		"bytes_written", "objects_deleted", "blocks_below_target", "duration_seconds"} {
		if _, ok := raw[k]; !ok {
			b.t.Errorf("migrate-encryption --json lacks %q:\n%v", k, r)
		}
	}
	res := e2eDecode[e2eEncMigrateResult](b.t, r)
	if len(res.Failures) > 0 || res.Skipped != 0 {
		b.t.Errorf("migrate-encryption of an intact store without concurrent writers: %+v", res)
	}
	return res
}

// TestMigrateEncryption encrypts a store written in the clear, one version
// first and then all of it, and checks that no plaintext remains.
func TestMigrateEncryption(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	store := b.path("store")
	data := filepath.Join(store, "data")
	key := e2eEncNewMat(t, b.dir, "key_file", 51)
	plain := e2eEncConf(t, b.path("plain.cfg"), store, "compression = none")
	enc := e2eEncConf(t, b.path("enc.cfg"), store, "compression = zstd", "encryption_version = 1", "encryption_cipher = "+e2eEncChaCha, key.line())
	b.ok("-c", plain, "init", "--block-size", "65536")
	markA, markB := e2eEncMarker(t, "A"), e2eEncMarker(t, "B")
	imgA, imgB := b.path("a.img"), b.path("b.img")
	e2eEncMarkerImage(t, imgA, 24, markA, 52)
	imgA2 := e2eEncChangeBlocks(t, imgA, b.path("a2.img"), []int{3, 4, 5, 6}, markA, 53)
	e2eEncMarkerImage(t, imgB, 16, markB, 54)
	pb := e2eEncWithConfig(b, plain)
	vA, vA2, vB := pb.backup(imgA, "a"), pb.backup(imgA2, "a"), pb.backup(imgB, "b")
	nA, nB := e2eEncDistinct(t, imgA, imgA2), e2eEncDistinct(t, imgB)
	e2eEncStatsOf(b, plain).wantEnc(t, "unencrypted backups", map[int]int64{0: nA + nB})
	for _, m := range []string{markA, markB} {
		if len(e2eEncGrep(t, data, []byte(m))) == 0 {
			t.Fatalf("no file in the data directory holds %s although it is stored in the clear: the test cannot fail", m)
		}
	}

	t.Run("usage", func(t *testing.T) {
		b := b.with(t)
		before := e2eEncSnap(t, data)
		b.fail(64, "-c", enc, "migrate-encryption")
		b.fail(64, "-c", enc, "migrate-encryption", "--all", vA.UID)
		b.fail(64, "-c", enc, "migrate-encryption", "--all", "--to", "0")
		b.fail(78, "-c", plain, "migrate-encryption", "--all")
		b.fail(78, "-c", plain, "migrate-encryption", vA.UID)
		b.fail(66, "-c", enc, "migrate-encryption", "V0000000000000000dead")
		e2eEncSameSnap(t, "refused migrate-encryption", data, before)
	})

	// One version: its blocks move, the others' stay.
	res := e2eEncMigrate(b, enc, vB.UID)
	if res.Target != 1 || res.Migrated != nB || res.Examined != nB || res.ObjectsDeleted != nB || res.Remaining != nA ||
		res.BytesRead < nB*e2eEncBS || res.BytesWritten < nB*e2eEncBS {
		t.Errorf("migrate-encryption %s: %+v; want %d blocks migrated (and their old objects deleted), %d left below the target",
			vB.UID, res, nB, nA)
	}
	e2eEncStatsOf(b, enc).wantEnc(t, "one version migrated", map[int]int64{0: nA, 1: nB})
	if hit := e2eEncGrep(t, data, []byte(markB)); len(hit) > 0 {
		t.Errorf("after migrating %s, %d file(s) still hold its plaintext: %s", vB.UID, len(hit), e2eEncFew(hit))
	}
	if len(e2eEncGrep(t, data, []byte(markA))) == 0 {
		t.Errorf("migrating %s changed the blocks of other versions", vB.UID)
	}
	e2eEncWithConfig(b, enc).restore(vB.UID, imgB)
	pb.restore(vA.UID, imgA) // still unencrypted: no key needed

	// Everything.
	res = e2eEncMigrate(b, enc, "--all")
	if res.Migrated != nA || res.Remaining != 0 || res.ObjectsDeleted != nA {
		t.Errorf("migrate-encryption --all: %+v; want %d blocks migrated, none left", res, nA)
	}
	st := e2eEncStatsOf(b, enc)
	st.wantEnc(t, "all migrated", map[int]int64{1: nA + nB})
	if hit := e2eEncGrep(t, data, []byte(markA), []byte(markB)); len(hit) > 0 {
		t.Errorf("after migrate-encryption --all, %d file(s) still hold plaintext: %s", len(hit), e2eEncFew(hit))
	}
	objs := e2eEncObjects(t, data)
	if int64(len(objs)) != nA+nB || st.Trash != 0 {
		t.Errorf("%d objects (%d in the trash) for %d blocks: old objects were not deleted", len(objs), st.Trash, nA+nB)
	}
	for _, o := range objs {
		if o.encVersion != 1 || o.cipher != 2 {
			t.Errorf("object %s: cipher %d at version %d, want XChaCha20-Poly1305 at 1", o.path, o.cipher, o.encVersion)
		}
	}
	eb := e2eEncWithConfig(b, enc)
	eb.restore(vA.UID, imgA)
	eb.restore(vA2.UID, imgA2)
	eb.restore(vB.UID, imgB)
	if res := e2eEncMigrate(b, enc, "--all"); res.Migrated != 0 || res.Examined != 0 || res.Remaining != 0 {
		t.Errorf("a second migrate-encryption --all: %+v, want nothing to do", res)
	}
	r := b.ok("-c", enc, "migrate-encryption", "--all")
	if !strings.Contains(r.stdout, "blocks migrated") {
		t.Errorf("migrate-encryption without --json should print its table:\n%v", r)
	}
	b.fail(77, "-c", plain, "restore", vA.UID, b.path("nokey.img"))
}

// TestMigrateEncryptionDamaged: a damaged block stops nothing but itself:
// migrate-encryption moves the rest, reports it (exit 70, one line) and
// marks it invalid; a new backup stores a fresh copy, after which the
// next run deletes the damaged object, and no plaintext remains.
func TestMigrateEncryptionDamaged(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	store := b.path("store")
	data := filepath.Join(store, "data")
	key := e2eEncNewMat(t, b.dir, "key_file", 55)
	plain := e2eEncConf(t, b.path("plain.cfg"), store, "compression = none")
	enc := e2eEncConf(t, b.path("enc.cfg"), store, "encryption_version = 1", key.line())
	b.ok("-c", plain, "init", "--block-size", "65536")
	mark := e2eEncMarker(t, "DAMAGED")
	img := b.path("disk.img")
	e2eEncMarkerImage(t, img, 8, mark, 56)
	v := e2eEncWithConfig(b, plain).backup(img, "vol")
	objs := e2eEncObjects(t, data)
	if len(objs) != 8 {
		t.Fatalf("%d objects for 8 distinct blocks", len(objs))
	}
	obj := e2eReadFile(t, objs[3].path)
	obj[objs[3].hsize+30000] ^= 0x10 // between the markers
	if err := os.WriteFile(objs[3].path, obj, 0o644); err != nil {
		t.Fatal(err)
	}

	r := b.run("-c", enc, "migrate-encryption", "--all", "--json")
	if r.code != 70 {
		t.Errorf("migrate-encryption with a damaged block: want exit 70:\n%v", r)
	}
	if l := e2eLines(r.stderr); len(l) != 1 || !strings.Contains(l[0], "marked invalid") {
		t.Errorf("want one stderr line saying the damaged block is marked invalid, got %d lines:\n%v", len(l), r)
	}
	var res struct {
		e2eEncMigrateResult
		InvalidVersions []string `json:"invalid_versions"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		t.Fatalf("migrate-encryption --json: %v:\n%v", err, r)
	}
	if len(res.Failures) != 1 || res.Migrated != 7 || res.Remaining != 1 || !slices.Equal(res.InvalidVersions, []string{v.UID}) {
		t.Errorf("migrate-encryption --json: %+v; want 7 blocks migrated, the damaged one listed and left, %s invalid\n%v", res, v.UID, r)
	}
	b.fail(70, "-c", enc, "restore", v.UID, b.path("invalid.img"))

	// A new backup stores a fresh copy of the damaged block, at version 1.
	v2 := e2eEncWithConfig(b, enc).backup(img, "vol")
	if v2.BytesWritten < e2eEncBS || v2.BytesWritten > e2eEncBS+e2eObjOverhead {
		t.Errorf("the backup after the damage wrote %d bytes, want the one damaged block", v2.BytesWritten)
	}
	res2 := e2eEncMigrate(b, enc, "--all")
	if res2.Remaining != 0 || res2.ObjectsDeleted < 1 {
		t.Errorf("migrate-encryption after the fresh backup: %+v; want the damaged object deleted and nothing left", res2)
	}
	e2eEncStatsOf(b, enc).wantEnc(t, "after the fresh backup and migration", map[int]int64{1: 8})
	if hit := e2eEncGrep(t, data, []byte(mark)); len(hit) > 0 {
		t.Errorf("%d file(s) still hold plaintext: %s", len(hit), e2eEncFew(hit))
	}
	e2eEncWithConfig(b, enc).restore(v2.UID, img)
}

// e2eEncKill runs backy in the background and SIGKILLs it after delay;
// it reports whether the kill ended it (false: it had finished, with
// exit 0).
func e2eEncKill(b *e2eBox, delay time.Duration, args ...string) bool {
	b.t.Helper()
	p := b.start(args...)
	select {
	case <-p.done:
	case <-time.After(delay):
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
	}
	r := p.wait(b.t)
	if ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
		return true
	}
	if r.code != 0 {
		b.t.Errorf("backy failed before it was killed:\n%v", r)
	}
	return false
}

// TestKillMigrateEncryption kills migrate-encryption (and once a backup
// running beside it) at random points; the store must stay whole and
// a final run must leave no plaintext.
func TestKillMigrateEncryption(t *testing.T) {
	t.Parallel()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("BACKY_E2E_SEED"); s != "" {
		if _, err := fmt.Sscan(s, &seed); err != nil {
			t.Fatalf("BACKY_E2E_SEED=%q: %v", s, err)
		}
	}
	t.Logf("seed %d (rerun with BACKY_E2E_SEED=%d)", seed, seed)
	rng := mrand.New(mrand.NewPCG(seed, seed^0x9e3779b97f4a7c15))

	b := e2eNewBox(t)
	store := b.path("store")
	data := filepath.Join(store, "data")
	key := e2eEncNewMat(t, b.dir, "key_file", 61)
	plain := e2eEncConf(t, b.path("plain.cfg"), store, "compression = none")
	enc := e2eEncConf(t, b.path("enc.cfg"), store, "encryption_version = 1", key.line())
	b.ok("-c", plain, "init", "--block-size", "65536")
	mark := e2eEncMarker(t, "KILL")
	imgA, imgB, imgC := b.path("a.img"), b.path("b.img"), b.path("c.img")
	e2eEncMarkerImage(t, imgA, 240, mark, 62)
	imgA2 := e2eEncChangeBlocks(t, imgA, b.path("a2.img"), []int{0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 239}, mark, 63)
	e2eEncMarkerImage(t, imgB, 120, mark, 64)
	e2eEncMarkerImage(t, imgC, 240, mark, 65)
	pb := e2eEncWithConfig(b, plain)
	want := map[string]string{}
	for _, s := range []struct{ img, vol string }{{imgA, "a"}, {imgA2, "a"}, {imgB, "b"}} {
		want[pb.backup(s.img, s.vol).UID] = s.img
	}
	total := e2eEncDistinct(t, imgA, imgA2, imgB)
	e2eEncStatsOf(b, plain).wantEnc(t, "unencrypted backups", map[int]int64{0: total})
	if len(e2eEncGrep(t, data, []byte(mark))) == 0 {
		t.Fatal("no file holds the marker although the store is in the clear: the test cannot fail")
	}

	// One uninterrupted run on a copy says how long a run takes.
	measure := b.path("measure")
	e2eEncCopyDir(t, store, measure)
	mcfg := e2eEncConf(t, b.path("measure.cfg"), measure, "encryption_version = 1", key.line())
	d := b.ok("-c", mcfg, "migrate-encryption", "--all").dur
	t.Logf("an uninterrupted migrate-encryption --all of %d blocks takes %s", total, d.Round(time.Millisecond))
	if err := os.RemoveAll(measure); err != nil {
		t.Fatal(err)
	}

	eb := e2eEncWithConfig(b, enc)
	// Each run must have work: while fewer than atLeast blocks are below
	// the target, a fresh image is backed up in the clear first.
	fresh := 0
	replenish := func(atLeast int64) int64 {
		t.Helper()
		for {
			below := e2eEncStatsOf(b, enc).enc(t)[0]
			if below >= atLeast {
				return below
			}
			fresh++
			img := b.path(fmt.Sprintf("fresh-%d.img", fresh))
			e2eEncMarkerImage(t, img, 160, mark, 600+uint64(fresh))
			want[pb.backup(img, fmt.Sprintf("fresh-%d", fresh)).UID] = img
		}
	}

	// Kills at random points of the migration; more rounds if none of
	// the first 8 was killed before it finished.
	kills := 0
	for round := 0; round < 8 || kills == 0 && round < 16; round++ {
		below := replenish(160)
		delay := time.Duration(rng.Int64N(int64(d)))
		killed := e2eEncKill(b, delay, "-c", enc, "migrate-encryption", "--all")
		if killed {
			kills++
		}
		t.Logf("round %d: %d blocks below the target; SIGKILL after %s: killed=%v; blocks by encryption version now %v",
			round, below, delay.Round(time.Millisecond), killed, e2eEncStatsOf(b, enc).enc(t))
	}
	if kills == 0 {
		t.Error("every migrate-encryption run finished before it was killed")
	}

	// A backup killed while a migration runs beside it; the migration is
	// killed a little later.
	var incomplete, incVol string
	for attempt := 0; incomplete == "" && attempt < 4; attempt++ {
		below := replenish(300)
		vol := fmt.Sprintf("c%d", attempt)
		pm := b.start("-c", enc, "migrate-encryption", "--all")
		pbk := eb.start("backup", imgC, vol)
		var uid string
		for uid == "" && !pbk.exited() {
			for _, v := range eb.ls() {
				if v.Volume == vol && v.Status == "incomplete" {
					uid = v.UID
				}
			}
		}
		bDelay := time.Duration(rng.Int64N(int64(d) / 4))
		time.Sleep(bDelay)
		_ = pbk.cmd.Process.Signal(syscall.SIGKILL)
		rb := pbk.wait(t)
		beside := !pm.exited()
		mDelay := time.Duration(rng.Int64N(int64(d) / 2))
		time.Sleep(mDelay)
		_ = pm.cmd.Process.Signal(syscall.SIGKILL)
		rm := pm.wait(t)
		killed := rb.code == -1
		t.Logf("attempt %d: backup of %s SIGKILLed %s after its version %q was listed: killed=%v (exit %d), migration of %d blocks running then: %v; "+
			"migration SIGKILLed %s later (exit %d)",
			attempt, vol, bDelay.Round(time.Millisecond), uid, killed, rb.code, below, beside, mDelay.Round(time.Millisecond), rm.code)
		if rm.code != 0 && rm.code != -1 {
			t.Errorf("migrate-encryption beside a backup failed:\n%v", rm)
		}
		switch {
		case rb.code == 0:
			want[strings.TrimSpace(rb.stdout)] = imgC
		case !killed:
			t.Fatalf("the backup beside a migration failed:\n%v", rb)
		case uid != "" && beside:
			incomplete, incVol = uid, vol
		case uid != "":
			// Killed, but not beside a migration: finish it, try again.
			want[eb.backup(imgC, vol, "--resume", uid).UID] = imgC
		}
	}
	if incomplete == "" {
		t.Error("no backup could be killed while a migration ran beside it")
	}

	res := e2eEncMigrate(b, enc, "--all")
	t.Logf("the final run: %+v", res)
	if res.Remaining != 0 {
		t.Errorf("the final migrate-encryption --all left %d blocks below the target", res.Remaining)
	}
	if incomplete != "" {
		v := eb.backup(imgC, incVol, "--resume", incomplete)
		want[v.UID] = imgC
	}

	st := e2eEncStatsOf(b, enc)
	if n := st.enc(t); len(n) != 1 || n[1] != st.Blocks || st.Trash != 0 {
		t.Errorf("after the final run: blocks by encryption version %v (store: %d blocks, %d in the trash), want all at 1",
			n, st.Blocks, st.Trash)
	}
	if hit := e2eEncGrep(t, data, []byte(mark)); len(hit) > 0 {
		t.Errorf("after the final run, %d file(s) still hold plaintext: %s", len(hit), e2eEncFew(hit))
	}
	for _, o := range e2eEncObjects(t, data) {
		if o.encVersion != 1 {
			t.Errorf("object %s is at encryption version %d after the final run (an orphan left in the clear?)", o.path, o.encVersion)
		}
	}
	vs := eb.ls()
	if len(vs) != len(want) {
		t.Errorf("the store lists %d versions, want %d", len(vs), len(want))
	}
	for _, v := range vs {
		if v.Status != "valid" {
			t.Errorf("version %s is %s", v.UID, v.Status)
			continue
		}
		eb.restore(v.UID, want[v.UID])
	}
}

// TestRotation moves a store from version 1 (AES-256-GCM, key A) to
// version 2 (XChaCha20-Poly1305, key B).
func TestRotation(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	store := b.path("store")
	data := filepath.Join(store, "data")
	keyA := e2eEncNewMat(t, b.dir, "key_file", 71)
	keyB := e2eEncNewMat(t, b.dir, "key", 72)
	c1 := e2eEncConf(t, b.path("c1.cfg"), store, "encryption_version = 1", keyA.line())
	c2 := e2eEncConf(t, b.path("c2.cfg"), store, "encryption_version = 2", "encryption_cipher = "+e2eEncChaCha, keyB.line(),
		"[Encryption1]", "cipher = "+e2eEncAES, keyA.sectionLine())
	c3 := e2eEncConf(t, b.path("c3.cfg"), store, "encryption_version = 2", "encryption_cipher = "+e2eEncChaCha, keyB.line())
	b.ok("-c", c1, "init", "--block-size", "65536")
	img1 := b.path("one.img")
	e2eRandomFile(t, img1, 20*e2eEncBS, 73)
	img2 := e2eEncChangeBlocks(t, img1, b.path("two.img"), []int{0, 7, 8, 9, 19}, "", 74)
	v1 := e2eDecode[e2eVersion](t, b.ok("-c", c1, "backup", img1, "vol", "--json"))
	e2eEncStatsOf(b, c1).wantEnc(t, "version 1", map[int]int64{1: 20})

	v2 := e2eDecode[e2eVersion](t, b.ok("-c", c2, "backup", img2, "vol", "--json"))
	if v2.BytesWritten > 5*(e2eEncBS+e2eObjOverhead) {
		t.Errorf("backup after the rotation wrote %d bytes for 5 changed blocks", v2.BytesWritten)
	}
	e2eEncStatsOf(b, c2).wantEnc(t, "after the rotation", map[int]int64{1: 20, 2: 5})
	e2eEncCheckReg(t, data, 1, e2eEncAES, keyA)
	e2eEncCheckReg(t, data, 2, e2eEncChaCha, keyB)
	for _, o := range e2eEncObjects(t, data) {
		if !(o.encVersion == 1 && o.cipher == 1 || o.encVersion == 2 && o.cipher == 2) {
			t.Errorf("object %s: cipher %d at version %d", o.path, o.cipher, o.encVersion)
		}
	}
	e2eEncWithConfig(b, c2).restore(v1.UID, img1)
	e2eEncWithConfig(b, c2).restore(v2.UID, img2)
	target := b.path("nokey.img")
	for _, uid := range []string{v1.UID, v2.UID} {
		r := b.fail(77, "-c", c3, "restore", uid, target)
		if !strings.Contains(r.stderr, "[Encryption1]") {
			t.Errorf("the message should tell to add an [Encryption1] section:\n%v", r)
		}
		if _, err := os.Stat(target); err == nil {
			t.Fatal("a restore refused for a missing key created its target")
		}
	}

	res := e2eEncMigrate(b, c2, "--all")
	if res.Target != 2 || res.Migrated != 20 || res.Remaining != 0 {
		t.Errorf("migrate-encryption --all: %+v, want the 20 blocks of version 1 moved to 2", res)
	}
	e2eEncStatsOf(b, c2).wantEnc(t, "after migrate-encryption", map[int]int64{2: 25})
	for _, o := range e2eEncObjects(t, data) {
		if o.encVersion != 2 || o.cipher != 2 {
			t.Errorf("object %s: cipher %d at version %d after the migration", o.path, o.cipher, o.encVersion)
		}
	}
	// Version 1's key is no longer needed...
	e2eEncWithConfig(b, c3).restore(v1.UID, img1)
	e2eEncWithConfig(b, c3).restore(v2.UID, img2)
	// ...and alone it no longer reads anything.
	r := b.fail(77, "-c", c1, "restore", v1.UID, target)
	if !strings.Contains(r.stderr, "encryption version 2") {
		t.Errorf("the message should name encryption version 2:\n%v", r)
	}
	e2eEncNoSecrets(t, r, keyA, keyB)
	e2eEncNoSecretsIn(t, store, keyA, keyB)
}

// TestPassphrase: the store keeps the KDF salt and parameters, so that the
// passphrase alone opens a copy of the store elsewhere; a wrong passphrase
// is refused without a trace.
func TestPassphrase(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	store := b.path("store")
	pass := e2eEncNewMat(t, b.dir, "passphrase_file", 81)
	cfg := e2eEncConf(t, b.path("backy.cfg"), store, "encryption_version = 1", pass.line())
	b.ok("-c", cfg, "init", "--block-size", "65536")
	img := b.path("disk.img")
	e2eRandomFile(t, img, 8*e2eEncBS+100, 82)
	v := e2eDecode[e2eVersion](t, b.ok("-c", cfg, "backup", img, "vol", "--json"))
	reg := e2eEncCheckReg(t, filepath.Join(store, "data"), 1, e2eEncAES, pass)
	t.Logf("keys/1.json: kdf %+v", *reg.KDF)
	e2eEncNoSecretsIn(t, store, pass)

	// The store moved elsewhere, opened by a configuration that holds only
	// the passphrase (inline this time).
	moved := b.path("elsewhere/store")
	e2eEncCopyDir(t, store, moved)
	if err := os.RemoveAll(store); err != nil {
		t.Fatal(err)
	}
	inline := e2eEncMat{kind: "passphrase", secret: pass.secret}
	only := e2eEncConf(t, b.path("elsewhere/only.cfg"), moved, "[Encryption1]", inline.sectionLine())
	e2eEncWithConfig(b, only).restore(v.UID, img)

	// Writing with it, at the same version and key.
	wcfg := e2eEncConf(t, b.path("elsewhere/write.cfg"), moved, "encryption_version = 1", inline.line())
	img2 := e2eEncChangeBlocks(t, img, b.path("disk2.img"), []int{2}, "", 83)
	v2 := e2eEncWithConfig(b, wcfg).backup(img2, "vol")
	for _, o := range e2eEncObjects(t, filepath.Join(moved, "data")) {
		if o.encVersion != 1 || o.keyID != reg.KeyID {
			t.Errorf("object %s: version %d, key id %s; want 1 and %s", o.path, o.encVersion, o.keyID, reg.KeyID)
		}
	}
	e2eEncWithConfig(b, only).restore(v2.UID, img2)

	t.Run("wrong passphrase", func(t *testing.T) {
		b := b.with(t)
		wrong := e2eEncMat{kind: "passphrase", secret: "not the passphrase"}
		wcfg := e2eEncConf(t, b.path("elsewhere/wrong.cfg"), moved, "encryption_version = 1", wrong.line())
		data := filepath.Join(moved, "data")
		before := e2eEncSnap(t, data)
		target := b.path("wrong.img")
		for _, args := range [][]string{{"backup", img2, "vol"}, {"restore", v.UID, target}} {
			r := b.fail(77, append([]string{"-c", wcfg}, args...)...)
			if !strings.Contains(r.stderr, "encryption version 1") || !strings.Contains(r.stderr, "encryption_passphrase") {
				t.Errorf("%s: the message should name encryption version 1 and encryption_passphrase:\n%v", args[0], r)
			}
			e2eEncNoSecrets(t, r, pass, wrong)
		}
		if _, err := os.Stat(target); err == nil {
			t.Error("a restore with a wrong passphrase created its target")
		}
		e2eEncSameSnap(t, "commands with a wrong passphrase", data, before)
		if n := len(e2eEncWithConfig(b, only).lsUIDs()); n != 2 {
			t.Errorf("the store lists %d versions after commands with a wrong passphrase, want 2", n)
		}
	})
}
