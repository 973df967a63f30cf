// Package backendtest is the conformance suite of backy's data backends:
// Run checks, through the Backend interface alone, every promise of the
// contract in package backend (atomic replacement, ErrNotFound, ErrBadName,
// List by prefix, concurrent use, honouring a cancelled context), and
// Bench measures Put and Get of 4 MiB objects.
//
// Every backend (file, S3, wrappers such as faulty) calls Run from its own
// tests:
//
//	func TestConformance(t *testing.T) {
//		backendtest.Run(t, func(t *testing.T) backend.Backend {
//			b, err := file.New(t.TempDir())
//			if err != nil {
//				t.Fatal(err)
//			}
//			return b
//		})
//	}
//
// It is an ordinary package importing "testing", not a _test file, so that
// the tests of other packages can import it. Run the suite with -race: the
// concurrency check is only meaningful under the race detector.
package backendtest
