package archtest

import (
	"fmt"
	"sort"
)

// Layer is a set of packages with the same import rule. A package belongs
// to the first layer (in the order of the table) with a pattern matching
// it; every package of the module must belong to one.
type Layer struct {
	Name string
	// Pkgs are the layer's units, as patterns ("x" alone, "x/..." x and
	// below). A unit may import itself (its own sub-packages and parent):
	// that is one unit's private structure.
	Pkgs []string
	// MayImport names the layers whose packages the layer's packages may
	// import; "*" is every layer. The layer's own name lets its units
	// import each other; without it they may not (engines).
	MayImport []string
	// Why is the rule in words, quoted in a violation.
	Why string
}

// Exception is a known import that breaks the rules, allowed until the
// work its Why names removes it. An exception no longer needed is itself
// reported, so that the table never keeps a stale one.
type Exception struct {
	From, To string
	Why      string
}

// The layers of the module, from the bottom up; see docs/ARCHITECTURE.md
// "Import rules", which says the same in prose.
var (
	// Engines: the operations, each a package; they share code through
	// the libraries below them, never by importing one another.
	engines = []string{
		"versions/backup/...", "versions/restore/...", "versions/cleanup/...", "versions/replicate/...",
		"versions/retention/...", "versions/transfer/...", "versions/catalog/...", "versions/device/...",
		"scrub/...", "migrate/reencrypt/...",
	}
	// Libraries the engines share: metadata operations, the one map
	// writer, the one verified block reader, sources, hints, the
	// manifest stream.
	libraries = []string{
		"versions", "versions/mapwriter/...", "versions/blockread/...", "versions/source/...",
		"versions/hints/...", "versions/manifest/...",
	}

	Layers = []Layer{
		{Name: "command", Pkgs: []string{"cmd/..."}, MayImport: []string{"*"},
			Why: "the commands may import anything"},
		{Name: "internal", Pkgs: []string{"internal/..."}, MayImport: []string{"internal"},
			Why: "internal/ holds the module's leaves (vocabulary, clock, helpers): they import nothing else of backy"},
		{Name: "backend contract", Pkgs: []string{"blockstore/backend"}, MayImport: []string{"internal"},
			Why: "the Backend contract imports nothing but internal/"},
		{Name: "backends", Pkgs: []string{"blockstore/backend/..."}, MayImport: []string{"backends", "backend contract", "internal"},
			Why: "backends and their wrappers see opaque names and bytes: only the contract, each other and internal/"},
		{Name: "block store", Pkgs: []string{"blockstore/..."}, MayImport: []string{"backend contract", "internal"},
			Why: "the block store never imports the metastore, an engine or a concrete backend"},
		{Name: "metastore", Pkgs: []string{"metastore/..."}, MayImport: []string{"internal"},
			Why: "the metastore imports no block store (the shared vocabulary is internal/block)"},
		{Name: "schema", Pkgs: []string{"migrate"}, MayImport: []string{"metastore", "internal"},
			Why: "the schema ratchet sees the metastore only"},
		{Name: "library", Pkgs: libraries, MayImport: []string{"library", "block store", "backend contract", "metastore", "internal"},
			Why: "the libraries engines share import no engine and no concrete backend"},
		{Name: "engine", Pkgs: engines, MayImport: []string{"library", "block store", "backend contract", "metastore", "internal"},
			Why: "engines do not import each other nor a concrete backend (optional capabilities are found through the backend chain)"},
		{Name: "nbd", Pkgs: []string{"versions/nbd/..."}, MayImport: []string{"internal"},
			Why: "the NBD protocol knows nothing of stores: it serves any Exports"},
		{Name: "store", Pkgs: []string{"versions/store/..."},
			MayImport: []string{"engine", "library", "block store", "backend contract", "metastore", "schema", "nbd", "internal"},
			Why:       "the store value drives the engines; it takes an assembled backend (no concrete one) and never imports cmd/"},
	}

	// Exceptions: the imports that break the rules today. One line each;
	// delete a line when the work it names is merged (the test then
	// insists).
	Exceptions = []Exception{
		{From: "versions/transfer", To: "versions/catalog",
			Why: "rebuild-metastore, adopt and export read and write the version snapshots through the catalog (Ref, ErrNoSnapshot, WriteVersion): " +
				"the snapshot format belongs in a library both use, or rebuild on the store value (issue 14 phase 2)"},
	}
)

// Violation is an import the rules forbid, or a package no layer holds.
type Violation struct {
	From, To string // To is "" for a package in no layer
	Msg      string
}

func (v Violation) String() string {
	if v.To == "" {
		return fmt.Sprintf("%s: %s", v.From, v.Msg)
	}
	return fmt.Sprintf("%s imports %s: %s", v.From, v.To, v.Msg)
}

// layerOf returns the index of p's layer and of the pattern that matched
// (its unit), or -1.
func layerOf(layers []Layer, p string) (int, int) {
	for i, l := range layers {
		for j, pat := range l.Pkgs {
			if match(pat, p) {
				return i, j
			}
		}
	}
	return -1, -1
}

// CheckImports checks g against layers and exceptions. It returns the
// violations (sorted) and the exceptions that are not needed (their import
// is gone, or allowed anyway).
func CheckImports(g Graph, layers []Layer, exceptions []Exception) (violations []Violation, unneeded []Exception) {
	used := make([]bool, len(exceptions))
	excepted := func(from, to string) bool {
		for i, e := range exceptions {
			if e.From == from && e.To == to {
				used[i] = true
				return true
			}
		}
		return false
	}
	names := map[string]int{}
	for i, l := range layers {
		names[l.Name] = i
	}
	pkgs := make([]string, 0, len(g))
	for p := range g {
		pkgs = append(pkgs, p)
	}
	sort.Strings(pkgs)
	for _, from := range pkgs {
		li, ui := layerOf(layers, from)
		if li < 0 {
			violations = append(violations, Violation{From: from, Msg: "in no layer: add it to a layer in internal/archtest/rules.go (an engine? a library?)"})
			continue
		}
		l := layers[li]
		for _, to := range g[from] {
			lj, uj := layerOf(layers, to)
			if lj == li && uj == ui {
				continue // within one unit
			}
			ok := false
			for _, name := range l.MayImport {
				if name == "*" || (lj >= 0 && names[name] == lj) {
					ok = true
				}
			}
			if ok || excepted(from, to) {
				continue
			}
			what := "a package in no layer"
			if lj >= 0 {
				what = "the " + layers[lj].Name + " layer"
			}
			violations = append(violations, Violation{From: from, To: to,
				Msg: fmt.Sprintf("the %s layer may not import %s (%s)", l.Name, what, l.Why)})
		}
	}
	for i, e := range exceptions {
		if !used[i] {
			unneeded = append(unneeded, e)
		}
	}
	return violations, unneeded
}

// checkLayers reports mistakes in a layer table itself: a MayImport naming
// no layer, a layer listed twice.
func checkLayers(layers []Layer) []string {
	var bad []string
	names := map[string]bool{}
	for _, l := range layers {
		if names[l.Name] {
			bad = append(bad, "layer "+l.Name+" twice")
		}
		names[l.Name] = true
	}
	for _, l := range layers {
		for _, n := range l.MayImport {
			if n != "*" && !names[n] {
				bad = append(bad, fmt.Sprintf("layer %s may import %q, which is no layer", l.Name, n))
			}
		}
	}
	return bad
}
