package oauth2_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenbus/tokenbus/libs/simulator"
	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/provider/oauth2"
)

const (
	secret = "MOMO-API-KEY-0b7c41"
	subKey = "MOMO-SUBSCRIPTION-KEY-e2f9"
)

func newSim(t *testing.T, cfg simulator.Config) (*simulator.Server, *httptest.Server) {
	t.Helper()
	cfg.OAuth2ClientID, cfg.OAuth2ClientSecret = "api-user", secret
	sim := simulator.New(cfg)
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	return sim, srv
}

// recorder keeps the last token request's headers and form.
type recorder struct {
	mu     sync.Mutex
	header http.Header
	form   string
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	body, _ := req.GetBody()
	var b strings.Builder
	if body != nil {
		buf := make([]byte, 4096)
		n, _ := body.Read(buf)
		b.Write(buf[:n])
	}
	r.mu.Lock()
	r.header, r.form = req.Header.Clone(), b.String()
	r.mu.Unlock()
	return http.DefaultTransport.RoundTrip(req)
}

func TestMoMoTokenFromSimulator(t *testing.T) {
	for _, style := range []string{oauth2.AuthStyleHeader, oauth2.AuthStyleParams} {
		t.Run(style, func(t *testing.T) {
			sim, srv := newSim(t, simulator.Config{OAuth2SubscriptionKey: subKey, OAuth2TTL: time.Hour})
			rec := &recorder{}
			p := oauth2.New(oauth2.Config{
				TokenURL: srv.URL + "/collection/token/", ClientID: "api-user", ClientSecret: secret,
				AuthStyle: style, Scopes: []string{"collection", "read"},
				Headers:   map[string]refresher.Secret{"Ocp-Apim-Subscription-Key": subKey, "X-Target-Environment": "sandbox"},
				Transport: rec,
			})
			before := time.Now()
			tok, err := p.Token(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			// MoMo's non-standard token_type is kept as sent.
			if tok.AccessToken == "" || tok.TokenType != "access_token" || tok.Lifetime() != time.Hour || tok.IssuedAt.Before(before) {
				t.Fatalf("token %+v", tok)
			}
			if code := protected(t, srv.URL, tok.AccessToken.Reveal()); code != 200 {
				t.Fatalf("protected call: %d", code)
			}
			if s := sim.Stats(simulator.OAuth2); s.TokensIssued != 1 {
				t.Fatalf("stats %+v", s)
			}
			rec.mu.Lock()
			defer rec.mu.Unlock()
			_, _, hasBasic := (&http.Request{Header: rec.header}).BasicAuth()
			inForm := strings.Contains(rec.form, "client_secret=")
			if hasBasic != (style == oauth2.AuthStyleHeader) || inForm != (style == oauth2.AuthStyleParams) {
				t.Fatalf("auth style %s: basic=%v form=%q", style, hasBasic, rec.form)
			}
			if !strings.Contains(rec.form, "scope=collection+read") || !strings.Contains(rec.form, "grant_type=client_credentials") {
				t.Fatalf("form %q", rec.form)
			}
			if rec.header.Get("X-Target-Environment") != "sandbox" || !strings.HasPrefix(rec.header.Get("User-Agent"), "tokenbus-refresher") {
				t.Fatalf("headers %v", rec.header)
			}
		})
	}
}

func protected(t *testing.T, base, token string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, base+"/oauth2/protected", nil)
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
	for _, s := range []string{secret, subKey} {
		if strings.Contains(err.Error(), s) {
			t.Fatalf("secret leaked into error: %v", err)
		}
	}
}

