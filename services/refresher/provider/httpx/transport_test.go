package httpx

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestTransportReusesConnections: rounds of 16 token requests at once to one
// host, each through its own provider's client, dial 16 connections in all,
// not 14 more every round as with http.DefaultTransport's 2 idle
// connections per host.
func TestTransportReusesConnections(t *testing.T) {
	const inFlight, rounds = 16, 5
	var dials atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		time.Sleep(5 * time.Millisecond) // every request of a round overlaps
		_, _ = w.Write([]byte(`{"access_token":"t","expires_in":"3599"}`))
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			dials.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	tr := NewTransport(inFlight)
	defer tr.CloseIdleConnections()
	for range rounds {
		var wg sync.WaitGroup
		for range inFlight {
			wg.Go(func() {
				c := NewClient(time.Second, tr) // one client per provider, as the refresher builds them
				req, _ := http.NewRequest(http.MethodGet, srv.URL+"/oauth/v1/generate?grant_type=client_credentials", nil)
				if _, err := Do(context.Background(), c, req); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
	}
	if n := dials.Load(); n > inFlight {
		t.Fatalf("%d connections dialled for %d rounds of %d requests, want at most %d", n, rounds, inFlight, inFlight)
	}
}
