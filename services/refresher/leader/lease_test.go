package leader_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
	"github.com/tokenbus/tokenbus/services/refresher/leader"
	"github.com/tokenbus/tokenbus/services/refresher/natsx"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const ttl = 1200 * time.Millisecond

type env struct {
	st *natsx.Store
	nc *nats.Conn
}

func setup(t *testing.T) env {
	t.Helper()
	ns := testutil.RunServer(t)
	nc := testutil.Connect(t, ns)
	st, err := natsx.OpenStore(context.Background(), nc, "tokens", 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	return env{st: st, nc: nc}
}

func newLeader(t *testing.T, e env, holder string) *leader.Leader {
	t.Helper()
	l, err := leader.New(leader.Config{
		Lease:     leader.LeaseConfig{KV: leader.LeaseBucket(e.st.Lease()), Holder: holder, TTL: ttl, RetryPeriod: 100 * time.Millisecond, AcquireDelay: 10 * time.Millisecond},
		JetStream: e.st.JetStream(), Tokens: e.st.KV(), Conn: e.nc,
	})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// probe is a loop that counts how many replicas run it at once.
type probe struct {
	concurrent *atomic.Int64
	overlap    *atomic.Bool
	runs       atomic.Int64
}

func (p *probe) Run(ctx context.Context) error {
	p.runs.Add(1)
	if p.concurrent.Add(1) > 1 {
		p.overlap.Store(true)
	}
	<-ctx.Done()
	p.concurrent.Add(-1)
	return nil
}

// replica runs a leader with one probe loop; stop ends it (releasing the
// lease).
type replica struct {
	l      *leader.Leader
	p      *probe
	cancel context.CancelFunc
	done   chan struct{}
}

func run(t *testing.T, l *leader.Leader, concurrent *atomic.Int64, overlap *atomic.Bool) *replica {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &replica{l: l, p: &probe{concurrent: concurrent, overlap: overlap}, cancel: cancel, done: make(chan struct{})}
	l.Set("probe", r.p)
	go func() {
		defer close(r.done)
		_ = l.Run(ctx)
	}()
	t.Cleanup(r.stop)
	return r
}

func (r *replica) stop() { r.cancel(); <-r.done }

func TestOneLeaderAndHandoverOnRelease(t *testing.T) {
	e := setup(t)
	var concurrent atomic.Int64
	var overlap atomic.Bool
	reps := []*replica{
		run(t, newLeader(t, e, "a"), &concurrent, &overlap),
		run(t, newLeader(t, e, "b"), &concurrent, &overlap),
		run(t, newLeader(t, e, "c"), &concurrent, &overlap),
	}
	leaderOf := func() (*replica, error) {
		var found []*replica
		for _, r := range reps {
			if r.l.Valid() {
				found = append(found, r)
			}
		}
		if len(found) != 1 {
			return nil, fmt.Errorf("%d leaders", len(found))
		}
		return found[0], nil
	}
	var first *replica
	testutil.CheckFor(t, 3*time.Second, 10*time.Millisecond, func() (err error) { first, err = leaderOf(); return })
	term1 := first.l.State().Term

	// Renewals keep the same leader well past the TTL.
	time.Sleep(2 * ttl)
	if l, err := leaderOf(); err != nil || l != first {
		t.Fatalf("leadership moved without cause: %v", err)
	}
	// A clean stop hands the lease over at once (well within the TTL).
	start := time.Now()
	first.stop()
	var second *replica
	testutil.CheckFor(t, 3*time.Second, 5*time.Millisecond, func() (err error) { second, err = leaderOf(); return })
	if d := time.Since(start); d > ttl/2 {
		t.Fatalf("handover after release took %v", d)
	}
	if st := second.l.State(); st.Term <= term1 || st.Holder == "" {
		t.Fatalf("new term %d not above %d (%+v)", st.Term, term1, st)
	}
	if overlap.Load() {
		t.Fatal("two replicas ran leader work at the same time")
	}
}

func TestStandbyTakesOverOnlyAfterTTL(t *testing.T) {
	e := setup(t)
	// A holder that died without releasing: its lease is never renewed.
	ghost, _ := json.Marshal(leader.Record{Holder: "ghost", TTLMillis: ttl.Milliseconds()})
	if _, err := e.st.Lease().Create(context.Background(), leader.LeaseKey, ghost); err != nil {
		t.Fatal(err)
	}
	var concurrent atomic.Int64
	var overlap atomic.Bool
	start := time.Now()
	r := run(t, newLeader(t, e, "standby"), &concurrent, &overlap)
	testutil.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if !r.l.Valid() {
			return errors.New("not leader yet")
		}
		return nil
	})
	took := time.Since(start)
	if took < ttl || took > ttl+500*time.Millisecond {
		t.Fatalf("took over after %v, want between ttl (%v) and ttl+0.5s", took, ttl)
	}
	if st := r.l.State(); st.Holder != "standby" {
		t.Fatalf("state %+v", st)
	}
}

