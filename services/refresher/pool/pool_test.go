package pool_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/tokenbus/tokenbus/libs/simulator"
	"github.com/tokenbus/tokenbus/libs/tokenclient"
	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
	"github.com/tokenbus/tokenbus/services/refresher/pool"
	"github.com/tokenbus/tokenbus/services/refresher/provider/mpay"
	"github.com/tokenbus/tokenbus/services/refresher/rpc"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const password = "MPAY-POOL-PASSWORD-77aa"

// fastBackoff retries quickly after any failure.
var fastBackoff = refresher.Backoff{Initial: 20 * time.Millisecond, Max: 100 * time.Millisecond, PermanentInitial: 50 * time.Millisecond, PermanentMax: 100 * time.Millisecond}

// env is an mPay simulator, a NATS server, and a refresher's pool on it.
type env struct {
	sim  *simulator.Server
	url  string
	ns   *server.Server
	nc   *nats.Conn
	logs *testutil.LogBuffer
}

func newEnv(t *testing.T, ttl time.Duration) *env {
	t.Helper()
	sim := simulator.New(simulator.Config{MPayUsername: "user", MPayPassword: password, MPayTTL: ttl})
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	ns := testutil.RunServer(t)
	e := &env{sim: sim, url: srv.URL, ns: ns, nc: testutil.Connect(t, ns), logs: &testutil.LogBuffer{}}
	t.Cleanup(func() {
		if strings.Contains(e.logs.String(), password) {
			t.Errorf("password in logs:\n%s", e.logs)
		}
	})
	return e
}

// replica opens the pool of provider "mpay" on nc, serves it over token.get,
// and, with fill, runs its filler. It stops when the test ends, or on stop.
type replica struct {
	pool   *pool.Pool
	stop   func()
	stopMu sync.Once
}

func (e *env) replica(t *testing.T, nc *nats.Conn, cfg pool.Config, fill bool, life time.Duration, pw string) *replica {
	t.Helper()
	store, err := pool.Open(context.Background(), nc, "tokens", 1)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Name, cfg.Kind, cfg.Logger = "mpay", "mpay", e.logs.Logger()
	p, err := store.Pool(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := rpc.Start(nc, rpc.Config{Sources: map[string]rpc.Source{"mpay": p}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	if fill {
		prov := mpay.New(mpay.Config{BaseURL: e.url, Username: "user", Password: refresher.Secret(pw), Lifetime: life})
		f := pool.NewFiller(p, pool.FillerConfig{Provider: prov, Backoff: fastBackoff, Logger: e.logs.Logger(), Poll: 100 * time.Millisecond})
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f.Run(ctx); err != nil {
				t.Errorf("filler: %v", err)
			}
		}()
	}
	r := &replica{pool: p}
	r.stop = func() {
		r.stopMu.Do(func() {
			cancel()
			wg.Wait()
			if err := svc.Stop(); err != nil {
				t.Errorf("stop: %v", err)
			}
		})
	}
	t.Cleanup(r.stop)
	return r
}

// get asks token.get.mpay and returns the token, or the error code and message.
func get(t *testing.T, nc *nats.Conn) (wire.Token, string) {
	t.Helper()
	msg, err := nc.Request(wire.GetSubject("mpay"), nil, 10*time.Second)
	if err != nil {
		return wire.Token{}, "request: " + err.Error()
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

// pay makes the simulator's protected mPay call, which consumes the token.
func (e *env) pay(t *testing.T, token string) int {
	t.Helper()
	return testutil.ProtectedCall(t, http.MethodPost, e.url+"/v2/payments", token)
}

// waitReady waits until at least n tokens are ready. (A burst of claims may
// leave a few more than the pool's size: they expire by their TTL.)
func waitReady(t *testing.T, p *pool.Pool, n int) {
	t.Helper()
	testutil.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		got, err := p.Ready(context.Background())
		if err != nil || got < n {
			return fmt.Errorf("ready %d (%v), want at least %d", got, err, n)
		}
		return nil
	})
}

func TestConcurrentGetsGetDistinctTokensEachAcceptedOnce(t *testing.T) {
	const life, n, size = 30 * time.Second, 200, 4
	e := newEnv(t, life)
	// Two replicas serve token.get; one of them fills the pool.
	nc2 := testutil.Connect(t, e.ns)
	leader := e.replica(t, e.nc, pool.Config{Size: size}, true, life, password)
	e.replica(t, nc2, pool.Config{Size: size}, false, life, password)
	waitReady(t, leader.pool, size)

	start := time.Now()
	toks := make([]wire.Token, n)
	errs := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			nc := e.nc
			if i%2 == 1 {
				nc = nc2
			}
			toks[i], errs[i] = get(t, nc)
		})
	}
	wg.Wait()
	took := time.Since(start)
	seen := make(map[string]bool, n)
	for i, tok := range toks {
		if errs[i] != "" {
			t.Fatalf("get %d: %s", i, errs[i])
		}
		if seen[tok.AccessToken] {
			t.Fatalf("token handed out twice: get %d", i)
		}
		seen[tok.AccessToken] = true
		if tok.Provider != "mpay" || !time.Now().Before(tok.ExpiresAt) {
			t.Fatalf("token %d: provider %q expires %v", i, tok.Provider, tok.ExpiresAt)
		}
	}
	// Each is accepted by mPay exactly once: it was valid and no one used it.
	for tok := range seen {
		if code := e.pay(t, tok); code != http.StatusOK {
			t.Fatalf("a handed-out token was rejected: %d", code)
		}
		if code := e.pay(t, tok); code != http.StatusUnauthorized {
			t.Fatalf("a used token was accepted again: %d", code)
		}
	}
	waitReady(t, leader.pool, size) // refilled after the burst
	st := e.sim.Stats(simulator.MPay)
	ready, _ := leader.pool.Ready(context.Background())
	t.Logf("%d concurrent gets in %v; %d tokens minted for %d handed out and %d ready", n, took, st.TokensIssued, n, ready)
	if st.TokensIssued > n+2*size {
		t.Errorf("minted %d tokens for %d gets and a pool of %d", st.TokensIssued, n, size)
	}
}

