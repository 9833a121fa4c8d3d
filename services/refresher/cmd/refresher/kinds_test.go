package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenbus/tokenbus/libs/simulator"
	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/config"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
)

const examples = "../../../../deploy/examples"

// freePorts moves a config's fixed listen addresses to free ports and its
// store to dir.
func freePorts(cfg []byte, dir string) []byte {
	return []byte(strings.NewReplacer("127.0.0.1:4222", "127.0.0.1:0", "127.0.0.1:8080", "127.0.0.1:0", "./data/nats", filepath.Join(dir, "nats"), "./data/demo-all", filepath.Join(dir, "nats")).Replace(string(cfg)))
}

// protectedCalls are the simulator's protected calls, by kind.
var protectedCalls = map[simulator.Kind]struct{ method, path string }{
	simulator.Daraja: {http.MethodPost, "/mpesa/stkpush/v1/processrequest"},
	simulator.MPay:   {http.MethodPost, "/v2/payments"},
	simulator.OAuth2: {http.MethodGet, "/oauth2/protected"},
	simulator.Airtel: {http.MethodGet, "/airtel/protected"},
}

// simCall makes a simulator's protected call of kind k with token.
func simCall(sim *simulator.Server, k simulator.Kind, token string) int {
	c := protectedCalls[k]
	req := httptest.NewRequest(c.method, c.path, strings.NewReader("{}"))
	req.Header.Set("Authorization", "Bearer "+token)
	rec := httptest.NewRecorder()
	sim.ServeHTTP(rec, req)
	return rec.Code
}

func TestDemoAllServesEveryKind(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(examples, "demo-all.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "demo-all.yaml")
	if err := os.WriteFile(path, freePorts(raw, dir), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &testutil.LogBuffer{}
	var out strings.Builder
	m := NewMain(Options{Demo: true, ConfigPath: path, SimulatorListen: "127.0.0.1:0", Lookup: func(string) (string, bool) { return "", false }}, &out, logs)
	if err := m.Run(context.Background()); err != nil {
		_ = m.Close()
		t.Fatal(err)
	}
	defer func() {
		if err := m.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		for _, s := range []string{"sim-consumer-secret", "sim-pass", "sim-client-secret", "sim-airtel-secret", "sim-subscription-key"} {
			if strings.Contains(logs.String(), s) {
				t.Errorf("secret %q in the logs", s)
			}
		}
	}()
	nc := testutil.Connect(t, m.ns)

	kinds := map[string]simulator.Kind{"daraja-sandbox": simulator.Daraja, "mpay": simulator.MPay, "momo-collection": simulator.OAuth2, "airtel-ke": simulator.Airtel}
	var mpayTokens []string
	for name, kind := range kinds {
		var tok wire.Token
		testutil.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
			var e string
			if tok, e = getToken(t, nc, name); e != "" {
				return fmt.Errorf("%s: %s", name, e)
			}
			return nil
		})
		if tok.Provider != name || !time.Now().Before(tok.ExpiresAt) {
			t.Fatalf("%s: token %+v", name, tok)
		}
		if code := simCall(m.Sim, kind, tok.AccessToken); code != http.StatusOK {
			t.Fatalf("%s: the simulator rejected the served token: %d", name, code)
		}
		switch name {
		case "momo-collection":
			if tok.TokenType != "access_token" {
				t.Errorf("MoMo's token_type %q, want it kept as access_token", tok.TokenType)
			}
		case "mpay":
			mpayTokens = append(mpayTokens, tok.AccessToken)
			next, e := getToken(t, nc, name)
			if e != "" || next.AccessToken == tok.AccessToken {
				t.Fatalf("mpay: second get %q (%s)", next.AccessToken, e)
			}
			mpayTokens = append(mpayTokens, next.AccessToken)
		}
	}

	// token.status lists every provider in configuration order, with
	// mpay's pool refilled to its size.
	testutil.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		st := status(t, nc)
		var names []string
		for _, p := range st.Providers {
			names = append(names, p.Name)
		}
		if got := strings.Join(names, ","); got != "daraja-sandbox,mpay,momo-collection,airtel-ke" {
			t.Fatalf("status providers %s", got)
		}
		// Size 4; claims that waited through the new leader's acquire
		// delay can leave one spare token.
		if p := st.Providers[1]; p.Pool == nil || *p.Pool < 4 || *p.Pool > 5 || p.State != wire.StateOK {
			return fmt.Errorf("mpay status %+v", p)
		}
		return nil
	})

	// No mPay token value is ever written to the KV bucket.
	js, _ := jetstream.New(nc)
	kv, err := js.KeyValue(context.Background(), "tokens")
	if err != nil {
		t.Fatal(err)
	}
	all, err := kv.Keys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var keys []string // provider keys; "_…" keys are tokenbus's own (the lease)
	for _, k := range all {
		if !strings.HasPrefix(k, "_") {
			keys = append(keys, k)
		}
	}
	for _, k := range keys {
		if k == "mpay" {
			t.Fatal("mpay has a KV key")
		}
		hist, err := kv.History(context.Background(), k)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range hist {
			for _, tok := range mpayTokens {
				if strings.Contains(string(e.Value()), tok) {
					t.Fatalf("an mPay token is in KV under %s", k)
				}
			}
		}
	}
	if len(keys) != 3 {
		t.Fatalf("KV keys %v, want the three non-single-use providers", keys)
	}
}

