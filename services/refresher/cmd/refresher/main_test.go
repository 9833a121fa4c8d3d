package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/tokenbus/tokenbus/libs/simulator"
	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/config"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const consumerSecret = "CONSUMER-SECRET-7f3a9c"

// startMain runs the refresher from a config file against sim, on an embedded
// NATS server with a random port, and returns it with its captured output.
func startMain(t *testing.T, sim *simulator.Server, extra string) (*Main, *testutil.LogBuffer) {
	t.Helper()
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	cfg := fmt.Sprintf(`
nats:
  embedded: {listen: "127.0.0.1:0", store_dir: %q}
http: {listen: "127.0.0.1:0"}
log: {level: debug, format: json}
providers:
  - name: daraja-test
    kind: daraja
    base_url: %s
    consumer_key: ${KEY}
    consumer_secret: ${SECRET}
%s`, filepath.Join(dir, "nats"), srv.URL, extra)
	path := filepath.Join(dir, "refresher.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"KEY": "sim-consumer-key", "SECRET": consumerSecret}
	logs := &testutil.LogBuffer{}
	m := NewMain(Options{
		ConfigPath: path,
		Lookup:     func(k string) (string, bool) { v, ok := env[k]; return v, ok },
		Backoff:    refresher.Backoff{Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond, PermanentInitial: time.Hour, PermanentMax: time.Hour},
	}, logs, logs)
	if err := m.Run(context.Background()); err != nil {
		_ = m.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		if strings.Contains(logs.String(), consumerSecret) {
			t.Errorf("consumer secret found in output:\n%s", logs)
		}
	})
	return m, logs
}

func getToken(t *testing.T, nc *nats.Conn, provider string) (wire.Token, string) {
	t.Helper()
	msg, err := nc.Request(wire.GetSubject(provider), nil, 2*time.Second)
	if err != nil {
		return wire.Token{}, err.Error()
	}
	if code := msg.Header.Get(wire.HeaderErrorCode); code != "" {
		return wire.Token{}, code + " " + msg.Header.Get(wire.HeaderError)
	}
	var tok wire.Token
	if err := json.Unmarshal(msg.Data, &tok); err != nil {
		t.Fatal(err)
	}
	return tok, ""
}

func TestDarajaTokensFlowEndToEnd(t *testing.T) {
	sim := simulator.New(simulator.Config{DarajaTTL: 3 * time.Second, DarajaSecret: consumerSecret})
	m, logs := startMain(t, sim, "")
	nc := testutil.Connect(t, m.ns)

	var first wire.Token
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		var e string
		first, e = getToken(t, nc, "daraja-test")
		if e != "" {
			return fmt.Errorf("token.get: %s", e)
		}
		return nil
	})
	if first.Provider != "daraja-test" || first.TokenType != "Bearer" || first.ExpiresAt.Sub(first.IssuedAt) != 3*time.Second {
		t.Fatalf("token %+v", first)
	}
	// The served token is the one the provider accepts.
	if code := protected(t, sim, first.AccessToken); code != http.StatusOK {
		t.Fatalf("simulator rejected the served token: %d", code)
	}
	// It is in the KV bucket under the provider's key (the leader serves a
	// token as soon as it has it, before its write is acknowledged).
	js, _ := jetstream.New(nc)
	kv, err := js.KeyValue(context.Background(), "tokens")
	if err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 2*time.Second, 10*time.Millisecond, func() error {
		entry, err := kv.Get(context.Background(), "daraja-test")
		if err != nil {
			return err
		}
		var stored wire.Token
		if err := json.Unmarshal(entry.Value(), &stored); err != nil || stored.AccessToken != first.AccessToken {
			return fmt.Errorf("KV holds %s (%v), want the served token", entry.Value(), err)
		}
		return nil
	})

	// Rotation before expiry: a new token is served before the first expires,
	// and the new one is what the provider accepts.
	testutil.CheckFor(t, 4*time.Second, 20*time.Millisecond, func() error {
		tok, e := getToken(t, nc, "daraja-test")
		if e != "" || tok.AccessToken == first.AccessToken {
			return fmt.Errorf("not rotated yet (%s)", e)
		}
		if !time.Now().Before(first.ExpiresAt) {
			t.Errorf("rotated only after the old token expired")
		}
		if code := protected(t, sim, tok.AccessToken); code != http.StatusOK {
			t.Errorf("rotated token rejected: %d", code)
		}
		return nil
	})
	if !strings.Contains(logs.String(), `"msg":"token refreshed"`) {
		t.Errorf("no refresh logged:\n%s", logs)
	}
	// token.status reports the provider as healthy, led by this replica.
	msg, err := nc.Request(wire.StatusSubject, nil, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var st wire.Status
	if err := json.Unmarshal(msg.Data, &st); err != nil {
		t.Fatal(err)
	}
	if !st.Leader || st.Instance == "" || len(st.Providers) != 1 || st.Providers[0].Name != "daraja-test" || st.Providers[0].Kind != "daraja" || st.Providers[0].State != wire.StateOK || st.Providers[0].ExpiresAt == nil {
		t.Fatalf("status: %s", msg.Data)
	}
	// /healthz and /readyz answer.
	for _, p := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get("http://" + m.httpAddr + p)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s: %v %v", p, resp, err)
		}
		resp.Body.Close()
	}
}

