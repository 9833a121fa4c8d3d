package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenbus/tokenbus/libs/simulator"
	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
)

func newKey() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

// runtimeSetup is what a runtime-provider test refresher runs with.
type runtimeSetup struct {
	dir    string // store dir (embedded) and config file
	url    string // external NATS; empty runs an embedded server
	simURL string
	keys   string // the credentials.keys YAML list
	extra  string
	name   string
}

func startRuntime(t *testing.T, rs runtimeSetup) (*Main, *testutil.LogBuffer) {
	t.Helper()
	natsCfg := fmt.Sprintf(`nats: {embedded: {listen: "127.0.0.1:0", store_dir: %q}}`, filepath.Join(rs.dir, "nats"))
	if rs.url != "" {
		natsCfg = fmt.Sprintf(`nats: {url: %q}`, rs.url)
	}
	cfg := fmt.Sprintf(`%s
http: {listen: "127.0.0.1:0"}
lease: {ttl: 1500ms, retry_period: 100ms}
log: {level: debug, format: json}
credentials:
  keys: %s
providers:
  - {name: daraja-test, kind: daraja, base_url: %q, consumer_key: sim-consumer-key, consumer_secret: sim-consumer-secret}
%s`, natsCfg, rs.keys, rs.simURL, rs.extra)
	path := filepath.Join(t.TempDir(), "refresher.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &testutil.LogBuffer{}
	m := NewMain(Options{
		ConfigPath: path, Instance: rs.name,
		Backoff: refresher.Backoff{Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond, PermanentInitial: time.Hour, PermanentMax: time.Hour},
	}, logs, logs)
	if err := m.Run(context.Background()); err != nil {
		_ = m.Close()
		t.Fatal(err)
	}
	return m, logs
}

// request sends body to subject and returns the reply's error code (0 for
// success) and body.
func request(t *testing.T, nc *nats.Conn, subject string, body any) (int, []byte) {
	t.Helper()
	var data []byte
	switch b := body.(type) {
	case nil:
	case string:
		data = []byte(b)
	default:
		data, _ = json.Marshal(b)
	}
	msg, err := nc.Request(subject, data, 5*time.Second)
	if err != nil {
		t.Fatalf("%s: %v", subject, err)
	}
	code := 0
	if c := msg.Header.Get(wire.HeaderErrorCode); c != "" {
		fmt.Sscan(c, &code)
	}
	return code, msg.Data
}

func darajaEntry(name, base, key string) map[string]string {
	return map[string]string{"name": name, "kind": "daraja", "base_url": base, "consumer_key": key, "consumer_secret": simulator.DerivedSecret(key)}
}

// scanDir fails t if any file under dir holds one of secrets.
func scanDir(t *testing.T, dir string, secrets ...string) {
	t.Helper()
	n := 0
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		n++
		for _, s := range secrets {
			if bytes.Contains(b, []byte(s)) {
				t.Errorf("%s holds a secret in the clear", path)
			}
		}
		return nil
	})
	if err != nil || n == 0 {
		t.Fatalf("scan %s: %d files, %v", dir, n, err)
	}
}

