package stack

import (
	"github.com/backy/backy/blockstore/backend"
	"github.com/backy/backy/blockstore/backend/limit"
	"github.com/backy/backy/blockstore/backend/retry"
	"github.com/backy/backy/internal/clock"
)

// Options say which wrappers go around a backend. The zero value adds none.
type Options struct {
	// Retry, if set, retries transient failures with this policy.
	Retry *retry.Options
	// SimultaneousReads and SimultaneousWrites bound the requests in
	// flight (limit.Concurrency); 0 is unlimited.
	SimultaneousReads, SimultaneousWrites int
	// BandwidthRead and BandwidthWrite bound the bytes per second of
	// object bodies (limit.Bandwidth); 0 is unlimited.
	BandwidthRead, BandwidthWrite int64
	// Clock times the retry budget and paces the bandwidth limits (the
	// waits are real-time timers); clock.System when nil. It is given to
	// Retry when that has none.
	Clock clock.Clock
}

// Wrap puts the wrappers o asks for around be, in this order from the
// outside in:
//
//	concurrency limit → retry → bandwidth limit → be
//
// A request holds its slot through all its attempts and backoffs (a
// server in trouble sees no more requests than the limit, waiting ones
// included), and every attempt pays for its bytes (a retried Put sends
// them again). Without any wrapper be itself is returned.
func Wrap(be backend.Backend, o Options) backend.Backend {
	if o.BandwidthRead > 0 || o.BandwidthWrite > 0 {
		be = limit.Bandwidth(be, o.BandwidthRead, o.BandwidthWrite, o.Clock)
	}
	if o.Retry != nil {
		r := *o.Retry
		if r.Clock == nil {
			r.Clock = o.Clock
		}
		be = retry.New(be, r)
	}
	if o.SimultaneousReads > 0 || o.SimultaneousWrites > 0 {
		be = limit.Concurrency(be, o.SimultaneousReads, o.SimultaneousWrites)
	}
	return be
}
