package rpc_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/config"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
	"github.com/tokenbus/tokenbus/services/refresher/rpc"
)

// stuck is a source whose claims (Get, single-use) and refreshes wait until
// the request ends: an empty pool, a provider that never answers.
type stuck struct{ entered atomic.Int64 }

func (s *stuck) Get(ctx context.Context) ([]byte, error) {
	s.entered.Add(1)
	<-ctx.Done()
	return nil, ctx.Err()
}

func (s *stuck) Refresh(ctx context.Context, _ string) ([]byte, error) { return s.Get(ctx) }
func (s *stuck) Blocking() bool                                        { return true }

// slowRefresh serves its token at once and never finishes a refresh.
type slowRefresh struct {
	stuck
	tok []byte
}

func (s *slowRefresh) Get(context.Context) ([]byte, error) { return s.tok, nil }
func (s *slowRefresh) Refresh(ctx context.Context, bad string) ([]byte, error) {
	return s.stuck.Get(ctx)
}
func (s *slowRefresh) Blocking() bool { return false }

// quickRegistry stores every put at once.
type quickRegistry struct{}

func (quickRegistry) Put(context.Context, config.Provider) (uint64, error) { return 1, nil }
func (quickRegistry) Delete(context.Context, string) error                 { return nil }
func (quickRegistry) List(string, int) ([]wire.ProviderInfo, string)       { return nil, "" }

// TestBudgetPerEndpoint (SPEC §10): token.get, single-use claims,
// token.refresh and tokenbus.providers.* each have their own in-flight
// bound. Claims waiting on an empty pool fill theirs, and refreshes that
// never finish fill theirs: past each bound the caller gets 503 at once,
// naming it, while token.get and tokenbus.providers.put still answer.
func TestBudgetPerEndpoint(t *testing.T) {
	const bound = 8
	ns := testutil.RunServer(t)
	nc := testutil.Connect(t, ns)
	tok, _ := json.Marshal(wire.Token{Provider: "p1", AccessToken: "tok-1", TokenType: "Bearer", IssuedAt: time.Now(), ExpiresAt: time.Now().Add(time.Hour)})
	pool, p1 := &stuck{}, &slowRefresh{tok: tok}
	svc, err := rpc.Start(nc, rpc.Config{Sources: map[string]rpc.Source{"pool": pool, "p1": p1}, Registry: quickRegistry{},
		MaxInFlight: bound, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })

	// Fill the claims' and the refreshes' budgets.
	flood := testutil.Connect(t, ns)
	for range bound {
		if err := flood.PublishRequest(wire.GetSubject("pool"), nats.NewInbox(), nil); err != nil {
			t.Fatal(err)
		}
		if err := flood.PublishRequest(wire.RefreshSubject("p1"), nats.NewInbox(), []byte(`{"invalid_token":"tok-1"}`)); err != nil {
			t.Fatal(err)
		}
	}
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if c, r := pool.entered.Load(), p1.entered.Load(); c != bound || r != bound {
			return fmt.Errorf("%d claims and %d refreshes in flight", c, r)
		}
		return nil
	})
	for subj, want := range map[string]string{
		wire.GetSubject("pool"):   "too many single-use claim requests in flight",
		wire.RefreshSubject("p1"): "too many token.refresh requests in flight",
	} {
		msg, err := nc.Request(subj, []byte(`{"invalid_token":"tok-1"}`), 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if code, m := msg.Header.Get(wire.HeaderErrorCode), msg.Header.Get(wire.HeaderError); code != "503" || !strings.Contains(m, want) {
			t.Fatalf("%s past its bound: %s %q, want 503 %q", subj, code, m, want)
		}
	}
	// The other endpoints are not starved.
	if msg, err := nc.Request(wire.GetSubject("p1"), nil, 2*time.Second); err != nil || msg.Header.Get(wire.HeaderErrorCode) != "" {
		t.Fatalf("token.get during the floods: %v %v", err, msg)
	}
	put := `{"name":"m-1","kind":"daraja","base_url":"https://example.com","consumer_key":"k","consumer_secret":"s"}`
	if msg, err := nc.Request(wire.ProvidersPutSubject, []byte(put), 2*time.Second); err != nil || msg.Header.Get(wire.HeaderErrorCode) != "" {
		t.Fatalf("tokenbus.providers.put during the floods: %v %v", err, msg)
	}
}
