package leader

import (
	"context"
	"fmt"
	"net/http"
	"runtime"
	"sync"
	"time"

	"github.com/tokenbus/tokenbus/services/refresher"
)

// Gate is the one way to a provider call. Every call — refresh loops, pool
// fillers, forced refreshes, runtime providers — enters through it, and it
//
//   - admits a call only while this replica holds the lease with time left
//     (at least half the slack between renew_deadline and retry_period: a
//     holder whose renewals have been failing for a while starts nothing);
//   - admits at most one call per credential at a time, and keeps the
//     credential taken until the call's token is published or given up, so a
//     replaced loop's call and its successor's never overlap;
//   - bounds the calls in flight at once (fetch_concurrency);
//   - runs each call under the term's context, not the loop's: a clean stop
//     lets the call finish and its token be published, a lost lease cancels
//     it;
//   - tracks the calls in flight, so that the end of a term waits for them
//     before the lease is released.
//
// A Gate belongs to one Leader (Leader.Gate). Its methods are safe for
// concurrent use.
type Gate struct {
	lease   *Lease
	minLeft time.Duration
	slots   chan struct{}

	mu       sync.Mutex
	term     context.Context // the term's lost context; nil while not leading
	termN    uint64          // the term's number
	creds    map[string]*credTurn
	inflight int
	idle     chan struct{} // closed when inflight drops to 0; nil while 0
}

// credTurn serialises the calls of one credential; users counts holders and
// waiters, so the entry is dropped when nobody needs it.
type credTurn struct {
	sem   chan struct{}
	users int
}

func newGate(lease *Lease, concurrency int) *Gate {
	c := lease.cfg
	return &Gate{
		lease:   lease,
		minLeft: (c.RenewDeadline - c.RetryPeriod) / 2,
		slots:   make(chan struct{}, max(concurrency, 1)),
		creds:   map[string]*credTurn{},
	}
}

// Call is one admitted provider call. Run the call and the publish of its
// token under Context; call Called when the provider has answered (it frees
// the fetch_concurrency slot) and Done once the token is published or given
// up (it lets the credential's next call in). Both are idempotent.
type Call struct {
	g      *Gate
	cred   string
	term   uint64
	ctx    context.Context
	cancel context.CancelFunc
	slot   sync.Once
	done   sync.Once
}

// Context is what the call and the publish of its token run under: it ends
// when the lease is lost (or a clean stop's bound runs out), not when the
// loop that made the call is stopped.
func (c *Call) Context() context.Context { return c.ctx }

// Held reports whether the lease the call was admitted under is still held
// with its deadline ahead: a token that cannot be published while it is
// was not lost to a lost lease.
func (c *Call) Held() bool { return c.g.lease.Valid() }

// Term is the lease term the call was admitted under (single-use token
// pools fence their publishes on it).
func (c *Call) Term() uint64 { return c.term }

// Called frees the call's fetch_concurrency slot, and hands it over at
// once: a call waiting for a slot was just made runnable on this P, and
// Gosched lets it make its request before this caller goes on to publish its
// token. Left to wait until this caller blocked, each slot sat idle for
// about 1.4 ms between provider calls on 2 busy cores (7 % of a 20 ms call;
// TestFreedSlotGoesToItsWaiterAtOnce, docs/benchmarks.md).
func (c *Call) Called() {
	freed := false
	c.slot.Do(func() { <-c.g.slots; freed = true })
	if freed {
		runtime.Gosched() // outside the Once: a concurrent Done does not wait for it
	}
}

// Done ends the call: its token is published, or given up.
func (c *Call) Done() {
	c.done.Do(func() {
		c.Called()
		c.cancel()
		c.g.leave(c.cred)
		c.g.mu.Lock()
		c.g.inflight--
		if c.g.inflight == 0 && c.g.idle != nil {
			close(c.g.idle)
			c.g.idle = nil
		}
		c.g.mu.Unlock()
	})
}

