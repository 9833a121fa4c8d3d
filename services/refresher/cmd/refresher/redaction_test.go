package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/tokenbus/tokenbus/libs/simulator"
	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
)

// redactionRow is one provider kind in TestSecretsAppearNowhere.
type redactionRow struct {
	kind simulator.Kind
	// provider returns the YAML list item of a provider named name of this
	// kind at base, whose credentials are the variables ${idVar} and ${secretVar}.
	provider func(name, base, idVar, secretVar string) string
	// sim returns a simulator accepting id and secret, with short lifetimes.
	sim func(id, secret string) simulator.Config
	// singleUse providers hand out each token once; they have no token.refresh.
	singleUse bool
	// mustSee overrides what the scan must have seen (proof that it looked
	// at failures, logs, spans and metrics of this kind's code path).
	mustSee []string
}

// defaultMustSee is what the scan of a shared-token provider must see.
var defaultMustSee = []string{"bad credentials", "malformed token response", `"msg":"token refresh failed"`,
	`span "tokenbus.refresh"`, `span "tokenbus.refresh.attempt"`, `span "provider `, `span "token.get"`, "tokenbus_refreshes_total"}

var redactionRows = []redactionRow{
	{
		kind: simulator.Daraja,
		provider: func(name, base, idVar, secretVar string) string {
			return fmt.Sprintf("  - {name: %s, kind: daraja, base_url: %q, consumer_key: \"${%s}\", consumer_secret: \"${%s}\"}\n", name, base, idVar, secretVar)
		},
		sim: func(id, secret string) simulator.Config {
			return simulator.Config{DarajaKey: id, DarajaSecret: secret, DarajaTTL: 2 * time.Second}
		},
	},
	{
		kind: simulator.MPay,
		provider: func(name, base, idVar, secretVar string) string {
			return fmt.Sprintf("  - {name: %s, kind: mpay, base_url: %q, username: \"${%s}\", password: \"${%s}\", pool: 2}\n", name, base, idVar, secretVar)
		},
		sim: func(id, secret string) simulator.Config {
			return simulator.Config{MPayUsername: id, MPayPassword: secret}
		},
		singleUse: true,
		mustSee: []string{"malformed token response", `"msg":"single-use token pool refill failed"`,
			`span "tokenbus.pool.fill"`, `span "provider `, `span "token.get"`, "tokenbus_pool_size",
			`tokenbus_refreshes_total{outcome="ok",provider="r-mpay"}`, `tokenbus_refreshes_total{outcome="permanent",provider="r-mpay"}`},
	},
	{
		kind: simulator.OAuth2,
		provider: func(name, base, idVar, secretVar string) string {
			// The subscription key is a secret too: it travels in a header
			// (here the same variable as the client ID, so that the wrong
			// provider fails on its client secret: MoMo's login_failed).
			return fmt.Sprintf("  - {name: %s, kind: oauth2, token_url: %q, client_id: \"${%s}\", client_secret: \"${%s}\", headers: {Ocp-Apim-Subscription-Key: \"${%s}\"}}\n", name, base+"/collection/token/", idVar, secretVar, idVar)
		},
		sim: func(id, secret string) simulator.Config {
			return simulator.Config{OAuth2ClientID: id, OAuth2ClientSecret: secret, OAuth2SubscriptionKey: id, OAuth2TTL: 2 * time.Second}
		},
	},
	{
		kind: simulator.Airtel,
		provider: func(name, base, idVar, secretVar string) string {
			return fmt.Sprintf("  - {name: %s, kind: airtel, base_url: %q, client_id: \"${%s}\", client_secret: \"${%s}\"}\n", name, base, idVar, secretVar)
		},
		sim: func(id, secret string) simulator.Config {
			return simulator.Config{AirtelClientID: id, AirtelClientSecret: secret, AirtelTTL: 2 * time.Second}
		},
	},
}

// TestSecretsAppearNowhere runs full refresh cycles for every provider kind
// with recognisable credentials: tokens issued and rotated, a reported token
// refreshed, malformed answers, an outage until the token expires, and a
// second provider with a wrong secret. It then asserts that no credential,
// no Basic header and no access token appears in any log line, span (name,
// attribute, status, event), metric, status report or error returned to a
// client.
func TestSecretsAppearNowhere(t *testing.T) {
	for _, row := range redactionRows {
		t.Run(string(row.kind), func(t *testing.T) { testRedaction(t, row) })
	}
}

