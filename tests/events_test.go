package tests

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/tokenbus/tokenbus/libs/simulator"
	"github.com/tokenbus/tokenbus/libs/tokenclient"
	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/tests/harness"
)

// TestClientEvents: the Go client follows a provider's events
// (token.events.<provider>) until Stop: a failed refresh during an outage,
// then the recovery and the new token, in order.
func TestClientEvents(t *testing.T) {
	h := harness.Start(t, harness.Config{})
	c := requestClient(t, h)
	var (
		mu  sync.Mutex
		got []tokenclient.ProviderEvent
	)
	sub, err := c.Events(h.Provider, func(ev tokenclient.ProviderEvent) {
		mu.Lock()
		got = append(got, ev)
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Events("Not A Name", func(tokenclient.ProviderEvent) {}); !errors.Is(err, tokenclient.ErrBadRequest) {
		t.Fatalf("a bad name: %v", err)
	}
	h.Sim.SetFaults(simulator.Daraja, simulator.Faults{Outage: true})
	if _, err := h.TryForceRefresh(); err == nil {
		t.Fatal("a refresh during the outage succeeded")
	}
	h.Sim.SetFaults(simulator.Daraja, simulator.Faults{})
	types := func() []string {
		mu.Lock()
		defer mu.Unlock()
		var out []string
		for _, ev := range got {
			if len(out) == 0 || out[len(out)-1] != ev.Type {
				out = append(out, ev.Type)
			}
		}
		return out
	}
	harness.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if ts := types(); len(ts) < 3 {
			return errors.New("events so far: " + joinTypes(ts))
		}
		return nil
	})
	want := []string{wire.EventRefreshFailed, wire.EventRecovered, wire.EventRefreshed}
	if ts := types(); joinTypes(ts[:3]) != joinTypes(want) {
		t.Fatalf("events %v, want %v first", ts, want)
	}
	mu.Lock()
	first := got[0]
	mu.Unlock()
	if first.Provider != h.Provider || first.Kind != wire.KindTransient || first.Cause != wire.Cause5xx || first.Status != 503 || first.Attempt != 1 || first.RetryIn == nil {
		t.Fatalf("refresh_failed: %+v", first)
	}
	if err := sub.Stop(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	n := len(got)
	mu.Unlock()
	h.ForceRefresh()
	time.Sleep(200 * time.Millisecond) // nothing should arrive after Stop
	mu.Lock()
	defer mu.Unlock()
	if len(got) != n {
		t.Fatalf("%d events after Stop", len(got)-n)
	}
	if err := sub.Stop(); err != nil {
		t.Fatalf("a second Stop: %v", err)
	}
}

// TestClientEventsFollowFromReturn: an event published the moment Events
// returns is delivered — Events waits until the server has the
// subscription (it used to return with the SUB still in the client's
// buffer, and TestClientEvents missed the first event on a loaded machine).
func TestClientEventsFollowFromReturn(t *testing.T) {
	h := harness.Start(t, harness.Config{})
	c := requestClient(t, h)
	pub := h.ConnectAdmin()
	ev := []byte(`{"type":"refreshed","provider":"` + h.Provider + `"}`)
	for i := range 50 {
		got := make(chan struct{}, 1)
		sub, err := c.Events(h.Provider, func(tokenclient.ProviderEvent) {
			select {
			case got <- struct{}{}:
			default:
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := pub.Publish(wire.EventsSubject(h.Provider), ev); err != nil {
			t.Fatal(err)
		}
		if err := pub.Flush(); err != nil {
			t.Fatal(err)
		}
		select {
		case <-got:
		case <-time.After(2 * time.Second):
			t.Fatalf("round %d: the event published after Events returned was not delivered", i)
		}
		if err := sub.Stop(); err != nil {
			t.Fatal(err)
		}
	}
}

func joinTypes(ts []string) (s string) {
	for i, t := range ts {
		if i > 0 {
			s += " "
		}
		s += t
	}
	return s
}

// TestClientTokenFor: TokenFor answers from memory when the token lives
// long enough, and otherwise asks the refresher with min_validity, which
// answers 503 when it cannot refresh early (the harness's refresher cannot).
func TestClientTokenFor(t *testing.T) {
	h := harness.Start(t, harness.Config{})
	c, err := tokenclient.New(h.Connect(), tokenclient.WithProviders(h.Provider))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	tok, err := c.TokenFor(ctx, h.Provider, 30*time.Minute)
	if err != nil || tok.AccessToken != h.Current().AccessToken {
		t.Fatalf("TokenFor 30m of an hour-long token: %v %v", tok, err)
	}
	if _, err := c.TokenFor(ctx, h.Provider, 2*time.Hour); !errors.Is(err, tokenclient.ErrUnavailable) {
		t.Fatalf("TokenFor beyond the token's life: %v, want ErrUnavailable", err)
	}
	if _, err := c.TokenFor(ctx, h.Provider, 48*time.Hour); !errors.Is(err, tokenclient.ErrBadRequest) {
		t.Fatalf("TokenFor 48h: %v, want ErrBadRequest", err)
	}
}
