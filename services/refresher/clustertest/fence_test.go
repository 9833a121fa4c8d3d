package clustertest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
	"github.com/tokenbus/tokenbus/services/refresher/leader"
	"github.com/tokenbus/tokenbus/services/refresher/natsx"
)

// TestFencedWritesOnR3 shows why token writes are serialised, and that they
// then never fail: on an R3 stream the server refuses (10164) a write whose
// expected-sequence check names a subject another write is still committing
// under. Many providers writing at once, each fenced on _term, collide when
// sent concurrently (the control); through the leader, with the lease renewed
// every 200 ms meanwhile, none fails and the leader never changes.
func TestFencedWritesOnR3(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a three-node cluster")
	}
	_, urls := startCluster(t)
	var nc *nats.Conn
	testutil.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() (err error) {
		nc, err = nats.Connect(urls, nats.MaxReconnects(-1))
		return err
	})
	defer nc.Close()
	st, err := natsx.OpenStore(context.Background(), nc, "tokens", 3, nil)
	if err != nil {
		t.Fatal(err)
	}
	js := st.JetStream()
	ctx := context.Background()
	const writers, rounds = 8, 25

	// Control: concurrent writes fenced on one subject, sent as they come.
	termRev, err := st.KV().Put(ctx, leader.TermKey, []byte(`{"holder":"control"}`))
	if err != nil {
		t.Fatal(err)
	}
	var collisions atomic.Int64
	for range rounds {
		var wg sync.WaitGroup
		for i := range writers {
			wg.Go(func() {
				_, err := js.Publish(ctx, fmt.Sprintf("$KV.tokens.p%d", i), []byte("{}"),
					jetstream.WithExpectLastSequenceForSubject(termRev, "$KV.tokens."+leader.TermKey))
				var apiErr *jetstream.APIError
				if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant {
					collisions.Add(1)
				}
			})
		}
		wg.Wait()
	}
	t.Logf("control: %d of %d concurrent fenced writes refused with 10164", collisions.Load(), writers*rounds)
	if collisions.Load() == 0 {
		t.Errorf("no concurrent fenced write was refused: the server no longer behaves as docs/leadership.md says")
	}

	// Through the leader.
	var changes atomic.Int64
	l, err := leader.New(leader.Config{
		Lease: leader.LeaseConfig{KV: leader.LeaseBucket(st.Lease()), Holder: "only", TTL: leaseTTL, RetryPeriod: 200 * time.Millisecond,
			OnChange: func(leader.State) { changes.Add(1) }},
		JetStream: js, Tokens: st.KV(), Conn: nc,
	})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = l.Run(rctx) }()
	defer func() { cancel(); <-done }()
	testutil.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if _, err := l.Publish(ctx, wire.Token{Provider: "probe", AccessToken: "x", ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
			return err
		}
		return nil
	})
	before := changes.Load()
	var failed atomic.Int64
	deadline := time.Now().Add(5 * time.Second) // 25 renewals
	for n := 0; time.Now().Before(deadline) || n < rounds; n++ {
		var wg sync.WaitGroup
		for i := range writers {
			wg.Go(func() {
				tok := wire.Token{Provider: fmt.Sprint("p", i), AccessToken: fmt.Sprint("t", n), ExpiresAt: time.Now().Add(time.Hour)}
				if _, err := l.Publish(ctx, tok); err != nil {
					failed.Add(1)
					t.Errorf("fenced write: %v", err)
				}
			})
		}
		wg.Wait()
	}
	if c := changes.Load() - before; c != 0 || !l.Valid() {
		t.Errorf("leadership changed %d times under concurrent writes", c)
	}
}
