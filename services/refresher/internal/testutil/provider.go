package testutil

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/tokenbus/tokenbus/libs/simulator"
	"github.com/tokenbus/tokenbus/services/refresher"
)

// StartSimulator serves a simulator for cfg behind httptest, closed when the
// test ends. Callers set their kind's credentials in cfg first.
func StartSimulator(tb testing.TB, cfg simulator.Config) (*simulator.Server, *httptest.Server) {
	tb.Helper()
	sim := simulator.New(cfg)
	srv := httptest.NewServer(sim)
	tb.Cleanup(srv.Close)
	return sim, srv
}

// ProtectedCall calls a simulator's protected endpoint at url with method and
// token as a Bearer credential, and returns the HTTP status. It sends no body:
// the simulator's protected endpoints read only the Authorization header.
func ProtectedCall(tb testing.TB, method, url, token string) int {
	tb.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		tb.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// WantError is the *refresher.ProviderError a provider test expects. Every
// field is compared exactly: Status 0 means the error carries no HTTP status,
// and Code "" that it carries no provider code. Substr must occur in the
// error's message.
type WantError struct {
	Kind   refresher.Kind
	Status int
	Code   string
	Substr string
}

// CheckProviderError asserts that err is a *refresher.ProviderError with
// exactly want's Kind, StatusCode and Code, that its message contains
// want.Substr, and that no secret, nor its standard or URL-safe base64 form,
// appears in the message.
func CheckProviderError(tb testing.TB, err error, want WantError, secrets ...string) {
	tb.Helper()
	var pe *refresher.ProviderError
	if !errors.As(err, &pe) {
		tb.Fatalf("error %T is not a *refresher.ProviderError: %v", err, err)
	}
	msg := err.Error()
	got := WantError{Kind: pe.Kind, Status: pe.StatusCode, Code: pe.Code, Substr: want.Substr}
	if got != want || !strings.Contains(msg, want.Substr) {
		tb.Fatalf("got kind=%v status=%d code=%q %q;\nwant kind=%v status=%d code=%q containing %q",
			pe.Kind, pe.StatusCode, pe.Code, msg, want.Kind, want.Status, want.Code, want.Substr)
	}
	for _, s := range secrets {
		if s == "" {
			tb.Fatal("CheckProviderError: empty secret")
		}
		for _, form := range []string{
			s,
			base64.StdEncoding.EncodeToString([]byte(s)),
			base64.RawURLEncoding.EncodeToString([]byte(s)),
		} {
			if strings.Contains(msg, form) {
				tb.Fatalf("secret leaked into error: %v", err)
			}
		}
	}
}

// FaultCase is one simulator fault and the exact error a provider must answer
// it with.
type FaultCase struct {
	Name   string
	Faults simulator.Faults
	// Secret is the credential the provider sends: a wrong one makes a
	// bad-credentials case.
	Secret string
	Want   WantError
}

// BuildProvider returns the provider under test for the simulator at baseURL,
// sending secret, with a per-request timeout (0 for the default).
type BuildProvider func(baseURL string, secret refresher.Secret, timeout time.Duration) refresher.Provider

// CheckFaults runs every case against a fresh simulator from start, with
// kind's faults set, and asserts the exact error with CheckProviderError. It
// adds the two cases every provider shares, sending goodSecret: a request that
// times out and a refused connection, both transient with no HTTP status and
// no provider code, and with no URL (so no query string) in the message.
func CheckFaults(t *testing.T, kind simulator.Kind, start func(*testing.T) (*simulator.Server, *httptest.Server),
	build BuildProvider, goodSecret string, cases []FaultCase, secrets ...string) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.Name, func(t *testing.T) {
			sim, srv := start(t)
			sim.SetFaults(kind, tc.Faults)
			tok, err := build(srv.URL, refresher.Secret(tc.Secret), 0).Token(context.Background())
			if err == nil {
				t.Fatalf("got token %+v, want error", tok)
			}
			CheckProviderError(t, err, tc.Want, secrets...)
		})
	}
	t.Run("timeout", func(t *testing.T) {
		sim, srv := start(t)
		sim.SetFaults(kind, simulator.Faults{Latency: 300 * time.Millisecond})
		_, err := build(srv.URL, refresher.Secret(goodSecret), 50*time.Millisecond).Token(context.Background())
		CheckProviderError(t, err, WantError{Kind: refresher.Transient, Substr: "timed out"}, secrets...)
	})
	t.Run("connection refused", func(t *testing.T) {
		srv := httptest.NewServer(http.NotFoundHandler())
		srv.Close()
		_, err := build(srv.URL, refresher.Secret(goodSecret), 0).Token(context.Background())
		CheckProviderError(t, err, WantError{Kind: refresher.Transient, Substr: "failed"}, secrets...)
		if strings.Contains(err.Error(), "://") {
			t.Fatalf("a URL in the error: %v", err)
		}
	})
}
