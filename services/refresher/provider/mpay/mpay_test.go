package mpay_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/tokenbus/tokenbus/libs/simulator"
	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
	"github.com/tokenbus/tokenbus/services/refresher/provider/mpay"
)

const password = "MPAY-PASSWORD-51c0"

// secrets must not appear in an error.
var secrets = []string{password}

func newSim(t *testing.T, cfg simulator.Config) (*simulator.Server, *httptest.Server) {
	t.Helper()
	cfg.MPayUsername, cfg.MPayPassword = "user", password
	return testutil.StartSimulator(t, cfg)
}

func TestSingleUseTokensFromSimulator(t *testing.T) {
	sim, srv := newSim(t, simulator.Config{MPayTTL: time.Minute})
	p := mpay.New(mpay.Config{BaseURL: srv.URL + "/", Username: "user", Password: password, Lifetime: time.Minute})
	before := time.Now()
	a, err := p.Token(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.Token(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if a.AccessToken == "" || a.AccessToken == b.AccessToken || a.TokenType != "Bearer" || a.Lifetime() != time.Minute || a.IssuedAt.Before(before) {
		t.Fatalf("tokens %+v %+v", a, b)
	}
	// Both are valid at once; each is accepted exactly once.
	for _, tok := range []refresher.Token{b, a} {
		if code := testutil.ProtectedCall(t, http.MethodPost, srv.URL+"/v2/payments", tok.AccessToken.Reveal()); code != 200 {
			t.Fatalf("fresh token rejected: %d", code)
		}
		if code := testutil.ProtectedCall(t, http.MethodPost, srv.URL+"/v2/payments", tok.AccessToken.Reveal()); code != 401 {
			t.Fatalf("used token accepted again: %d", code)
		}
	}
	if s := sim.Stats(simulator.MPay); s.TokensIssued != 2 || s.ProtectedOK != 2 {
		t.Fatalf("stats %+v", s)
	}
	if p.Lifetime() != time.Minute || mpay.New(mpay.Config{}).Lifetime() != mpay.DefaultLifetime {
		t.Fatal("lifetime")
	}
}

func TestFailuresAreClassified(t *testing.T) {
	testutil.CheckFaults(t, simulator.MPay, func(t *testing.T) (*simulator.Server, *httptest.Server) { return newSim(t, simulator.Config{}) },
		func(base string, s refresher.Secret, timeout time.Duration) refresher.Provider {
			return mpay.New(mpay.Config{BaseURL: base, Username: "user", Password: s, Timeout: timeout})
		}, password, []testutil.FaultCase{
			{Name: "bad credentials", Faults: simulator.Faults{}, Secret: "wrong", Want: testutil.WantError{Kind: refresher.Permanent, Status: 400, Code: "", Substr: "enabled for this environment): Bad request"}},
			{Name: "outage", Faults: simulator.Faults{Outage: true}, Secret: password, Want: testutil.WantError{Kind: refresher.Transient, Status: 503, Code: "", Substr: "Service unavailable"}},
			{Name: "error rate", Faults: simulator.Faults{ErrorRate: 1}, Secret: password, Want: testutil.WantError{Kind: refresher.Transient, Status: 503, Code: "", Substr: "HTTP 503"}},
			{Name: "html", Faults: simulator.Faults{Malformed: "html"}, Secret: password, Want: testutil.WantError{Kind: refresher.Permanent, Status: 200, Code: "", Substr: "expected JSON, got text/html"}},
			{Name: "no token", Faults: simulator.Faults{Malformed: "no_token"}, Secret: password, Want: testutil.WantError{Kind: refresher.Permanent, Status: 200, Code: "", Substr: "token is missing"}},
			{Name: "bad expires", Faults: simulator.Faults{Malformed: "bad_expires"}, Secret: password, Want: testutil.WantError{Kind: refresher.Permanent, Status: 200, Code: "", Substr: "token is missing"}},
			{Name: "garbage", Faults: simulator.Faults{Malformed: "garbage"}, Secret: password, Want: testutil.WantError{Kind: refresher.Permanent, Status: 200, Code: "", Substr: "not valid JSON"}},
			{Name: "huge", Faults: simulator.Faults{Malformed: "huge"}, Secret: password, Want: testutil.WantError{Kind: refresher.Permanent, Status: 200, Code: "", Substr: "larger than"}},
		}, secrets...)

	// Answers the simulator does not give, crafted as mPay might send them.
	for _, tc := range []struct {
		name, body string
		status     int
		want       testutil.WantError
	}{
		{"200 with status 0", `{"status":0,"description":"Account locked","token":""}`, 200, testutil.WantError{Kind: refresher.Permanent, Status: 200, Code: "", Substr: "refused the token request: Account locked"}},
		{"200 without status", `{"token":"x"}`, 200, testutil.WantError{Kind: refresher.Permanent, Status: 200, Code: "", Substr: "refused"}},
		{"blank token", `{"status":1,"description":"Success","token":"  "}`, 200, testutil.WantError{Kind: refresher.Permanent, Status: 200, Code: "", Substr: "token is missing"}},
		{"429", `{"status":0,"description":"Too many requests"}`, 429, testutil.WantError{Kind: refresher.Transient, Status: 429, Code: "", Substr: "Too many requests"}},
		{"401 empty", ``, 401, testutil.WantError{Kind: refresher.Permanent, Status: 401, Code: "", Substr: "Unauthorized"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(tc.status)
				_, _ = w.Write([]byte(tc.body))
			}))
			t.Cleanup(srv.Close)
			p := mpay.New(mpay.Config{BaseURL: srv.URL, Username: "user", Password: password})
			_, err := p.Token(context.Background())
			testutil.CheckProviderError(t, err, tc.want, secrets...)
		})
	}
}
