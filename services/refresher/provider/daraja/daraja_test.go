package daraja_test

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
	"github.com/tokenbus/tokenbus/services/refresher/provider/daraja"
)

const secret = "S3CR3T-consumer-secret-value"

func newSim(t *testing.T, cfg simulator.Config) (*simulator.Server, *httptest.Server) {
	t.Helper()
	cfg.DarajaKey, cfg.DarajaSecret = "key", secret
	sim := simulator.New(cfg)
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	return sim, srv
}

func TestTokenFromSimulator(t *testing.T) {
	for _, number := range []bool{false, true} {
		sim, srv := newSim(t, simulator.Config{DarajaTTL: 3599 * time.Second, DarajaExpiresInNumber: number})
		p := daraja.New(daraja.Config{BaseURL: srv.URL + "/", ConsumerKey: "key", ConsumerSecret: secret})
		before := time.Now()
		tok, err := p.Token(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if tok.AccessToken == "" || tok.TokenType != "Bearer" || tok.Lifetime() != 3599*time.Second || tok.IssuedAt.Before(before) {
			t.Fatalf("number=%v: token %+v", number, tok)
		}
		// The simulator's protected endpoint accepts it, and a second token
		// invalidates the first (Daraja's documented behaviour).
		if code := protected(t, srv.URL, tok.AccessToken.Reveal()); code != 200 {
			t.Fatalf("protected call with fresh token: %d", code)
		}
		tok2, err := p.Token(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if code := protected(t, srv.URL, tok.AccessToken.Reveal()); code != 401 {
			t.Fatalf("old token still accepted after a new one: %d", code)
		}
		if code := protected(t, srv.URL, tok2.AccessToken.Reveal()); code != 200 {
			t.Fatalf("new token rejected: %d", code)
		}
		if s := sim.Stats(simulator.Daraja); s.TokensIssued != 2 {
			t.Fatalf("stats %+v", s)
		}
	}
}

func protected(t *testing.T, base, token string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, base+"/mpesa/stkpush/v1/processrequest", strings.NewReader("{}"))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestFailuresAreClassified(t *testing.T) {
	type want struct {
		kind   refresher.Kind
		code   string
		substr string
	}
	check := func(t *testing.T, err error, w want) {
		t.Helper()
		var pe *refresher.ProviderError
		if !errors.As(err, &pe) {
			t.Fatalf("error %v is not a ProviderError", err)
		}
		if pe.Kind != w.kind || pe.Code != w.code || !strings.Contains(err.Error(), w.substr) {
			t.Fatalf("got kind=%v code=%q %q; want kind=%v code=%q containing %q", pe.Kind, pe.Code, err, w.kind, w.code, w.substr)
		}
		if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "a2V5Oi") {
			t.Fatalf("credential leaked into error: %v", err)
		}
	}

	t.Run("simulator", func(t *testing.T) {
		for _, tc := range []struct {
			name   string
			faults simulator.Faults
			secret string
			want   want
		}{
			{"bad credentials", simulator.Faults{}, "wrong", want{refresher.Permanent, "", "bad credentials"}},
			{"outage", simulator.Faults{Outage: true}, secret, want{refresher.Transient, "", "HTTP 503"}},
			{"error rate", simulator.Faults{ErrorRate: 1}, secret, want{refresher.Transient, "", "HTTP 503"}},
			{"html", simulator.Faults{Malformed: "html"}, secret, want{refresher.Permanent, "", "expected JSON, got text/html"}},
			{"no token", simulator.Faults{Malformed: "no_token"}, secret, want{refresher.Permanent, "", "access_token is missing"}},
			{"bad expires_in", simulator.Faults{Malformed: "bad_expires"}, secret, want{refresher.Permanent, "", "malformed token response"}},
			{"garbage", simulator.Faults{Malformed: "garbage"}, secret, want{refresher.Permanent, "", "malformed token response"}},
			{"huge", simulator.Faults{Malformed: "huge"}, secret, want{refresher.Permanent, "", "larger than"}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				sim, srv := newSim(t, simulator.Config{})
				sim.SetFaults(simulator.Daraja, tc.faults)
				p := daraja.New(daraja.Config{BaseURL: srv.URL, ConsumerKey: "key", ConsumerSecret: refresher.Secret(tc.secret)})
				tok, err := p.Token(context.Background())
				if err == nil {
					t.Fatalf("got token %+v, want error", tok)
				}
				check(t, err, tc.want)
			})
		}
	})

	t.Run("timeout", func(t *testing.T) {
		sim, srv := newSim(t, simulator.Config{})
		sim.SetFaults(simulator.Daraja, simulator.Faults{Latency: 2 * time.Second})
		p := daraja.New(daraja.Config{BaseURL: srv.URL, ConsumerKey: "key", ConsumerSecret: secret, Timeout: 50 * time.Millisecond})
		_, err := p.Token(context.Background())
		check(t, err, want{refresher.Transient, "", "timed out"})
	})

	t.Run("connection refused", func(t *testing.T) {
		srv := httptest.NewServer(http.NotFoundHandler())
		srv.Close()
		p := daraja.New(daraja.Config{BaseURL: srv.URL, ConsumerKey: "key", ConsumerSecret: secret})
		_, err := p.Token(context.Background())
		check(t, err, want{refresher.Transient, "", "failed"})
	})

	// Answers the simulator cannot be made to give (our client always sends
	// Basic auth and the right grant type), crafted as Daraja sends them.
	for _, tc := range []struct {
		name   string
		status int
		ctype  string
		body   string
		want   want
	}{
		{"400.008.01", 400, "application/json", `{"requestId":"1","errorCode":"400.008.01","errorMessage":"Invalid Authentication passed"}`, want{refresher.Permanent, "400.008.01", "HTTP Basic auth"}},
		{"400.008.02", 400, "application/json", `{"requestId":"1","errorCode":"400.008.02","errorMessage":"Invalid grant type passed"}`, want{refresher.Permanent, "400.008.02", "grant_type=client_credentials"}},
		{"unknown code", 403, "application/json", `{"errorCode":"403.000.01","errorMessage":"Forbidden by policy"}`, want{refresher.Permanent, "403.000.01", "Forbidden by policy"}},
		{"500 html", 500, "text/html", `<html>Internal</html>`, want{refresher.Transient, "", "HTTP 500"}},
		{"expires_in zero", 200, "application/json", `{"access_token":"x","expires_in":"0"}`, want{refresher.Permanent, "", "out of range"}},
		{"expires_in missing", 200, "application/json", `{"access_token":"x"}`, want{refresher.Permanent, "", "expires_in is missing"}},
		{"expires_in negative number", 200, "application/json", `{"access_token":"x","expires_in":-5}`, want{refresher.Permanent, "", "out of range"}},
		{"json array", 200, "application/json", `[]`, want{refresher.Permanent, "", "not valid JSON"}},
		{"empty 200", 200, "application/json", ``, want{refresher.Permanent, "", "not valid JSON"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", tc.ctype)
				w.WriteHeader(tc.status)
				_, _ = w.Write([]byte(tc.body))
			}))
			t.Cleanup(srv.Close)
			p := daraja.New(daraja.Config{BaseURL: srv.URL, ConsumerKey: "key", ConsumerSecret: secret})
			_, err := p.Token(context.Background())
			check(t, err, tc.want)
		})
	}
}
