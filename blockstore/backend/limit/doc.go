// Package limit holds the backend wrappers that bound how hard a backend is
// used: Concurrency (at most N reads and M writes in flight) and Bandwidth
// (bytes per second of object bodies sent and received). Any backend can
// be wrapped; package stack puts them in their place around the retry
// wrapper.
//
// Concurrency counts Get, Stat and List (each page of a paged listing) as
// reads, Put, Delete and DeleteBatch as writes. It offers batch deletes
// and paged listings itself when the wrapped backend has them, so that
// they are counted too, and hides them otherwise (backend.Hider). It never
// holds a slot while the caller's List function runs, which may make
// requests of its own. Bandwidth paces Put before it is made and Get after
// its body came; calls without bodies pass through it.
//
// The wrappers change no result: what the wrapped backend returns is
// returned, and a context that ends while a request waits for its turn
// ends it with an error wrapping ctx.Err().
package limit
