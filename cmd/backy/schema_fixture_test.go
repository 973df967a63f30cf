package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/backy/backy/metastore"
)

// Schema fixtures: testdata/schema-N/ at the repository root holds a store
// written by the code of metastore schema N (made by
// TestWriteSchemaFixture while that schema was current), with the images
// its versions were made from described in fixture.json. Every later
// schema must open (upgrade) each fixture and restore its versions
// bit-identically.

type fixtureImage struct {
	Name   string `json:"name"`
	Volume string `json:"volume"`
	Seed   uint64 `json:"seed"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
	UID    string `json:"uid"`
}

type fixtureFile struct {
	Schema    int            `json:"schema"`
	BlockSize int64          `json:"block_size"`
	Images    []fixtureImage `json:"images"`
}

// fixtureData builds a deterministic image: random blocks, zero runs, a
// repeated block and, for odd seeds, a short last block.
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

func sha(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

func fixtureImages() []fixtureImage {
	return []fixtureImage{
		{Name: "a1", Volume: "vol-a", Seed: 1, Size: 1<<20 + 4096},
		{Name: "a2", Volume: "vol-a", Seed: 2, Size: 1<<20 + 4096},
		{Name: "b1", Volume: "vol-b", Seed: 3, Size: 640 << 10},
	}
}

// TestWriteSchemaFixture writes testdata/schema-<current>/ when
// BACKY_WRITE_FIXTURE=1. Run it once, when a schema is current, and commit
// the result; never regenerate the fixture of a past schema.
func TestWriteSchemaFixture(t *testing.T) {
	if os.Getenv("BACKY_WRITE_FIXTURE") != "1" {
		t.Skip("set BACKY_WRITE_FIXTURE=1 to write the fixture of the current schema")
	}
	dir := filepath.Join("..", "..", "testdata", "schema-"+strconv.Itoa(metastore.CurrentSchema))
	if _, err := os.Stat(dir); err == nil {
		t.Fatalf("%s exists: fixtures of past schemas are never rewritten", dir)
	}
	home := filepath.Join(dir, "store")
	t.Setenv("BACKY_HOME", home)
	t.Setenv("BACKY_CONFIG", "")
	var out, errb bytes.Buffer
	cli := func(args ...string) string {
		out.Reset()
		errb.Reset()
		e := &env{stdout: &out, stderr: &errb, getenv: os.Getenv}
		app := newApp(e)
		if err := app.Run(interspersed(app, append([]string{"backy"}, args...))); err != nil {
			t.Fatalf("backy %v: %v (%s)", args, err, errb.String())
		}
		return strings.TrimSpace(out.String())
	}
	cli("init", "--block-size", "65536")
	ff := fixtureFile{Schema: metastore.CurrentSchema, BlockSize: 65536}
	tmp := t.TempDir()
	for _, im := range fixtureImages() {
		data := fixtureData(im.Seed, im.Size)
		p := filepath.Join(tmp, im.Name+".img")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		im.UID = cli("backup", p, im.Volume, "--snapshot", im.Name, "--label", "fixture="+im.Name)
		im.SHA256 = sha(data)
		ff.Images = append(ff.Images, im)
	}
	cli("protect", ff.Images[0].UID)
	b, _ := json.MarshalIndent(ff, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, "fixture.json"), append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	// Lock files are runtime state, not part of the fixture.
	_ = os.RemoveAll(metastore.LockDir(filepath.Join(home, "backy.db")))
}

// TestSchemaFixtures opens a copy of every past schema's fixture with this
// backy and restores every version bit-identically. An older fixture is
// upgraded by the first command, which says so in one line on stderr and
// keeps the old database, byte for byte, as backy.db.pre-<current schema>.
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
		t.Run(filepath.Base(dir), func(t *testing.T) {
			orig, err := os.ReadFile(filepath.Join(dir, "store", "backy.db"))
			if err != nil {
				t.Fatal(err)
			}
			home := filepath.Join(t.TempDir(), "store")
			if err := os.CopyFS(home, os.DirFS(filepath.Join(dir, "store"))); err != nil {
				t.Fatal(err)
			}
			t.Setenv("BACKY_HOME", home)
			t.Setenv("BACKY_CONFIG", "")
			dbPath := filepath.Join(home, "backy.db")
			kept := dbPath + ".pre-" + strconv.Itoa(metastore.CurrentSchema)
			announce := fmt.Sprintf("backy: upgraded metastore %s from schema %d to %d (the old database is kept as %s)",
				dbPath, ff.Schema, metastore.CurrentSchema, kept)
			for i, im := range ff.Images {
				var out, errb bytes.Buffer
				e := &env{stdout: &out, stderr: &errb, getenv: os.Getenv}
				app := newApp(e)
				target := filepath.Join(t.TempDir(), im.Name+".img")
				if err := app.Run([]string{"backy", "restore", im.UID, target}); err != nil {
					t.Fatalf("restore %s: %v (%s)", im.UID, err, errb.String())
				}
				lines := strings.Split(strings.TrimSpace(errb.String()), "\n")
				switch upgrading := i == 0 && ff.Schema < metastore.CurrentSchema; {
				case upgrading && !slices.Contains(lines, announce):
					t.Errorf("the first command's stderr %q lacks the line %q", errb.String(), announce)
				case strings.Count(errb.String(), "upgraded metastore") != btoi(upgrading):
					t.Errorf("command %d (restore) said on stderr: %q", i+1, errb.String())
				}
				got, err := os.ReadFile(target)
				if err != nil {
					t.Fatal(err)
				}
				if sha(got) != im.SHA256 || sha(fixtureData(im.Seed, im.Size)) != im.SHA256 {
					t.Fatalf("version %s of schema %d did not restore bit-identically", im.UID, ff.Schema)
				}
			}
			if s, err := metastore.SchemaOf(dbPath); err != nil || s != metastore.CurrentSchema {
				t.Errorf("schema after use: %d, %v; want %d", s, err, metastore.CurrentSchema)
			}
			db, err := metastore.Open(dbPath, metastore.Options{})
			if err != nil {
				t.Fatal(err)
			}
			problems, err := db.Check()
			_ = db.Close()
			if err != nil || len(problems) > 0 {
				t.Errorf("metastore check after the upgrade: %v %v", problems, err)
			}
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
			if now, err := os.ReadFile(filepath.Join(dir, "store", "backy.db")); err != nil || !bytes.Equal(now, orig) {
				t.Fatalf("the fixture in %s changed: tests must only use copies (err %v)", dir, err)
			}
		})
	}
	for s := 1; s < metastore.CurrentSchema; s++ {
		if !seen[s] {
			t.Errorf("no fixture for past schema %d in testdata/", s)
		}
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
