package rpc_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
	"github.com/tokenbus/tokenbus/services/refresher/refresh"
	"github.com/tokenbus/tokenbus/services/refresher/rpc"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// clock is a settable time source.
type clock struct{ t atomic.Pointer[time.Time] }

func newClock() *clock           { c := &clock{}; c.set(time.Now()); return c }
func (c *clock) now() time.Time  { return *c.t.Load() }
func (c *clock) set(t time.Time) { c.t.Store(&t) }

// countingProvider hands out numbered tokens valid for life, or fails with
// the error fail returns (if non-nil).
type countingProvider struct {
	calls atomic.Int64
	life  time.Duration
	now   func() time.Time
	fail  atomic.Pointer[error]
	delay time.Duration
}

func (p *countingProvider) Token(ctx context.Context) (refresher.Token, error) {
	n := p.calls.Add(1)
	if p.delay > 0 {
		time.Sleep(p.delay)
	}
	if e := p.fail.Load(); e != nil {
		return refresher.Token{}, *e
	}
	now := p.now()
	return refresher.Token{AccessToken: refresher.Secret(fmt.Sprintf("tok-%d", n)), TokenType: "Bearer", IssuedAt: now, ExpiresAt: now.Add(p.life)}, nil
}

func (p *countingProvider) setFail(err error) {
	if err == nil {
		p.fail.Store(nil)
		return
	}
	p.fail.Store(&err)
}

type fixture struct {
	nc  *nats.Conn
	mgr *refresh.Manager
}

// start runs a manager for provider "p1" behind the service on a fresh server.
func start(t *testing.T, prov refresher.Provider, now func() time.Time, bo refresher.Backoff) *fixture {
	t.Helper()
	ns := testutil.RunServer(t)
	nc := testutil.Connect(t, ns)
	mgr := refresh.NewManager(refresh.Config{Name: "p1", Provider: prov, Now: now, Backoff: bo})
	svc, err := rpc.Start(nc, rpc.Config{Sources: map[string]rpc.Source{"p1": mgr}, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = mgr.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; _ = svc.Stop() })
	return &fixture{nc: nc, mgr: mgr}
}

// request sends a request and returns the token or the wire error code.
func request(t *testing.T, nc *nats.Conn, subject string, body []byte) (wire.Token, int, string) {
	t.Helper()
	msg, err := nc.Request(subject, body, 5*time.Second)
	if err != nil {
		t.Fatalf("request %s: %v", subject, err)
	}
	if code := msg.Header.Get(wire.HeaderErrorCode); code != "" {
		var eb wire.ErrorBody
		if err := json.Unmarshal(msg.Data, &eb); err != nil {
			t.Fatalf("error body %q: %v", msg.Data, err)
		}
		if fmt.Sprint(eb.Error.Code) != code || eb.Error.Message != msg.Header.Get(wire.HeaderError) {
			t.Fatalf("error headers %v disagree with body %s", msg.Header, msg.Data)
		}
		return wire.Token{}, eb.Error.Code, eb.Error.Message
	}
	var tok wire.Token
	if err := json.Unmarshal(msg.Data, &tok); err != nil {
		t.Fatalf("token body %q: %v", msg.Data, err)
	}
	return tok, 0, ""
}

func waitToken(t *testing.T, f *fixture) wire.Token {
	t.Helper()
	var tok wire.Token
	testutil.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		var code int
		var msg string
		tok, code, msg = request(t, f.nc, wire.GetSubject("p1"), nil)
		if code != 0 {
			return fmt.Errorf("%d %s", code, msg)
		}
		return nil
	})
	return tok
}

func TestGetServesCurrentToken(t *testing.T) {
	clk := newClock()
	p := &countingProvider{life: time.Hour, now: clk.now}
	f := start(t, p, clk.now, refresher.Backoff{})
	tok := waitToken(t, f)
	if tok.Provider != "p1" || tok.AccessToken != "tok-1" || tok.TokenType != "Bearer" || tok.Expired(clk.now()) {
		t.Fatalf("unexpected token %+v", tok)
	}
	for _, body := range [][]byte{nil, []byte("{}"), []byte(" { } ")} {
		if got, code, msg := request(t, f.nc, wire.GetSubject("p1"), body); code != 0 || got.AccessToken != "tok-1" {
			t.Fatalf("body %q: %d %s", body, code, msg)
		}
	}
	if p.calls.Load() != 1 {
		t.Fatalf("token.get made upstream calls: %d", p.calls.Load())
	}
}

