package leader_test

import (
	"context"
	"encoding/json"
	"errors"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenbus/tokenbus/services/refresher/leader"
)

// commitGate is a lease bucket whose writes can be made to fail, as while
// JetStream cannot commit (a stream re-electing its leader after a healed
// partition); reads still answer (direct gets are served by followers).
type commitGate struct {
	*memKV
	down atomic.Bool
}

var errNoCommit = errors.New("nats: timeout")

func (g *commitGate) Create(ctx context.Context, key string, val []byte) (uint64, error) {
	if g.down.Load() {
		return 0, errNoCommit
	}
	return g.memKV.Create(ctx, key, val)
}

func (g *commitGate) Update(ctx context.Context, key string, val []byte, rev uint64) (uint64, error) {
	if g.down.Load() {
		return 0, errNoCommit
	}
	return g.memKV.Update(ctx, key, val, rev)
}

func newLeaseWith(t *testing.T, cfg leader.LeaseConfig) *leader.Lease {
	t.Helper()
	cfg.TTL = syncTTL
	l, err := leader.NewLease(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func holderOf(t *testing.T, kv *memKV) string {
	t.Helper()
	e, err := kv.Get(context.Background(), leader.LeaseKey)
	if err != nil {
		return ""
	}
	var rec leader.Record
	_ = json.Unmarshal(e.Value(), &rec)
	return rec.Holder
}

// TestLapsedLeaseIsResumedNotRaced: when JetStream cannot commit for longer
// than the ttl (the holder's renewals fail; it stops at its deadline), the
// holder takes its lease back as soon as commits resume, and the standby,
// told the holder is resuming, does not race it for the lease: one leader,
// no flapping. Nobody leads while commits fail.
func TestLapsedLeaseIsResumedNotRaced(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		gate := &commitGate{memKV: newMemKV()}
		// As Leader wires it over NATS: every replica asks, and whichever
		// lapsed in that term answers (the asker itself included).
		var a, b *leader.Lease
		var asked atomic.Int64
		resuming := func(_ context.Context, term uint64) bool {
			asked.Add(1)
			return a.Resuming(term) || b.Resuming(term)
		}
		a = newLeaseWith(t, leader.LeaseConfig{KV: gate, Holder: "a", HolderResuming: resuming})
		b = newLeaseWith(t, leader.LeaseConfig{KV: gate, Holder: "b", HolderResuming: resuming})
		stopA := runLease(a)
		defer stopA()
		for !a.Valid() {
			time.Sleep(100 * time.Millisecond)
		}
		stopB := runLease(b)
		defer stopB()
		time.Sleep(syncTTL)

		gate.down.Store(true)
		start := time.Now()
		for time.Since(start) < 2*syncTTL {
			if a.Valid() && time.Since(start) > syncTTL*2/3 || b.Valid() {
				t.Fatalf("%v into the outage: a valid %v, b valid %v", time.Since(start), a.Valid(), b.Valid())
			}
			time.Sleep(100 * time.Millisecond)
		}
		gate.down.Store(false)
		back := time.Now()
		for !a.Valid() && time.Since(back) < syncTTL {
			if b.Valid() {
				t.Fatal("the standby took the lease from a holder resuming it")
			}
			time.Sleep(10 * time.Millisecond)
		}
		if !a.Valid() || time.Since(back) > syncTTL/5*2 {
			t.Fatalf("holder resumed: %v, %v after commits resumed (want within two retry periods)", a.Valid(), time.Since(back))
		}
		time.Sleep(3 * syncTTL)
		if !a.Valid() || b.Valid() || holderOf(t, gate.memKV) != "a" || asked.Load() == 0 {
			t.Fatalf("after the outage: a %v, b %v, record names %q, standby asked %d times", a.Valid(), b.Valid(), holderOf(t, gate.memKV), asked.Load())
		}
	})
}

// TestResumingIsBounded: a holder that cannot write for longer than three
// ttls (at least 15 s; its own node cut off from JetStream, while the
// standby's writes commit) stops asking standbys to wait, and a standby
// takes over.
func TestResumingIsBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		kv := newMemKV()
		own := &commitGate{memKV: kv} // only a's writes fail
		var a, b *leader.Lease
		resuming := func(_ context.Context, term uint64) bool { return a.Resuming(term) || b.Resuming(term) }
		a = newLeaseWith(t, leader.LeaseConfig{KV: own, Holder: "a", HolderResuming: resuming})
		b = newLeaseWith(t, leader.LeaseConfig{KV: kv, Holder: "b", HolderResuming: resuming})
		stopA := runLease(a)
		defer stopA()
		for !a.Valid() {
			time.Sleep(100 * time.Millisecond)
		}
		stopB := runLease(b)
		defer stopB()
		time.Sleep(syncTTL)
		own.down.Store(true)
		start := time.Now()
		for !b.Valid() && time.Since(start) < 10*syncTTL {
			time.Sleep(100 * time.Millisecond)
		}
		// a lapses at its deadline (⅔ ttl), resumes for 3 ttl, then the
		// standby waits one more ttl of its own.
		if took, limit := time.Since(start), syncTTL*2/3+3*syncTTL+syncTTL+2*syncTTL/5; !b.Valid() || took > limit {
			t.Fatalf("standby led after %v (valid %v), want ≤ %v", took, b.Valid(), limit)
		}
		if a.Valid() {
			t.Fatal("both lead")
		}
	})
}
