package airtel_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/tokenbus/tokenbus/libs/simulator"
	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
	"github.com/tokenbus/tokenbus/services/refresher/provider/airtel"
)

const secret = "AIRTEL-CLIENT-SECRET-9d2e"

// secrets must not appear in an error.
var secrets = []string{secret}

func newSim(t *testing.T, cfg simulator.Config) (*simulator.Server, *httptest.Server) {
	t.Helper()
	cfg.AirtelClientID, cfg.AirtelClientSecret = "client", secret
	return testutil.StartSimulator(t, cfg)
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
	if code := testutil.ProtectedCall(t, http.MethodGet, srv.URL+"/airtel/protected", tok.AccessToken.Reveal()); code != 200 {
		t.Fatalf("protected call: %d", code)
	}
	if s := sim.Stats(simulator.Airtel); s.TokensIssued != 1 || s.ProtectedOK != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestFailuresAreClassified(t *testing.T) {
	testutil.CheckFaults(t, simulator.Airtel, func(t *testing.T) (*simulator.Server, *httptest.Server) { return newSim(t, simulator.Config{}) },
		func(base string, s refresher.Secret, timeout time.Duration) refresher.Provider {
			return airtel.New(airtel.Config{BaseURL: base, ClientID: "client", ClientSecret: s, Timeout: timeout})
		}, secret, []testutil.FaultCase{
			{Name: "bad credentials", Faults: simulator.Faults{}, Secret: "wrong", Want: testutil.WantError{Kind: refresher.Permanent, Status: 401, Code: "invalid_client", Substr: "bad credentials: Airtel rejected client_id/client_secret"}},
			{Name: "outage", Faults: simulator.Faults{Outage: true}, Secret: secret, Want: testutil.WantError{Kind: refresher.Transient, Status: 503, Code: "temporarily_unavailable", Substr: "temporarily unavailable"}},
			{Name: "error rate", Faults: simulator.Faults{ErrorRate: 1}, Secret: secret, Want: testutil.WantError{Kind: refresher.Transient, Status: 503, Code: "temporarily_unavailable", Substr: "HTTP 503"}},
			{Name: "html", Faults: simulator.Faults{Malformed: "html"}, Secret: secret, Want: testutil.WantError{Kind: refresher.Permanent, Status: 200, Code: "", Substr: "expected JSON, got text/html"}},
			{Name: "no token", Faults: simulator.Faults{Malformed: "no_token"}, Secret: secret, Want: testutil.WantError{Kind: refresher.Permanent, Status: 200, Code: "", Substr: "access_token is missing"}},
			{Name: "bad expires_in", Faults: simulator.Faults{Malformed: "bad_expires"}, Secret: secret, Want: testutil.WantError{Kind: refresher.Permanent, Status: 200, Code: "", Substr: "malformed token response"}},
			{Name: "garbage", Faults: simulator.Faults{Malformed: "garbage"}, Secret: secret, Want: testutil.WantError{Kind: refresher.Permanent, Status: 200, Code: "", Substr: "not valid JSON"}},
			{Name: "huge", Faults: simulator.Faults{Malformed: "huge"}, Secret: secret, Want: testutil.WantError{Kind: refresher.Permanent, Status: 200, Code: "", Substr: "larger than"}},
		}, secrets...)

	// Answers the simulator cannot be made to give (our request is always
	// well formed), crafted as an OAuth2 server sends them.
	for _, tc := range []struct {
		name, body string
		status     int
		want       testutil.WantError
	}{
		{"unsupported grant", `{"error":"unsupported_grant_type","error_description":"Only client_credentials"}`, 400, testutil.WantError{Kind: refresher.Permanent, Status: 400, Code: "unsupported_grant_type", Substr: "grant_type=client_credentials (Only client_credentials)"}},
		{"invalid request", `{"error":"invalid_request"}`, 400, testutil.WantError{Kind: refresher.Permanent, Status: 400, Code: "invalid_request", Substr: "could not read"}},
		{"gateway message", `{"message":"Forbidden by policy"}`, 403, testutil.WantError{Kind: refresher.Permanent, Status: 403, Code: "", Substr: "Forbidden by policy"}},
		{"429", `{}`, 429, testutil.WantError{Kind: refresher.Transient, Status: 429, Code: "", Substr: "Too Many Requests"}},
		{"expires_in number", `{"access_token":"x","expires_in":0}`, 200, testutil.WantError{Kind: refresher.Permanent, Status: 200, Code: "", Substr: "out of range"}},
		{"expires_in missing", `{"access_token":"x","token_type":"bearer"}`, 200, testutil.WantError{Kind: refresher.Permanent, Status: 200, Code: "", Substr: "expires_in is missing"}},
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
			testutil.CheckProviderError(t, err, tc.want, secrets...)
		})
	}
}