func TestRuntimeProvidersPutRotateDeleteRestartReseal(t *testing.T) {
	sim := simulator.New(simulator.Config{})
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	k1 := newKey()
	rs := runtimeSetup{dir: t.TempDir(), simURL: srv.URL, keys: fmt.Sprintf("[{id: k1, key: %q}]", k1)}
	m, logs := startRuntime(t, rs)
	closed := false
	t.Cleanup(func() {
		if !closed {
			_ = m.Close()
		}
	})
	nc := testutil.Connect(t, m.ns)
	var replies bytes.Buffer
	req := func(subject string, body any) (int, []byte) {
		code, b := request(t, nc, subject, body)
		replies.Write(b)
		return code, b
	}

	// put → token.get serves within 2 s.
	start := time.Now()
	code, b := req(wire.ProvidersPutSubject, darajaEntry("m-0001", srv.URL, "merchant-0001"))
	var put wire.ProviderPutReply
	if code != 0 || json.Unmarshal(b, &put) != nil || put.Name != "m-0001" || put.Kind != "daraja" || put.Revision == 0 {
		t.Fatalf("put: %d %s", code, b)
	}
	var first wire.Token
	testutil.CheckFor(t, 2*time.Second-time.Since(start), 10*time.Millisecond, func() error {
		var e string
		first, e = getToken(t, nc, "m-0001")
		if e != "" {
			return errors.New(e)
		}
		return nil
	})
	if protected(t, sim, first.AccessToken) != 200 {
		t.Fatal("the simulator rejects the served token")
	}

	// 409 for a config-file name; 400 naming the field, never the value.
	if code, b := req(wire.ProvidersPutSubject, darajaEntry("daraja-test", srv.URL, "merchant-x")); code != 409 {
		t.Fatalf("config name: %d %s", code, b)
	}
	// 409 for a credential another provider uses (SPEC §8: for Daraja each
	// would kill the other's token), naming the field and the other provider.
	if code, b := req(wire.ProvidersPutSubject, darajaEntry("m-0001-again", srv.URL, "merchant-0001")); code != 409 ||
		!strings.Contains(string(b), "consumer_key") || !strings.Contains(string(b), "m-0001") {
		t.Fatalf("shared credential: %d %s", code, b)
	}
	// A put of the same provider again (a rotation) is not a conflict with itself.
	if code, b := req(wire.ProvidersPutSubject, darajaEntry("m-0001", srv.URL, "merchant-0001")); code != 0 {
		t.Fatalf("put again: %d %s", code, b)
	}
	bad := darajaEntry("m-0002", "not-a-url-SECRETISH", "merchant-0002")
	delete(bad, "consumer_secret")
	code, b = req(wire.ProvidersPutSubject, bad)
	if code != 400 || !strings.Contains(string(b), "base_url") || !strings.Contains(string(b), "consumer_secret: missing") || strings.Contains(string(b), "SECRETISH") {
		t.Fatalf("bad put: %d %s", code, b)
	}
	if code, _ := req(wire.ProvidersDeleteSubject, map[string]string{"name": "daraja-test"}); code != 404 {
		t.Fatalf("delete of a config provider: %d", code)
	}

	// Rotate credentials: the next token is fetched with the new ones.
	code, b = req(wire.ProvidersPutSubject, darajaEntry("m-0001", srv.URL, "merchant-0001-b"))
	if code != 0 {
		t.Fatalf("rotate: %d %s", code, b)
	}
	testutil.CheckFor(t, 2*time.Second, 10*time.Millisecond, func() error {
		tok, e := getToken(t, nc, "m-0001")
		if e != "" || tok.AccessToken == first.AccessToken {
			return fmt.Errorf("not rotated (%s)", e)
		}
		if sim.CredentialStats(simulator.Daraja, "merchant-0001-b").TokensIssued == 0 {
			return errors.New("no token fetched with the new credentials")
		}
		return nil
	})

	// A second runtime provider, then list: sorted, sources, no secret.
	if code, b := req(wire.ProvidersPutSubject, darajaEntry("a-0002", srv.URL, "merchant-0002")); code != 0 {
		t.Fatalf("put: %d %s", code, b)
	}
	testutil.CheckFor(t, 2*time.Second, 10*time.Millisecond, func() error {
		_, e := getToken(t, nc, "a-0002")
		return errorIf(e)
	})
	code, b = req(wire.ProvidersListSubject, nil)
	var list wire.ProviderListReply
	if code != 0 || json.Unmarshal(b, &list) != nil || len(list.Providers) != 3 || list.Next != "" ||
		list.Providers[0] != (wire.ProviderInfo{Name: "a-0002", Kind: "daraja", Source: "runtime", State: "ok"}) ||
		list.Providers[1].Name != "daraja-test" || list.Providers[1].Source != "config" || list.Providers[2].Name != "m-0001" {
		t.Fatalf("list: %d %s", code, b)
	}
	code, b = req(wire.ProvidersListSubject, wire.ProviderListRequest{After: "a-0002", Limit: 1})
	if json.Unmarshal(b, &list) != nil || len(list.Providers) != 1 || list.Providers[0].Name != "daraja-test" || list.Next != "daraja-test" {
		t.Fatalf("list page: %d %s", code, b)
	}
	// token.status: summary, filter.
	code, b = req(wire.StatusSubject, wire.StatusRequest{Provider: "m-0001"})
	var st wire.Status
	if json.Unmarshal(b, &st) != nil || st.Summary == nil || st.Summary.Total != 3 || st.Summary.States["ok"] != 3 || len(st.Providers) != 1 || st.Providers[0].Name != "m-0001" {
		t.Fatalf("status: %d %s", code, b)
	}

	// delete → 404 within 2 s, and the token key is gone.
	code, b = req(wire.ProvidersDeleteSubject, map[string]string{"name": "a-0002"})
	if code != 0 || string(b) != `{"name":"a-0002","deleted":true}` {
		t.Fatalf("delete: %d %s", code, b)
	}
	js, _ := jetstream.New(nc)
	kv, _ := js.KeyValue(t.Context(), "tokens")
	testutil.CheckFor(t, 2*time.Second, 10*time.Millisecond, func() error {
		if _, e := getToken(t, nc, "a-0002"); !strings.HasPrefix(e, "404") {
			return fmt.Errorf("token.get after delete: %q", e)
		}
		if _, err := kv.Get(t.Context(), "a-0002"); !errors.Is(err, jetstream.ErrKeyNotFound) {
			return fmt.Errorf("token key: %v", err)
		}
		return nil
	})
	if code, _ := req(wire.ProvidersDeleteSubject, map[string]string{"name": "a-0002"}); code != 404 {
		t.Fatalf("second delete: %d", code)
	}

	// Restart: the runtime provider is served again, with no new fetch.
	before, _ := getToken(t, nc, "m-0001")
	asked := sim.CredentialStats(simulator.Daraja, "merchant-0001-b").TokenRequests
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	closed = true
	secrets := []string{simulator.DerivedSecret("merchant-0001"), simulator.DerivedSecret("merchant-0001-b"), simulator.DerivedSecret("merchant-0002"), k1}
	scanDir(t, filepath.Join(rs.dir, "nats"), secrets...)

	// …with a new first key: entries sealed with k1 are re-sealed with k2.
	k2 := newKey()
	rs.keys = fmt.Sprintf("[{id: k2, key: %q}, {id: k1, key: %q}]", k2, k1)
	m2, logs2 := startRuntime(t, rs)
	defer func() { _ = m2.Close() }()
	nc2 := testutil.Connect(t, m2.ns)
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		tok, e := getToken(t, nc2, "m-0001")
		if e != "" {
			return errors.New(e)
		}
		if tok.AccessToken != before.AccessToken {
			t.Fatalf("restart fetched a new token while the old one was valid")
		}
		return nil
	})
	js2, _ := jetstream.New(nc2)
	ckv, _ := js2.KeyValue(t.Context(), "tokenbus-credentials")
	testutil.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		e, err := ckv.Get(t.Context(), "m-0001")
		if err != nil || !bytes.Contains(e.Value(), []byte(`"kid":"k2"`)) || bytes.Contains(e.Value(), []byte(`"kid":"k1"`)) {
			return fmt.Errorf("not re-sealed: %v", err)
		}
		return nil
	})
	if n := sim.CredentialStats(simulator.Daraja, "merchant-0001-b").TokenRequests; n != asked {
		t.Fatalf("%d token requests after the restart, want none", n-asked)
	}
	for _, l := range []string{logs.String(), logs2.String(), replies.String()} {
		for _, s := range secrets {
			if strings.Contains(l, s) {
				t.Fatalf("a secret appears in the logs or replies")
			}
		}
	}
}

