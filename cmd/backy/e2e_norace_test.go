//go:build !race

package main

// e2eRace reports whether the test binary is built with the race detector;
// the end-to-end tests then build backy with -race too.
const e2eRace = false
