package leader_test

import (
	"context"
	"encoding/json"
	"testing"
	"testing/synctest"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenbus/tokenbus/services/refresher/leader"
)

const syncTTL = 10 * time.Second

func newSyncLease(t *testing.T, kv leader.KV, holder string) *leader.Lease {
	t.Helper()
	l, err := leader.NewLease(leader.LeaseConfig{KV: kv, Holder: holder, TTL: syncTTL})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// runLease runs l until the returned stop is called; lead blocks until its
// context ends.
func runLease(l *leader.Lease) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = l.Run(ctx, func(stop, _ context.Context) { <-stop.Done() })
	}()
	return func() { cancel(); <-done }
}

// TestHostileLeaseRecordWaitsOwnTTLAtMost: a lease record claiming an hour's
// ttl, or one that is not a lease at all, is taken over after this replica's
// own ttl (+ one retry period), never later.
func TestHostileLeaseRecordWaitsOwnTTLAtMost(t *testing.T) {
	evil, _ := json.Marshal(leader.Record{Holder: "evil", TTLMillis: time.Hour.Milliseconds()})
	for name, rec := range map[string][]byte{"huge ttl": evil, "malformed": []byte(`{"holder":`), "not json": []byte("owned")} {
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				kv := newMemKV()
				kv.Put(leader.LeaseKey, rec)
				l := newSyncLease(t, kv, "a")
				start := time.Now()
				stop := runLease(l)
				defer stop()
				for !l.Valid() && time.Since(start) < 2*time.Hour {
					time.Sleep(100 * time.Millisecond)
				}
				if took, limit := time.Since(start), syncTTL+syncTTL/5+time.Second; !l.Valid() || took > limit {
					t.Fatalf("took the lease over after %v (valid %v), want ≤ %v", took, l.Valid(), limit)
				}
			})
		})
	}
}

// TestCampaignLeavesNoWatcher: losing and regaining the lease does not leave
// a watcher behind each time.
func TestCampaignLeavesNoWatcher(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		kv := newMemKV()
		l := newSyncLease(t, kv, "a")
		stop := runLease(l)
		defer stop()
		for round := range 4 {
			for !l.Valid() {
				time.Sleep(100 * time.Millisecond)
			}
			synctest.Wait()
			if n := kv.Watchers(); n != 0 {
				t.Fatalf("round %d: %d watchers open while leading, want 0", round, n)
			}
			// Someone overwrites the lease: the holder loses it at its next
			// renewal and campaigns again.
			kv.Put(leader.LeaseKey, []byte(`{"holder":"intruder"}`))
			for l.Valid() {
				time.Sleep(100 * time.Millisecond)
			}
			synctest.Wait()
			if n := kv.Watchers(); n > 1 {
				t.Fatalf("round %d: %d watchers open while campaigning, want ≤ 1", round, n)
			}
		}
	})
}

// TestShutdownDuringRenewalReleases: a shutdown while a renewal is in
// flight waits for it, and releases the revision it wrote (a standby then
// takes over at once instead of after the ttl).
func TestShutdownDuringRenewalReleases(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		kv := newMemKV()
		l := newSyncLease(t, kv, "a")
		stop := runLease(l)
		for !l.Valid() {
			time.Sleep(100 * time.Millisecond)
		}
		// The next renewal lands in the bucket but its reply is slow.
		slow := make(chan struct{})
		kv.mu.Lock()
		kv.afterUpdate = func(ctx context.Context) error {
			select {
			case <-slow:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		kv.mu.Unlock()
		time.Sleep(syncTTL/5 + time.Millisecond) // the renewal is sent
		synctest.Wait()
		go func() { time.Sleep(100 * time.Millisecond); close(slow) }()
		stop()
		if e, err := kv.Get(context.Background(), leader.LeaseKey); err != nil || !released(e) {
			t.Fatalf("lease not released after shutdown: %v", err)
		}
	})
}

// released reports whether e is a lease record marked released.
func released(e jetstream.KeyValueEntry) bool {
	var r leader.Record
	return json.Unmarshal(e.Value(), &r) == nil && r.Released && r.Holder == ""
}

// TestReleaseWithStaleRevision: if the reply of the last renewal was lost,
// release reads the record and marks it released when it still names this
// holder.
func TestReleaseWithStaleRevision(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		kv := newMemKV()
		l := newSyncLease(t, kv, "a")
		stop := runLease(l)
		for !l.Valid() {
			time.Sleep(100 * time.Millisecond)
		}
		kv.loseNextUpdateReply()
		time.Sleep(syncTTL/5 + time.Millisecond) // the renewal whose reply is lost
		synctest.Wait()
		stop()
		if e, err := kv.Get(context.Background(), leader.LeaseKey); err != nil || !released(e) {
			t.Fatalf("lease not released after shutdown: %v", err)
		}
	})
}

