package leader_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
	"github.com/tokenbus/tokenbus/services/refresher/leader"
)

// keeper is a Keeper that owns the tokens named mine-* and records what it
// is asked to do.
type keeper struct {
	repairs, refreshes atomic.Int64
}

func (k *keeper) Run(ctx context.Context) error { <-ctx.Done(); return nil }
func (k *keeper) Owns(tok wire.Token, _ uint64) bool {
	return len(tok.AccessToken) > 5 && tok.AccessToken[:5] == "mine-"
}
func (k *keeper) Repair() { k.repairs.Add(1) }
func (k *keeper) Refresh(context.Context, string) ([]byte, error) {
	k.refreshes.Add(1)
	return nil, nil
}

// TestTakeoverReadsInheritedTokensInBulk: a new leader checks the token
// each provider inherits in one read of the bucket, not one JetStream
// request per provider (100,000 requests at a takeover of 100,000): with
// 400 tokens that leaders wrote, it gets none of them one by one; the two
// that no leader wrote are each counted once and repaired.
func TestTakeoverReadsInheritedTokensInBulk(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	const n = 400
	keepers := map[string]*keeper{}
	for i := range n {
		name := fmt.Sprintf("p-%04d", i)
		body, _ := jsonToken(name)
		msg := nats.NewMsg("$KV.tokens." + name)
		msg.Data = body
		msg.Header.Set(leader.HeaderWriter, "old-leader/1")
		if _, err := e.st.JetStream().PublishMsg(ctx, msg); err != nil {
			t.Fatal(err)
		}
		keepers[name] = &keeper{}
	}
	for _, name := range []string{"forged-1", "forged-2"} {
		body, _ := jsonToken(name) // no writer header: a `nats kv put`
		if _, err := e.st.KV().Put(ctx, name, body); err != nil {
			t.Fatal(err)
		}
		keepers[name] = &keeper{}
	}
	// Every token of p-* read one by one (GetLastMsgForSubject, GetMsg),
	// seen from another connection.
	var (
		gets   atomic.Int64
		getsMu sync.Mutex
		got    []string
	)
	watcher, err := nats.Connect(e.nc.ConnectedUrl())
	if err != nil {
		t.Fatal(err)
	}
	defer watcher.Close()
	for _, subj := range []string{"$JS.API.STREAM.MSG.GET.>", "$JS.API.DIRECT.GET.>"} {
		if _, err := watcher.Subscribe(subj, func(m *nats.Msg) {
			if !strings.Contains(m.Subject+string(m.Data), "p-0") {
				return // the lease, the term record, a forged token
			}
			gets.Add(1)
			getsMu.Lock()
			got = append(got, m.Subject+" "+string(m.Data))
			getsMu.Unlock()
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := watcher.Flush(); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	foreign := map[string]int{}
	l, err := leader.New(leader.Config{
		Lease:     leader.LeaseConfig{KV: leader.LeaseBucket(e.st.Lease()), Holder: "a", TTL: ttl, RetryPeriod: 100 * time.Millisecond, AcquireDelay: 10 * time.Millisecond},
		JetStream: e.st.JetStream(), Tokens: e.st.KV(), Conn: e.nc,
		OnForeignWrite: func(p string, _ uint64) { mu.Lock(); foreign[p]++; mu.Unlock() },
	})
	if err != nil {
		t.Fatal(err)
	}
	for name, k := range keepers {
		l.Set(name, k)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = l.Run(rctx) }()
	defer func() { cancel(); <-done }()
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if r1, r2 := keepers["forged-1"].repairs.Load(), keepers["forged-2"].repairs.Load(); r1 != 1 || r2 != 1 {
			return fmt.Errorf("repairs of the forged tokens: %d, %d", r1, r2)
		}
		return nil
	})
	time.Sleep(200 * time.Millisecond) // the rest of the pass, if any
	if g := gets.Load(); g > 0 {
		getsMu.Lock()
		t.Errorf("the takeover read %d messages one by one for %d providers (want none): %.300q", g, n+2, got)
		getsMu.Unlock()
	}
	mu.Lock()
	defer mu.Unlock()
	if len(foreign) != 2 || foreign["forged-1"] != 1 || foreign["forged-2"] != 1 {
		t.Errorf("foreign writes counted: %v", foreign)
	}
	for name, k := range keepers {
		if name[0] == 'p' && (k.repairs.Load() != 0 || k.refreshes.Load() != 0) {
			t.Fatalf("%s: a token a leader wrote was repaired or refreshed", name)
		}
	}
}
