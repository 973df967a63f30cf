// Package clock is where backy's library code reads the time: a Clock
// (Now, Since) that every engine whose behaviour depends on the time takes
// in its Options (nil means System), the System clock the commands pass,
// and Fake, a settable clock for tests.
//
// Library code never calls time.Now, time.Since or time.Until: the test in
// internal/archtest fails the build on any such call outside cmd/ and this
// package. It reads the injected Clock instead, so that a test can put an
// engine on any day (a daylight-saving change, the end of a retention
// period, the second a record is stamped) and a scheduler can run engines
// on its own clock.
//
// A Clock tells the time; it does not wait. Waits (backoff, pacing, poll
// intervals) stay real-time timers, and an I/O deadline, which the runtime
// measures against the real clock, comes from Deadline, never from a
// Clock, so that a Fake clock never moves one.
//
// The package is a leaf: it imports nothing of backy and must never keep
// global state beyond the stateless System.
package clock
