package leader_test

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
	"github.com/tokenbus/tokenbus/services/refresher/leader"
	"github.com/tokenbus/tokenbus/services/refresher/refresh"
)

// Failing-first tests of issue 17's close-read items 6, 10 and 12 (item 7
// is in registry's runtime_late_test.go).

// runLeader runs l until the test ends and waits until it leads.
func runLeader(t *testing.T, l *leader.Leader) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = l.Run(ctx) }()
	stop = func() { cancel(); <-done }
	t.Cleanup(stop)
	testutil.CheckFor(t, 3*time.Second, 5*time.Millisecond, func() error {
		if !l.Valid() {
			return errors.New("not leading yet")
		}
		return nil
	})
	return stop
}

func leaderConfig(e env, holder string) leader.Config {
	return leader.Config{
		Lease:     leader.LeaseConfig{KV: leader.LeaseBucket(e.st.Lease()), Holder: holder, TTL: ttl, RetryPeriod: 100 * time.Millisecond, AcquireDelay: 10 * time.Millisecond},
		JetStream: e.st.JetStream(), Tokens: e.st.KV(), Conn: e.nc,
	}
}

// Item 6: a replica that wins the lease before its credentials bucket is
// loaded does not delete the tokens of runtime providers it has not loaded
// yet: the sweep waits for Loaded, and then spares the providers loaded
// meanwhile.
func TestSweepWaitsForLoaded(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	for _, k := range []string{"runtime-p", "gone"} {
		b, _ := jsonToken(k)
		if _, err := e.st.KV().Put(ctx, k, b); err != nil {
			t.Fatal(err)
		}
	}
	loaded := make(chan struct{})
	cfg := leaderConfig(e, "a")
	cfg.Loaded = loaded
	l, err := leader.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var concurrent atomic.Int64
	var overlap atomic.Bool
	p := &probe{concurrent: &concurrent, overlap: &overlap}
	l.Set("config-p", p)
	runLeader(t, l)
	testutil.CheckFor(t, 3*time.Second, 5*time.Millisecond, func() error {
		if p.runs.Load() != 1 {
			return errors.New("the term's loops have not started")
		}
		return nil
	})
	// The term has begun (its loops run): the sweep, were it not waiting,
	// would delete both keys within milliseconds.
	for deadline := time.Now().Add(500 * time.Millisecond); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if _, err := e.st.KV().Get(ctx, "runtime-p"); err != nil {
			t.Fatalf("the token of a runtime provider not loaded yet was deleted before the credentials were loaded: %v", err)
		}
	}
	// The credentials bucket is read: runtime-p is a provider, gone is not.
	l.Set("runtime-p", &probe{concurrent: new(atomic.Int64), overlap: new(atomic.Bool)})
	close(loaded)
	testutil.CheckFor(t, 3*time.Second, 5*time.Millisecond, func() error {
		if _, err := e.st.KV().Get(ctx, "gone"); !errors.Is(err, jetstream.ErrKeyNotFound) {
			return errors.New("the sweep did not run once loaded")
		}
		return nil
	})
	if _, err := e.st.KV().Get(ctx, "runtime-p"); err != nil {
		t.Fatalf("the sweep deleted a loaded runtime provider's token: %v", err)
	}
}

// flakyTransport fails its first failures subscriptions.
type flakyTransport struct {
	leader.Transport
	failures atomic.Int64
	tries    atomic.Int64
}

func (f *flakyTransport) QueueSubscribe(subject, queue string, h nats.MsgHandler) (leader.Subscription, error) {
	if f.tries.Add(1) <= f.failures.Load() {
		return nil, errors.New("nats: subscription refused")
	}
	return f.Transport.QueueSubscribe(subject, queue, h)
}

// natsTransportOf is leader.Transport over NATS, as the leader's default.
type natsTransportOf struct{ nc *nats.Conn }

func (n *natsTransportOf) QueueSubscribe(subject, queue string, h nats.MsgHandler) (leader.Subscription, error) {
	return n.nc.QueueSubscribe(subject, queue, h)
}

func (n *natsTransportOf) RequestMsgWithContext(ctx context.Context, m *nats.Msg) (*nats.Msg, error) {
	return n.nc.RequestMsgWithContext(ctx, m)
}

func (n *natsTransportOf) PublishMsg(m *nats.Msg) error { return n.nc.PublishMsg(m) }

