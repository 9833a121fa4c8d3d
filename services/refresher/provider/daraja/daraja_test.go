package daraja_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenbus/tokenbus/libs/simulator"
	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
	"github.com/tokenbus/tokenbus/services/refresher/provider/daraja"
)

const (
	secret = "S3CR3T-consumer-secret-value"
	// protectedPath is the simulator's Daraja STK push endpoint.
	protectedPath = "/mpesa/stkpush/v1/processrequest"
)

// secrets must not appear in an error: the consumer secret, the Basic
// credential, and the start of its base64 ("a2V5Oi" encodes "key:").
var secrets = []string{secret, "key:" + secret, "a2V5Oi"}

func newSim(t *testing.T, cfg simulator.Config) (*simulator.Server, *httptest.Server) {
	t.Helper()
	cfg.DarajaKey, cfg.DarajaSecret = "key", secret
	return testutil.StartSimulator(t, cfg)
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
		if code := testutil.ProtectedCall(t, http.MethodPost, srv.URL+protectedPath, tok.AccessToken.Reveal()); code != 200 {
			t.Fatalf("protected call with fresh token: %d", code)
		}
		tok2, err := p.Token(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if code := testutil.ProtectedCall(t, http.MethodPost, srv.URL+protectedPath, tok.AccessToken.Reveal()); code != 401 {
			t.Fatalf("old token still accepted after a new one: %d", code)
		}
		if code := testutil.ProtectedCall(t, http.MethodPost, srv.URL+protectedPath, tok2.AccessToken.Reveal()); code != 200 {
			t.Fatalf("new token rejected: %d", code)
		}
		if s := sim.Stats(simulator.Daraja); s.TokensIssued != 2 {
			t.Fatalf("stats %+v", s)
		}
	}
}

