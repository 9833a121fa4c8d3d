package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokenbus/tokenbus/libs/simulator"
	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
	"github.com/tokenbus/tokenbus/services/refresher/rpc"
)

// startReplica runs one refresher replica against an external server.
func startReplica(t *testing.T, url, simURL, name string) *Main {
	t.Helper()
	cfg := fmt.Sprintf(`
nats: {url: %q}
lease: {ttl: 1500ms, retry_period: 100ms}
http: {listen: "127.0.0.1:0"}
providers:
  - {name: daraja-test, kind: daraja, base_url: %q, consumer_key: sim-consumer-key, consumer_secret: sim-consumer-secret}
`, url, simURL)
	path := filepath.Join(t.TempDir(), "r.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	m := NewMain(Options{ConfigPath: path, Instance: name}, &testutil.LogBuffer{}, &testutil.LogBuffer{})
	if err := m.Run(context.Background()); err != nil {
		_ = m.Close()
		t.Fatal(err)
	}
	return m
}

func gatherStatus(t *testing.T, nc *nats.Conn) map[string]wire.Status {
	t.Helper()
	inbox := nats.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.PublishRequest(wire.StatusSubject, inbox, nil); err != nil {
		t.Fatal(err)
	}
	out := map[string]wire.Status{}
	for {
		msg, err := sub.NextMsg(200 * time.Millisecond)
		if err != nil {
			return out
		}
		var st wire.Status
		if json.Unmarshal(msg.Data, &st) == nil {
			out[st.Instance] = st
		}
	}
}

func TestStandbyServesAndTakesOverOnCleanShutdown(t *testing.T) {
	sim := simulator.New(simulator.Config{})
	srv := httptest.NewServer(sim)
	defer srv.Close()
	ns := testutil.RunServer(t)
	nc := testutil.Connect(t, ns)

	a := startReplica(t, ns.ClientURL(), srv.URL, "replica-a")
	var first wire.Token
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		var e string
		if first, e = getToken(t, nc, "daraja-test"); e != "" {
			return errors.New(e)
		}
		return nil
	})
	b := startReplica(t, ns.ClientURL(), srv.URL, "replica-b")
	defer b.Close()

	// Both answer; one leads, and both agree which.
	testutil.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		st := gatherStatus(t, nc)
		if len(st) != 2 || !st["replica-a"].Leader || st["replica-b"].Leader || st["replica-b"].LeaderInstance != "replica-a" {
			return fmt.Errorf("status %+v", st)
		}
		if p := st["replica-b"].Providers; len(p) != 1 || p[0].State != wire.StateOK {
			return fmt.Errorf("standby has no token: %+v", p)
		}
		return nil
	})
	// Refresh reports, some of them landing on the standby, cause exactly one
	// upstream call, made by the leader.
	body, _ := json.Marshal(wire.RefreshRequest{InvalidToken: first.AccessToken})
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			msg, err := nc.Request(wire.RefreshSubject("daraja-test"), body, 5*time.Second)
			var tok wire.Token
			if err != nil || json.Unmarshal(msg.Data, &tok) != nil || tok.AccessToken == first.AccessToken {
				t.Errorf("refresh: %v %s", err, msg.Data)
			}
		})
	}
	wg.Wait()
	if n := sim.Stats(simulator.Daraja).TokenRequests; n != 2 {
		t.Fatalf("%d upstream calls, want 2", n)
	}
	// A clean stop hands the lease over at once; tokens stay available and
	// the new leader does not replace the still-fresh token.
	stopped := time.Now()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 2*time.Second, 10*time.Millisecond, func() error {
		if !gatherStatus(t, nc)["replica-b"].Leader {
			return errors.New("b not leading")
		}
		return nil
	})
	if d := time.Since(stopped); d > time.Second {
		t.Fatalf("handover took %v", d)
	}
	if _, e := getToken(t, nc, "daraja-test"); e != "" {
		t.Fatalf("token.get after handover: %s", e)
	}
	time.Sleep(300 * time.Millisecond)
	if n := sim.Stats(simulator.Daraja).TokenRequests; n != 2 {
		t.Fatalf("new leader re-fetched a fresh token: %d upstream calls", n)
	}
}

// TestStandbyMinValidity: a standby answers token.get with min_validity from
// its copy when that lives long enough, and otherwise has the leader refresh
// early (forwarded as token.refresh does): the new token, one provider call.
func TestStandbyMinValidity(t *testing.T) {
	sim := simulator.New(simulator.Config{DarajaTTL: 20 * time.Second})
	srv := httptest.NewServer(sim)
	defer srv.Close()
	ns := testutil.RunServer(t)
	nc := testutil.Connect(t, ns)
	a := startReplica(t, ns.ClientURL(), srv.URL, "replica-a")
	defer a.Close()
	var first wire.Token
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		var e string
		first, e = getToken(t, nc, "daraja-test")
		return errorIf(e)
	})
	b := startReplica(t, ns.ClientURL(), srv.URL, "replica-b")
	defer b.Close()
	src, ok := b.set.Lookup("daraja-test")
	fresher, isFresher := src.(rpc.Fresher)
	if !ok || !isFresher {
		t.Fatalf("the standby's source %T answers no min_validity", src)
	}
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if b.leader.Valid() {
			return errors.New("replica-b leads")
		}
		_, err := b.set.Get("daraja-test").Manager.Current()
		return err
	})
	ctx := context.Background()
	issued := sim.Stats(simulator.Daraja).TokensIssued
	body, _, err := fresher.GetFresh(ctx, 5*time.Second)
	var tok wire.Token
	if err != nil || json.Unmarshal(body, &tok) != nil || tok.AccessToken != first.AccessToken {
		t.Fatalf("a copy that lives long enough: %s %v", body, err)
	}
	for time.Until(first.ExpiresAt) > 14*time.Second { // age it: 17 s is then more than it has left
		time.Sleep(100 * time.Millisecond)
	}
	body, _, err = fresher.GetFresh(ctx, 17*time.Second)
	if err != nil || json.Unmarshal(body, &tok) != nil || tok.AccessToken == first.AccessToken || time.Until(tok.ExpiresAt) < 17*time.Second {
		t.Fatalf("refreshed early through the leader: %s %v", body, err)
	}
	if n := sim.Stats(simulator.Daraja).TokensIssued - issued; n != 1 {
		t.Fatalf("%d tokens issued, want 1", n)
	}
	if protected(t, sim, tok.AccessToken) != 200 {
		t.Fatal("the simulator rejects the token refreshed early")
	}
}