func testRedaction(t *testing.T, row redactionRow) {
	id, secret, wrong := "RID-"+string(row.kind)+"-7c1e0d", "RSECRET-"+string(row.kind)+"-93ab51", "RWRONG-"+string(row.kind)+"-55d0e2"
	secrets := []string{id, secret, wrong,
		base64.StdEncoding.EncodeToString([]byte(id + ":" + secret)), base64.StdEncoding.EncodeToString([]byte(id + ":" + wrong))}

	spans := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
	prev := otel.GetTracerProvider()
	otel.SetTracerProvider(tp)
	t.Cleanup(func() { otel.SetTracerProvider(prev); _ = tp.Shutdown(context.Background()) })

	sim := simulator.New(row.sim(id, secret))
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	good, bad := "r-"+string(row.kind), "r-"+string(row.kind)+"-wrong"
	// Reports force refresh after refresh here: no cooldown between them.
	noCooldown := func(line string) string { return strings.Replace(line, "}\n", ", refresh_cooldown: 1ms}\n", 1) }
	m, logs := runMain(t, noCooldown(row.provider(good, srv.URL, "ID", "SECRET"))+row.provider(bad, otherHost(srv.URL), "ID", "WRONG"),
		map[string]string{"ID": id, "SECRET": secret, "WRONG": wrong})
	nc := testutil.Connect(t, m.ns)

	var leaks []string // everything that must not hold a secret, as text
	// Provider events (token.events.*), from the start.
	var evMu sync.Mutex
	var events []string
	evSub, err := nc.Subscribe(wire.EventsPrefix+"*", func(msg *nats.Msg) {
		evMu.Lock()
		events = append(events, "event on "+msg.Subject+": "+string(msg.Data))
		evMu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = evSub.Unsubscribe() }()
	ask := func(subject, body string) (wire.Token, bool) {
		t.Helper()
		msg, err := nc.Request(subject, []byte(body), 5*time.Second)
		if err != nil {
			t.Fatalf("%s: %v", subject, err)
		}
		if code := msg.Header.Get(wire.HeaderErrorCode); code != "" {
			leaks = append(leaks, fmt.Sprintf("error reply to %s: %v %s", subject, msg.Header, msg.Data))
			return wire.Token{}, false
		}
		var tok wire.Token
		if err := json.Unmarshal(msg.Data, &tok); err != nil {
			t.Fatalf("%s: %s", subject, msg.Data)
		}
		return tok, true
	}
	current := func() wire.Token {
		t.Helper()
		var tok wire.Token
		testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
			var ok bool
			if tok, ok = ask(wire.GetSubject(good), ""); !ok {
				return fmt.Errorf("no token yet")
			}
			return nil
		})
		return tok
	}
	waitCalls := func(n int64) {
		t.Helper()
		want := sim.Stats(row.kind).TokenRequests + n
		testutil.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
			if got := sim.Stats(row.kind).TokenRequests; got < want {
				return fmt.Errorf("%d token requests, want %d", got, want)
			}
			return nil
		})
	}

	// Tokens issued and rotated ahead of expiry.
	first := current()
	testutil.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if tok := current(); tok.AccessToken == first.AccessToken {
			return fmt.Errorf("not rotated yet")
		}
		return nil
	})
	// A token reported as rejected is refreshed; bad requests are refused
	// without echoing what was sent.
	if !row.singleUse {
		if _, ok := ask(wire.RefreshSubject(good), fmt.Sprintf(`{"invalid_token":%q}`, current().AccessToken)); !ok {
			t.Fatal("token.refresh failed")
		}
		ask(wire.RefreshSubject(good), fmt.Sprintf(`{"invalid_token":%q,"secret":%q`, first.AccessToken, secret))
	}
	ask(wire.GetSubject(good), fmt.Sprintf(`{"oops":%q`, secret))
	ask(wire.GetSubject("not-configured"), "")
	// The wrong secret: a permanent failure, reported as 502.
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if _, ok := ask(wire.GetSubject(bad), ""); ok {
			t.Fatal("a provider with a wrong secret served a token")
		}
		return nil
	})
	// Malformed answers, some carrying a token, then an outage until the
	// token expires: 503s.
	for _, mode := range []string{simulator.MalformedBadExpires, simulator.MalformedHTML, simulator.MalformedGarbage} {
		sim.SetFaults(row.kind, simulator.Faults{Malformed: mode})
		if row.singleUse {
			ask(wire.GetSubject(good), "") // a claim makes the filler mint
		} else {
			ask(wire.RefreshSubject(good), fmt.Sprintf(`{"invalid_token":%q}`, current().AccessToken))
		}
		waitCalls(2)
	}
	sim.SetFaults(row.kind, simulator.Faults{Outage: true})
	testutil.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if _, ok := ask(wire.GetSubject(good), ""); ok {
			return fmt.Errorf("still serving")
		}
		return nil
	})
	sim.SetFaults(row.kind, simulator.Faults{})
	current()

	// Gather every other place a secret could surface.
	for _, p := range []string{"/metrics", "/status.json", "/"} {
		resp, err := http.Get("http://" + m.httpAddr + p)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		leaks = append(leaks, p+": "+string(b))
	}
	if msg, err := nc.Request(wire.StatusSubject, nil, 2*time.Second); err == nil {
		leaks = append(leaks, "token.status: "+string(msg.Data))
	}
	for _, s := range spans.GetSpans() {
		var b strings.Builder
		fmt.Fprintf(&b, "span %q status %q:", s.Name, s.Status.Description)
		for _, kv := range s.Attributes {
			fmt.Fprintf(&b, " %s=%q", kv.Key, kv.Value.String())
		}
		for _, e := range s.Events {
			fmt.Fprintf(&b, " event %q", e.Name)
			for _, kv := range e.Attributes {
				fmt.Fprintf(&b, " %s=%q", kv.Key, kv.Value.String())
			}
		}
		leaks = append(leaks, b.String())
	}
	leaks = append(leaks, strings.Split(logs.String(), "\n")...)
	evMu.Lock()
	leaks = append(leaks, events...)
	evMu.Unlock()

	for _, e := range sim.Log() {
		if e.Token != "" {
			secrets = append(secrets, e.Token)
		}
	}
	if len(secrets) < 5+3 {
		t.Fatalf("only %d tokens issued", len(secrets)-5)
	}
	for _, s := range secrets {
		for _, l := range leaks {
			if strings.Contains(l, s) {
				t.Errorf("secret %q found in: %s", s, l)
			}
		}
	}
	// The scan saw what it should have: error replies, failures logged, spans of every layer.
	all := strings.Join(leaks, "\n")
	mustSee := row.mustSee
	if mustSee == nil {
		mustSee = defaultMustSee
	}
	if row.kind != simulator.MPay { // single-use pools publish no events
		mustSee = append(mustSee[:len(mustSee):len(mustSee)], `"type":"refreshed"`, `"type":"refresh_failed"`)
	}
	for _, want := range append([]string{"error reply to token.get." + bad}, mustSee...) {
		if !strings.Contains(all, want) {
			t.Errorf("the scan never saw %q", want)
		}
	}
}

