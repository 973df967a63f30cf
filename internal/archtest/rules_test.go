package archtest

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func loadRepo(t *testing.T) *Module {
	t.Helper()
	root, err := FindRoot(".")
	if err != nil {
		t.Fatal(err)
	}
	m, err := Load(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Packages) < 20 {
		t.Fatalf("found only %d packages under %s: the loader is broken", len(m.Packages), root)
	}
	return m
}

// TestImportRules (issue 14 item 6): the module's import graph keeps the
// rules of Layers, with no exception but the listed ones, and every listed
// exception is still needed.
func TestImportRules(t *testing.T) {
	if bad := checkLayers(Layers); len(bad) > 0 {
		t.Fatalf("the layer table is wrong: %v", bad)
	}
	m := loadRepo(t)
	g := m.Graph()
	for _, p := range []string{"versions/backup", "metastore", "blockstore", "cmd/backy"} {
		if _, ok := g[p]; !ok {
			t.Fatalf("the graph has no %s: the loader is broken", p)
		}
	}
	if !slices.Contains(g["cmd/backy"], "versions/backup") {
		t.Fatalf("the graph misses cmd/backy -> versions/backup: the loader is broken (%v)", g["cmd/backy"])
	}
	violations, unneeded := CheckImports(g, Layers, Exceptions)
	for _, v := range violations {
		t.Errorf("import rule broken: %s", v)
	}
	for _, e := range unneeded {
		t.Errorf("exception %s -> %s is no longer needed: delete it from Exceptions in internal/archtest/rules.go (%s)", e.From, e.To, e.Why)
	}
}

// TestCheckImports: the checker on synthetic graphs finds each kind of
// wrong import, and only those.
func TestCheckImports(t *testing.T) {
	good := Graph{
		"cmd/backy":                    {"versions/backup", "blockstore/backend/file", "versions/store", "internal/clock"},
		"internal/block":               nil,
		"internal/clock":               nil,
		"blockstore/backend":           nil,
		"blockstore/backend/file":      {"blockstore/backend", "internal/clock"},
		"blockstore/backend/s3":        {"blockstore/backend"},
		"blockstore/backend/s3/s3test": {"blockstore/backend/s3"},
		"blockstore":                   {"blockstore/backend", "blockstore/object", "internal/block"},
		"blockstore/object":            {"internal/block"},
		"metastore":                    {"internal/block", "metastore/blockmap"},
		"metastore/blockmap":           {"internal/block"},
		"migrate":                      {"metastore"},
		"versions":                     {"metastore"},
		"versions/mapwriter":           {"versions", "blockstore", "metastore"},
		"versions/backup":              {"versions/mapwriter", "versions/source", "blockstore", "metastore", "internal/clock"},
		"versions/backup/inner":        {"versions/backup"},
		"versions/restore":             {"versions/blockread", "versions", "versions/source"},
		"versions/blockread":           {"blockstore", "metastore"},
		"versions/source":              nil,
		"scrub":                        {"versions/blockread", "versions"},
		"migrate/reencrypt":            {"blockstore", "metastore"},
		"versions/nbd":                 nil,
		"versions/store":               {"versions/backup", "versions/restore", "versions/nbd", "migrate", "blockstore/backend"},
	}
	with := func(from string, to ...string) Graph {
		g := Graph{}
		for k, v := range good {
			g[k] = v
		}
		g[from] = append(slices.Clone(g[from]), to...)
		return g
	}
	for _, tc := range []struct {
		name       string
		g          Graph
		exceptions []Exception
		want       []string // "from -> to", or "from" for a package in no layer
		unneeded   int
	}{
		{name: "good", g: good},
		{name: "engine imports engine", g: with("versions/restore", "versions/backup"), want: []string{"versions/restore -> versions/backup"}},
		{name: "engine imports engine (scrub)", g: with("scrub", "versions/device"), want: []string{"scrub -> versions/device"}},
		{name: "engine imports concrete backend", g: with("versions/cleanup", "blockstore/backend/file"), want: []string{"versions/cleanup -> blockstore/backend/file"}},
		{name: "engine imports s3 test server", g: with("versions/backup", "blockstore/backend/s3/s3test"), want: []string{"versions/backup -> blockstore/backend/s3/s3test"}},
		{name: "engine imports the store", g: with("versions/backup", "versions/store"), want: []string{"versions/backup -> versions/store"}},
		{name: "library imports cmd", g: with("versions", "cmd/backy"), want: []string{"versions -> cmd/backy"}},
		{name: "library imports engine", g: with("versions/source", "versions/backup"), want: []string{"versions/source -> versions/backup"}},
		{name: "block store imports metastore", g: with("blockstore", "metastore"), want: []string{"blockstore -> metastore"}},
		{name: "block store imports an engine", g: with("blockstore/object", "versions/backup"), want: []string{"blockstore/object -> versions/backup"}},
		{name: "block store imports concrete backend", g: with("blockstore", "blockstore/backend/file"), want: []string{"blockstore -> blockstore/backend/file"}},
		{name: "backend imports block store", g: with("blockstore/backend/file", "blockstore/object"), want: []string{"blockstore/backend/file -> blockstore/object"}},
		{name: "metastore imports block store", g: with("metastore/blockmap", "blockstore"), want: []string{"metastore/blockmap -> blockstore"}},
		{name: "internal imports metastore", g: with("internal/clock", "metastore"), want: []string{"internal/clock -> metastore"}},
		{name: "nbd imports metastore", g: with("versions/nbd", "metastore"), want: []string{"versions/nbd -> metastore"}},
		{name: "store imports cmd", g: with("versions/store", "cmd/backy"), want: []string{"versions/store -> cmd/backy"}},
		{name: "store imports concrete backend", g: with("versions/store", "blockstore/backend/s3"), want: []string{"versions/store -> blockstore/backend/s3"}},
		{name: "package in no layer", g: with("versions/newengine", "versions"), want: []string{"versions/newengine"}},
		{name: "import of a package in no layer", g: with("versions/backup", "versions/newthing"), want: []string{"versions/backup -> versions/newthing"}},
		{name: "exception allows", g: with("versions/cleanup", "blockstore/backend/file"),
			exceptions: []Exception{{From: "versions/cleanup", To: "blockstore/backend/file", Why: "test"}}},
		{name: "unneeded exception", g: good,
			exceptions: []Exception{{From: "versions/cleanup", To: "blockstore/backend/file", Why: "test"}}, unneeded: 1},
		{name: "exception for an allowed import is unneeded", g: good,
			exceptions: []Exception{{From: "versions/backup", To: "versions/mapwriter", Why: "test"}}, unneeded: 1},
		{name: "two violations", g: with("versions/replicate", "versions/backup", "blockstore/backend/s3"),
			want: []string{"versions/replicate -> versions/backup", "versions/replicate -> blockstore/backend/s3"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vs, unneeded := CheckImports(tc.g, Layers, tc.exceptions)
			var got []string
			for _, v := range vs {
				if v.To == "" {
					got = append(got, v.From)
				} else {
					got = append(got, v.From+" -> "+v.To)
				}
				if !strings.Contains(v.String(), v.From) || v.Msg == "" {
					t.Errorf("violation %+v does not say what", v)
				}
			}
			slices.Sort(got)
			want := slices.Clone(tc.want)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("violations %q, want %q", got, want)
			}
			if len(unneeded) != tc.unneeded {
				t.Errorf("unneeded exceptions %v, want %d", unneeded, tc.unneeded)
			}
		})
	}
}

