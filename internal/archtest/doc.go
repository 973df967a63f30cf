// Package archtest checks the architecture rules of the module as tests,
// so that `make test` fails when code breaks them:
//
//   - which package may import which (Layers, Exceptions; see rules.go and
//     docs/ARCHITECTURE.md "Import rules"), and
//   - that library code reads the time only through internal/clock
//     (TimeRule; docs/ARCHITECTURE.md "Time").
//
// Both look at the source tree itself (go/parser over every non-test .go
// file of the module, whatever its build constraints), not at one build
// of it. Test files are not checked: a test may import an engine to make
// its data, and time its own waits.
//
// The package has no role at run time: nothing but its own tests imports
// it, and it imports nothing of backy.
package archtest