// runMain runs the refresher on an embedded NATS server with the given
// providers (YAML list items) and environment, retrying fast after any
// failure, with debug-level JSON logs captured.
func runMain(t *testing.T, providers string, env map[string]string) (*Main, *testutil.LogBuffer) {
	t.Helper()
	dir := t.TempDir()
	cfg := fmt.Sprintf("nats:\n  embedded: {listen: \"127.0.0.1:0\", store_dir: %q}\nhttp: {listen: \"127.0.0.1:0\"}\nlog: {level: debug, format: json}\nproviders:\n%s",
		filepath.Join(dir, "nats"), providers)
	path := filepath.Join(dir, "refresher.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &testutil.LogBuffer{}
	m := NewMain(Options{
		ConfigPath: path,
		Lookup:     func(k string) (string, bool) { v, ok := env[k]; return v, ok },
		Backoff:    refresher.Backoff{Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond, PermanentInitial: 20 * time.Millisecond, PermanentMax: 100 * time.Millisecond},
	}, logs, logs)
	if err := m.Run(context.Background()); err != nil {
		_ = m.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return m, logs
}

// otherHost names the same server by another host (localhost for
// 127.0.0.1): the wrong provider keeps the good one's id but is not the same
// credential, which the refresher would refuse (SPEC §8).
func otherHost(u string) string { return strings.Replace(u, "127.0.0.1", "localhost", 1) }
