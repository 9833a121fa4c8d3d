package leader_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
	"github.com/tokenbus/tokenbus/services/refresher/leader"
	"github.com/tokenbus/tokenbus/services/refresher/metrics"
	"github.com/tokenbus/tokenbus/services/refresher/refresh"
)

// slowProvider issues numbered tokens; each call takes delay, and records
// whether its context was cancelled before it answered.
type slowProvider struct {
	delay time.Duration
	// deaf answers even when the caller gave up (the answer was on its way).
	deaf      bool
	calls     atomic.Int64
	inFlight  atomic.Int64
	overlap   atomic.Bool
	cancelled atomic.Int64
	mu        sync.Mutex
	issued    []string
}

func (p *slowProvider) Token(ctx context.Context) (refresher.Token, error) {
	if p.inFlight.Add(1) > 1 {
		p.overlap.Store(true)
	}
	defer p.inFlight.Add(-1)
	n := p.calls.Add(1)
	done := ctx.Done()
	if p.deaf {
		done = nil
	}
	select {
	case <-time.After(p.delay):
	case <-done:
		p.cancelled.Add(1)
		return refresher.Token{}, ctx.Err()
	}
	tok := fmt.Sprintf("tok-%d", n)
	p.mu.Lock()
	p.issued = append(p.issued, tok)
	p.mu.Unlock()
	now := time.Now()
	return refresher.Token{AccessToken: refresher.Secret(tok), TokenType: "Bearer", IssuedAt: now, ExpiresAt: now.Add(time.Hour)}, nil
}

func (p *slowProvider) tokens() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.issued...)
}

func gated(l *leader.Leader, cred string) func(context.Context) (refresh.Call, error) {
	return func(ctx context.Context) (refresh.Call, error) {
		c, err := l.Gate().Enter(ctx, cred)
		if err != nil {
			return nil, err
		}
		return c, nil
	}
}

func storedToken(t *testing.T, e env, key string) string {
	t.Helper()
	en, err := e.st.KV().Get(context.Background(), key)
	if err != nil {
		return ""
	}
	var tok wire.Token
	if err := json.Unmarshal(en.Value(), &tok); err != nil {
		t.Fatal(err)
	}
	return tok.AccessToken
}

// TestCleanStopPublishesTheTokenInFlight (issue 17, item 2 and the graceful
// handover): a leader stopped while a provider call is in flight lets the
// call finish, publishes its token, and only then releases the lease; the
// standby takes over at once and does not call the provider again for the
// token just published. Before the fix the call was cancelled (the provider
// still issues that token) and the token thrown away.
func TestCleanStopPublishesTheTokenInFlight(t *testing.T) {
	e := setup(t)
	prov := &slowProvider{delay: 400 * time.Millisecond}
	var discarded atomic.Int64
	a := newLeader(t, e, "a")
	ma := refresh.NewManager(refresh.Config{Name: "p", Provider: prov, Publisher: a, Gate: gated(a, "cred"),
		Discarded: func(string) { discarded.Add(1) }, Backoff: refresher.Backoff{Initial: 20 * time.Millisecond, Max: 100 * time.Millisecond}})
	a.Set("p", ma)
	actx, stopA := context.WithCancel(context.Background())
	aDone := make(chan struct{})
	go func() { defer close(aDone); _ = a.Run(actx) }()
	// Wait for the first call to be in flight, then stop.
	testutil.CheckFor(t, 3*time.Second, 5*time.Millisecond, func() error {
		if prov.inFlight.Load() != 1 {
			return errors.New("no call in flight yet")
		}
		return nil
	})
	stopA()
	<-aDone
	if prov.cancelled.Load() != 0 {
		t.Fatal("the call in flight was cancelled by the stop")
	}
	issued := prov.tokens()
	if len(issued) != 1 {
		t.Fatalf("issued %v, want one token", issued)
	}
	if got := storedToken(t, e, "p"); got != issued[0] {
		t.Fatalf("the bucket holds %q after the stop, want the token issued in flight %q", got, issued[0])
	}
	if discarded.Load() != 0 {
		t.Fatal("a token was counted as discarded on a clean stop")
	}
	le, err := e.st.Lease().Get(context.Background(), leader.LeaseKey)
	if err != nil {
		t.Fatal(err)
	}
	var rec leader.Record
	if json.Unmarshal(le.Value(), &rec) != nil || !rec.Released {
		t.Fatalf("lease not released: %s", le.Value())
	}

	// A standby takes over at once and keeps the published token.
	b := newLeader(t, e, "b")
	mb := refresh.NewManager(refresh.Config{Name: "p", Provider: prov, Publisher: b, Gate: gated(b, "cred")})
	mb.Slot().Store(mustEntry(t, e, "p"))
	b.Set("p", mb)
	bctx, stopB := context.WithCancel(context.Background())
	bDone := make(chan struct{})
	go func() { defer close(bDone); _ = b.Run(bctx) }()
	defer func() { stopB(); <-bDone }()
	testutil.CheckFor(t, time.Second, 5*time.Millisecond, func() error {
		if !b.Valid() {
			return errors.New("standby not leading")
		}
		return nil
	})
	time.Sleep(200 * time.Millisecond)
	if n := prov.calls.Load(); n != 1 {
		t.Fatalf("%d provider calls, want 1: the new leader replaced a fresh token", n)
	}
}