func TestBadCredentialsGive502AndFewCalls(t *testing.T) {
	sim := simulator.New(simulator.Config{DarajaSecret: "not-what-we-send"})
	m, logs := startMain(t, sim, "")
	nc := testutil.Connect(t, m.ns)
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if _, e := getToken(t, nc, "daraja-test"); !strings.HasPrefix(e, "502 ") || !strings.Contains(e, "bad credentials") {
			return fmt.Errorf("got %q", e)
		}
		return nil
	})
	for range 10 {
		getToken(t, nc, "daraja-test")
	}
	if n := sim.Stats(simulator.Daraja).TokenRequests; n != 1 {
		t.Fatalf("bad credentials: %d upstream calls, want 1 (retried slowly)", n)
	}
	msg, err := nc.Request(wire.StatusSubject, nil, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var st wire.Status
	if err := json.Unmarshal(msg.Data, &st); err != nil || st.Providers[0].State != wire.StateNoToken || !strings.Contains(st.Providers[0].LastError, "bad credentials") {
		t.Fatalf("status: %s (%v)", msg.Data, err)
	}
	// The failure is recorded (and served as 502) just before it is logged.
	testutil.CheckFor(t, 2*time.Second, 10*time.Millisecond, func() error {
		if !strings.Contains(logs.String(), `"kind":"permanent"`) {
			return fmt.Errorf("permanent failure not logged:\n%s", logs)
		}
		return nil
	})
}

func TestUnavailableProviderRetriedThenRecovers(t *testing.T) {
	sim := simulator.New(simulator.Config{DarajaSecret: consumerSecret})
	sim.SetFaults(simulator.Daraja, simulator.Faults{Outage: true})
	m, _ := startMain(t, sim, "")
	nc := testutil.Connect(t, m.ns)
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if n := sim.Stats(simulator.Daraja).TokenRequests; n < 3 {
			return fmt.Errorf("%d calls", n)
		}
		return nil
	})
	if _, e := getToken(t, nc, "daraja-test"); !strings.HasPrefix(e, "503 ") {
		t.Fatalf("during outage: %q, want 503", e)
	}
	sim.SetFaults(simulator.Daraja, simulator.Faults{})
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if _, e := getToken(t, nc, "daraja-test"); e != "" {
			return fmt.Errorf("%s", e)
		}
		return nil
	})
}

func TestDemoModeRuns(t *testing.T) {
	var out bytes.Buffer
	logs := &testutil.LogBuffer{}
	dir := t.TempDir()
	// Demo mode with its built-in config, moved to free ports and a temp store.
	cfg := strings.NewReplacer("listen: 127.0.0.1:4222", fmt.Sprintf("listen: 127.0.0.1:0\n    store_dir: %q", filepath.Join(dir, "nats")), "127.0.0.1:8080", "127.0.0.1:0").Replace(string(demoConfig))
	path := filepath.Join(dir, "demo.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	m := NewMain(Options{Demo: true, ConfigPath: path, SimulatorListen: "127.0.0.1:0", Lookup: func(string) (string, bool) { return "", false }}, &out, logs)
	if err := m.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	nc := testutil.Connect(t, m.ns)
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		_, e := getToken(t, nc, "daraja-sandbox")
		if e != "" {
			return fmt.Errorf("%s", e)
		}
		return nil
	})
	if !strings.Contains(out.String(), "get a token") {
		t.Fatalf("banner does not say how to get a token:\n%s", out.String())
	}
}

func protected(t *testing.T, sim *simulator.Server, token string) int {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, "/mpesa/stkpush/v1/processrequest", strings.NewReader("{}"))
	req.Header.Set("Authorization", "Bearer "+token)
	rec := httptest.NewRecorder()
	sim.ServeHTTP(rec, req)
	return rec.Code
}

func TestWarnsWhenRefreshBeforeIsShorterThanFailover(t *testing.T) {
	sim := simulator.New(simulator.Config{DarajaSecret: consumerSecret})
	_, logs := startMain(t, sim, "    refresh_before: 2s\n")
	if !strings.Contains(logs.String(), "refresh_before is shorter than a leader failover") {
		t.Fatalf("no warning for refresh_before 2s with lease.ttl 10s:\n%s", logs)
	}
}

// --demo without --config keeps JetStream in a new temporary directory each
// run, removed on exit: no token or provider of an earlier run survives.
func TestDemoStoreIsFreshEachRun(t *testing.T) {
	var dirs []string
	for range 2 {
		m := NewMain(Options{Demo: true}, io.Discard, io.Discard)
		cfg, err := config.Parse(demoConfig, func(string) (string, bool) { return "http://127.0.0.1:1", true })
		if err != nil {
			t.Fatal(err)
		}
		if err := m.freshDemoStore(cfg); err != nil {
			t.Fatal(err)
		}
		dir := cfg.NATS.Embedded.StoreDir
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
			t.Fatalf("demo store %q: %v", dir, err)
		}
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("demo store %q still there after Close: %v", dir, err)
		}
		dirs = append(dirs, dir)
	}
	if dirs[0] == dirs[1] {
		t.Errorf("two demo runs shared store %q", dirs[0])
	}
}