func errorIf(e string) error {
	if e != "" {
		return errors.New(e)
	}
	return nil
}

// Without keys the endpoints answer 503 with a how-to.
func TestRuntimeProvidersOffWithoutKeys(t *testing.T) {
	sim := simulator.New(simulator.Config{})
	m, _ := startMain(t, sim, "")
	nc := testutil.Connect(t, m.ns)
	code, b := request(t, nc, wire.ProvidersPutSubject, darajaEntry("m-1", "http://127.0.0.1:1", "merchant-1"))
	if code != 503 || !strings.Contains(string(b), "credentials.keys") {
		t.Fatalf("put without keys: %d %s", code, b)
	}
}

// A failover: the standby takes the runtime provider over without fetching
// its valid token again.
func TestRuntimeProvidersSurviveFailover(t *testing.T) {
	ns := testutil.RunServer(t)
	sim := simulator.New(simulator.Config{})
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	keys := fmt.Sprintf("[{id: k1, key: %q}]", newKey())
	a, _ := startRuntime(t, runtimeSetup{url: ns.ClientURL(), simURL: srv.URL, keys: keys, name: "a"})
	aClosed := false
	t.Cleanup(func() {
		if !aClosed {
			_ = a.Close()
		}
	})
	nc := testutil.Connect(t, ns)
	testutil.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if !a.leader.Valid() {
			return errors.New("a does not lead")
		}
		return nil
	})
	b, _ := startRuntime(t, runtimeSetup{url: ns.ClientURL(), simURL: srv.URL, keys: keys, name: "b"})
	t.Cleanup(func() { _ = b.Close() })
	if code, body := request(t, nc, wire.ProvidersPutSubject, darajaEntry("m-0001", srv.URL, "merchant-0001")); code != 0 {
		t.Fatalf("put: %d %s", code, body)
	}
	var tok wire.Token
	testutil.CheckFor(t, 2*time.Second, 10*time.Millisecond, func() error {
		var e string
		tok, e = getToken(t, nc, "m-0001")
		return errorIf(e)
	})
	// b serves it from its own copy.
	testutil.CheckFor(t, 2*time.Second, 10*time.Millisecond, func() error {
		if sv := b.set.Get("m-0001"); sv == nil || sv.Manager == nil || sv.Manager.Slot().Load() == nil {
			return errors.New("b has no copy yet")
		}
		return nil
	})
	asked := sim.CredentialStats(simulator.Daraja, "merchant-0001").TokenRequests
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	aClosed = true
	testutil.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if !b.leader.Valid() {
			return errors.New("b has not taken over")
		}
		return nil
	})
	// b leads: it serves the same token and fetches none.
	got, e := getToken(t, nc, "m-0001")
	if e != "" || got.AccessToken != tok.AccessToken {
		t.Fatalf("after failover: %q %v", e, got.AccessToken == tok.AccessToken)
	}
	// A loop that fetches at takeover does so at once: give it a moment.
	time.Sleep(150 * time.Millisecond)
	if n := sim.CredentialStats(simulator.Daraja, "merchant-0001").TokenRequests; n != asked {
		t.Fatalf("the new leader fetched %d token(s) while the old one was valid", n-asked)
	}
}