// Item 10 (a): a failed forwarded-refresh subscription is tried again; it
// does not disable forwarded refreshes for the term.
func TestFailedForwardSubscriptionIsRetried(t *testing.T) {
	e := setup(t)
	tr := &flakyTransport{Transport: &natsTransportOf{nc: e.nc}}
	tr.failures.Store(2)
	cfg := leaderConfig(e, "a")
	cfg.Transport = tr
	l, err := leader.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	prov := &slowProvider{delay: 10 * time.Millisecond}
	m := refresh.NewManager(refresh.Config{Name: "p", Provider: prov, Publisher: l, Gate: gated(l, "cred")})
	l.Set("p", m)
	runLeader(t, l)
	testutil.CheckFor(t, 3*time.Second, 5*time.Millisecond, func() error {
		if _, err := m.Current(); err != nil {
			return err
		}
		return nil
	})
	cur, _ := m.Current()
	body, _ := json.Marshal(wire.RefreshRequest{InvalidToken: cur.Token.AccessToken})
	var reply *nats.Msg
	testutil.CheckFor(t, 3*time.Second, 20*time.Millisecond, func() error {
		var err error
		reply, err = e.nc.Request(leader.RefreshPrefix+"p", body, 200*time.Millisecond)
		return err
	})
	if tr.tries.Load() < 3 {
		t.Fatalf("%d subscription attempts, want the failed ones retried", tr.tries.Load())
	}
	var tok wire.Token
	if err := json.Unmarshal(reply.Data, &tok); err != nil || tok.AccessToken == "" || tok.AccessToken == cur.Token.AccessToken {
		t.Fatalf("forwarded refresh answered %s, want a new token", reply.Data)
	}
}

// streamless fails its first failures attempts to open a stream.
type streamless struct {
	jetstream.JetStream
	failures, tries atomic.Int64
}

func (s *streamless) Stream(ctx context.Context, name string) (jetstream.Stream, error) {
	if s.tries.Add(1) <= s.failures.Load() {
		return nil, errors.New("nats: context deadline exceeded")
	}
	return s.JetStream.Stream(ctx, name)
}

// Item 10 (b): a tokens stream the new leader cannot open at first does not
// leave an inherited token that no leader wrote in place for the term: the
// check is tried again and the token replaced.
func TestInheritedCheckRetriesTheStream(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	// A token put by hand while no replica led (no writer header), which
	// this replica's watch took as its copy while it stood by.
	forged := wire.Token{Provider: "p", AccessToken: "forged", TokenType: "Bearer", IssuedAt: time.Now(), ExpiresAt: time.Now().Add(time.Hour)}
	b, _ := json.Marshal(forged)
	rev, err := e.st.KV().Put(ctx, "p", b)
	if err != nil {
		t.Fatal(err)
	}
	js := &streamless{JetStream: e.st.JetStream()}
	js.failures.Store(2)
	var foreign atomic.Int64
	cfg := leaderConfig(e, "a")
	cfg.JetStream = js
	cfg.OnForeignWrite = func(string, uint64) { foreign.Add(1) }
	l, err := leader.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	prov := &slowProvider{delay: 10 * time.Millisecond}
	m := refresh.NewManager(refresh.Config{Name: "p", Provider: prov, Publisher: l, Gate: gated(l, "cred")})
	ent, err := refresh.NewEntry(forged, rev)
	if err != nil {
		t.Fatal(err)
	}
	m.Slot().Store(ent)
	l.Set("p", m)
	runLeader(t, l)
	testutil.CheckFor(t, 3*time.Second, 10*time.Millisecond, func() error {
		if got := storedToken(t, e, "p"); got == "forged" {
			return errors.New("the inherited forged token is still in the bucket")
		}
		return nil
	})
	if js.tries.Load() < 3 || foreign.Load() != 1 {
		t.Fatalf("%d stream opens, %d foreign writes counted; want the failed opens retried and the token counted once", js.tries.Load(), foreign.Load())
	}
}

// stuckLoop is a loop that, once stopped, ends only when released: a call in
// flight finishing.
type stuckLoop struct {
	started, stopping chan struct{}
	release           chan struct{}
}

func newStuckLoop() *stuckLoop {
	return &stuckLoop{started: make(chan struct{}), stopping: make(chan struct{}), release: make(chan struct{})}
}

