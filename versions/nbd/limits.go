package nbd

import (
	"errors"
	"net"
	"sync"
	"time"

	"github.com/backy/backy/internal/clock"
)

// Limits on connections, so that idle or hostile clients cannot lock
// others out:
//
//   - sessions (connections past the handshake, with an export open) are
//     at most Options.MaxConns; connections still in the handshake do not
//     count against them but against Options.MaxHandshakes;
//   - one client (remote IP address) has at most Options.MaxConnsPerClient
//     connections, handshaking or not;
//   - a handshake lasts at most Options.HandshakeTimeout.
//
// A new connection is refused at accept (closed) only when the sessions,
// or its client's sessions, are all taken. When handshake slots run out it
// takes the slot of the oldest handshaking connection of its own client
// (at the per-client cap), or of the client holding the most handshake
// slots: a flood of idle sockets from one address closes its own sockets,
// not those of other clients, and a legitimate client of the same host
// (all loopback clients share 127.0.0.1) still gets in.

// errEvicted is the close reason of a connection closed in its handshake
// to make room for a newer one.
var errEvicted = errors.New("nbd: closed in the handshake to make room for a newer connection")

// connPhase is where a connection is, for the tracker.
type connPhase uint8

const (
	phaseNew connPhase = iota // not admitted yet
	phaseHandshake
	phaseSession
	phaseGone // evicted or ended: counted nowhere
)

// tracker counts connections per phase and per client.
type tracker struct {
	maxSessions, maxHandshakes, maxPerClient int

	mu         sync.Mutex
	sessions   int
	handshakes []*conn // in the handshake, oldest first
	clients    map[string]*clientCount
}

type clientCount struct {
	conns      int // handshaking or in a session
	handshakes int
	sessions   int
}

func newTracker(o Options) *tracker {
	return &tracker{maxSessions: o.MaxConns, maxHandshakes: o.MaxHandshakes, maxPerClient: o.MaxConnsPerClient,
		clients: map[string]*clientCount{}}
}

// clientKey is what a client's limits count against: the remote IP
// address without the port, or the whole address for other transports.
func clientKey(a net.Addr) string {
	switch a := a.(type) {
	case nil:
		return ""
	case *net.TCPAddr:
		return a.IP.String()
	}
	return a.String()
}

// admit registers c, a new connection, in the handshake phase. It returns
// the connections to evict (the caller closes them) to make room, or, if
// c is refused, why.
func (t *tracker) admit(c *conn) (evict []*conn, refused string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	cl := t.clients[c.key]
	if cl == nil {
		cl = &clientCount{}
	}
	switch {
	case t.sessions >= t.maxSessions:
		return nil, "too many sessions"
	case cl.sessions >= t.maxPerClient:
		return nil, "too many sessions from this client"
	}
	if cl.conns >= t.maxPerClient {
		if h := t.evictLocked(c.key); h != nil {
			evict = append(evict, h)
		}
	}
	if len(t.handshakes) >= t.maxHandshakes {
		if h := t.evictLocked(t.busiestLocked()); h != nil {
			evict = append(evict, h)
		}
	}
	t.clients[c.key] = cl
	cl.conns++
	cl.handshakes++
	c.phase = phaseHandshake
	t.handshakes = append(t.handshakes, c)
	return evict, ""
}

// busiestLocked returns the client holding the most handshake slots (the
// one whose connection is oldest among equals).
func (t *tracker) busiestLocked() string {
	best, n := "", -1
	for _, h := range t.handshakes {
		if k := t.clients[h.key].handshakes; k > n {
			best, n = h.key, k
		}
	}
	return best
}

// evictLocked takes the oldest handshaking connection of client key out
// of the counts and returns it (nil if the client has none; the callers
// make sure it has).
func (t *tracker) evictLocked(key string) *conn {
	for i, h := range t.handshakes {
		if h.key == key {
			t.handshakes = append(t.handshakes[:i], t.handshakes[i+1:]...)
			t.forgetLocked(h, phaseHandshake)
			h.evicted.Store(true)
			return h
		}
	}
	return nil
}