// Enter waits for credential's turn and a fetch slot (or for ctx to end),
// then admits the call if this replica holds the lease with time left. It
// returns an error wrapping refresher.ErrNotAllowed if it does not, or ctx's
// error. The call's context keeps ctx's values (trace spans) but not its
// cancellation.
func (g *Gate) Enter(ctx context.Context, credential string) (*Call, error) {
	turn := g.join(credential)
	select {
	case turn.sem <- struct{}{}:
	case <-ctx.Done():
		g.drop(credential)
		return nil, ctx.Err()
	}
	select {
	case g.slots <- struct{}{}:
	case <-ctx.Done():
		g.leave(credential)
		return nil, ctx.Err()
	}
	g.mu.Lock()
	term, termN := g.term, g.termN
	ok := term != nil && term.Err() == nil && g.lease.Valid() && g.lease.Left() >= g.minLeft
	if ok {
		g.inflight++
	}
	g.mu.Unlock()
	if !ok {
		<-g.slots
		g.leave(credential)
		return nil, errNoLease
	}
	cctx, cancel := context.WithCancel(context.WithValue(context.WithoutCancel(ctx), callKey{}, g))
	stop := context.AfterFunc(term, cancel)
	return &Call{g: g, cred: credential, term: termN, ctx: cctx, cancel: func() { stop(); cancel() }}, nil
}

// callKey marks the context of an admitted call with its gate.
type callKey struct{}

// Guard returns base (http.DefaultTransport if nil) checking, as each
// request made under an admitted call leaves, that the lease is still valid:
// the check as close to the wire as a transport can make it, so that a
// replica paused after its admission (a GC pause, SIGSTOP, a starved CPU)
// and woken past its deadline sends nothing. Requests not made under a call
// pass unchecked.
func Guard(base http.RoundTripper) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	return guard{base}
}

type guard struct{ base http.RoundTripper }

func (g guard) RoundTrip(req *http.Request) (*http.Response, error) {
	if gate, ok := req.Context().Value(callKey{}).(*Gate); ok && (!gate.lease.Valid() || req.Context().Err() != nil) {
		if req.Body != nil {
			_ = req.Body.Close()
		}
		return nil, errNoLease
	}
	return g.base.RoundTrip(req)
}

// errNoLease is the gate's refusal; it wraps refresher.ErrNotAllowed.
var errNoLease = fmt.Errorf("leader: no provider call without the lease and time left on it: %w", refresher.ErrNotAllowed)

func (g *Gate) join(credential string) *credTurn {
	g.mu.Lock()
	defer g.mu.Unlock()
	t := g.creds[credential]
	if t == nil {
		t = &credTurn{sem: make(chan struct{}, 1)}
		g.creds[credential] = t
	}
	t.users++
	return t
}

// leave gives back credential's turn and drops the caller.
func (g *Gate) leave(credential string) {
	g.mu.Lock()
	t := g.creds[credential]
	g.mu.Unlock()
	<-t.sem
	g.drop(credential)
}

func (g *Gate) drop(credential string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if t := g.creds[credential]; t != nil {
		if t.users--; t.users == 0 {
			delete(g.creds, credential)
		}
	}
}

// begin opens the gate for term, whose lease-loss context is lost.
func (g *Gate) begin(lost context.Context, term uint64) {
	g.mu.Lock()
	g.term, g.termN = lost, term
	g.mu.Unlock()
}

// end closes the gate to new calls and waits until the calls in flight are
// done, or until lost ends (they are then cancelled and give up).
func (g *Gate) end(lost context.Context) {
	g.mu.Lock()
	g.term = nil
	var idle chan struct{}
	if g.inflight > 0 {
		if g.idle == nil {
			g.idle = make(chan struct{})
		}
		idle = g.idle
	}
	g.mu.Unlock()
	if idle == nil {
		return
	}
	select {
	case <-idle:
	case <-lost.Done():
	}
}

// InFlight returns how many admitted calls are not done yet.
func (g *Gate) InFlight() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.inflight
}

// Credentials returns how many credentials have a call admitted or waiting
// (tests: the gate keeps nothing for a credential nobody uses).
func (g *Gate) Credentials() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.creds)
}