func TestCheckLayers(t *testing.T) {
	bad := checkLayers([]Layer{{Name: "a", MayImport: []string{"b"}}, {Name: "a"}})
	if len(bad) != 2 {
		t.Fatalf("checkLayers = %q, want a duplicate and an unknown name", bad)
	}
}

// writeTree writes files (path from the root -> content) below a new
// temporary directory and returns it.
func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for name, content := range files {
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// TestImportRulesOnTree: a deliberately wrong import in a module on disk
// (an engine importing another) fails the check; the same import in a test
// file, in testdata or in a nested module does not count.
func TestImportRulesOnTree(t *testing.T) {
	root := writeTree(t, map[string]string{
		"go.mod":                          "module example.com/m\n\ngo 1.26\n",
		"versions/backup/backup.go":       "package backup\n",
		"versions/restore/restore.go":     "package restore\n\nimport _ \"example.com/m/versions/backup\"\n",
		"versions/replicate/replicate.go": "package replicate\n",
		"versions/replicate/x_test.go":    "package replicate\n\nimport _ \"example.com/m/versions/backup\"\n",
		"versions/device/testdata/bad.go": "package bad\n\nimport _ \"example.com/m/versions/backup\"\n",
		"versions/device/device.go":       "package device\n\nimport _ \"fmt\"\n",
		"tools/go.mod":                    "module example.com/tools\n",
		"tools/tool.go":                   "package tools\n\nimport _ \"example.com/m/cmd/x\"\n",
		"cmd/x/main.go":                   "package main\n\nimport _ \"example.com/m/versions/backup\"\n",
	})
	m, err := Load(root)
	if err != nil {
		t.Fatal(err)
	}
	vs, _ := CheckImports(m.Graph(), Layers, nil)
	if len(vs) != 1 || vs[0].From != "versions/restore" || vs[0].To != "versions/backup" {
		t.Fatalf("violations %v, want exactly versions/restore -> versions/backup", vs)
	}
}