func TestDeposedLeaderStopsAndItsWritesAreFenced(t *testing.T) {
	e := setup(t)
	var concurrent atomic.Int64
	var overlap atomic.Bool
	r := run(t, newLeader(t, e, "old"), &concurrent, &overlap)
	testutil.CheckFor(t, 3*time.Second, 5*time.Millisecond, func() error {
		if r.p.runs.Load() != 1 {
			return errors.New("not leading")
		}
		return nil
	})
	ctx := context.Background()
	tok := wire.Token{Provider: "probe", AccessToken: "t1", ExpiresAt: time.Now().Add(time.Hour)}
	if _, err := r.l.Publish(ctx, tok); err != nil {
		t.Fatalf("write under the current term rejected: %v", err)
	}
	// Another replica takes the lease behind the holder's back (as after a
	// pause past the TTL) and writes its term.
	entry, err := e.st.Lease().Get(ctx, leader.LeaseKey)
	if err != nil {
		t.Fatal(err)
	}
	usurper, _ := json.Marshal(leader.Record{Holder: "new", TTLMillis: ttl.Milliseconds()})
	newTerm, err := e.st.Lease().Update(ctx, leader.LeaseKey, usurper, entry.Revision())
	if err != nil {
		t.Fatal(err)
	}
	te, err := e.st.KV().Get(ctx, leader.TermKey)
	if err != nil {
		t.Fatal(err)
	}
	rec, _ := json.Marshal(leader.TermRecord{Holder: "new", Term: newTerm})
	if _, err := e.st.KV().Update(ctx, leader.TermKey, rec, te.Revision()); err != nil {
		t.Fatal(err)
	}
	// The old holder's late write is rejected by JetStream, and it does not
	// write the term back: the lease is not its own any more.
	tok.AccessToken = "late"
	if _, err := r.l.Publish(ctx, tok); !errors.Is(err, refresher.ErrNotAllowed) {
		t.Fatalf("late write: got %v, want ErrNotAllowed", err)
	}
	got, _ := e.st.KV().Get(ctx, "probe")
	if !strings.Contains(string(got.Value()), `"t1"`) {
		t.Fatalf("late write landed: %s", got.Value())
	}
	if te, _ := e.st.KV().Get(ctx, leader.TermKey); !strings.Contains(string(te.Value()), `"new"`) {
		t.Fatalf("the deposed leader rewrote the term: %s", te.Value())
	}
	// And the old holder notices at its next renewal and stops leading.
	testutil.CheckFor(t, 2*time.Second, 5*time.Millisecond, func() error {
		if r.l.Valid() || concurrent.Load() != 0 {
			return errors.New("still leading")
		}
		return nil
	})
}

func TestTimingValidation(t *testing.T) {
	e := setup(t)
	for _, c := range []leader.LeaseConfig{
		{KV: leader.LeaseBucket(e.st.Lease()), Holder: "x", TTL: time.Second, RenewDeadline: time.Second},
		{KV: leader.LeaseBucket(e.st.Lease()), Holder: "x", TTL: time.Second, RenewDeadline: 500 * time.Millisecond, RetryPeriod: 600 * time.Millisecond},
		{KV: leader.LeaseBucket(e.st.Lease()), Holder: "x"},
		{Holder: "x", TTL: time.Second},
	} {
		if _, err := leader.NewLease(c); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
}

// TestNoOverlapUnderChurn starts and stops replicas repeatedly and checks
// that leader work never overlaps.
func TestNoOverlapUnderChurn(t *testing.T) {
	e := setup(t)
	var concurrent atomic.Int64
	var overlap atomic.Bool
	var mu sync.Mutex
	reps := map[int]*replica{}
	for i := range 3 {
		reps[i] = run(t, newLeader(t, e, fmt.Sprint("r", i)), &concurrent, &overlap)
	}
	for round := range 6 {
		mu.Lock()
		i := round % 3
		reps[i].stop()
		reps[i] = run(t, newLeader(t, e, fmt.Sprint("r", i, "-", round)), &concurrent, &overlap)
		mu.Unlock()
		time.Sleep(150 * time.Millisecond)
	}
	if overlap.Load() {
		t.Fatal("leader work overlapped")
	}
}

func jsonToken(provider string) ([]byte, error) {
	return json.Marshal(wire.Token{Provider: provider, AccessToken: "t-" + provider, ExpiresAt: time.Now().Add(time.Hour)})
}
