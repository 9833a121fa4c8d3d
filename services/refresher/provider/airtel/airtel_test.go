package airtel_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/tokenbus/tokenbus/libs/simulator"
	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/provider/airtel"
)

const secret = "AIRTEL-CLIENT-SECRET-9d2e"

func newSim(t *testing.T, cfg simulator.Config) (*simulator.Server, *httptest.Server) {
	t.Helper()
	cfg.AirtelClientID, cfg.AirtelClientSecret = "client", secret
	sim := simulator.New(cfg)
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	return sim, srv
}

func TestTokenFromSimulator(t *testing.T) {
	sim, srv := newSim(t, simulator.Config{})
	p := airtel.New(airtel.Config{BaseURL: srv.URL + "/", ClientID: "client", ClientSecret: secret})
	before := time.Now()
	tok, err := p.Token(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// expires_in arrives as the string "180".
	if tok.AccessToken == "" || tok.TokenType != "bearer" || tok.Lifetime() != 180*time.Second || tok.IssuedAt.Before(before) {
		t.Fatalf("token %+v", tok)
	}
	if code := protected(t, srv.URL, tok.AccessToken.Reveal()); code != 200 {
		t.Fatalf("protected call: %d", code)
	}
	if s := sim.Stats(simulator.Airtel); s.TokensIssued != 1 || s.ProtectedOK != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func protected(t *testing.T, base, token string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, base+"/airtel/protected", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

type want struct {
	kind   refresher.Kind
	status int
	code   string
	substr string
}

func check(t *testing.T, err error, w want) {
	t.Helper()
	var pe *refresher.ProviderError
	if !errors.As(err, &pe) {
		t.Fatalf("error %v is not a ProviderError", err)
	}
	if pe.Kind != w.kind || pe.StatusCode != w.status || pe.Code != w.code || !strings.Contains(err.Error(), w.substr) {
		t.Fatalf("got kind=%v status=%d code=%q %q; want kind=%v status=%d code=%q containing %q", pe.Kind, pe.StatusCode, pe.Code, err, w.kind, w.status, w.code, w.substr)
	}
	if strings.Contains(err.Error(), secret) {
		t.Fatalf("secret leaked into error: %v", err)
	}
}

func TestFailuresAreClassified(t *testing.T) {
	for _, tc := range []struct {
		name   string
		faults simulator.Faults
		secret string
		want   want
	}{
		{"bad credentials", simulator.Faults{}, "wrong", want{refresher.Permanent, 401, "invalid_client", "bad credentials: Airtel rejected client_id/client_secret"}},
		{"outage", simulator.Faults{Outage: true}, secret, want{refresher.Transient, 503, "temporarily_unavailable", "temporarily unavailable"}},
		{"error rate", simulator.Faults{ErrorRate: 1}, secret, want{refresher.Transient, 503, "temporarily_unavailable", "HTTP 503"}},
		{"html", simulator.Faults{Malformed: "html"}, secret, want{refresher.Permanent, 200, "", "expected JSON, got text/html"}},
		{"no token", simulator.Faults{Malformed: "no_token"}, secret, want{refresher.Permanent, 200, "", "access_token is missing"}},
		{"bad expires_in", simulator.Faults{Malformed: "bad_expires"}, secret, want{refresher.Permanent, 200, "", "malformed token response"}},
		{"garbage", simulator.Faults{Malformed: "garbage"}, secret, want{refresher.Permanent, 200, "", "not valid JSON"}},
		{"huge", simulator.Faults{Malformed: "huge"}, secret, want{refresher.Permanent, 200, "", "larger than"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sim, srv := newSim(t, simulator.Config{})
			sim.SetFaults(simulator.Airtel, tc.faults)
			p := airtel.New(airtel.Config{BaseURL: srv.URL, ClientID: "client", ClientSecret: refresher.Secret(tc.secret)})
			tok, err := p.Token(context.Background())
			if err == nil {
				t.Fatalf("got token %+v, want error", tok)
			}
			check(t, err, tc.want)
		})
	}

	t.Run("timeout", func(t *testing.T) {
		sim, srv := newSim(t, simulator.Config{})
		sim.SetFaults(simulator.Airtel, simulator.Faults{Latency: 300 * time.Millisecond})
		p := airtel.New(airtel.Config{BaseURL: srv.URL, ClientID: "client", ClientSecret: secret, Timeout: 50 * time.Millisecond})
		_, err := p.Token(context.Background())
		check(t, err, want{refresher.Transient, 0, "", "timed out"})
	})

	// Answers the simulator cannot be made to give (our request is always
	// well formed), crafted as an OAuth2 server sends them.
	for _, tc := range []struct {
		name, body string
		status     int
		want       want
	}{
		{"unsupported grant", `{"error":"unsupported_grant_type","error_description":"Only client_credentials"}`, 400, want{refresher.Permanent, 400, "unsupported_grant_type", "grant_type=client_credentials (Only client_credentials)"}},
		{"invalid request", `{"error":"invalid_request"}`, 400, want{refresher.Permanent, 400, "invalid_request", "could not read"}},
		{"gateway message", `{"message":"Forbidden by policy"}`, 403, want{refresher.Permanent, 403, "", "Forbidden by policy"}},
		{"429", `{}`, 429, want{refresher.Transient, 429, "", "Too Many Requests"}},
		{"expires_in number", `{"access_token":"x","expires_in":0}`, 200, want{refresher.Permanent, 200, "", "out of range"}},
		{"expires_in missing", `{"access_token":"x","token_type":"bearer"}`, 200, want{refresher.Permanent, 200, "", "expires_in is missing"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(tc.status)
				_, _ = w.Write([]byte(tc.body))
			}))
			t.Cleanup(srv.Close)
			p := airtel.New(airtel.Config{BaseURL: srv.URL, ClientID: "client", ClientSecret: secret})
			_, err := p.Token(context.Background())
			check(t, err, tc.want)
		})
	}
}