func TestErrorsCarryCodes(t *testing.T) {
	clk := newClock()
	f := start(t, &countingProvider{life: time.Hour, now: clk.now}, clk.now, refresher.Backoff{})
	waitToken(t, f)
	for _, tc := range []struct {
		subject string
		body    string
		code    int
		msg     string
	}{
		{wire.GetSubject("nope"), "", 404, `unknown provider "nope"`},
		{wire.RefreshSubject("nope"), `{"invalid_token":"x"}`, 404, `unknown provider "nope"`},
		{wire.GetSubject("p1"), "garbage", 400, "token.get takes an empty body"},
		{wire.GetSubject("p1"), "[1]", 400, "token.get takes an empty body"},
		{wire.RefreshSubject("p1"), "", 400, "invalid_token"},
		{wire.RefreshSubject("p1"), `{"invalid_token":""}`, 400, "invalid_token"},
		{wire.RefreshSubject("p1"), `{`, 400, "invalid_token"},
	} {
		_, code, msg := request(t, f.nc, tc.subject, []byte(tc.body))
		if code != tc.code || !strings.Contains(msg, tc.msg) {
			t.Errorf("%s %q: got %d %q, want %d containing %q", tc.subject, tc.body, code, msg, tc.code, tc.msg)
		}
	}
}

func TestExpiredTokenIsNeverServed(t *testing.T) {
	clk := newClock()
	p := &countingProvider{life: time.Minute, now: clk.now}
	f := start(t, p, clk.now, refresher.Backoff{Initial: time.Hour, Max: time.Hour})
	tok := waitToken(t, f)
	// The provider goes down; the clock passes the expiry.
	p.setFail(&refresher.ProviderError{Kind: refresher.Transient, StatusCode: 503, Message: "down"})
	// It is served until its safety margin before expiry, never within it.
	margin := refresh.ExpiryMargin(tok.ExpiresAt.Sub(tok.IssuedAt))
	clk.set(tok.ExpiresAt.Add(-margin - time.Millisecond))
	if _, code, _ := request(t, f.nc, wire.GetSubject("p1"), nil); code != 0 {
		t.Fatalf("token still valid, got code %d", code)
	}
	for _, at := range []time.Time{tok.ExpiresAt.Add(-margin), tok.ExpiresAt} {
		clk.set(at)
		_, code, msg := request(t, f.nc, wire.GetSubject("p1"), nil)
		if code != 503 {
			t.Fatalf("token %v before expiry: got %d %q, want 503", tok.ExpiresAt.Sub(at), code, msg)
		}
	}
}

func TestPermanentFailureIs502AndSlow(t *testing.T) {
	clk := newClock()
	p := &countingProvider{life: time.Hour, now: clk.now}
	p.setFail(&refresher.ProviderError{Kind: refresher.Permanent, StatusCode: 400, Code: "400.008.01", Message: "invalid authentication type"})
	f := start(t, p, clk.now, refresher.Backoff{Initial: time.Millisecond, Max: time.Millisecond, PermanentInitial: time.Hour, PermanentMax: time.Hour})
	testutil.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		_, code, msg := request(t, f.nc, wire.GetSubject("p1"), nil)
		if code != 502 || !strings.Contains(msg, "400.008.01") {
			return fmt.Errorf("got %d %q", code, msg)
		}
		return nil
	})
	// Refresh requests must not add upstream calls while permanently failing.
	for range 20 {
		_, code, _ := request(t, f.nc, wire.RefreshSubject("p1"), []byte(`{"invalid_token":"whatever"}`))
		if code != 502 {
			t.Fatalf("refresh during permanent failure: code %d", code)
		}
	}
	if n := p.calls.Load(); n != 1 {
		t.Fatalf("permanent failure made %d upstream calls, want 1", n)
	}
}

