package mpay_test

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
	"github.com/tokenbus/tokenbus/services/refresher/provider/mpay"
)

const password = "MPAY-PASSWORD-51c0"

func newSim(t *testing.T, cfg simulator.Config) (*simulator.Server, *httptest.Server) {
	t.Helper()
	cfg.MPayUsername, cfg.MPayPassword = "user", password
	sim := simulator.New(cfg)
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	return sim, srv
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
		if code := payment(t, srv.URL, tok.AccessToken.Reveal()); code != 200 {
			t.Fatalf("fresh token rejected: %d", code)
		}
		if code := payment(t, srv.URL, tok.AccessToken.Reveal()); code != 401 {
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

func payment(t *testing.T, base, token string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, base+"/v2/payments", strings.NewReader("{}"))
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
	substr string
}

func check(t *testing.T, err error, w want) {
	t.Helper()
	var pe *refresher.ProviderError
	if !errors.As(err, &pe) {
		t.Fatalf("error %v is not a ProviderError", err)
	}
	if pe.Kind != w.kind || pe.StatusCode != w.status || !strings.Contains(err.Error(), w.substr) {
		t.Fatalf("got kind=%v status=%d %q; want kind=%v status=%d containing %q", pe.Kind, pe.StatusCode, err, w.kind, w.status, w.substr)
	}
	if strings.Contains(err.Error(), password) {
		t.Fatalf("password leaked into error: %v", err)
	}
}

func TestFailuresAreClassified(t *testing.T) {
	for _, tc := range []struct {
		name     string
		faults   simulator.Faults
		password string
		want     want
	}{
		{"bad credentials", simulator.Faults{}, "wrong", want{refresher.Permanent, 400, "enabled for this environment): Bad request"}},
		{"outage", simulator.Faults{Outage: true}, password, want{refresher.Transient, 503, "Service unavailable"}},
		{"error rate", simulator.Faults{ErrorRate: 1}, password, want{refresher.Transient, 503, "HTTP 503"}},
		{"html", simulator.Faults{Malformed: "html"}, password, want{refresher.Permanent, 200, "expected JSON, got text/html"}},
		{"no token", simulator.Faults{Malformed: "no_token"}, password, want{refresher.Permanent, 200, "token is missing"}},
		{"bad expires", simulator.Faults{Malformed: "bad_expires"}, password, want{refresher.Permanent, 200, "token is missing"}},
		{"garbage", simulator.Faults{Malformed: "garbage"}, password, want{refresher.Permanent, 200, "not valid JSON"}},
		{"huge", simulator.Faults{Malformed: "huge"}, password, want{refresher.Permanent, 200, "larger than"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sim, srv := newSim(t, simulator.Config{})
			sim.SetFaults(simulator.MPay, tc.faults)
			p := mpay.New(mpay.Config{BaseURL: srv.URL, Username: "user", Password: refresher.Secret(tc.password)})
			tok, err := p.Token(context.Background())
			if err == nil {
				t.Fatalf("got token %+v, want error", tok)
			}
			check(t, err, tc.want)
		})
	}

	t.Run("timeout", func(t *testing.T) {
		sim, srv := newSim(t, simulator.Config{})
		sim.SetFaults(simulator.MPay, simulator.Faults{Latency: 300 * time.Millisecond})
		p := mpay.New(mpay.Config{BaseURL: srv.URL, Username: "user", Password: password, Timeout: 50 * time.Millisecond})
		_, err := p.Token(context.Background())
		check(t, err, want{refresher.Transient, 0, "timed out"})
	})

	t.Run("connection refused", func(t *testing.T) {
		srv := httptest.NewServer(http.NotFoundHandler())
		srv.Close()
		p := mpay.New(mpay.Config{BaseURL: srv.URL, Username: "user", Password: password})
		_, err := p.Token(context.Background())
		check(t, err, want{refresher.Transient, 0, "failed"})
	})

	// Answers the simulator does not give, crafted as mPay might send them.
	for _, tc := range []struct {
		name, body string
		status     int
		want       want
	}{
		{"200 with status 0", `{"status":0,"description":"Account locked","token":""}`, 200, want{refresher.Permanent, 200, "refused the token request: Account locked"}},
		{"200 without status", `{"token":"x"}`, 200, want{refresher.Permanent, 200, "refused"}},
		{"blank token", `{"status":1,"description":"Success","token":"  "}`, 200, want{refresher.Permanent, 200, "token is missing"}},
		{"429", `{"status":0,"description":"Too many requests"}`, 429, want{refresher.Transient, 429, "Too many requests"}},
		{"401 empty", ``, 401, want{refresher.Permanent, 401, "Unauthorized"}},
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
			check(t, err, tc.want)
		})
	}
}