func mustEntry(t *testing.T, e env, key string) *refresh.Entry {
	t.Helper()
	en, err := e.st.KV().Get(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	var tok wire.Token
	if err := json.Unmarshal(en.Value(), &tok); err != nil {
		t.Fatal(err)
	}
	ent, err := refresh.NewEntry(tok, en.Revision())
	if err != nil {
		t.Fatal(err)
	}
	return ent
}

// TestReplacedLoopFinishesItsCall (issue 17, items 2 and 7): Set replacing
// a loop whose call is in flight waits for the call and its publish; the new
// loop's first call starts only after (one call per credential), the token
// the old loop published is not taken for a foreign write, and Accept is not
// stalled meanwhile (item 12).
func TestReplacedLoopFinishesItsCall(t *testing.T) {
	e := setup(t)
	prov := &slowProvider{delay: 400 * time.Millisecond}
	var foreign atomic.Int64
	l, err := leader.New(leader.Config{
		Lease:     leader.LeaseConfig{KV: leader.LeaseBucket(e.st.Lease()), Holder: "a", TTL: ttl, RetryPeriod: 100 * time.Millisecond, AcquireDelay: 10 * time.Millisecond},
		JetStream: e.st.JetStream(), Tokens: e.st.KV(), Conn: e.nc,
		OnForeignWrite: func(p string, _ uint64) {
			if p == "p" {
				foreign.Add(1)
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	old := refresh.NewManager(refresh.Config{Name: "p", Provider: prov, Publisher: l, Gate: gated(l, "cred")})
	l.Set("p", old)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = l.Run(ctx) }()
	defer func() { cancel(); <-done }()
	// The bucket watch, as cmd/refresher runs it, asks Accept about every write.
	w, err := e.st.KV().Watch(ctx, "p", jetstream.UpdatesOnly())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = w.Stop() }()
	go func() {
		for en := range w.Updates() {
			if en == nil || en.Operation() != jetstream.KeyValuePut {
				continue
			}
			var tok wire.Token
			if json.Unmarshal(en.Value(), &tok) == nil {
				l.Accept(ctx, tok, en.Revision())
			}
		}
	}()
	testutil.CheckFor(t, 3*time.Second, 5*time.Millisecond, func() error {
		if prov.inFlight.Load() != 1 {
			return errors.New("no call in flight yet")
		}
		return nil
	})
	// The replacement is stale (rotated credentials): it fetches at once,
	// after the old call ended.
	repl := refresh.NewManager(refresh.Config{Name: "p", Provider: prov, Publisher: l, Gate: gated(l, "cred"), StaleBefore: time.Now().Add(time.Hour)})
	setDone := make(chan struct{})
	go func() { defer close(setDone); l.Set("p", repl) }()
	// Accept is not stalled while Set waits for the old loop.
	acceptDone := make(chan struct{})
	go func() {
		defer close(acceptDone)
		l.Accept(ctx, wire.Token{Provider: "p", AccessToken: "x"}, 0) // old news: no write
	}()
	select {
	case <-acceptDone:
	case <-time.After(200 * time.Millisecond):
		t.Fatal("Accept stalled while Set waited for the replaced loop")
	}
	<-setDone
	first := prov.tokens()
	if len(first) != 1 || prov.cancelled.Load() != 0 {
		t.Fatalf("after Set: issued %v, %d cancelled; want the old call finished", first, prov.cancelled.Load())
	}
	testutil.CheckFor(t, 3*time.Second, 10*time.Millisecond, func() error {
		if n := len(prov.tokens()); n != 2 {
			return fmt.Errorf("%d tokens issued, want 2", n)
		}
		if got := storedToken(t, e, "p"); got != "tok-2" {
			return fmt.Errorf("stored %q, want tok-2", got)
		}
		return nil
	})
	time.Sleep(100 * time.Millisecond)
	if prov.overlap.Load() {
		t.Fatal("two calls for one credential overlapped")
	}
	if got := storedToken(t, e, "p"); got != "tok-2" || foreign.Load() != 0 {
		t.Fatalf("stored %q with %d foreign writes counted: the old loop's token was taken for a foreign one", got, foreign.Load())
	}
}

// TestGate: one call per credential, fetch_concurrency in all, none without
// the lease; the gate keeps nothing for credentials nobody uses (item 13).
func TestGate(t *testing.T) {
	e := setup(t)
	l := newGateLeader(t, e, 2)
	g := l.Gate()
	if _, err := g.Enter(context.Background(), "x"); !errors.Is(err, refresher.ErrNotAllowed) {
		t.Fatalf("Enter without the lease: %v, want ErrNotAllowed", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = l.Run(ctx) }()
	testutil.CheckFor(t, 3*time.Second, 5*time.Millisecond, func() error {
		if _, err := g.Enter(context.Background(), "probe"); err != nil {
			return err
		}
		return nil
	})
	// The probe above is still in flight: end it via a fresh Enter's turn.
	short, cancelShort := context.WithTimeout(context.Background(), 50*time.Millisecond)
	if _, err := g.Enter(short, "probe"); err == nil {
		t.Fatal("a second call for one credential was admitted")
	}
	cancelShort()
	c1, err := g.Enter(context.Background(), "x")
	if err != nil {
		t.Fatal(err)
	}
	// Two slots: probe and x. y waits for a slot.
	short, cancelShort = context.WithTimeout(context.Background(), 50*time.Millisecond)
	if _, err := g.Enter(short, "y"); err == nil {
		t.Fatal("admitted past fetch_concurrency")
	}
	cancelShort()
	c1.Called() // frees x's slot, keeps its turn
	cy, err := g.Enter(context.Background(), "y")
	if err != nil {
		t.Fatal(err)
	}
	short, cancelShort = context.WithTimeout(context.Background(), 50*time.Millisecond)
	if _, err := g.Enter(short, "x"); err == nil {
		t.Fatal("x admitted again before its call was done")
	}
	cancelShort()
	c1.Done()
	cy.Done()
	if n := g.InFlight(); n != 1 {
		t.Fatalf("%d in flight, want 1 (the probe)", n)
	}
	// The stop waits for the probe until the drain bound cancels it.
	cancel()
	<-done
	if g.Credentials() != 1 {
		t.Fatalf("%d credentials kept, want the probe's only", g.Credentials())
	}
}

// newGateLeader returns a leader (not yet running) on e's buckets with a
// short lease and fetch_concurrency n, for tests of its gate.
func newGateLeader(t *testing.T, e env, n int) *leader.Leader {
	t.Helper()
	l, err := leader.New(leader.Config{
		Lease: leader.LeaseConfig{KV: leader.LeaseBucket(e.st.Lease()), Holder: "a", TTL: ttl, RetryPeriod: 100 * time.Millisecond, AcquireDelay: 10 * time.Millisecond,
			DrainTimeout: 300 * time.Millisecond},
		JetStream: e.st.JetStream(), Tokens: e.st.KV(), Conn: e.nc, FetchConcurrency: n,
	})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestLeaseLossCountsTheToken: a token fetched by a replica that loses its
// lease before the publish cannot be written; it is counted (the one case
// where a token is thrown away), never silently dropped.
func TestLeaseLossCountsTheToken(t *testing.T) {
	e := setup(t)
	prov := &slowProvider{delay: 500 * time.Millisecond, deaf: true}
	var reasons sync.Map
	l := newLeader(t, e, "a")
	m := refresh.NewManager(refresh.Config{Name: "p", Provider: prov, Publisher: l, Gate: gated(l, "cred"),
		Discarded: func(r string) { reasons.Store(r, true) }})
	l.Set("p", m)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = l.Run(ctx) }()
	defer func() { cancel(); <-done }()
	testutil.CheckFor(t, 3*time.Second, 5*time.Millisecond, func() error {
		if prov.inFlight.Load() != 1 {
			return errors.New("no call in flight yet")
		}
		return nil
	})
	// Someone overwrites the lease: the next renewal steps down, before
	// the call answers.
	if _, err := e.st.Lease().Put(context.Background(), leader.LeaseKey, []byte(`{"holder":"evil","term":999999}`)); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 3*time.Second, 10*time.Millisecond, func() error {
		if len(prov.tokens()) != 1 {
			return errors.New("the call has not answered")
		}
		if _, ok := reasons.Load(metrics.DiscardLeaseLost); !ok {
			return errors.New("the token was not counted as discarded for a lost lease")
		}
		return nil
	})
}
