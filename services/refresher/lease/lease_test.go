package lease_test

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

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
	"github.com/tokenbus/tokenbus/services/refresher/lease"
	"github.com/tokenbus/tokenbus/services/refresher/natsx"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const ttl = 1200 * time.Millisecond

func setup(t *testing.T) (*natsx.Store, jetstream.KeyValue) {
	t.Helper()
	ns := testutil.RunServer(t)
	nc := testutil.Connect(t, ns)
	st, err := natsx.OpenStore(context.Background(), nc, "tokens", 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	return st, st.KV()
}

func newElector(t *testing.T, kv jetstream.KeyValue, holder string) *lease.Elector {
	t.Helper()
	el, err := lease.New(lease.Config{KV: kv, Holder: holder, TTL: ttl, RetryPeriod: 100 * time.Millisecond, AcquireDelay: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return el
}

// replica runs an elector whose leader work counts how many replicas lead at
// once; stop ends it (releasing the lease).
type replica struct {
	el     *lease.Elector
	cancel context.CancelFunc
	done   chan struct{}
	leads  atomic.Int64
}

func run(t *testing.T, el *lease.Elector, concurrent *atomic.Int64, overlap *atomic.Bool) *replica {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &replica{el: el, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		_ = el.Run(ctx, func(lctx context.Context) {
			r.leads.Add(1)
			if concurrent.Add(1) > 1 {
				overlap.Store(true)
			}
			<-lctx.Done()
			concurrent.Add(-1)
		})
	}()
	t.Cleanup(r.stop)
	return r
}

func (r *replica) stop() { r.cancel(); <-r.done }

func TestOneLeaderAndHandoverOnRelease(t *testing.T) {
	_, kv := setup(t)
	var concurrent atomic.Int64
	var overlap atomic.Bool
	reps := []*replica{
		run(t, newElector(t, kv, "a"), &concurrent, &overlap),
		run(t, newElector(t, kv, "b"), &concurrent, &overlap),
		run(t, newElector(t, kv, "c"), &concurrent, &overlap),
	}
	leader := func() (*replica, error) {
		var found []*replica
		for _, r := range reps {
			if r.el.Valid() {
				found = append(found, r)
			}
		}
		if len(found) != 1 {
			return nil, fmt.Errorf("%d leaders", len(found))
		}
		return found[0], nil
	}
	var first *replica
	testutil.CheckFor(t, 3*time.Second, 10*time.Millisecond, func() (err error) { first, err = leader(); return })
	term1 := first.el.State().Term

	// Renewals keep the same leader well past the TTL.
	time.Sleep(2 * ttl)
	if l, err := leader(); err != nil || l != first {
		t.Fatalf("leadership moved without cause: %v", err)
	}
	// A clean stop hands the lease over at once (well within the TTL).
	start := time.Now()
	first.stop()
	var second *replica
	testutil.CheckFor(t, 3*time.Second, 5*time.Millisecond, func() (err error) { second, err = leader(); return })
	if d := time.Since(start); d > ttl/2 {
		t.Fatalf("handover after release took %v", d)
	}
	if st := second.el.State(); st.Term <= term1 || st.Holder == "" {
		t.Fatalf("new term %d not above %d (%+v)", st.Term, term1, st)
	}
	if overlap.Load() {
		t.Fatal("two replicas ran leader work at the same time")
	}
}

func TestStandbyTakesOverOnlyAfterTTL(t *testing.T) {
	_, kv := setup(t)
	// A holder that died without releasing: its lease is never renewed.
	ghost, _ := json.Marshal(lease.Record{Holder: "ghost", TTLMillis: ttl.Milliseconds()})
	if _, err := kv.Create(context.Background(), lease.DefaultKey, ghost); err != nil {
		t.Fatal(err)
	}
	var concurrent atomic.Int64
	var overlap atomic.Bool
	start := time.Now()
	r := run(t, newElector(t, kv, "standby"), &concurrent, &overlap)
	testutil.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if !r.el.Valid() {
			return errors.New("not leader yet")
		}
		return nil
	})
	took := time.Since(start)
	if took < ttl || took > ttl+500*time.Millisecond {
		t.Fatalf("took over after %v, want between ttl (%v) and ttl+0.5s", took, ttl)
	}
	if st := r.el.State(); st.Holder != "standby" {
		t.Fatalf("state %+v", st)
	}
}

func TestDeposedLeaderStopsAndItsWritesAreFenced(t *testing.T) {
	st, kv := setup(t)
	var concurrent atomic.Int64
	var overlap atomic.Bool
	r := run(t, newElector(t, kv, "old"), &concurrent, &overlap)
	testutil.CheckFor(t, 3*time.Second, 5*time.Millisecond, func() error {
		if r.leads.Load() != 1 {
			return errors.New("not leading")
		}
		return nil
	})
	fence, err := r.el.Fence()
	if err != nil {
		t.Fatal(err)
	}
	tok := wire.Token{Provider: "p", AccessToken: "t1", ExpiresAt: time.Now().Add(time.Hour)}
	if _, err := st.PublishFenced(context.Background(), tok, fence.Subject, fence.Revision, fence.Term, "old"); err != nil {
		t.Fatalf("write under the current lease rejected: %v", err)
	}
	// Another replica takes the lease behind the holder's back (as after a
	// pause past the TTL).
	entry, err := kv.Get(context.Background(), lease.DefaultKey)
	if err != nil {
		t.Fatal(err)
	}
	usurper, _ := json.Marshal(lease.Record{Holder: "new", TTLMillis: ttl.Milliseconds()})
	if _, err := kv.Update(context.Background(), lease.DefaultKey, usurper, entry.Revision()); err != nil {
		t.Fatal(err)
	}
	// The old holder's late write with its old fence is rejected by JetStream.
	tok.AccessToken = "late"
	if _, err := st.PublishFenced(context.Background(), tok, fence.Subject, fence.Revision, fence.Term, "old"); !errors.Is(err, natsx.ErrFenced) {
		t.Fatalf("late write: got %v, want ErrFenced", err)
	}
	got, _ := kv.Get(context.Background(), "p")
	if !strings.Contains(string(got.Value()), `"t1"`) {
		t.Fatalf("late write landed: %s", got.Value())
	}
	// And the old holder notices at its next renewal and stops leading.
	testutil.CheckFor(t, 2*time.Second, 5*time.Millisecond, func() error {
		if r.el.Valid() || concurrent.Load() != 0 {
			return errors.New("still leading")
		}
		return nil
	})
	if _, err := r.el.Fence(); !errors.Is(err, lease.ErrNotLeader) {
		t.Fatalf("Fence after losing: %v", err)
	}
}

func TestTimingValidation(t *testing.T) {
	_, kv := setup(t)
	for _, c := range []lease.Config{
		{KV: kv, Holder: "x", TTL: time.Second, RenewDeadline: time.Second},
		{KV: kv, Holder: "x", TTL: time.Second, RenewDeadline: 500 * time.Millisecond, RetryPeriod: 600 * time.Millisecond},
		{KV: kv, Holder: "x"},
	} {
		if _, err := lease.New(c); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
}

// TestNoOverlapUnderChurn starts and stops replicas repeatedly and checks
// that leader work never overlaps.
func TestNoOverlapUnderChurn(t *testing.T) {
	_, kv := setup(t)
	var concurrent atomic.Int64
	var overlap atomic.Bool
	var mu sync.Mutex
	reps := map[int]*replica{}
	for i := range 3 {
		reps[i] = run(t, newElector(t, kv, fmt.Sprint("r", i)), &concurrent, &overlap)
	}
	for round := range 6 {
		mu.Lock()
		i := round % 3
		reps[i].stop()
		reps[i] = run(t, newElector(t, kv, fmt.Sprint("r", i, "-", round)), &concurrent, &overlap)
		mu.Unlock()
		time.Sleep(150 * time.Millisecond)
	}
	if overlap.Load() {
		t.Fatal("leader work overlapped")
	}
}
