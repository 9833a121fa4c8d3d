package testutil

import (
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

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