func status(t *testing.T, nc *nats.Conn) wire.Status {
	t.Helper()
	msg, err := nc.Request(wire.StatusSubject, nil, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var st wire.Status
	if err := json.Unmarshal(msg.Data, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

func TestMPayPoolSurvivesARefresherRestart(t *testing.T) {
	sim := simulator.New(simulator.Config{MPayPassword: "restart-secret-pw"})
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	path := filepath.Join(dir, "refresher.yaml")
	cfg := fmt.Sprintf(`
nats: {embedded: {listen: "127.0.0.1:0", store_dir: %q}}
http: {listen: "127.0.0.1:0"}
providers:
  - {name: mpay, kind: mpay, base_url: %s, username: sim-user, password: "${PW}", pool: 3}
`, filepath.Join(dir, "nats"), srv.URL)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	start := func() *Main {
		m := NewMain(Options{ConfigPath: path, Lookup: func(k string) (string, bool) { return "restart-secret-pw", k == "PW" }}, &strings.Builder{}, &testutil.LogBuffer{})
		if err := m.Run(context.Background()); err != nil {
			_ = m.Close()
			t.Fatal(err)
		}
		return m
	}
	seen := map[string]bool{}
	claim := func(m *Main, n int) {
		nc := testutil.Connect(t, m.ns)
		defer nc.Close()
		for range n {
			var tok wire.Token
			testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
				var e string
				if tok, e = getToken(t, nc, "mpay"); e != "" {
					return fmt.Errorf("%s", e)
				}
				return nil
			})
			if seen[tok.AccessToken] {
				t.Fatal("a token was handed out twice")
			}
			seen[tok.AccessToken] = true
		}
	}
	full := func(m *Main) {
		nc := testutil.Connect(t, m.ns)
		defer nc.Close()
		testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
			// At least the configured 3: claims that wait while a new leader
			// starts (its acquire delay) can leave one spare token.
			if p := status(t, nc).Providers[0]; p.Pool == nil || *p.Pool < 3 || *p.Pool > 4 {
				return fmt.Errorf("mpay status %+v", p)
			}
			return nil
		})
	}
	m := start()
	claim(m, 2)
	full(m)
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	minted := sim.Stats(simulator.MPay).TokensIssued

	// After the restart the three ready tokens are still there: one claim
	// costs one new token, not a new pool.
	m = start()
	defer m.Close()
	full(m)
	claim(m, 1)
	full(m)
	if n := sim.Stats(simulator.MPay).TokensIssued - minted; n > 1 {
		t.Fatalf("after the restart, %d tokens minted to replace 1", n)
	}
	claim(m, 5)
	for tok := range seen {
		if code := simCall(sim, simulator.MPay, tok); code != http.StatusOK {
			t.Fatalf("a handed-out token was rejected: %d", code)
		}
	}
}

func TestExampleConfigsLoad(t *testing.T) {
	env := map[string]string{"MOMO_API_USER": "u", "MOMO_API_KEY": "k", "MOMO_SUBSCRIPTION_KEY": "s", "AIRTEL_CLIENT_ID": "i", "AIRTEL_CLIENT_SECRET": "s", "TOKENBUS_SIMULATOR_URL": "http://127.0.0.1:8090"}
	files, err := filepath.Glob(filepath.Join(examples, "*.yaml"))
	if err != nil || len(files) < 3 {
		t.Fatalf("examples: %v %v", files, err)
	}
	for _, f := range files {
		cfg, err := config.Load(f, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, p := range cfg.Providers {
			if _, err := buildProvider(p, nil); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
		}
	}
}
