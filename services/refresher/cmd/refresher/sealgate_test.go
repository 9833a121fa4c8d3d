package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/tokenbus/tokenbus/libs/simulator"
	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
)

// TestResealWaitsForTheFleet: while a replica of an earlier release (one
// whose token.status reports no seal_format) answers, the lease holder does
// not re-seal records in a format that replica could not open; once it is
// gone, it does. The refresher itself reports the format it opens.
func TestResealWaitsForTheFleet(t *testing.T) {
	sim := simulator.New(simulator.Config{})
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	rs := runtimeSetup{dir: t.TempDir(), simURL: srv.URL, keys: fmt.Sprintf("[{id: k1, key: %q}]", newKey())}
	m, logs := startRuntime(t, rs)
	defer func() { _ = m.Close() }()
	if !m.fleetOpensFormat(t.Context()) {
		t.Fatal("a fleet of this release alone: re-sealing should go ahead")
	}
	if st := m.Status(wire.StatusRequest{}); st.SealFormat < 2 {
		t.Fatalf("token.status seal_format %d, want the whole-record format", st.SealFormat)
	}

	nc := testutil.Connect(t, m.ns)
	old, err := nc.Subscribe(wire.StatusSubject, func(msg *nats.Msg) {
		b, _ := json.Marshal(wire.Status{Instance: "old-1", Version: "0.2.0", Providers: []wire.ProviderStatus{}})
		_ = msg.Respond(b)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if m.fleetOpensFormat(context.Background()) {
		t.Fatal("a replica of an earlier release answers: re-sealing should wait")
	}
	if !strings.Contains(logs.String(), "re-sealing runtime providers waits") {
		t.Fatal("the wait is not logged")
	}
	_ = old.Unsubscribe()
	_ = nc.Flush()
	if !m.fleetOpensFormat(context.Background()) {
		t.Fatal("the earlier release is gone: re-sealing should go ahead")
	}
}