func TestFailuresAreClassified(t *testing.T) {
	testutil.CheckFaults(t, simulator.Daraja, func(t *testing.T) (*simulator.Server, *httptest.Server) { return newSim(t, simulator.Config{}) },
		func(base string, s refresher.Secret, timeout time.Duration) refresher.Provider {
			return daraja.New(daraja.Config{BaseURL: base, ConsumerKey: "key", ConsumerSecret: s, Timeout: timeout})
		}, secret, []testutil.FaultCase{
			{Name: "bad credentials", Faults: simulator.Faults{}, Secret: "wrong", Want: testutil.WantError{Kind: refresher.Permanent, Status: 400, Code: "", Substr: "bad credentials"}},
			{Name: "outage", Faults: simulator.Faults{Outage: true}, Secret: secret, Want: testutil.WantError{Kind: refresher.Transient, Status: 503, Code: "", Substr: "HTTP 503"}},
			{Name: "error rate", Faults: simulator.Faults{ErrorRate: 1}, Secret: secret, Want: testutil.WantError{Kind: refresher.Transient, Status: 503, Code: "", Substr: "HTTP 503"}},
			{Name: "html", Faults: simulator.Faults{Malformed: "html"}, Secret: secret, Want: testutil.WantError{Kind: refresher.Permanent, Status: 200, Code: "", Substr: "expected JSON, got text/html"}},
			{Name: "no token", Faults: simulator.Faults{Malformed: "no_token"}, Secret: secret, Want: testutil.WantError{Kind: refresher.Permanent, Status: 200, Code: "", Substr: "access_token is missing"}},
			{Name: "bad expires_in", Faults: simulator.Faults{Malformed: "bad_expires"}, Secret: secret, Want: testutil.WantError{Kind: refresher.Permanent, Status: 200, Code: "", Substr: "malformed token response"}},
			{Name: "garbage", Faults: simulator.Faults{Malformed: "garbage"}, Secret: secret, Want: testutil.WantError{Kind: refresher.Permanent, Status: 200, Code: "", Substr: "malformed token response"}},
			{Name: "huge", Faults: simulator.Faults{Malformed: "huge"}, Secret: secret, Want: testutil.WantError{Kind: refresher.Permanent, Status: 200, Code: "", Substr: "larger than"}},
		}, secrets...)

	// Answers the simulator cannot be made to give (our client always sends
	// Basic auth and the right grant type), crafted as Daraja sends them.
	for _, tc := range []struct {
		name   string
		status int
		ctype  string
		body   string
		want   testutil.WantError
	}{
		{"400.008.01", 400, "application/json", `{"requestId":"1","errorCode":"400.008.01","errorMessage":"Invalid Authentication passed"}`, testutil.WantError{Kind: refresher.Permanent, Status: 400, Code: "400.008.01", Substr: "HTTP Basic auth"}},
		{"400.008.02", 400, "application/json", `{"requestId":"1","errorCode":"400.008.02","errorMessage":"Invalid grant type passed"}`, testutil.WantError{Kind: refresher.Permanent, Status: 400, Code: "400.008.02", Substr: "grant_type=client_credentials"}},
		{"unknown code", 403, "application/json", `{"errorCode":"403.000.01","errorMessage":"Forbidden by policy"}`, testutil.WantError{Kind: refresher.Permanent, Status: 403, Code: "403.000.01", Substr: "Forbidden by policy"}},
		{"500 html", 500, "text/html", `<html>Internal</html>`, testutil.WantError{Kind: refresher.Transient, Status: 500, Code: "", Substr: "HTTP 500"}},
		{"expires_in zero", 200, "application/json", `{"access_token":"x","expires_in":"0"}`, testutil.WantError{Kind: refresher.Permanent, Status: 200, Code: "", Substr: "out of range"}},
		{"expires_in missing", 200, "application/json", `{"access_token":"x"}`, testutil.WantError{Kind: refresher.Permanent, Status: 200, Code: "", Substr: "expires_in is missing"}},
		{"expires_in negative number", 200, "application/json", `{"access_token":"x","expires_in":-5}`, testutil.WantError{Kind: refresher.Permanent, Status: 200, Code: "", Substr: "out of range"}},
		{"json array", 200, "application/json", `[]`, testutil.WantError{Kind: refresher.Permanent, Status: 200, Code: "", Substr: "not valid JSON"}},
		{"empty 200", 200, "application/json", ``, testutil.WantError{Kind: refresher.Permanent, Status: 200, Code: "", Substr: "not valid JSON"}},
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
			testutil.CheckProviderError(t, err, tc.want, secrets...)
		})
	}
}

// TestIssuedAtIsTheSendTime: a token's lifetime is counted from before the
// request left, so a slow answer cannot make the refresher believe the token
// lives longer than the provider does.
func TestIssuedAtIsTheSendTime(t *testing.T) {
	_, srv := newSim(t, simulator.Config{DarajaTTL: time.Hour})
	t0 := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	var answered atomic.Bool
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer answered.Store(true)
		resp, err := http.DefaultTransport.RoundTrip(withURL(r, srv.URL))
		if err != nil {
			t.Error(err)
			return
		}
		defer resp.Body.Close()
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
	}))
	defer slow.Close()
	// The clock reads 10 s later once the provider has answered.
	now := func() time.Time {
		if answered.Load() {
			return t0.Add(10 * time.Second)
		}
		return t0
	}
	p := daraja.New(daraja.Config{BaseURL: slow.URL + "/", ConsumerKey: "key", ConsumerSecret: secret, Now: now})
	tok, err := p.Token(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !tok.IssuedAt.Equal(t0) || !tok.ExpiresAt.Equal(t0.Add(time.Hour)) {
		t.Fatalf("issued %v expires %v, want issued at the send time %v", tok.IssuedAt, tok.ExpiresAt, t0)
	}
}

func withURL(r *http.Request, base string) *http.Request {
	out := r.Clone(context.Background())
	u, _ := url.Parse(base + r.URL.RequestURI())
	out.URL, out.RequestURI, out.Host = u, "", u.Host
	return out
}
