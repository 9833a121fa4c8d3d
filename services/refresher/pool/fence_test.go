package pool_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
	"github.com/tokenbus/tokenbus/services/refresher/pool"
	"github.com/tokenbus/tokenbus/services/refresher/provider/mpay"
)

// termCall is a gate's admission under a fixed term (leader.Call's shape).
type termCall struct {
	ctx  context.Context
	term uint64
}

func (c termCall) Context() context.Context { return c.ctx }
func (c termCall) Called()                  {}
func (c termCall) Done()                    {}
func (c termCall) Term() uint64             { return c.term }
func (c termCall) Held() bool               { return true }

// gateOf admits every call under term: a replica that believes it leads.
func gateOf(term uint64) func(context.Context) (pool.Call, error) {
	return func(ctx context.Context) (pool.Call, error) { return termCall{ctx: ctx, term: term}, nil }
}

// heldProvider holds every token request after the first free ones until
// release is closed.
type heldProvider struct {
	refresher.Provider
	free    atomic.Int64
	held    chan struct{} // receives when a request is held
	release chan struct{}
}

func (p *heldProvider) Token(ctx context.Context) (refresher.Token, error) {
	if p.free.Add(-1) < 0 {
		p.held <- struct{}{}
		<-p.release
	}
	return p.Provider.Token(ctx)
}

// runFiller runs f until the test ends.
func runFiller(t *testing.T, f *pool.Filler) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = f.Run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })
}

// openPool opens provider "mpay"'s pool of size on nc.
func (e *env) openPool(t *testing.T, nc *nats.Conn, size int) *pool.Pool {
	t.Helper()
	store, err := pool.Open(context.Background(), nc, "tokens", 1)
	if err != nil {
		t.Fatal(err)
	}
	p, err := store.Pool(context.Background(), pool.Config{Name: "mpay", Kind: "mpay", Size: size, Logger: e.logs.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestDeposedFillerCannotPublish (issue 17, item 8): a filler whose term
// has been superseded — a deposed leader whose provider call was in flight
// when a new leader began filling — cannot add its token to the pool: the
// server refuses the publish (it names the fence record the new leader's
// filler replaced), and the token is counted as discarded (lease_lost).
func TestDeposedFillerCannotPublish(t *testing.T) {
	const life, size = time.Minute, 2
	e := newEnv(t, life)
	prov := mpay.New(mpay.Config{BaseURL: e.url, Username: "user", Password: refresher.Secret(password), Lifetime: life})
	held := &heldProvider{Provider: prov, held: make(chan struct{}, 1), release: make(chan struct{})}
	held.free.Store(size)
	var discarded sync.Map
	count := func(reason string) {
		n, _ := discarded.LoadOrStore(reason, new(atomic.Int64))
		n.(*atomic.Int64).Add(1)
	}
	// The old leader (term 1) fills the pool, then one claim sets it
	// minting a replacement, which the provider holds.
	old := e.openPool(t, e.nc, size)
	runFiller(t, pool.NewFiller(old, pool.FillerConfig{Provider: held, Backoff: fastBackoff, Gate: gateOf(1), Discarded: count, Logger: e.logs.Logger()}))
	waitReady(t, old, size)
	if _, err := old.Get(context.Background()); err != nil {
		t.Fatal(err)
	}
	<-held.held
	// A new leader (term 2), on its own connection, refills the pool.
	nc2 := testutil.Connect(t, e.ns)
	fresh := e.openPool(t, nc2, size)
	runFiller(t, pool.NewFiller(fresh, pool.FillerConfig{Provider: prov, Backoff: fastBackoff, Gate: gateOf(2), Logger: e.logs.Logger()}))
	waitReady(t, fresh, size)
	// The old leader's call ends: its token is refused, not published.
	close(held.release)
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if n, ok := discarded.Load("lease_lost"); !ok || n.(*atomic.Int64).Load() < 1 {
			return errors.New("the deposed filler's token was not discarded")
		}
		return nil
	})
	if n, err := fresh.Ready(context.Background()); err != nil || n != size {
		t.Fatalf("ready %d (%v), want %d: the deposed filler published", n, err, size)
	}
	if n, _ := discarded.Load("publish_failed"); n != nil {
		t.Fatalf("%d tokens discarded as publish_failed", n.(*atomic.Int64).Load())
	}
}
