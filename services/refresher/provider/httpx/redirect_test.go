package httpx

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

// TestNoRedirects: a token endpoint that redirects gets its redirect back as
// the answer; the request, with its credentials, never goes to the other
// address — through a provider's Client on the shared transport, on a base
// of its own, and through NewHTTPClient (oauth2's).
func TestNoRedirects(t *testing.T) {
	var elsewhere atomic.Int64
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { elsewhere.Add(1) }))
	defer other.Close()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+"/steal", http.StatusFound)
	}))
	defer srv.Close()
	tr := NewTransport(2)
	defer tr.CloseIdleConnections()
	shared := Instrument(tr)
	send := func(c Client) int {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/token", nil)
		req.Header.Set("Authorization", "Basic c2VjcmV0")
		resp, err := Do(context.Background(), c, req)
		if err != nil {
			t.Fatal(err)
		}
		return resp.Status
	}
	for name, c := range map[string]Client{"shared": NewClient(time.Second, shared), "own base": NewClient(time.Second, nil)} {
		if got := send(c); got != http.StatusFound {
			t.Errorf("%s: status %d, want the redirect (302)", name, got)
		}
	}
	resp, err := NewHTTPClient(time.Second, shared).Post(srv.URL+"/token", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		t.Errorf("NewHTTPClient: status %d, want the redirect (302)", resp.StatusCode)
	}
	if n := elsewhere.Load(); n != 0 {
		t.Fatalf("%d requests followed the redirect", n)
	}
}