func TestFailuresAreClassified(t *testing.T) {
	for _, tc := range []struct {
		name   string
		faults simulator.Faults
		secret string
		subKey string
		want   want
	}{
		// MoMo answers bad credentials with 500 {"error":"login_failed"}.
		{"login_failed", simulator.Faults{}, "wrong", subKey, want{refresher.Permanent, 500, "login_failed", "bad credentials"}},
		{"no subscription key", simulator.Faults{}, secret, "", want{refresher.Permanent, 401, "", "missing subscription key"}},
		{"bad subscription key", simulator.Faults{}, secret, "wrong", want{refresher.Permanent, 401, "", "invalid subscription key"}},
		{"outage", simulator.Faults{Outage: true}, secret, subKey, want{refresher.Transient, 503, "temporarily_unavailable", "temporarily unavailable"}},
		{"error rate", simulator.Faults{ErrorRate: 1}, secret, subKey, want{refresher.Transient, 503, "temporarily_unavailable", "HTTP 503"}},
		{"html", simulator.Faults{Malformed: "html"}, secret, subKey, want{refresher.Permanent, 200, "", "malformed token response"}},
		{"no token", simulator.Faults{Malformed: "no_token"}, secret, subKey, want{refresher.Permanent, 200, "", "access_token is missing"}},
		{"bad expires_in", simulator.Faults{Malformed: "bad_expires"}, secret, subKey, want{refresher.Permanent, 200, "", "malformed token response"}},
		{"garbage", simulator.Faults{Malformed: "garbage"}, secret, subKey, want{refresher.Permanent, 200, "", "malformed token response"}},
		{"huge", simulator.Faults{Malformed: "huge"}, secret, subKey, want{refresher.Permanent, 0, "", "larger than"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sim, srv := newSim(t, simulator.Config{OAuth2SubscriptionKey: subKey})
			sim.SetFaults(simulator.OAuth2, tc.faults)
			h := map[string]refresher.Secret{}
			if tc.subKey != "" {
				h["Ocp-Apim-Subscription-Key"] = refresher.Secret(tc.subKey)
			}
			p := oauth2.New(oauth2.Config{TokenURL: srv.URL + "/collection/token/", ClientID: "api-user", ClientSecret: refresher.Secret(tc.secret), Headers: h})
			tok, err := p.Token(context.Background())
			if err == nil {
				t.Fatalf("got token %+v, want error", tok)
			}
			check(t, err, tc.want)
		})
	}

	t.Run("timeout", func(t *testing.T) {
		sim, srv := newSim(t, simulator.Config{})
		sim.SetFaults(simulator.OAuth2, simulator.Faults{Latency: 300 * time.Millisecond})
		p := oauth2.New(oauth2.Config{TokenURL: srv.URL + "/oauth2/token", ClientID: "api-user", ClientSecret: secret, Timeout: 50 * time.Millisecond})
		_, err := p.Token(context.Background())
		check(t, err, want{refresher.Transient, 0, "", "timed out"})
	})

	t.Run("connection refused", func(t *testing.T) {
		srv := httptest.NewServer(http.NotFoundHandler())
		srv.Close()
		p := oauth2.New(oauth2.Config{TokenURL: srv.URL + "/oauth2/token?x=1", ClientID: "api-user", ClientSecret: secret})
		_, err := p.Token(context.Background())
		check(t, err, want{refresher.Transient, 0, "", "failed"})
		if strings.Contains(err.Error(), "x=1") {
			t.Fatalf("query in error: %v", err)
		}
	})

	// Answers the simulator cannot be made to give, crafted per RFC 6749.
	for _, tc := range []struct {
		name, ctype, body string
		status            int
		retryAfter        string
		want              want
	}{
		{"invalid_scope", "application/json", `{"error":"invalid_scope","error_description":"scope payments is not granted"}`, 400, "", want{refresher.Permanent, 400, "invalid_scope", "check scopes) (scope payments is not granted)"}},
		{"unsupported_grant_type", "application/json", `{"error":"unsupported_grant_type"}`, 400, "", want{refresher.Permanent, 400, "unsupported_grant_type", "grant_type=client_credentials"}},
		{"invalid_client 401", "application/json", `{"error":"invalid_client"}`, 401, "", want{refresher.Permanent, 401, "invalid_client", "auth_style"}},
		{"form-encoded error", "application/x-www-form-urlencoded", `error=invalid_grant&error_description=nope`, 400, "", want{refresher.Permanent, 400, "invalid_grant", "(nope)"}},
		{"error code in a 200", "application/json", `{"error":"access_denied"}`, 200, "", want{refresher.Permanent, 200, "access_denied", "access denied"}},
		{"429", "application/json", `{}`, 429, "7", want{refresher.Transient, 429, "", "Too Many Requests"}},
		{"502 html", "text/html", `<html>bad gateway</html>`, 502, "", want{refresher.Transient, 502, "", "Bad Gateway"}},
		{"expires_in missing", "application/json", `{"access_token":"x","token_type":"Bearer"}`, 200, "", want{refresher.Permanent, 200, "", "expires_in is missing"}},
		{"expires_in negative", "application/json", `{"access_token":"x","expires_in":-3}`, 200, "", want{refresher.Permanent, 200, "", "out of range"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", tc.ctype)
				if tc.retryAfter != "" {
					w.Header().Set("Retry-After", tc.retryAfter)
				}
				w.WriteHeader(tc.status)
				_, _ = w.Write([]byte(tc.body))
			}))
			t.Cleanup(srv.Close)
			p := oauth2.New(oauth2.Config{TokenURL: srv.URL, ClientID: "api-user", ClientSecret: secret})
			_, err := p.Token(context.Background())
			check(t, err, tc.want)
			var pe *refresher.ProviderError
			if errors.As(err, &pe) && tc.retryAfter != "" && pe.RetryAfter != 7*time.Second {
				t.Fatalf("retry after %v", pe.RetryAfter)
			}
		})
	}

	t.Run("expires_in as a string", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"access_token":"x","token_type":"bearer","expires_in":"3600"}`))
		}))
		t.Cleanup(srv.Close)
		tok, err := oauth2.New(oauth2.Config{TokenURL: srv.URL, ClientID: "id", ClientSecret: secret}).Token(context.Background())
		if err != nil || tok.Lifetime() != time.Hour || tok.TokenType != "bearer" {
			t.Fatalf("%+v %v", tok, err)
		}
	})
}
