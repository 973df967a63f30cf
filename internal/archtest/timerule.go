package archtest

import (
	"fmt"
	"go/ast"
	"go/token"
	"sort"
	"strconv"
)

// The time rule: library code reads the time from an injected
// clock.Clock, never from the package time directly.
var (
	// TimeFuncs are the functions of package time that read the clock.
	// A reference counts, not only a call: `now: time.Now` stores the
	// clock as surely as time.Now() reads it.
	TimeFuncs = []string{"Now", "Since", "Until"}
	// TimeExempt are the packages that may read the time directly: the
	// commands (they pass clock.System) and the clock itself.
	TimeExempt = []string{"cmd/...", "internal/clock"}
	// TimeAllowed lists single files that may read the time all the
	// same, each with its reason. Empty, and meant to stay so: real-time
	// waits use timers or contexts, I/O deadlines clock.Deadline, and
	// test harnesses that measure the real world clock.System.
	TimeAllowed = map[string]string{}
)

// Finding is a forbidden use in a file.
type Finding struct {
	Pos token.Position
	Msg string
}

func (f Finding) String() string { return fmt.Sprintf("%s: %s", f.Pos, f.Msg) }

// CheckTime returns the time rule's findings in the module's non-test
// files, sorted by position.
func CheckTime(m *Module) []Finding {
	var out []Finding
	for _, pkg := range m.Packages {
		exempt := false
		for _, pat := range TimeExempt {
			exempt = exempt || match(pat, pkg.Path)
		}
		if exempt {
			continue
		}
		for _, f := range pkg.Files {
			if _, ok := TimeAllowed[f.Name]; ok {
				continue
			}
			out = append(out, CheckTimeFile(m.Fset, f.AST)...)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].Pos, out[j].Pos
		if a.Filename != b.Filename {
			return a.Filename < b.Filename
		}
		return a.Offset < b.Offset
	})
	return out
}

// CheckTimeFile returns the uses of TimeFuncs in one file: any selector
// <name>.Now (Since, Until) where name is the file's name for package
// time and not a local variable, and a dot import of package time.
func CheckTimeFile(fset *token.FileSet, f *ast.File) []Finding {
	names := map[string]bool{}
	var out []Finding
	for _, imp := range f.Imports {
		p, err := strconv.Unquote(imp.Path.Value)
		if err != nil || p != "time" {
			continue
		}
		switch {
		case imp.Name == nil:
			names["time"] = true
		case imp.Name.Name == ".":
			out = append(out, Finding{fset.Position(imp.Pos()), `dot import of package time: import it by name and read the time from a clock.Clock`})
		case imp.Name.Name != "_":
			names[imp.Name.Name] = true
		}
	}
	if len(names) == 0 {
		return out
	}
	forbidden := map[string]bool{}
	for _, fn := range TimeFuncs {
		forbidden[fn] = true
	}
	ast.Inspect(f, func(n ast.Node) bool {
		sel, ok := n.(*ast.SelectorExpr)
		if !ok || !forbidden[sel.Sel.Name] {
			return true
		}
		x, ok := sel.X.(*ast.Ident)
		// x.Obj is set for a name declared in the file (a local variable
		// called time); a package name stays unresolved.
		if !ok || !names[x.Name] || x.Obj != nil {
			return true
		}
		out = append(out, Finding{fset.Position(sel.Pos()),
			fmt.Sprintf("%s.%s in library code: read the time from the clock.Clock the package is given (Options.Clock; nil = clock.System), see internal/clock", x.Name, sel.Sel.Name)})
		return true
	})
	return out
}