// 1,000 runtime providers: all served, and the upstream requests in flight
// never exceed fetch_concurrency (counted at the simulator).
func TestThousandRuntimeProvidersBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("1,000 providers")
	}
	const n, bound = 1000, 8
	sim := simulator.New(simulator.Config{})
	sim.SetFaults(simulator.Daraja, simulator.Faults{Latency: 20 * time.Millisecond})
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	m, _ := startRuntime(t, runtimeSetup{dir: t.TempDir(), simURL: srv.URL, keys: fmt.Sprintf("[{id: k1, key: %q}]", newKey()),
		extra: fmt.Sprintf("fetch_concurrency: %d\n", bound)})
	t.Cleanup(func() { _ = m.Close() })
	nc := testutil.Connect(t, m.ns)
	// Puts in parallel, a few at a time.
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			key := fmt.Sprintf("merchant-%04d", i)
			body, _ := json.Marshal(darajaEntry(fmt.Sprintf("m-%04d", i), srv.URL, key))
			msg, err := nc.Request(wire.ProvidersPutSubject, body, 10*time.Second)
			if err != nil || msg.Header.Get(wire.HeaderErrorCode) != "" {
				t.Errorf("put %d: %v %s", i, err, msg.Data)
			}
		})
	}
	wg.Wait()
	testutil.CheckFor(t, 60*time.Second, 100*time.Millisecond, func() error {
		_, b := request(t, nc, wire.StatusSubject, wire.StatusRequest{Limit: 1})
		var st wire.Status
		if err := json.Unmarshal(b, &st); err != nil || st.Summary == nil {
			return fmt.Errorf("status: %v", err)
		}
		if st.Summary.Total != n+1 || st.Summary.States["ok"] != n+1 {
			return fmt.Errorf("summary %+v", st.Summary)
		}
		return nil
	})
	if _, peak := sim.InFlight(); peak > bound || peak < 2 {
		t.Fatalf("peak in-flight token requests %d, want 2..%d", peak, bound)
	}
	// token.status without a page fits one message and summarises all.
	_, b := request(t, nc, wire.StatusSubject, nil)
	var st wire.Status
	if err := json.Unmarshal(b, &st); err != nil || len(st.Providers) != wire.StatusPageMax || st.Next == "" || int64(len(b)) > nc.MaxPayload() {
		t.Fatalf("status: %d providers, next %q, %d bytes, %v", len(st.Providers), st.Next, len(b), err)
	}
}

