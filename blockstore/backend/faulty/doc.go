// Package faulty wraps a backend and injects the failures that tests of
// the layers above need: errors instead of a call or after it (a Put that
// stored its object but whose acknowledgement was lost), latency, corrupt
// or truncated data, and a backend that dies after a number of Puts.
//
// Faults are scripted per method with AddFault and fire in the order they
// were added, each once unless repeated; VerifyAllFaultsFired tells a test
// that a scripted fault was never reached. Without faults the wrapper is
// transparent: it passes the backendtest conformance suite. It is safe for
// concurrent use.
//
// It implements backend.Unwrapper, so that Sync and temp cleanup of the
// wrapped backend are found through it, and backend.Hider: it hides the
// wrapped backend's batch deletes and paged listings, which would go
// around its faults. It must never let a call reach the wrapped backend
// without counting it.
package faulty
