package simulator

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeClock is a clock that moves only when told.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// harness is a Server behind a real HTTP server, on a fake clock.
type harness struct {
	*Server
	clock *fakeClock
	url   string
}

func newHarness(tb testing.TB, cfg Config) *harness {
	tb.Helper()
	clock := &fakeClock{now: time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)}
	if cfg.Now == nil {
		cfg.Now = clock.Now
	}
	s := New(cfg)
	ts := httptest.NewServer(s)
	tb.Cleanup(ts.Close)
	return &harness{Server: s, clock: clock, url: ts.URL}
}

// request is an HTTP request to a harness, relative to its URL.
type request struct {
	method, path string
	header       map[string]string
	body         string
}

type response struct {
	status int
	header http.Header
	body   []byte
}

// json decodes the response body into a map.
func (r response) json(tb testing.TB) map[string]any {
	tb.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		tb.Fatalf("body %.200q is not a JSON object: %v", r.body, err)
	}
	return m
}

func (h *harness) do(tb testing.TB, req request) response {
	tb.Helper()
	resp, err := h.send(context.Background(), req)
	if err != nil {
		tb.Fatalf("%s %s: %v", req.method, req.path, err)
	}
	return resp
}

func (h *harness) send(ctx context.Context, req request) (response, error) {
	r, err := http.NewRequestWithContext(ctx, req.method, h.url+req.path, strings.NewReader(req.body))
	if err != nil {
		return response{}, err
	}
	r.Header.Set("User-Agent", "simulator-test")
	for k, v := range req.header {
		r.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return response{resp.StatusCode, resp.Header, body}, err
}

// tokenRequest is a request for a token of kind k that succeeds with the
// default Config.
func tokenRequest(k Kind) request {
	switch k {
	case Daraja:
		return request{method: "GET", path: "/oauth/v1/generate?grant_type=client_credentials",
			header: map[string]string{"Authorization": basic("sim-consumer-key", "sim-consumer-secret")}}
	case MPay:
		return request{method: "POST", path: "/v2/auth", header: jsonType,
			body: `{"username":"sim-user","password":"sim-pass"}`}
	case OAuth2:
		return request{method: "POST", path: "/oauth2/token",
			header: map[string]string{"Authorization": basic("sim-client", "sim-client-secret"), "Content-Type": formType},
			body:   "grant_type=client_credentials"}
	default:
		return request{method: "POST", path: "/auth/oauth2/token", header: jsonType,
			body: `{"client_id":"sim-airtel-id","client_secret":"sim-airtel-secret","grant_type":"client_credentials"}`}
	}
}

var jsonType = map[string]string{"Content-Type": "application/json"}

const formType = "application/x-www-form-urlencoded"

func basic(user, pass string) string {
	r, _ := http.NewRequest("GET", "/", nil)
	r.SetBasicAuth(user, pass)
	return r.Header.Get("Authorization")
}

// token fetches a token of kind k and fails the test if there is none.
func (h *harness) token(tb testing.TB, k Kind) string {
	tb.Helper()
	tok, err := h.tryToken(k)
	if err != nil {
		tb.Fatal(err)
	}
	return tok
}

// tryToken fetches a token of kind k; it may run in any goroutine.
func (h *harness) tryToken(k Kind) (string, error) {
	resp, err := h.send(context.Background(), tokenRequest(k))
	if err != nil {
		return "", err
	}
	if resp.status != http.StatusOK {
		return "", fmt.Errorf("%s token: status %d, body %q", k, resp.status, resp.body)
	}
	field := "access_token"
	if k == MPay {
		field = "token"
	}
	var m map[string]any
	json.Unmarshal(resp.body, &m)
	tok, _ := m[field].(string)
	if tok == "" {
		return "", fmt.Errorf("%s token: no %s in %s", k, field, resp.body)
	}
	return tok, nil
}

// protected calls kind k's protected endpoint with token.
func (h *harness) protected(tb testing.TB, k Kind, token string) response {
	tb.Helper()
	resp, err := h.send(context.Background(), protectedRequest(k, token))
	if err != nil {
		tb.Fatal(err)
	}
	return resp
}

// protectedRequest is a call of kind k's protected endpoint with token.
func protectedRequest(k Kind, token string) request {
	req := map[Kind]request{
		Daraja: {method: "POST", path: "/mpesa/stkpush/v1/processrequest", body: `{}`},
		MPay:   {method: "POST", path: "/v2/payments", body: `{}`},
		OAuth2: {method: "GET", path: "/oauth2/protected"},
		Airtel: {method: "GET", path: "/airtel/protected"},
	}[k]
	if token != "" {
		req.header = map[string]string{"Authorization": "Bearer " + token}
	}
	return req
}

// checkStatus fails the test unless resp has status want.
func checkStatus(tb testing.TB, resp response, want int) {
	tb.Helper()
	if resp.status != want {
		tb.Fatalf("status %d, want %d; body %.300q", resp.status, want, resp.body)
	}
}

// checkFor calls fn every interval until it returns nil, failing the test
// with fn's last error after timeout.
func checkFor(tb testing.TB, timeout, interval time.Duration, fn func() error) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("after %v: %v", timeout, err)
		}
		time.Sleep(interval)
	}
}