// A runtime mPay provider is served from its single-use pool, and its
// removal stops it.
func TestRuntimeSingleUseProvider(t *testing.T) {
	sim := simulator.New(simulator.Config{})
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	m, _ := startRuntime(t, runtimeSetup{dir: t.TempDir(), simURL: srv.URL, keys: fmt.Sprintf("[{id: k1, key: %q}]", newKey())})
	t.Cleanup(func() { _ = m.Close() })
	nc := testutil.Connect(t, m.ns)
	put := map[string]any{"name": "mpay-m1", "kind": "mpay", "base_url": srv.URL, "username": "merchant-m1",
		"password": simulator.DerivedSecret("merchant-m1"), "pool": 2}
	if code, b := request(t, nc, wire.ProvidersPutSubject, put); code != 0 {
		t.Fatalf("put: %d %s", code, b)
	}
	seen := map[string]bool{}
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		tok, e := getToken(t, nc, "mpay-m1")
		if e != "" {
			return errors.New(e)
		}
		if seen[tok.AccessToken] {
			t.Fatalf("a single-use token was handed out twice")
		}
		seen[tok.AccessToken] = true
		if len(seen) < 3 {
			return fmt.Errorf("%d tokens so far", len(seen))
		}
		return nil
	})
	if n := sim.CredentialStats(simulator.MPay, "merchant-m1").TokensIssued; n < 3 {
		t.Fatalf("%d mPay tokens minted with the runtime credentials", n)
	}
	if code, _ := request(t, nc, wire.ProvidersDeleteSubject, map[string]string{"name": "mpay-m1"}); code != 0 {
		t.Fatalf("delete: %d", code)
	}
	testutil.CheckFor(t, 2*time.Second, 10*time.Millisecond, func() error {
		if _, e := getToken(t, nc, "mpay-m1"); !strings.HasPrefix(e, "404") {
			return fmt.Errorf("after delete: %q", e)
		}
		return nil
	})
}
