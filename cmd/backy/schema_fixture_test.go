package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/backy/backy/blockstore/keyring"
	"github.com/backy/backy/cmd/backy/internal/config"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/migrate/reencrypt"
)

// Schema fixtures: testdata/schema-N/ at the repository root holds a store
// written by the code of metastore schema N (made by TestWriteSchemaFixture
// while that schema was current), with the images its versions were made
// from and what was done to the store described in fixture.json. A fixture
// may carry its configuration file (fixture.json "config", backy.cfg: the
// store in store/ next to it, relative paths, test keys that are not
// secrets); the test then runs backy with -c on a copy of the whole fixture
// directory. Without one (schema 1) the store is the default store in
// BACKY_HOME. Every later schema must open (upgrade) each fixture, restore
// its versions bit-identically, and migrate all its blocks to one
// encryption version.

type fixtureImage struct {
	Name   string `json:"name"`
	Volume string `json:"volume"`
	Seed   uint64 `json:"seed"`
	// Mix, when set, makes the image a changed copy of the image of Seed
	// (see fixtureImageData).
	Mix    uint64 `json:"mix,omitempty"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
	UID    string `json:"uid"`
	// EncryptionVersion and Compression are those of the configuration the
	// version was backed up with. Fixtures before schema 2 lack them: 0
	// (unencrypted) and none.
	EncryptionVersion uint16 `json:"encryption_version"`
	Compression       string `json:"compression,omitempty"`
	// MigratedTo is the encryption version 'backy migrate-encryption'
	// moved the blocks of this version to after it was written (0: none).
	MigratedTo uint16 `json:"migrated_to,omitempty"`
	Protected  bool   `json:"protected,omitempty"`
	// BlockEncryptionVersions counts the version's block references by the
	// encryption version of the block (sparse blocks not counted) as the
	// fixture was left.
	BlockEncryptionVersions map[string]int64 `json:"block_encryption_versions,omitempty"`
}

// fixtureEncryption is an encryption version a fixture used, its cipher
// and whether its key is a raw key ("key") or a passphrase ("passphrase").
// The key itself is in the fixture's configuration file only.
type fixtureEncryption struct {
	Version  uint16 `json:"version"`
	Cipher   string `json:"cipher"`
	Material string `json:"material"`
}

type fixtureFile struct {
	Schema    int   `json:"schema"`
	BlockSize int64 `json:"block_size"`
	// Config is the fixture's configuration file, relative to the fixture
	// directory; "" for the default store in BACKY_HOME (schema 1).
	Config string `json:"config,omitempty"`
	// Encryption lists the encryption versions registered in the store.
	Encryption []fixtureEncryption `json:"encryption_versions,omitempty"`
	// Blocks is what 'backy stats --json' said per encryption version as
	// the fixture was left. Fixtures before schema 2 lack it: all their
	// blocks are unencrypted (version 0).
	Blocks map[string]metastore.EncStat `json:"blocks_by_encryption_version,omitempty"`
	Images []fixtureImage               `json:"images"`
}

const (
	fixtureBlockSize  = 64 << 10
	fixtureConfigName = "backy.cfg"
)

// fixtureData builds a deterministic image: random blocks, zero runs, a
// repeated block and, for sizes that are not a multiple of 64 KiB, a
// short last block. Blocks depend only on seed and their index (not on
// size). Past fixtures depend on it: never change it.
func fixtureData(seed uint64, size int64) []byte {
	rng := rand.New(rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 'b', 'a', 'c', 'k', 'y'}))
	b := make([]byte, size)
	const bs = 64 << 10
	for off := int64(0); off < size; off += bs {
		end := min(off+bs, size)
		switch (off / bs) % 5 {
		case 0, 2:
			for i := off; i < end; i++ {
				b[i] = byte(rng.Uint32())
			}
		case 1: // zeros
		case 3: // a block repeated across the image and across images
			copy(b[off:end], bytes.Repeat([]byte("backy fixture "), bs/14+1))
		case 4:
			for i := off; i < end; i += 512 {
				b[i] = byte(seed)
			}
		}
	}
	return b
}

// fixtureImageData is the content of a fixture image: fixtureData, or with
// Mix set the image of Seed changed: of every three 64 KiB blocks (index i
// from 0) the block i%3 == 1 is block i of the image of Mix and the block
// i%3 == 2 starts with "changed block <i>"; the others stay. So the image
// shares blocks with both and has new ones. Past fixtures depend on it:
// never change it.
func fixtureImageData(im fixtureImage) []byte {
	b := fixtureData(im.Seed, im.Size)
	if im.Mix == 0 {
		return b
	}
	m := fixtureData(im.Mix, im.Size)
	const bs = 64 << 10
	for i, off := int64(0), int64(0); off < im.Size; i, off = i+1, off+bs {
		end := min(off+bs, im.Size)
		switch i % 3 {
		case 1:
			copy(b[off:end], m[off:end])
		case 2:
			copy(b[off:end], "changed block "+strconv.FormatInt(i, 10))
		}
	}
	return b
}

func sha(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// fixturePhase is one step of writing a fixture: the configuration it
// writes with, the images it backs up, then the versions whose blocks
// migrate-encryption moves to its encryption version and the versions it
// protects.
type fixturePhase struct {
	compression string
	enc         fixtureEncryption // Version 0: unencrypted
	images      []fixtureImage
	migrate     []string // image names
	protect     []string // image names
}

// fixturePlan is what TestWriteSchemaFixture writes for the current
// schema. Schema 2 introduced encryption: versions unencrypted without
// compression; then zstd and encryption version 1 (AES-256-GCM, raw key);
// then version 2 (XChaCha20-Poly1305, passphrase; version 1's key kept in
// [Encryption1]), with a changed image sharing blocks of versions 0 and 1;
// then one version migrated to version 2, so that the store holds blocks
// at versions 0, 1 and 2. A later schema extends the plan with what it
// introduces.
func fixturePlan() []fixturePhase {
	const mib = 1 << 20
	return []fixturePhase{
		{compression: "none", images: []fixtureImage{
			{Name: "a1", Volume: "vol-a", Seed: 1, Size: mib + 4096},
			{Name: "a2", Volume: "vol-a", Seed: 2, Size: mib + 4096},
			{Name: "b1", Volume: "vol-b", Seed: 3, Size: 640 << 10},
		}, protect: []string{"a1"}},
		{compression: "zstd", enc: fixtureEncryption{1, "aes-256-gcm", "key"}, images: []fixtureImage{
			{Name: "c1", Volume: "vol-c", Seed: 4, Size: 704<<10 + 4096},
		}},
		{compression: "zstd", enc: fixtureEncryption{2, "xchacha20-poly1305", "passphrase"}, images: []fixtureImage{
			{Name: "a3", Volume: "vol-a", Seed: 1, Mix: 4, Size: mib + 4096},
		}, migrate: []string{"b1"}},
	}
}

// fixtureSecret is the key (64 hex digits) or passphrase of a fixture's
// encryption version: test data, deterministic, not a secret.
func fixtureSecret(e fixtureEncryption) string {
	s := sha256.Sum256([]byte("backy schema fixture, encryption version " + strconv.Itoa(int(e.Version))))
	if e.Material == "passphrase" {
		return "backy fixture passphrase " + strconv.Itoa(int(e.Version)) + " " + hex.EncodeToString(s[:4])
	}
	return hex.EncodeToString(s[:])
}

// fixtureConfig is a fixture's configuration: its store in store/ next to
// the file, new blocks written at encryption version cur (0: unencrypted)
// with compression, older versions' blocks read with their keys.
func fixtureConfig(schema int, compression string, cur fixtureEncryption, older []fixtureEncryption) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Configuration of the schema-%d fixture, written by TestWriteSchemaFixture.\n", schema)
	b.WriteString("# Its keys and passphrases are test data, not secrets. Paths are relative to this file.\n\n")
	fmt.Fprintf(&b, "[DEFAULTS]\nblock_size = %d\ncompression = %s\nencryption_version = %d\n", fixtureBlockSize, compression, cur.Version)
	if cur.Version > 0 {
		fmt.Fprintf(&b, "encryption_cipher = %s\nencryption_%s = %s\n", cur.Cipher, cur.Material, fixtureSecret(cur))
	}
	b.WriteString("\n[MetaBackend]\npath = store/backy.db\n\n[DataBackend]\npath = store/data\n")
	for _, o := range older {
		fmt.Fprintf(&b, "\n[Encryption%d]\ncipher = %s\n%s = %s\n", o.Version, o.Cipher, o.Material, fixtureSecret(o))
	}
	return b.String()
}

// fixtureCLI runs backy in this process on a fixture's store: with the
// configuration file cfg if set, else on the default store in home.
type fixtureCLI struct {
	t         *testing.T
	cfg, home string
}

func (c fixtureCLI) run(args ...string) (stdout, stderr string, err error) {
	var out, errb bytes.Buffer
	getenv := func(k string) string {
		switch k {
		case "BACKY_CONFIG":
			return ""
		case "BACKY_HOME":
			return c.home
		}
		return os.Getenv(k)
	}
	e := &env{stdout: &out, stderr: &errb, getenv: getenv}
	app := newApp(e)
	argv := []string{"backy"}
	if c.cfg != "" {
		argv = append(argv, "-c", c.cfg)
	}
	err = app.Run(interspersed(app, append(argv, args...)))
	return out.String(), errb.String(), err
}

// ok runs backy and fails the test unless the command succeeds.
func (c fixtureCLI) ok(args ...string) (stdout, stderr string) {
	c.t.Helper()
	out, errb, err := c.run(args...)
	if err != nil {
		c.t.Fatalf("backy %s: %v (stderr %q)", strings.Join(args, " "), err, errb)
	}
	return out, errb
}

// fixtureStats is the part of 'backy stats --json' the fixtures check.
type fixtureStats struct {
	Blocks      int64                        `json:"blocks"`
	StoredBytes int64                        `json:"stored_bytes"`
	ByEnc       map[string]metastore.EncStat `json:"blocks_by_encryption_version"`
}

func (c fixtureCLI) stats() fixtureStats {
	c.t.Helper()
	out, _ := c.ok("stats", "--json")
	var st fixtureStats
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		c.t.Fatalf("backy stats --json: %v in %q", err, out)
	}
	return st
}

// fixtureBlockEncVersions returns EncVersionsOf(uid) of the metastore at
// dbPath with the versions as strings (as in fixture.json).
func fixtureBlockEncVersions(t *testing.T, dbPath string, uids []string) map[string]map[string]int64 {
	t.Helper()
	db, err := metastore.Open(dbPath, metastore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	out := map[string]map[string]int64{}
	for _, uid := range uids {
		m, err := db.EncVersionsOf(uid)
		if err != nil {
			t.Fatalf("EncVersionsOf(%s): %v", uid, err)
		}
		out[uid] = map[string]int64{}
		for v, n := range m {
			out[uid][strconv.Itoa(int(v))] = n
		}
	}
	return out
}

// TestWriteSchemaFixture writes testdata/schema-<current>/ when
// BACKY_WRITE_FIXTURE=1, following fixturePlan. Run it once, when a schema
// is current, and commit the result; never regenerate the fixture of a
// past schema.
func TestWriteSchemaFixture(t *testing.T) {
	if os.Getenv("BACKY_WRITE_FIXTURE") != "1" {
		t.Skip("set BACKY_WRITE_FIXTURE=1 to write the fixture of the current schema")
	}
	dir, err := filepath.Abs(filepath.Join("..", "..", "testdata", "schema-"+strconv.Itoa(metastore.CurrentSchema)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); err == nil {
		t.Fatalf("%s exists: fixtures of past schemas are never rewritten", dir)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // no half-written fixture
		if t.Failed() {
			_ = os.RemoveAll(dir)
		}
	})
	cfgPath := filepath.Join(dir, fixtureConfigName)
	c := fixtureCLI{t: t, cfg: cfgPath}
	run := func(args ...string) string { // a command that must succeed silently
		t.Helper()
		out, errs := c.ok(args...)
		if errs != "" {
			t.Fatalf("backy %s said on stderr: %q", strings.Join(args, " "), errs)
		}
		return out
	}
	ff := fixtureFile{Schema: metastore.CurrentSchema, BlockSize: fixtureBlockSize, Config: fixtureConfigName}
	byName := map[string]int{}
	tmp := t.TempDir()
	for i, ph := range fixturePlan() {
		var older []fixtureEncryption
		for _, e := range ff.Encryption {
			if e.Version != ph.enc.Version {
				older = append(older, e)
			}
		}
		if ph.enc.Version > 0 && !slices.Contains(ff.Encryption, ph.enc) {
			ff.Encryption = append(ff.Encryption, ph.enc)
		}
		cfg := fixtureConfig(ff.Schema, ph.compression, ph.enc, older)
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			run("init", "--block-size", strconv.Itoa(fixtureBlockSize))
		}
		for _, im := range ph.images {
			data := fixtureImageData(im)
			p := filepath.Join(tmp, im.Name+".img")
			if err := os.WriteFile(p, data, 0o600); err != nil {
				t.Fatal(err)
			}
			im.UID = strings.TrimSpace(run("backup", p, im.Volume, "--snapshot", im.Name, "--label", "fixture="+im.Name))
			im.SHA256 = sha(data)
			im.EncryptionVersion, im.Compression = ph.enc.Version, ph.compression
			byName[im.Name] = len(ff.Images)
			ff.Images = append(ff.Images, im)
		}
		for _, name := range ph.migrate {
			im := &ff.Images[byName[name]]
			run("migrate-encryption", im.UID)
			im.MigratedTo = ph.enc.Version
		}
		for _, name := range ph.protect {
			im := &ff.Images[byName[name]]
			run("protect", im.UID)
			im.Protected = true
		}
	}
	st := c.stats()
	ff.Blocks = st.ByEnc
	// Every encryption version the plan wrote or migrated to must hold
	// blocks, or the fixture does not exercise it.
	used := map[uint16]bool{}
	for _, im := range ff.Images {
		used[im.EncryptionVersion] = true
		if im.MigratedTo > 0 {
			used[im.MigratedTo] = true
		}
	}
	for _, v := range slices.Sorted(maps.Keys(used)) {
		if ff.Blocks[strconv.Itoa(int(v))].Blocks == 0 {
			t.Errorf("the fixture holds no blocks at encryption version %d: change fixturePlan", v)
		}
	}
	dbPath := filepath.Join(dir, "store", "backy.db")
	var uids []string
	for _, im := range ff.Images {
		uids = append(uids, im.UID)
	}
	bev := fixtureBlockEncVersions(t, dbPath, uids)
	for i := range ff.Images {
		ff.Images[i].BlockEncryptionVersions = bev[ff.Images[i].UID]
	}
	for _, e := range ff.Encryption {
		if _, err := os.Stat(filepath.Join(dir, "store", "data", filepath.FromSlash(keyring.ObjectName(e.Version)))); err != nil {
			t.Errorf("the backend lacks the registration of encryption version %d: %v", e.Version, err)
		}
	}
	// Runtime state (locks), kept old databases and leftovers of upgrades
	// are not part of the fixture.
	leftovers, _ := filepath.Glob(dbPath + ".pre-*")
	leftovers = append(leftovers, metastore.LockDir(dbPath), dbPath+".migrating", metastore.LockDir(dbPath+".migrating"))
	for _, p := range leftovers {
		if err := os.RemoveAll(p); err != nil {
			t.Fatal(err)
		}
	}
	// Nor are empty directories (of deleted objects): git keeps none.
	var dirs []string
	_ = filepath.WalkDir(filepath.Join(dir, "store"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return err
	})
	for _, d := range slices.Backward(dirs) { // children first
		if ents, err := os.ReadDir(d); err == nil && len(ents) == 0 {
			if err := os.Remove(d); err != nil {
				t.Fatal(err)
			}
		}
	}
	b, _ := json.MarshalIndent(ff, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, "fixture.json"), append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s: %d versions, blocks by encryption version %v", dir, len(ff.Images), ff.Blocks)
}

// TestSchemaFixtures opens a copy of every past schema's fixture with this
// backy and restores every version bit-identically. An older fixture is
// upgraded by the first command, which says so in one line on stderr and
// keeps the old database, byte for byte, as backy.db.pre-<current schema>.
// Then it checks the blocks per encryption version, the registered keys
// and each version's blocks against fixture.json, migrates every block to
// one encryption version (the fixture's configured one; for a fixture
// without a configuration, which is unencrypted, version 1 with a test
// key) and restores every version again.
func TestSchemaFixtures(t *testing.T) {
	dirs, _ := filepath.Glob(filepath.Join("..", "..", "testdata", "schema-*"))
	if len(dirs) == 0 {
		t.Fatal("no schema fixtures found in testdata/")
	}
	seen := map[int]bool{}
	for _, dir := range dirs {
		raw, err := os.ReadFile(filepath.Join(dir, "fixture.json"))
		if err != nil {
			t.Fatal(err)
		}
		var ff fixtureFile
		if err := json.Unmarshal(raw, &ff); err != nil {
			t.Fatal(err)
		}
		seen[ff.Schema] = true
		t.Run(filepath.Base(dir), func(t *testing.T) { testSchemaFixture(t, dir, ff) })
	}
	for s := 1; s < metastore.CurrentSchema; s++ {
		if !seen[s] {
			t.Errorf("no fixture for past schema %d in testdata/", s)
		}
	}
}

func testSchemaFixture(t *testing.T, dir string, ff fixtureFile) {
	before := fixtureDigest(t, dir)
	orig, err := os.ReadFile(filepath.Join(dir, "store", "backy.db"))
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	if err := os.CopyFS(root, os.DirFS(dir)); err != nil {
		t.Fatal(err)
	}
	c := fixtureCLI{t: t, home: filepath.Join(root, "store")}
	if ff.Config != "" {
		c = fixtureCLI{t: t, cfg: filepath.Join(root, ff.Config)}
		// The copy is 0644 (git keeps no modes): backy warns about a
		// secret in a file others can read.
		if err := os.Chmod(c.cfg, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	dbPath := filepath.Join(root, "store", "backy.db")
	kept := dbPath + ".pre-" + strconv.Itoa(metastore.CurrentSchema)
	announce := fmt.Sprintf("backy: upgraded metastore %s from schema %d to %d (the old database is kept as %s)",
		dbPath, ff.Schema, metastore.CurrentSchema, kept)

	// restoreAll restores every version and compares it with its image;
	// the first command of all upgrades an older fixture.
	first := true
	restoreAll := func(c fixtureCLI, when string) {
		t.Helper()
		for _, im := range ff.Images {
			target := filepath.Join(t.TempDir(), im.Name+".img")
			_, errs := c.ok("restore", im.UID, target)
			var lines []string
			for l := range strings.SplitSeq(strings.TrimSpace(errs), "\n") {
				if l != "" {
					lines = append(lines, l)
				}
			}
			if first && ff.Schema < metastore.CurrentSchema {
				if !slices.Contains(lines, announce) {
					t.Errorf("the first command's stderr %q lacks the line %q", errs, announce)
				}
				lines = slices.DeleteFunc(lines, func(l string) bool { return l == announce })
			}
			first = false
			if len(lines) > 0 {
				t.Errorf("%s: restore of %s (%s) said on stderr: %q", when, im.Name, im.UID, lines)
			}
			got, err := os.ReadFile(target)
			if err != nil {
				t.Fatal(err)
			}
			if sha(got) != im.SHA256 || sha(fixtureImageData(im)) != im.SHA256 {
				t.Fatalf("%s: version %s (%s) of the schema-%d fixture did not restore bit-identically", when, im.UID, im.Name, ff.Schema)
			}
		}
	}
	check := func(when string) {
		t.Helper()
		if s, err := metastore.SchemaOf(dbPath); err != nil || s != metastore.CurrentSchema {
			t.Errorf("%s: schema %d, %v; want %d", when, s, err, metastore.CurrentSchema)
		}
		db, err := metastore.Open(dbPath, metastore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		problems, err := db.Check()
		_ = db.Close()
		if err != nil || len(problems) > 0 {
			t.Errorf("%s: metastore check: %v %v", when, problems, err)
		}
	}
	var uids []string
	for _, im := range ff.Images {
		uids = append(uids, im.UID)
	}

	restoreAll(c, "as written")
	check("after the upgrade")
	got, err := os.ReadFile(kept)
	switch {
	case ff.Schema == metastore.CurrentSchema && !errors.Is(err, os.ErrNotExist):
		t.Errorf("%s exists although the fixture has the current schema (err %v)", kept, err)
	case ff.Schema < metastore.CurrentSchema && (err != nil || !bytes.Equal(got, orig)):
		t.Errorf("%s is not the fixture's database byte for byte (err %v)", kept, err)
	}
	for _, n := range []string{dbPath + ".migrating", metastore.LockDir(dbPath + ".migrating")} {
		if _, err := os.Lstat(n); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind (err %v)", n, err)
		}
	}

	// Blocks per encryption version, as recorded (before schema 2: all
	// unencrypted).
	st := c.stats()
	want := ff.Blocks
	if want == nil {
		want = map[string]metastore.EncStat{"0": {Blocks: st.Blocks, StoredBytes: st.StoredBytes}}
	}
	if !maps.Equal(st.ByEnc, want) {
		t.Errorf("blocks by encryption version: %v, want %v", st.ByEnc, want)
	}
	var total int64
	for _, es := range st.ByEnc {
		total += es.Blocks
	}
	if total != st.Blocks {
		t.Errorf("blocks by encryption version %v add up to %d, the store has %d blocks", st.ByEnc, total, st.Blocks)
	}
	// Each version's blocks, protection and the registered keys.
	bev := fixtureBlockEncVersions(t, dbPath, uids)
	db, err := metastore.Open(dbPath, metastore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	regs, err := db.EncVersions()
	if err != nil {
		t.Fatal(err)
	}
	for _, im := range ff.Images {
		if im.BlockEncryptionVersions != nil && !maps.Equal(bev[im.UID], im.BlockEncryptionVersions) {
			t.Errorf("version %s (%s): blocks by encryption version %v, want %v", im.UID, im.Name, bev[im.UID], im.BlockEncryptionVersions)
		}
		v, err := db.Version(im.UID)
		if err != nil {
			t.Fatal(err)
		}
		if im.Protected && !v.Protected {
			t.Errorf("version %s (%s) is no longer protected", im.UID, im.Name)
		}
	}
	_ = db.Close()
	if got, want := slices.Sorted(maps.Keys(regs)), fixtureVersions(ff.Encryption); !slices.Equal(got, want) {
		t.Errorf("registered encryption versions %v, want %v", got, want)
	}
	for _, e := range ff.Encryption {
		reg, err := keyring.ParseRegistration(regs[e.Version])
		if err != nil {
			t.Errorf("registration of encryption version %d: %v", e.Version, err)
			continue
		}
		if reg.Cipher.String() != e.Cipher || (reg.KDF != nil) != (e.Material == "passphrase") {
			t.Errorf("encryption version %d is registered as %s (kdf %v), want %s with a %s", e.Version, reg.Cipher, reg.KDF != nil, e.Cipher, e.Material)
		}
		obj, err := os.ReadFile(filepath.Join(root, "store", "data", filepath.FromSlash(keyring.ObjectName(e.Version))))
		if err != nil || !bytes.Equal(obj, regs[e.Version]) {
			t.Errorf("the backend's %s is not the metastore's registration (err %v)", keyring.ObjectName(e.Version), err)
		}
	}

	// Migrate every block to one encryption version. A fixture without
	// a configuration (unencrypted) turns encryption on.
	mc := c
	if ff.Config == "" {
		mc = fixtureCLI{t: t, cfg: filepath.Join(root, "migrate.cfg")}
		cfg := fixtureConfig(ff.Schema, "zstd", fixtureEncryption{1, "aes-256-gcm", "key"}, nil)
		if err := os.WriteFile(mc.cfg, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := config.Load(mc.cfg)
	if err != nil {
		t.Fatal(err)
	}
	target := cfg.Encryption.Version
	var below int64
	for v, es := range st.ByEnc {
		if v != strconv.Itoa(int(target)) {
			below += es.Blocks
		}
	}
	out, errs := mc.ok("migrate-encryption", "--all", "--json")
	var res reencrypt.Result
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("migrate-encryption --all --json: %v in %q", err, out)
	}
	if res.Target != target || res.Migrated != below || res.Remaining != 0 || len(res.Failures) > 0 || strings.TrimSpace(errs) != "" {
		t.Errorf("migrate-encryption --all to %d: %+v (stderr %q); want %d blocks migrated, none below the target, no failures",
			target, res, errs, below)
	}
	st2 := mc.stats()
	t.Logf("blocks by encryption version %v; migrate-encryption --all to %d: %d of %d blocks migrated, %d bytes read, %d written; then %v",
		st.ByEnc, target, res.Migrated, res.Examined, res.BytesRead, res.BytesWritten, st2.ByEnc)
	if want := map[string]metastore.EncStat{strconv.Itoa(int(target)): {Blocks: st.Blocks, StoredBytes: st2.StoredBytes}}; !maps.Equal(st2.ByEnc, want) || st2.Blocks != st.Blocks {
		t.Errorf("after migrate-encryption --all: %d blocks by encryption version %v, want %d all at %d", st2.Blocks, st2.ByEnc, st.Blocks, target)
	}
	restoreAll(mc, "after migrate-encryption --all")
	for uid, m := range fixtureBlockEncVersions(t, dbPath, uids) {
		if len(m) > 1 || (len(m) == 1 && m[strconv.Itoa(int(target))] == 0) {
			t.Errorf("after migrate-encryption --all, version %s has blocks at encryption versions %v", uid, m)
		}
	}
	check("after migrate-encryption --all")

	if after := fixtureDigest(t, dir); after != before {
		t.Fatalf("the fixture in %s changed: tests must only use copies", dir)
	}
}

func fixtureVersions(es []fixtureEncryption) []uint16 {
	out := []uint16{}
	for _, e := range es {
		out = append(out, e.Version)
	}
	slices.Sort(out)
	return out
}

// fixtureDigest hashes the names and contents of every file under dir.
func fixtureDigest(t *testing.T, dir string) string {
	t.Helper()
	h := sha256.New()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fmt.Fprintf(h, "%s %d %x\n", rel, len(b), sha256.Sum256(b))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}
