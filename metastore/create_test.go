package metastore

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestCreations: what killed creations leave under temporary names is
// listed with what it is, and only provable debris counts as such.
func TestCreations(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "backy.db")
	// Prepare's file of a creation killed before Commit.
	p, err := Prepare(path, 1<<20, [16]byte{7}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	prepared := p.tmp
	p.db.Close()
	cs, err := Creations(path)
	if err != nil || len(cs) != 1 || cs[0].Path != prepared || cs[0].Err != nil || cs[0].StoreID != [16]byte{7} ||
		cs[0].BlockSize != 1<<20 || cs[0].Versions != 0 || cs[0].InPlace || !cs[0].Debris() {
		t.Fatalf("Creations after Prepare = %+v, %v", cs, err)
	}
	if err := RemoveCreations(cs); err != nil {
		t.Fatal(err)
	}
	// A metastore in place and used, with a second name (Commit killed
	// before it removed the temporary one), a garbage file (Prepare killed
	// while it wrote), a copy of the used metastore under such a name,
	// and a file of another name.
	db, err := Create(path, 1<<20, [16]byte{7}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	newVersion(t, db, "vol")
	link, garbage, used, other := path+".creating-00000000000a", path+".creating-00000000000b", path+".creating-00000000000c", path+".creating-xyz"
	if err := os.Link(path, link); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{garbage: data[:5000], used: data, other: data} {
		if err := os.WriteFile(name, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cs, err = Creations(path)
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(cs, func(a, b Creation) int { return strings.Compare(a.Path, b.Path) })
	if len(cs) != 3 || cs[0].Path != link || !cs[0].InPlace || !cs[0].Debris() ||
		cs[1].Path != garbage || cs[1].Err == nil || !cs[1].Debris() ||
		cs[2].Path != used || cs[2].Err != nil || cs[2].Versions != 1 || cs[2].Debris() {
		t.Fatalf("Creations = %+v", cs)
	}
	// Open drops the second name on its own.
	db2, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	db2.Close()
	if _, err := os.Stat(link); !os.IsNotExist(err) {
		t.Errorf("the second name %s is still there after Open (%v)", link, err)
	}
	for _, name := range []string{garbage, used, other} {
		if _, err := os.Stat(name); err != nil {
			t.Errorf("Open removed %s: %v", name, err)
		}
	}
}
