package rpc_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
	"github.com/tokenbus/tokenbus/services/refresher/rpc"
)

// missing is a Fallback source with no token in memory. further says
// whether Lookup would look further; a Lookup waits until its request ends.
type missing struct {
	further bool
	looked  atomic.Int64
}

func (m *missing) Get(ctx context.Context) ([]byte, error) {
	b, _, err := m.GetRevision(ctx)
	return b, err
}
func (m *missing) GetRevision(context.Context) ([]byte, uint64, error) {
	return nil, 0, fmt.Errorf("%w: provider answered HTTP 500", refresher.ErrNoToken)
}
func (m *missing) Refresh(ctx context.Context, _ string) ([]byte, error) { return m.Get(ctx) }
func (m *missing) LooksFurther() bool                                    { return m.further }
func (m *missing) Lookup(ctx context.Context) ([]byte, uint64, error) {
	m.looked.Add(1)
	<-ctx.Done()
	return nil, 0, ctx.Err()
}

// TestMissAnsweredAtOnceWhenNotLookingFurther: a token.get miss on a source
// that would look no further than memory (the lease holder) is answered
// with the source's own error on the endpoint goroutine — no Lookup, no
// token.get budget: with that budget full of lookups in flight it is still
// answered with its cause, where a source that looks further gets the 503
// naming the budget.
func TestMissAnsweredAtOnceWhenNotLookingFurther(t *testing.T) {
	const bound = 4
	ns := testutil.RunServer(t)
	nc := testutil.Connect(t, ns)
	standby, holder := &missing{further: true}, &missing{}
	svc, err := rpc.Start(nc, rpc.Config{Sources: map[string]rpc.Source{"standby": standby, "holder": holder},
		MaxInFlight: bound, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	flood := testutil.Connect(t, ns)
	for range bound {
		if err := flood.PublishRequest(wire.GetSubject("standby"), nats.NewInbox(), nil); err != nil {
			t.Fatal(err)
		}
	}
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if n := standby.looked.Load(); n != bound {
			return fmt.Errorf("%d lookups in flight", n)
		}
		return nil
	})
	for name, want := range map[string]string{"holder": "no valid token available yet", "standby": "too many token.get requests in flight"} {
		msg, err := nc.Request(wire.GetSubject(name), nil, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if code, m := msg.Header.Get(wire.HeaderErrorCode), msg.Header.Get(wire.HeaderError); code != "503" || !strings.Contains(m, want) {
			t.Fatalf("%s: %s %q, want 503 %q", name, code, m, want)
		}
	}
	if n := holder.looked.Load(); n != 0 {
		t.Fatalf("the holder's source was asked to look further %d times", n)
	}
}