// forgetLocked drops c, which was in phase, from its client's counts.
func (t *tracker) forgetLocked(c *conn, phase connPhase) {
	cl := t.clients[c.key]
	cl.conns--
	if phase == phaseHandshake {
		cl.handshakes--
	} else {
		cl.sessions--
		t.sessions--
	}
	if cl.conns == 0 {
		delete(t.clients, c.key)
	}
	c.phase = phaseGone
}

// establish moves c from the handshake to a session. It fails (with why)
// when the sessions are all taken, or c was evicted meanwhile.
func (t *tracker) establish(c *conn) (refused string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case c.phase == phaseNew:
		return "connection not admitted"
	case c.phase != phaseHandshake:
		return "closed to make room for a newer connection"
	case t.sessions >= t.maxSessions:
		return "too many sessions"
	case t.clients[c.key].sessions >= t.maxPerClient:
		return "too many sessions from this client"
	}
	t.removeHandshakeLocked(c)
	cl := t.clients[c.key]
	cl.handshakes--
	cl.sessions++
	t.sessions++
	c.phase = phaseSession
	return ""
}

func (t *tracker) removeHandshakeLocked(c *conn) {
	for i, h := range t.handshakes {
		if h == c {
			t.handshakes = append(t.handshakes[:i], t.handshakes[i+1:]...)
			return
		}
	}
}

// done drops c, which ended, from the counts (unless it was evicted).
func (t *tracker) done(c *conn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch c.phase {
	case phaseHandshake:
		t.removeHandshakeLocked(c)
		t.forgetLocked(c, phaseHandshake)
	case phaseSession:
		t.forgetLocked(c, phaseSession)
	}
}

// counts returns the number of sessions and of handshaking connections
// (tests).
func (t *tracker) counts() (sessions, handshakes int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.sessions, len(t.handshakes)
}

// warnLimiter lets at most one warning per client through per interval,
// counting the ones it holds back, so that a client cannot flood the log
// (a refused request, a protocol error, a refused connection each would
// otherwise log a line).
type warnLimiter struct {
	every time.Duration
	now   func() time.Time

	mu        sync.Mutex
	m         map[string]*warnState
	lastPrune time.Time
}

type warnState struct {
	last       time.Time // when the last warning was let through
	suppressed int       // held back since
}

// maxWarnClients bounds the clients the limiter remembers; beyond it, new
// clients share one entry.
const maxWarnClients = 4096

// overflowKey is the shared entry of the clients beyond maxWarnClients.
const overflowKey = "(other clients)"

func newWarnLimiter(every time.Duration) *warnLimiter {
	return &warnLimiter{every: every, now: clock.System.Now, m: map[string]*warnState{}}
}

// allow reports whether a warning about client key may be logged now and,
// if so, how many were held back since the last one.
func (l *warnLimiter) allow(key string) (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	w := l.m[key]
	if w == nil {
		if len(l.m) >= maxWarnClients && now.Sub(l.lastPrune) >= l.every {
			// At most once per interval: nothing more expires sooner.
			l.lastPrune = now
			l.pruneLocked(now)
		}
		if len(l.m) >= maxWarnClients {
			key = overflowKey
			w = l.m[key]
		}
		if w == nil {
			w = &warnState{}
			l.m[key] = w
			w.last = now
			return true, 0
		}
	}
	if now.Sub(w.last) < l.every {
		w.suppressed++
		return false, 0
	}
	n := w.suppressed
	w.last, w.suppressed = now, 0
	return true, n
}

// due returns and resets the count held back for key if its interval has
// passed (a summary line may be logged), else 0.
func (l *warnLimiter) due(key string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	w := l.m[key]
	now := l.now()
	if w == nil || w.suppressed == 0 || now.Sub(w.last) < l.every {
		return 0
	}
	n := w.suppressed
	w.last, w.suppressed = now, 0
	return n
}

// drain returns every count held back, and forgets them.
func (l *warnLimiter) drain() map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string]int{}
	for k, w := range l.m {
		if w.suppressed > 0 {
			out[k] = w.suppressed
		}
	}
	l.m = map[string]*warnState{}
	return out
}

// pruneLocked forgets the clients with nothing held back whose interval
// has passed.
func (l *warnLimiter) pruneLocked(now time.Time) {
	for k, w := range l.m {
		if w.suppressed == 0 && now.Sub(w.last) >= l.every {
			delete(l.m, k)
		}
	}
}
