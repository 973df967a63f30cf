// Package stack assembles a data backend's wrappers (package retry and
// package limit) in the one order they are meant to go: Wrap is the only
// place that knows it. The command line (cmd/backy's newBackend) and the S3
// backend's New call it; a daemon opening a store calls it the same way.
//
// It imports no concrete backend: the caller opens the file or S3 backend
// and hands it over. It must never add behaviour of its own (a wrapper
// belongs in a package of its own, with its conformance run).
package stack