// TestLostRenewalReplyKeepsTheLease: a renewal that landed but whose reply
// was lost makes the next renewal find "its" revision changed; the holder
// sees the record is its own and keeps leading.
func TestLostRenewalReplyKeepsTheLease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		kv := newMemKV()
		var changes []leader.State
		l, err := leader.NewLease(leader.LeaseConfig{KV: kv, Holder: "a", TTL: syncTTL, OnChange: func(s leader.State) { changes = append(changes, s) }})
		if err != nil {
			t.Fatal(err)
		}
		stop := runLease(l)
		defer stop()
		for !l.Valid() {
			time.Sleep(100 * time.Millisecond)
		}
		kv.loseNextUpdateReply()
		for range 20 {
			time.Sleep(syncTTL / 10)
			if !l.Valid() {
				t.Fatalf("lost the lease after a lost renewal reply; changes %+v", changes)
			}
		}
	})
}

// TestRenewalWithNoReplyKeepsTheLease (issue 17, fix 3): a renewal that
// landed but whose reply never comes (not an error: silence) times out
// within a retry period, and the next renewal finds the record still this
// holder's. Before the fix the renewal waited until the deadline and the
// holder stepped down.
func TestRenewalWithNoReplyKeepsTheLease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		kv := newMemKV()
		l := newSyncLease(t, kv, "a")
		stop := runLease(l)
		defer stop()
		for !l.Valid() {
			time.Sleep(100 * time.Millisecond)
		}
		kv.mu.Lock()
		silent := true
		kv.afterUpdate = func(ctx context.Context) error {
			if silent {
				silent = false
				<-ctx.Done() // landed; the reply never arrives
				return ctx.Err()
			}
			return nil
		}
		kv.mu.Unlock()
		for range 30 {
			time.Sleep(syncTTL / 10)
			if !l.Valid() {
				t.Fatal("stepped down after a renewal whose reply never came")
			}
		}
	})
}

// TestDeletedLeaseIsWaitedOut (issue 17, fix 4): a _lease deleted from
// outside is not created at once by a standby, since the holder may act
// until its next renewal finds the key gone: at no moment do two replicas
// hold a valid lease, and a standby leads within a ttl and a bit.
func TestDeletedLeaseIsWaitedOut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		kv := newMemKV()
		a := newSyncLease(t, kv, "a")
		stopA := runLease(a)
		defer stopA()
		for !a.Valid() {
			time.Sleep(10 * time.Millisecond)
		}
		b := newSyncLease(t, kv, "b")
		stopB := runLease(b)
		defer stopB()
		time.Sleep(syncTTL / 10)
		e, err := kv.Get(context.Background(), leader.LeaseKey)
		if err != nil {
			t.Fatal(err)
		}
		if err := kv.Delete(context.Background(), leader.LeaseKey, e.Revision()); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		for time.Since(start) < 3*syncTTL {
			if a.Valid() && b.Valid() {
				t.Fatalf("two leaders %v after the lease was deleted", time.Since(start))
			}
			if (a.Valid() || b.Valid()) && time.Since(start) > syncTTL/5 {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if !a.Valid() && !b.Valid() {
			t.Fatal("no leader after the deleted lease was waited out")
		}
		if took := time.Since(start); took > syncTTL+syncTTL/5+time.Second {
			t.Fatalf("a leader after %v, want within a ttl and a retry period", took)
		}
	})
}

// TestCutOffHolderStopsAtItsDeadline (issue 17, fix 11): a holder cut off
// from the lease bucket — every renewal hangs until its timeout and then
// fails as "wrong last sequence", and the read of the record that checks
// whether the renewal landed hangs too — stops leading at its deadline: the
// term's lease-loss context ends then, and Valid turns false, not a retry
// period later (that read is bounded by the deadline, not by its own
// timeout).
func TestCutOffHolderStopsAtItsDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		kv := newMemKV()
		// A retry period over a third of the renew deadline: the check of
		// the record starts less than a retry period before the deadline.
		l, err := leader.NewLease(leader.LeaseConfig{KV: kv, Holder: "a", TTL: syncTTL, RetryPeriod: 3 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		lostCh := make(chan time.Time, 1)
		go func() {
			defer close(done)
			_ = l.Run(ctx, func(stop, lost context.Context) {
				select {
				case <-lost.Done():
					lostCh <- time.Now()
				case <-stop.Done():
				}
				<-stop.Done()
			})
		}()
		defer func() { cancel(); <-done }()
		for !l.Valid() {
			time.Sleep(100 * time.Millisecond)
		}
		time.Sleep(syncTTL / 3) // a few renewals in
		kv.mu.Lock()
		kv.hang = true
		kv.mu.Unlock()
		deadline := time.Now().Add(l.Left())
		var lostAt time.Time
		for lostAt.IsZero() && time.Now().Before(deadline.Add(syncTTL)) {
			if l.Valid() && !time.Now().Before(deadline) {
				t.Fatalf("valid %v past its deadline", time.Since(deadline))
			}
			select {
			case lostAt = <-lostCh:
			case <-time.After(10 * time.Millisecond):
			}
		}
		if lostAt.IsZero() || lostAt.After(deadline) {
			t.Fatalf("the term's lease-loss context ended %v past the deadline (never if negative)", lostAt.Sub(deadline))
		}
	})
}