func TestRestartHandsNothingOutTwice(t *testing.T) {
	const life, size = 30 * time.Second, 5
	sim := simulator.New(simulator.Config{MPayUsername: "user", MPayPassword: password, MPayTTL: life})
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	e := &env{sim: sim, url: srv.URL, logs: &testutil.LogBuffer{}}
	seen := map[string]bool{}
	claim := func(nc *nats.Conn, k int) {
		for range k {
			tok, msg := get(t, nc)
			if msg != "" {
				t.Fatal(msg)
			}
			if seen[tok.AccessToken] {
				t.Fatal("token handed out twice across a restart")
			}
			seen[tok.AccessToken] = true
		}
	}

	// First life: fill, claim two.
	ns := startServer(t, dir)
	nc, _ := nats.Connect(ns.ClientURL())
	r := e.replica(t, nc, pool.Config{Size: size}, true, life, password)
	waitReady(t, r.pool, size)
	claim(nc, 2)
	waitReady(t, r.pool, size)
	minted := sim.Stats(simulator.MPay).TokensIssued
	r.stop()
	nc.Close()
	ns.Shutdown()
	ns.WaitForShutdown()

	// Second life on the same store: the ready tokens are still there, the
	// filler mints none while the pool is full, and claims hand out tokens
	// no one had.
	ns = startServer(t, dir)
	nc, _ = nats.Connect(ns.ClientURL())
	t.Cleanup(nc.Close)
	r = e.replica(t, nc, pool.Config{Size: size}, true, life, password)
	if n, err := r.pool.Ready(context.Background()); err != nil || n != size {
		t.Fatalf("after restart: %d ready (%v), want %d", n, err, size)
	}
	claim(nc, 1)
	waitReady(t, r.pool, size)
	if got := sim.Stats(simulator.MPay).TokensIssued; got != minted+1 {
		t.Fatalf("after the restart the filler minted %d tokens to replace 1", got-minted)
	}
	claim(nc, size+2)
	for tok := range seen {
		if code := e.pay(t, tok); code != http.StatusOK {
			t.Fatalf("a handed-out token was rejected: %d", code)
		}
	}
}

func startServer(t *testing.T, dir string) *server.Server {
	t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true, StoreDir: dir, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("not ready")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns
}

