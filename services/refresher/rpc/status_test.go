package rpc_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
	"github.com/tokenbus/tokenbus/services/refresher/rpc"
)

// token.status fits one NATS message whatever the number of providers and
// the length of their errors: summary, filter and paging.
func TestStatusFitsOneMessage(t *testing.T) {
	ns := testutil.RunServer(t)
	nc := testutil.Connect(t, ns)
	const n = 3000
	long := strings.Repeat("provider error: upstream said something long; ", 40) // about 1.9 KB
	all := make([]wire.ProviderStatus, n)
	for i := range all {
		all[i] = wire.ProviderStatus{Name: fmt.Sprintf("m-%05d", i), Kind: "daraja", State: wire.StateFailing, LastError: long}
	}
	all[7].State = wire.StateNoToken
	svc, err := rpc.Start(nc, rpc.Config{Status: func(q wire.StatusRequest) wire.Status { return wire.Status{Instance: "i", Providers: all}.Page(q) }})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Stop()
	ask := func(q any) wire.Status {
		t.Helper()
		body, _ := json.Marshal(q)
		msg, err := nc.Request(wire.StatusSubject, body, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(msg.Data)) > nc.MaxPayload() {
			t.Fatalf("reply of %d bytes exceeds max_payload %d", len(msg.Data), nc.MaxPayload())
		}
		var st wire.Status
		if err := json.Unmarshal(msg.Data, &st); err != nil {
			t.Fatal(err)
		}
		return st
	}
	// 1000 providers with 1.9 KB errors would be 2 MB: the page is cut to fit.
	st := ask(wire.StatusRequest{})
	if st.Summary.Total != n || st.Summary.States[wire.StateFailing] != n-1 || st.Summary.States[wire.StateNoToken] != 1 ||
		len(st.Providers) == 0 || len(st.Providers) >= 1000 || st.Next != st.Providers[len(st.Providers)-1].Name {
		t.Fatalf("first page: %+v, %d providers, next %q", st.Summary, len(st.Providers), st.Next)
	}
	// Following next visits every provider once.
	seen := len(st.Providers)
	for st.Next != "" {
		st = ask(wire.StatusRequest{After: st.Next})
		seen += len(st.Providers)
	}
	if seen != n {
		t.Fatalf("pages held %d providers, want %d", seen, n)
	}
	if st = ask(wire.StatusRequest{Provider: "m-00042"}); len(st.Providers) != 1 || st.Providers[0].Name != "m-00042" {
		t.Fatalf("filter: %+v", st.Providers)
	}
	if st = ask(wire.StatusRequest{State: wire.StateNoToken}); len(st.Providers) != 1 || st.Providers[0].Name != "m-00007" {
		t.Fatalf("state filter: %+v", st.Providers)
	}
	// An empty request still answers (small deployments: every provider).
	msg, err := nc.Request(wire.StatusSubject, nil, 5*time.Second)
	if err != nil || msg.Header.Get(wire.HeaderErrorCode) != "" {
		t.Fatalf("empty request: %v %v", err, msg.Header)
	}
	bad, _ := nc.Request(wire.StatusSubject, []byte("[1]"), 5*time.Second)
	if bad == nil || bad.Header.Get(wire.HeaderErrorCode) != "400" {
		t.Fatalf("bad request not refused")
	}
}