func TestTransientFailuresRetriedWithBackoff(t *testing.T) {
	clk := newClock()
	p := &countingProvider{life: time.Hour, now: clk.now}
	p.setFail(&refresher.ProviderError{Kind: refresher.Transient, StatusCode: 503, Message: "unavailable"})
	f := start(t, p, clk.now, refresher.Backoff{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond})
	testutil.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if p.calls.Load() < 4 {
			return errors.New("not retried yet")
		}
		return nil
	})
	_, code, _ := request(t, f.nc, wire.GetSubject("p1"), nil)
	if code != 503 {
		t.Fatalf("no token yet during outage: code %d, want 503", code)
	}
	// Exponential: 4 calls took at least 20+40+80 ms × (1 ± 0.5); a hot loop
	// would have made hundreds by now.
	time.Sleep(300 * time.Millisecond)
	if n := p.calls.Load(); n > 10 {
		t.Fatalf("%d upstream calls in ~0.5 s: backoff is not applied", n)
	}
	p.setFail(nil)
	tok := waitToken(t, f)
	if tok.AccessToken == "" {
		t.Fatal("no token after recovery")
	}
}

func TestRefreshDedup(t *testing.T) {
	clk := newClock()
	p := &countingProvider{life: time.Hour, now: clk.now, delay: 50 * time.Millisecond}
	f := start(t, p, clk.now, refresher.Backoff{})
	old := waitToken(t, f)
	body, _ := json.Marshal(wire.RefreshRequest{InvalidToken: old.AccessToken})
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for range 50 {
		wg.Go(func() {
			msg, err := f.nc.Request(wire.RefreshSubject("p1"), body, 5*time.Second)
			if err != nil {
				errs <- err
				return
			}
			var tok wire.Token
			if err := json.Unmarshal(msg.Data, &tok); err != nil || tok.AccessToken == old.AccessToken || tok.AccessToken == "" {
				errs <- fmt.Errorf("reply %s %v", msg.Data, msg.Header)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := p.calls.Load(); n != 2 {
		t.Fatalf("50 refreshes of one token made %d upstream calls in all, want 2 (start + one refresh)", n)
	}
	// Reporting a token that is no longer current is answered without a call.
	if tok, code, _ := request(t, f.nc, wire.RefreshSubject("p1"), body); code != 0 || tok.AccessToken != "tok-2" {
		t.Fatalf("stale report: %d %+v", code, tok)
	}
	if n := p.calls.Load(); n != 2 {
		t.Fatalf("stale report made an upstream call (%d)", n)
	}
}

func TestServiceIsDiscoverable(t *testing.T) {
	clk := newClock()
	f := start(t, &countingProvider{life: time.Hour, now: clk.now}, clk.now, refresher.Backoff{})
	msg, err := f.nc.Request("$SRV.INFO.tokenbus", nil, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Name      string `json:"name"`
		Endpoints []struct {
			Subject    string `json:"subject"`
			QueueGroup string `json:"queue_group"`
		} `json:"endpoints"`
	}
	if err := json.Unmarshal(msg.Data, &info); err != nil {
		t.Fatal(err)
	}
	if info.Name != "tokenbus" || len(info.Endpoints) != 6 || info.Endpoints[0].Subject != "token.get.*" || info.Endpoints[1].Subject != "token.refresh.*" || info.Endpoints[0].QueueGroup != "tokenbus" {
		t.Fatalf("info: %s", msg.Data)
	}
	// The runtime provider endpoints answer in the same queue group (SPEC §8).
	for i, want := range []string{"tokenbus.providers.put", "tokenbus.providers.delete", "tokenbus.providers.list", "tokenbus.providers.put_many"} {
		if e := info.Endpoints[2+i]; e.Subject != want || e.QueueGroup != "tokenbus" {
			t.Fatalf("info: %s", msg.Data)
		}
	}
	// With no registry (no sealing key) they answer 503 with a how-to.
	reply, err := f.nc.Request("tokenbus.providers.list", nil, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if reply.Header.Get("Nats-Service-Error-Code") != "503" || !strings.Contains(string(reply.Data), "credentials.keys") {
		t.Fatalf("list without keys: %v %s", reply.Header, reply.Data)
	}
}

// fixedRevision publishes nowhere, at revision 42.
type fixedRevision struct{}

func (fixedRevision) Publish(context.Context, wire.Token) (uint64, error) { return 42, nil }

// TestGetCarriesRevision: a token.get reply carries the KV revision of the
// token in Tokenbus-Revision once it is stored, and none before.
func TestGetCarriesRevision(t *testing.T) {
	ns := testutil.RunServer(t)
	nc := testutil.Connect(t, ns)
	p := &countingProvider{life: time.Hour, now: time.Now}
	stored := refresh.NewManager(refresh.Config{Name: "stored", Provider: p, Publisher: fixedRevision{}})
	unstored := refresh.NewManager(refresh.Config{Name: "unstored", Provider: p})
	svc, err := rpc.Start(nc, rpc.Config{Sources: map[string]rpc.Source{"stored": stored, "unstored": unstored}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = stored.Run(ctx) })
	wg.Go(func() { _ = unstored.Run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait(); _ = svc.Stop() })
	for name, want := range map[string]string{"stored": "42", "unstored": ""} {
		testutil.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
			msg, err := nc.Request(wire.GetSubject(name), nil, 5*time.Second)
			if err != nil {
				return err
			}
			if code := msg.Header.Get(wire.HeaderErrorCode); code != "" {
				return fmt.Errorf("%s: %s", name, code)
			}
			got := msg.Header.Get(wire.HeaderRevision)
			if got == "" && want != "" {
				// Served from memory while its publish is under way: no
				// revision yet (a client does not cache such a reply).
				return fmt.Errorf("%s: no revision header yet", name)
			}
			if got != want {
				t.Fatalf("%s: revision header %q, want %q", name, got, want)
			}
			return nil
		})
	}
}

// fresher answers min_validity with the manager's early refresh.
type fresher struct{ *refresh.Manager }

func (f fresher) GetFresh(ctx context.Context, d time.Duration) ([]byte, uint64, error) {
	return f.Manager.GetFresh(ctx, d, f.Manager.Refresh)
}

// TestGetMinValidity: token.get with min_validity answers a token that is
// valid at least that long — the current one, or one refreshed early — or
// 503; a bad value is a 400 that names the field and never echoes it.
func TestGetMinValidity(t *testing.T) {
	clk := newClock()
	prov := &countingProvider{life: 10 * time.Minute, now: clk.now}
	ns := testutil.RunServer(t)
	nc := testutil.Connect(t, ns)
	mgr := refresh.NewManager(refresh.Config{Name: "p1", Provider: prov, Now: clk.now})
	svc, err := rpc.Start(nc, rpc.Config{Sources: map[string]rpc.Source{"p1": fresher{mgr}, "plain": mgr}, Now: clk.now})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = mgr.Run(ctx) }()
	defer func() { cancel(); <-done; _ = svc.Stop() }()
	waitToken(t, &fixture{nc: nc, mgr: mgr})

	for _, body := range []string{`{"min_validity":"soon-xyz"}`, `{"min_validity":30}`, `{"min_validity":"-1s"}`, `{"min_validity":"0s"}`, `{"min_validity":"25h"}`} {
		_, code, msg := request(t, nc, wire.GetSubject("p1"), []byte(body))
		if code != wire.CodeBadRequest || !strings.Contains(msg, "min_validity") || strings.Contains(msg, "xyz") {
			t.Fatalf("%s: %d %q, want 400 naming min_validity", body, code, msg)
		}
	}
	get := func(subject, d string) (wire.Token, int, string) {
		return request(t, nc, subject, []byte(`{"min_validity":"`+d+`"}`))
	}
	if tok, code, msg := get(wire.GetSubject("p1"), "5m"); code != 0 || tok.AccessToken != "tok-1" {
		t.Fatalf("a current token that lives long enough: %v %d %s", tok, code, msg)
	}
	clk.set(clk.now().Add(6 * time.Minute)) // tok-1 has 4 minutes left
	if tok, code, msg := get(wire.GetSubject("plain"), "5m"); code != wire.CodeUnavailable || !strings.Contains(msg, "min_validity") {
		t.Fatalf("a source that cannot refresh early: %v %d %s, want 503", tok, code, msg)
	}
	if tok, code, msg := get(wire.GetSubject("p1"), "3m"); code != 0 || tok.AccessToken != "tok-1" {
		t.Fatalf("min_validity within what is left: %v %d %s", tok, code, msg)
	}
	tok, code, msg := get(wire.GetSubject("p1"), "5m")
	if code != 0 || tok.AccessToken != "tok-2" || tok.ExpiresAt.Sub(clk.now()) < 5*time.Minute {
		t.Fatalf("refreshed early: %v %d %s, want tok-2 valid 5m more", tok, code, msg)
	}
	if tok, code, msg := get(wire.GetSubject("p1"), "20m"); code != wire.CodeUnavailable || !strings.Contains(msg, "min_validity") {
		t.Fatalf("beyond the tokens' lifetime: %v %d %s, want 503", tok, code, msg)
	}
	if n := prov.calls.Load(); n != 2 {
		t.Fatalf("%d provider calls, want 2", n)
	}
}
