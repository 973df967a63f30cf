package archtest

import (
	"bufio"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Module is the source tree of a Go module as its non-test files say.
type Module struct {
	// Path is the module path (from go.mod); Root its directory.
	Path, Root string
	Fset       *token.FileSet
	// Packages by their path inside the module ("versions/backup"; "."
	// for the module's root directory).
	Packages map[string]*Package
}

// Package is one directory of non-test .go files.
type Package struct {
	Path  string
	Files []*File
}

// File is one parsed non-test .go file.
type File struct {
	// Name is the file's path from the module root, with slashes.
	Name string
	AST  *ast.File
}

// Graph maps each package of a module (its path inside the module) to the
// packages of the same module it imports.
type Graph map[string][]string

// FindRoot returns the directory of the go.mod that holds dir.
func FindRoot(dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// Load parses every non-test .go file of the module at root, as the go
// tool finds them (directories named testdata, or starting with . or _,
// and nested modules are not part of it), ignoring build constraints.
func Load(root string) (*Module, error) {
	modPath, err := modulePath(filepath.Join(root, "go.mod"))
	if err != nil {
		return nil, err
	}
	m := &Module{Path: modPath, Root: root, Fset: token.NewFileSet(), Packages: map[string]*Package{}}
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if p == root {
				return nil
			}
			if name == "testdata" || name == "vendor" || strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") {
				return filepath.SkipDir
			}
			if _, err := os.Stat(filepath.Join(p, "go.mod")); err == nil {
				return filepath.SkipDir // another module
			}
			return nil
		}
		if !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") || strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		f, err := parser.ParseFile(m.Fset, p, nil, parser.ParseComments)
		if err != nil {
			return err
		}
		dir := path.Dir(rel)
		pkg := m.Packages[dir]
		if pkg == nil {
			pkg = &Package{Path: dir}
			m.Packages[dir] = pkg
		}
		pkg.Files = append(pkg.Files, &File{Name: rel, AST: f})
		return nil
	})
	if err != nil {
		return nil, err
	}
	return m, nil
}

func modulePath(gomod string) (string, error) {
	f, err := os.Open(gomod)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "module"); ok {
			p := strings.TrimSpace(rest)
			if uq, err := strconv.Unquote(p); err == nil {
				p = uq
			}
			if p != "" {
				return p, nil
			}
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	return "", fmt.Errorf("%s names no module", gomod)
}

// Graph returns the module's import graph (imports of the module's own
// packages only, sorted, each once).
func (m *Module) Graph() Graph {
	g := Graph{}
	for _, pkg := range m.Packages {
		seen := map[string]bool{}
		g[pkg.Path] = []string{}
		for _, f := range pkg.Files {
			for _, imp := range f.AST.Imports {
				p, err := strconv.Unquote(imp.Path.Value)
				if err != nil {
					continue
				}
				var rel string
				switch {
				case p == m.Path:
					rel = "."
				case strings.HasPrefix(p, m.Path+"/"):
					rel = strings.TrimPrefix(p, m.Path+"/")
				default:
					continue
				}
				if !seen[rel] {
					seen[rel] = true
					g[pkg.Path] = append(g[pkg.Path], rel)
				}
			}
		}
		sort.Strings(g[pkg.Path])
	}
	return g
}

// match reports whether the package path p matches pattern: "x" is x
// alone, "x/..." is x and every package below it, "*" every package.
func match(pattern, p string) bool {
	if pattern == "*" {
		return true
	}
	if base, ok := strings.CutSuffix(pattern, "/..."); ok {
		return p == base || strings.HasPrefix(p, base+"/")
	}
	return p == pattern
}