func TestOutageEmptiesThePoolIntoQuick503sThenRefills(t *testing.T) {
	const life, size = 30 * time.Second, 3
	e := newEnv(t, life)
	r := e.replica(t, e.nc, pool.Config{Size: size}, true, life, password)
	waitReady(t, r.pool, size)
	e.sim.SetFaults(simulator.MPay, simulator.Faults{Outage: true})
	// The ready tokens are still handed out during the outage.
	for range size {
		if _, msg := get(t, e.nc); msg != "" {
			t.Fatal(msg)
		}
	}
	// Then the pool is empty and the provider down: 503 at once, not a hang.
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if n := e.sim.Stats(simulator.MPay).TokenErrors; n == 0 {
			return fmt.Errorf("no failed refill yet")
		}
		return nil
	})
	var slowest time.Duration
	for range 10 {
		start := time.Now()
		_, msg := get(t, e.nc)
		slowest = max(slowest, time.Since(start))
		if !strings.HasPrefix(msg, "503 ") || !strings.Contains(msg, "provider unavailable") {
			t.Fatalf("during the outage: %q, want a 503", msg)
		}
	}
	t.Logf("empty pool, provider down: slowest 503 in %v", slowest)
	if slowest > 500*time.Millisecond {
		t.Fatalf("a 503 took %v", slowest)
	}
	// Status reports the last count and recounts in the background.
	testutil.CheckFor(t, 3*time.Second, 20*time.Millisecond, func() error {
		if st := r.pool.Status(); st.State != wire.StateNoToken || st.Pool == nil || *st.Pool != 0 || !strings.Contains(st.LastError, "HTTP 503") {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
	// The provider is back: the pool refills and tokens flow again.
	e.sim.SetFaults(simulator.MPay, simulator.Faults{})
	waitReady(t, r.pool, size)
	if _, msg := get(t, e.nc); msg != "" {
		t.Fatal(msg)
	}
	testutil.CheckFor(t, 3*time.Second, 20*time.Millisecond, func() error {
		if st := r.pool.Status(); st.State != wire.StateOK || st.LastError != "" || st.LastRefresh == nil {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
}

func TestBadCredentialsGive502AtOnce(t *testing.T) {
	e := newEnv(t, time.Minute)
	e.replica(t, e.nc, pool.Config{Size: 2}, true, time.Minute, "wrong")
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		start := time.Now()
		_, msg := get(t, e.nc)
		if !strings.HasPrefix(msg, "502 ") || !strings.Contains(msg, "check username and password") {
			return fmt.Errorf("got %q", msg)
		}
		if d := time.Since(start); d > 500*time.Millisecond {
			t.Fatalf("502 after %v", d)
		}
		return nil
	})
}

func TestNoFillerGives503AtOnce(t *testing.T) {
	e := newEnv(t, time.Minute)
	e.replica(t, e.nc, pool.Config{Size: 2}, false, time.Minute, password)
	start := time.Now()
	_, msg := get(t, e.nc)
	if !strings.HasPrefix(msg, "503 ") || time.Since(start) > 500*time.Millisecond {
		t.Fatalf("got %q after %v", msg, time.Since(start))
	}
}

func TestTokensAreDroppedBeforeTheyExpire(t *testing.T) {
	// 4-second tokens with a 2-second margin live 2 s in the pool.
	const life, size = 4 * time.Second, 2
	e := newEnv(t, life)
	r := e.replica(t, e.nc, pool.Config{Size: size, Margin: 2 * time.Second}, true, life, password)
	waitReady(t, r.pool, size)
	// The first tokens expire from the pool and are replaced.
	testutil.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		if n := e.sim.Stats(simulator.MPay).TokensIssued; n < 2*size {
			return fmt.Errorf("%d minted", n)
		}
		return nil
	})
	waitReady(t, r.pool, size)
	for range 2 * size {
		tok, msg := get(t, e.nc)
		if msg != "" {
			t.Fatal(msg)
		}
		if left := time.Until(tok.ExpiresAt); left < time.Second {
			t.Fatalf("handed out with %v left", left)
		}
		if code := e.pay(t, tok.AccessToken); code != http.StatusOK {
			t.Fatalf("handed-out token rejected: %d", code)
		}
	}
}

func TestATokenClaimedByADeadClaimerIsNeverHandedOut(t *testing.T) {
	const life = 30 * time.Second
	e := newEnv(t, life)
	r := e.replica(t, e.nc, pool.WithAckWait(pool.Config{Size: 1}, time.Second), true, life, password)
	waitReady(t, r.pool, 1)
	// A claimer fetches the token and dies before acking it.
	js, err := jetstream.New(e.nc)
	if err != nil {
		t.Fatal(err)
	}
	cons, err := js.Consumer(context.Background(), pool.StreamPrefix+"tokens", "pool-mpay")
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var stolen wire.Token
	for m := range batch.Messages() {
		if err := json.Unmarshal(m.Data(), &stolen); err != nil {
			t.Fatal(err)
		}
	}
	if stolen.AccessToken == "" {
		t.Fatal("nothing fetched")
	}
	// Past AckWait the server delivers it again: it is dropped, not served.
	testutil.CheckFor(t, 5*time.Second, 100*time.Millisecond, func() error {
		tok, msg := get(t, e.nc)
		if msg != "" {
			t.Fatal(msg)
		}
		if tok.AccessToken == stolen.AccessToken {
			t.Fatal("a token delivered to another claimer was handed out")
		}
		if !strings.Contains(e.logs.String(), `"reason":"redelivered"`) {
			return fmt.Errorf("the redelivered token was not dropped yet")
		}
		return nil
	})
}

// TestReadyReadersShareOneCount: status pages, token.status and metric
// scrapes asking for the pool size at once cause one consumer-info request a
// second, not one each.
func TestReadyReadersShareOneCount(t *testing.T) {
	e := newEnv(t, 2*time.Minute)
	nc := testutil.Connect(t, e.ns)
	r := e.replica(t, nc, pool.Config{Size: 2}, false, 0, "")
	watcher := testutil.Connect(t, e.ns)
	infos, err := watcher.SubscribeSync("$JS.API.CONSUMER.INFO.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := watcher.Flush(); err != nil {
		t.Fatal(err)
	}
	for range 20 {
		if _, err := r.pool.Ready(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	requests := func(want int) {
		t.Helper()
		testutil.CheckFor(t, 2*time.Second, 5*time.Millisecond, func() error {
			if n, _, _ := infos.Pending(); n < want {
				return fmt.Errorf("%d consumer-info requests seen, want %d", n, want)
			}
			return nil
		})
		time.Sleep(50 * time.Millisecond) // any extra request would have arrived
		if n, _, _ := infos.Pending(); n != want {
			t.Fatalf("%d consumer-info requests, want %d", n, want)
		}
	}
	requests(1)             // 20 readers, one request
	time.Sleep(time.Second) // past readyMaxAge: the next reader counts again
	if _, err := r.pool.Ready(context.Background()); err != nil {
		t.Fatal(err)
	}
	requests(2)
}

// TestGetWithoutReplySubjectClaimsNothing: a token.get published without a
// reply subject would lose the single-use token it claimed.
func TestGetWithoutReplySubjectClaimsNothing(t *testing.T) {
	e := newEnv(t, 2*time.Minute)
	filler := e.replica(t, testutil.Connect(t, e.ns), pool.Config{Size: 3}, true, 0, password)
	waitReady(t, filler.pool, 3)
	filler.stop()
	r := e.replica(t, testutil.Connect(t, e.ns), pool.Config{Size: 3}, false, 0, "")
	nc := testutil.Connect(t, e.ns)
	for range 3 {
		if err := nc.Publish(wire.GetSubject("mpay"), nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // a claim would have happened by now
	if n, err := r.pool.Ready(context.Background()); err != nil || n != 3 {
		t.Fatalf("ready %d (%v) after gets without a reply subject, want 3", n, err)
	}
	if tok, e := get(t, nc); e != "" || tok.AccessToken == "" {
		t.Fatalf("a get with a reply subject still works: %s", e)
	}
}

// TestPoolWaitIsShorterThanTheClientTimeout: a claimer that waits for a
// refill gets the pool's answer before its own request times out.
func TestPoolWaitIsShorterThanTheClientTimeout(t *testing.T) {
	if pool.DefaultWait >= tokenclient.DefaultTimeout {
		t.Fatalf("pool wait %v, client timeout %v", pool.DefaultWait, tokenclient.DefaultTimeout)
	}
}

// TestStatusDoesNotWaitOnJetStream: token.status answers on the endpoint's
// goroutine, so a pool's status never makes a JetStream request there.
func TestStatusDoesNotWaitOnJetStream(t *testing.T) {
	e := newEnv(t, 2*time.Minute)
	// A connection that waits for the server to come back, as the
	// refresher's does: a request made now would wait for its timeout.
	nc, err := nats.Connect(e.ns.ClientURL(), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	filler := e.replica(t, testutil.Connect(t, e.ns), pool.Config{Size: 2}, true, 0, password)
	waitReady(t, filler.pool, 2)
	filler.stop()
	r := e.replica(t, nc, pool.Config{Size: 2}, false, 0, "")
	waitReady(t, r.pool, 2)
	time.Sleep(1100 * time.Millisecond) // the count is stale
	e.ns.Shutdown()                     // and JetStream unreachable
	start := time.Now()
	st := r.pool.Status()
	if took := time.Since(start); took > 100*time.Millisecond {
		t.Fatalf("Status took %v: it waited on JetStream", took)
	}
	if st.Pool == nil || *st.Pool < 2 {
		t.Fatalf("status %+v: want the last count", st)
	}
}
