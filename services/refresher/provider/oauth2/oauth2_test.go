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
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
	"github.com/tokenbus/tokenbus/services/refresher/provider/oauth2"
)

const (
	secret = "MOMO-API-KEY-0b7c41"
	subKey = "MOMO-SUBSCRIPTION-KEY-e2f9"
)

// secrets must not appear in an error.
var secrets = []string{secret, subKey}

func newSim(t *testing.T, cfg simulator.Config) (*simulator.Server, *httptest.Server) {
	t.Helper()
	cfg.OAuth2ClientID, cfg.OAuth2ClientSecret = "api-user", secret
	return testutil.StartSimulator(t, cfg)
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
			if code := testutil.ProtectedCall(t, http.MethodGet, srv.URL+"/oauth2/protected", tok.AccessToken.Reveal()); code != 200 {
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

func TestFailuresAreClassified(t *testing.T) {
	// MoMo answers bad credentials with 500 {"error":"login_failed"}.
	testutil.CheckFaults(t, simulator.OAuth2, func(t *testing.T) (*simulator.Server, *httptest.Server) {
		return newSim(t, simulator.Config{OAuth2SubscriptionKey: subKey})
	}, func(base string, s refresher.Secret, timeout time.Duration) refresher.Provider {
		return oauth2.New(oauth2.Config{TokenURL: base + "/collection/token/", ClientID: "api-user", ClientSecret: s,
			Headers: map[string]refresher.Secret{"Ocp-Apim-Subscription-Key": subKey}, Timeout: timeout})
	}, secret, []testutil.FaultCase{
		{Name: "login_failed", Faults: simulator.Faults{}, Secret: "wrong", Want: testutil.WantError{Kind: refresher.Permanent, Status: 500, Code: "login_failed", Substr: "bad credentials"}},
		{Name: "outage", Faults: simulator.Faults{Outage: true}, Secret: secret, Want: testutil.WantError{Kind: refresher.Transient, Status: 503, Code: "temporarily_unavailable", Substr: "temporarily unavailable"}},
		{Name: "error rate", Faults: simulator.Faults{ErrorRate: 1}, Secret: secret, Want: testutil.WantError{Kind: refresher.Transient, Status: 503, Code: "temporarily_unavailable", Substr: "HTTP 503"}},
		{Name: "html", Faults: simulator.Faults{Malformed: "html"}, Secret: secret, Want: testutil.WantError{Kind: refresher.Permanent, Status: 200, Code: "", Substr: "malformed token response"}},
		{Name: "no token", Faults: simulator.Faults{Malformed: "no_token"}, Secret: secret, Want: testutil.WantError{Kind: refresher.Permanent, Status: 200, Code: "", Substr: "access_token is missing"}},
		{Name: "bad expires_in", Faults: simulator.Faults{Malformed: "bad_expires"}, Secret: secret, Want: testutil.WantError{Kind: refresher.Permanent, Status: 200, Code: "", Substr: "malformed token response"}},
		{Name: "garbage", Faults: simulator.Faults{Malformed: "garbage"}, Secret: secret, Want: testutil.WantError{Kind: refresher.Permanent, Status: 200, Code: "", Substr: "malformed token response"}},
		{Name: "huge", Faults: simulator.Faults{Malformed: "huge"}, Secret: secret, Want: testutil.WantError{Kind: refresher.Permanent, Status: 0, Code: "", Substr: "larger than"}},
	}, secrets...)
}

// TestSubscriptionKey: MoMo's gateway refuses a missing or wrong
// Ocp-Apim-Subscription-Key before it looks at the client credentials.
func TestSubscriptionKey(t *testing.T) {
	for _, tc := range []struct {
		name   string
		subKey string
		want   testutil.WantError
	}{
		{"no subscription key", "", testutil.WantError{Kind: refresher.Permanent, Status: 401, Code: "", Substr: "missing subscription key"}},
		{"bad subscription key", "wrong", testutil.WantError{Kind: refresher.Permanent, Status: 401, Code: "", Substr: "invalid subscription key"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, srv := newSim(t, simulator.Config{OAuth2SubscriptionKey: subKey})
			h := map[string]refresher.Secret{}
			if tc.subKey != "" {
				h["Ocp-Apim-Subscription-Key"] = refresher.Secret(tc.subKey)
			}
			p := oauth2.New(oauth2.Config{TokenURL: srv.URL + "/collection/token/", ClientID: "api-user", ClientSecret: secret, Headers: h})
			_, err := p.Token(context.Background())
			testutil.CheckProviderError(t, err, tc.want, secrets...)
		})
	}

}

// TestCraftedAnswers: answers the simulator cannot be made to give, crafted
// per RFC 6749 and as gateways send them.
func TestCraftedAnswers(t *testing.T) {
	for _, tc := range []struct {
		name, ctype, body string
		status            int
		retryAfter        string
		want              testutil.WantError
	}{
		{"invalid_scope", "application/json", `{"error":"invalid_scope","error_description":"scope payments is not granted"}`, 400, "", testutil.WantError{Kind: refresher.Permanent, Status: 400, Code: "invalid_scope", Substr: "check scopes) (scope payments is not granted)"}},
		{"unsupported_grant_type", "application/json", `{"error":"unsupported_grant_type"}`, 400, "", testutil.WantError{Kind: refresher.Permanent, Status: 400, Code: "unsupported_grant_type", Substr: "grant_type=client_credentials"}},
		{"invalid_client 401", "application/json", `{"error":"invalid_client"}`, 401, "", testutil.WantError{Kind: refresher.Permanent, Status: 401, Code: "invalid_client", Substr: "auth_style"}},
		{"form-encoded error", "application/x-www-form-urlencoded", `error=invalid_grant&error_description=nope`, 400, "", testutil.WantError{Kind: refresher.Permanent, Status: 400, Code: "invalid_grant", Substr: "(nope)"}},
		{"error code in a 200", "application/json", `{"error":"access_denied"}`, 200, "", testutil.WantError{Kind: refresher.Permanent, Status: 200, Code: "access_denied", Substr: "access denied"}},
		{"429", "application/json", `{}`, 429, "7", testutil.WantError{Kind: refresher.Transient, Status: 429, Code: "", Substr: "Too Many Requests"}},
		{"502 html", "text/html", `<html>bad gateway</html>`, 502, "", testutil.WantError{Kind: refresher.Transient, Status: 502, Code: "", Substr: "Bad Gateway"}},
		{"expires_in missing", "application/json", `{"access_token":"x","token_type":"Bearer"}`, 200, "", testutil.WantError{Kind: refresher.Permanent, Status: 200, Code: "", Substr: "expires_in is missing"}},
		{"expires_in negative", "application/json", `{"access_token":"x","expires_in":-3}`, 200, "", testutil.WantError{Kind: refresher.Permanent, Status: 200, Code: "", Substr: "out of range"}},
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
			testutil.CheckProviderError(t, err, tc.want, secrets...)
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