func (s *stuckLoop) Run(ctx context.Context) error {
	close(s.started)
	<-ctx.Done()
	close(s.stopping)
	<-s.release
	return nil
}

// acceptReturns reports whether Accept, for a provider other than the one
// being stopped, returns within a bound.
func acceptReturns(l *leader.Leader) bool {
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.Accept(context.Background(), wire.Token{Provider: "other", AccessToken: "x"}, 0)
	}()
	select {
	case <-done:
		return true
	case <-time.After(300 * time.Millisecond):
		return false
	}
}

// Item 12: Set, Remove and the end of a term wait for the loops they stop
// without holding the leader's mutex: the token watch's Accept, for every
// provider, is not stalled meanwhile.
func TestStoppingLoopsDoesNotStallAccept(t *testing.T) {
	e := setup(t)
	l, err := leader.New(leaderConfig(e, "a"))
	if err != nil {
		t.Fatal(err)
	}
	l.Set("other", &probe{concurrent: new(atomic.Int64), overlap: new(atomic.Bool)})
	set, remove, end := newStuckLoop(), newStuckLoop(), newStuckLoop()
	l.Set("set", set)
	l.Set("remove", remove)
	l.Set("end", end)
	stop := runLeader(t, l)
	for _, s := range []*stuckLoop{set, remove, end} {
		<-s.started
	}
	for _, c := range []struct {
		what  string
		loop  *stuckLoop
		begin func() (wait func())
	}{
		{"Set", set, func() func() {
			done := make(chan struct{})
			go func() {
				defer close(done)
				l.Set("set", &probe{concurrent: new(atomic.Int64), overlap: new(atomic.Bool)})
			}()
			return func() { <-done }
		}},
		{"Remove", remove, func() func() {
			done := make(chan struct{})
			go func() { defer close(done); _ = l.Remove(context.Background(), "remove") }()
			return func() { <-done }
		}},
		{"the end of the term", end, func() func() {
			done := make(chan struct{})
			go func() { defer close(done); stop() }()
			return func() { <-done }
		}},
	} {
		t.Run(c.what, func(t *testing.T) {
			wait := c.begin()
			<-c.loop.stopping // it is waiting for the loop now
			ok := acceptReturns(l)
			close(c.loop.release)
			wait()
			if !ok {
				t.Fatalf("Accept stalled while %s waited for a loop to stop", c.what)
			}
		})
	}
}

// stuckKeeper is a stuckLoop that keeps a token (leader.Keeper).
type stuckKeeper struct{ *stuckLoop }

func (stuckKeeper) Owns(wire.Token, uint64) bool { return false }
func (stuckKeeper) Repair()                      {}

// TestHolds: a replica holds a provider — answers a token.get miss without
// reading the bucket — only while it leads, the provider's loop is a Keeper,
// and no loop it replaced is still stopping (whose last publish the bucket
// may hold and Accept would take).
func TestHolds(t *testing.T) {
	e := setup(t)
	l, err := leader.New(leaderConfig(e, "a"))
	if err != nil {
		t.Fatal(err)
	}
	first, second := stuckKeeper{newStuckLoop()}, stuckKeeper{newStuckLoop()}
	var releases sync.Once // a failing check still lets the loops end
	release := func() { releases.Do(func() { close(first.release); close(second.release) }) }
	t.Cleanup(release)
	l.Set("k", first)
	l.Set("plain", &probe{concurrent: new(atomic.Int64), overlap: new(atomic.Bool)})
	if l.Holds("k") {
		t.Fatal("holds before leading")
	}
	stop := runLeader(t, l)
	<-first.started
	if !l.Holds("k") || l.Holds("plain") || l.Holds("none") {
		t.Fatalf("leading: holds k %v (want true), plain %v, none %v (want false)", l.Holds("k"), l.Holds("plain"), l.Holds("none"))
	}
	replaced := make(chan struct{})
	go func() { defer close(replaced); l.Set("k", second) }()
	t.Cleanup(func() { release(); <-replaced })
	<-first.stopping
	if l.Holds("k") {
		t.Fatal("holds k while the loop it replaced is still stopping")
	}
	release()
	<-replaced
	<-second.started
	if !l.Holds("k") {
		t.Fatal("does not hold k once the replaced loop stopped")
	}
	stop()
	if l.Holds("k") {
		t.Fatal("holds k after the term ended")
	}
}
