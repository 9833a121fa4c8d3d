package pool_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokenbus/tokenbus/libs/simulator"
	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
	"github.com/tokenbus/tokenbus/services/refresher/pool"
	"github.com/tokenbus/tokenbus/services/refresher/provider/mpay"
)

// infoRequests counts the consumer-info requests for provider "mpay"'s
// pool (the filler's counts), as the server sees them.
func infoRequests(t *testing.T, e *env) *atomic.Int64 {
	t.Helper()
	var n atomic.Int64
	nc := testutil.Connect(t, e.ns)
	sub, err := nc.Subscribe("$JS.API.CONSUMER.INFO."+pool.StreamPrefix+"tokens.pool-mpay", func(*nats.Msg) { n.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return &n
}

// TestFillerCountsRarelyAndRefillsPromptly (issue 17, item 13): an idle
// filler asks JetStream for the pool's count only when its first token
// leaves the pool by its TTL and at most every Poll (10 s) otherwise — not
// every second — while claims still get the pool refilled at once, and
// tokens dropped by their TTL are replaced as they go.
func TestFillerCountsRarelyAndRefillsPromptly(t *testing.T) {
	// 6-second tokens with a 1-second margin stay 4–5 s in the pool.
	const life, size = 6 * time.Second, 3
	e := newEnv(t, life)
	p := withMargin(t, e, size, time.Second)
	counts := infoRequests(t, e)
	prov := mpay.New(mpay.Config{BaseURL: e.url, Username: "user", Password: refresher.Secret(password), Lifetime: life})
	runFiller(t, pool.NewFiller(p, pool.FillerConfig{Provider: prov, Backoff: fastBackoff, Logger: e.logs.Logger()}))
	waitReady(t, p, size)

	// Claims are refilled at once (the claim wakes the filler).
	start := time.Now()
	for range 2 {
		if _, err := p.Get(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	testutil.CheckFor(t, 2*time.Second, 10*time.Millisecond, func() error {
		if n := e.sim.Stats(simulator.MPay).TokensIssued; n < size+2 {
			return fmt.Errorf("%d minted", n)
		}
		return nil
	})
	if took := time.Since(start); took > time.Second {
		t.Fatalf("refilled %v after two claims", took)
	}

	// Idle for 3 s before the first tokens expire: at most one count (a
	// filler counting every second makes three or more).
	time.Sleep(time.Until(start.Add(300 * time.Millisecond)))
	before := counts.Load()
	time.Sleep(3 * time.Second)
	if n := counts.Load() - before; n > 1 {
		t.Fatalf("%d consumer-info requests in 3 s of an idle pool", n)
	}
	// The first tokens leave the pool by their TTL (at most 5 s after
	// they were minted) and are replaced within a second or so, long before
	// a 10 s poll would.
	testutil.CheckFor(t, 8*time.Second, 20*time.Millisecond, func() error {
		if n := e.sim.Stats(simulator.MPay).TokensIssued; n < 2*size+2 {
			return fmt.Errorf("%d minted", n)
		}
		return nil
	})
	if took := time.Since(start); took > 7500*time.Millisecond {
		t.Fatalf("expired tokens replaced %v after they were minted", took)
	}
	t.Logf("consumer-info requests in %v: %d", time.Since(start), counts.Load())
}

// failingSignals fails the filler's first fails subscriptions.
type failingSignals struct {
	pool.Signals
	fails   atomic.Int64
	listens atomic.Int64
}

func (s *failingSignals) Listen(fn func(answer func([]byte))) (func(), error) {
	if s.listens.Add(1) <= s.fails.Load() {
		return nil, errors.New("nats: connection draining")
	}
	return s.Signals.Listen(fn)
}

// TestFailedSubscriptionIsRetried (issue 17, item 10): a filler whose
// subscription for claimers fails keeps filling and listens again shortly,
// instead of giving up for the whole term: a claimer finding the pool
// empty is then answered that a refill is coming.
func TestFailedSubscriptionIsRetried(t *testing.T) {
	const life, size = time.Minute, 1
	e := newEnv(t, life)
	p := e.openPool(t, e.nc, size)
	sig := &failingSignals{}
	sig.fails.Store(2)
	pool.WrapSignals(p, func(s pool.Signals) pool.Signals { sig.Signals = s; return sig })
	prov := mpay.New(mpay.Config{BaseURL: e.url, Username: "user", Password: refresher.Secret(password), Lifetime: life})
	f := pool.NewFiller(p, pool.FillerConfig{Provider: prov, Backoff: fastBackoff, Logger: e.logs.Logger()})
	pool.SetListenRetry(f, 50*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	var (
		wg     sync.WaitGroup
		runErr atomic.Pointer[error]
	)
	wg.Go(func() {
		err := f.Run(ctx)
		runErr.Store(&err)
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
	waitReady(t, p, size)
	testutil.CheckFor(t, 2*time.Second, 10*time.Millisecond, func() error {
		if n := sig.listens.Load(); n < 3 {
			return fmt.Errorf("%d subscriptions tried (filler returned: %v)", n, runErr.Load())
		}
		return nil
	})
	// Claims beyond the pool's size are served by refills, which only a
	// listening filler is asked for.
	for i := range 3 {
		if _, err := p.Get(context.Background()); err != nil {
			t.Fatalf("claim %d: %v (filler returned: %v)", i, err, runErr.Load())
		}
	}
	if n := sig.listens.Load(); n != 3 {
		t.Fatalf("%d subscriptions, want 3 (two failed)", n)
	}
}

// withMargin opens provider "mpay"'s pool of size with margin.
func withMargin(t *testing.T, e *env, size int, margin time.Duration) *pool.Pool {
	t.Helper()
	store, err := pool.Open(context.Background(), e.nc, "tokens", 1)
	if err != nil {
		t.Fatal(err)
	}
	p, err := store.Pool(context.Background(), pool.Config{Name: "mpay", Kind: "mpay", Size: size, Margin: margin, Logger: e.logs.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	return p
}
