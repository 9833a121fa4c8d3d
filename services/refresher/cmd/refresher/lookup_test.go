package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokenbus/tokenbus/libs/simulator"
	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
	"github.com/tokenbus/tokenbus/services/refresher/leader"
	"github.com/tokenbus/tokenbus/services/refresher/natsx"
	"github.com/tokenbus/tokenbus/services/refresher/refresh"
)

// holdLease keeps the lease in the name of "elsewhere", a leader that is not
// a refresher of this test, rewriting it every 100 ms so that no replica
// takes it over; it stops with the test.
func holdLease(t *testing.T, st *natsx.Store) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	rec, _ := json.Marshal(leader.Record{Holder: "elsewhere", TTLMillis: 10000})
	if _, err := st.Lease().Put(ctx, leader.LeaseKey, rec); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
				_, _ = st.Lease().Put(ctx, leader.LeaseKey, rec)
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
}

// startStandby runs a replica that never leads (holdLease) and returns it
// with its log.
func startStandby(t *testing.T, url, simURL string) (*Main, *testutil.LogBuffer) {
	t.Helper()
	cfg := fmt.Sprintf(`
nats: {url: %q}
lease: {ttl: 1500ms, retry_period: 100ms}
http: {listen: "127.0.0.1:0"}
providers:
  - {name: daraja-test, kind: daraja, base_url: %q, consumer_key: sim-consumer-key, consumer_secret: sim-consumer-secret}
`, url, simURL)
	path := filepath.Join(t.TempDir(), "r.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &testutil.LogBuffer{}
	m := NewMain(Options{ConfigPath: path, Instance: "standby"}, io.Discard, logs)
	if err := m.Run(context.Background()); err != nil {
		_ = m.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m, logs
}

// TestStandbyWithALaggingWatchReadsTheBucket: a standby whose watch has
// stopped delivering, asked for a provider it has no valid token of, reads
// the bucket before it answers 503 — the token a leader just published is
// served at once, with its revision — and it says so: /readyz is 503 with
// the reason while the watch is stalled, one log line when it stalls and one
// when it is current again.
func TestStandbyWithALaggingWatchReadsTheBucket(t *testing.T) {
	sim := simulator.New(simulator.Config{})
	srv := httptest.NewServer(sim)
	defer srv.Close()
	ns := testutil.RunServer(t)
	nc := testutil.Connect(t, ns)
	ctx := context.Background()
	st, err := natsx.OpenStore(ctx, nc, "tokens", 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	holdLease(t, st)
	m, logs := startStandby(t, ns.ClientURL(), srv.URL)
	testutil.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if s := m.Status(wire.StatusRequest{}); s.LeaderInstance != "elsewhere" || s.Leader {
			return fmt.Errorf("status %+v", s)
		}
		return nil
	})
	if _, e := getToken(t, nc, "daraja-test"); !strings.HasPrefix(e, "503 ") {
		t.Fatalf("token.get with no token anywhere: %q, want 503", e)
	}

	// That 503 read the bucket and found nothing: the miss is remembered for
	// 250 ms (natsx.LookupConfig.Negative).
	time.Sleep(300 * time.Millisecond)
	release := testutil.StallWatches(t, st.JetStream(), "KV_tokens")
	now := time.Now()
	rev, err := st.Publish(ctx, wire.Token{Provider: "daraja-test", AccessToken: "published-while-stalled", TokenType: "Bearer", IssuedAt: now, ExpiresAt: now.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := nc.Request(wire.GetSubject("daraja-test"), nil, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var tok wire.Token
	if c := msg.Header.Get(wire.HeaderErrorCode); c != "" || json.Unmarshal(msg.Data, &tok) != nil || tok.AccessToken != "published-while-stalled" {
		t.Fatalf("token.get right after the publish, watch stalled: %s %s %s", c, msg.Header.Get(wire.HeaderError), msg.Data)
	}
	if got := msg.Header.Get(wire.HeaderRevision); got != strconv.FormatUint(rev, 10) {
		t.Errorf("reply revision %q, want %d", got, rev)
	}

	// /readyz says the watch is stalled until it is recreated, and the log
	// says so once each way.
	readyz := func() (int, string) {
		resp, err := http.Get("http://" + m.httpAddr + "/readyz")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	testutil.CheckFor(t, 3*time.Second, 10*time.Millisecond, func() error {
		code, body := readyz()
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "token watch is stalled") {
			return fmt.Errorf("/readyz while the watch cannot be recreated: %d %s", code, body)
		}
		return nil
	})
	release()
	testutil.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if code, body := readyz(); code != http.StatusOK {
			return fmt.Errorf("/readyz: %d %s", code, body)
		}
		return nil
	})
	// A write seen on its republished subject clears a remembered miss: a
	// token published right after a 503 is served at once, not 250 ms later.
	if _, e := getToken(t, nc, "other"); e == "" {
		t.Fatal("token.get of an unknown provider succeeded")
	}
	release = testutil.StallWatches(t, st.JetStream(), "KV_tokens")
	if err := st.KV().Delete(ctx, "daraja-test"); err != nil {
		t.Fatal(err)
	}
	m.set.Get("daraja-test").Manager.Slot().Store(&refresh.Entry{Token: wire.Token{Provider: "daraja-test", AccessToken: "expired", IssuedAt: now.Add(-time.Hour), ExpiresAt: now.Add(-time.Minute)}, Revision: 1 << 40})
	if _, e := getToken(t, nc, "daraja-test"); !strings.HasPrefix(e, "503 ") {
		t.Fatalf("token.get with the key deleted: %q, want 503", e)
	}
	_, err = st.Publish(ctx, wire.Token{Provider: "daraja-test", AccessToken: "right-after-a-miss", TokenType: "Bearer", IssuedAt: now, ExpiresAt: now.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	published := time.Now()
	testutil.CheckFor(t, 2*time.Second, 5*time.Millisecond, func() error {
		tok, e := getToken(t, nc, "daraja-test")
		if e != "" || tok.AccessToken != "right-after-a-miss" {
			return fmt.Errorf("token.get: %s %s", tok.AccessToken, e)
		}
		return nil
	})
	if d := time.Since(published); d >= 200*time.Millisecond {
		t.Errorf("the token published right after a miss was served %v later, want < 200 ms (the miss is forgotten on the write)", d)
	}
	release()

	// The recreated watch delivers later tokens again.
	rev2, err := st.Publish(ctx, wire.Token{Provider: "daraja-test", AccessToken: "after", TokenType: "Bearer", IssuedAt: now, ExpiresAt: now.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 2*time.Second, 10*time.Millisecond, func() error {
		if e := m.set.Get("daraja-test").Manager.Slot().Load(); e == nil || e.Revision != rev2 {
			return errors.New("the watch has not delivered the next token")
		}
		return nil
	})
	out := logs.String()
	// Two stalls (the test made two): one line each way for each.
	if n := strings.Count(out, "token watch stalled"); n != 2 {
		t.Errorf("%d log lines for two stalls, want 2:\n%s", n, out)
	}
	if n := strings.Count(out, "token watch current again"); n != 2 {
		t.Errorf("%d log lines for two recoveries, want 2:\n%s", n, out)
	}
	if n := sim.Stats(simulator.Daraja).TokenRequests; n != 0 {
		t.Errorf("a standby called the provider %d times", n)
	}
}

// TestStandbyWithNoTokenAnywhereAnswers503Quickly: with no token in memory
// nor in the bucket, token.get still answers 503 at once, and a burst of
// requests reads the bucket a bounded number of times (one read in flight,
// a miss remembered briefly), not once per request.
func TestStandbyWithNoTokenAnywhereAnswers503Quickly(t *testing.T) {
	sim := simulator.New(simulator.Config{})
	srv := httptest.NewServer(sim)
	defer srv.Close()
	ns := testutil.RunServer(t)
	nc := testutil.Connect(t, ns)
	st, err := natsx.OpenStore(context.Background(), nc, "tokens", 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	holdLease(t, st)
	startStandby(t, ns.ClientURL(), srv.URL)
	// Count the reads of the provider's key that reach the server.
	var reads atomic.Int64
	sub, err := nc.Subscribe("$JS.API.DIRECT.GET.>", func(m *nats.Msg) {
		if m.Subject == "$JS.API.DIRECT.GET.KV_tokens" || strings.HasPrefix(m.Subject, "$JS.API.DIRECT.GET.KV_tokens.") {
			reads.Add(1)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	_ = nc.Flush()
	start := time.Now()
	const n = 300
	for i := range n {
		msg, err := nc.Request(wire.GetSubject("daraja-test"), nil, 2*time.Second)
		if err != nil || msg.Header.Get(wire.HeaderErrorCode) != "503" {
			t.Fatalf("request %d: %v %v", i, err, msg)
		}
	}
	elapsed := time.Since(start)
	time.Sleep(50 * time.Millisecond) // the last read reaches the counter
	got := int(reads.Load())
	// 250 ms negative cache: at most one read per 250 ms, plus one.
	limit := int(elapsed/(250*time.Millisecond)) + 2
	t.Logf("%d requests in %v: %d bucket reads (limit %d)", n, elapsed.Round(time.Millisecond), got, limit)
	if got == 0 || got > limit {
		t.Errorf("%d bucket reads for %d requests in %v, want 1..%d", got, n, elapsed, limit)
	}
}

// TestLeaderDoesNotReadTheBucketOnAMiss: the lease holder answers a
// token.get for a provider it holds no valid token of (here: bad
// credentials) from memory alone. The bucket holds nothing it would serve —
// while it leads it refuses every write it did not make (Leader.Accept), and
// its own are in memory before they are published — and during a
// 100,000-provider fill each such read waited behind the store's fsyncs
// (issue 20: the 503s' p99 was 14–18 ms; docs/benchmarks.md). A standby
// still reads (TestStandbyWithALaggingWatchReadsTheBucket).
func TestLeaderDoesNotReadTheBucketOnAMiss(t *testing.T) {
	sim := simulator.New(simulator.Config{DarajaSecret: "not-what-we-send"})
	m, _ := startMain(t, sim, "")
	nc := testutil.Connect(t, m.ns)
	// Every read of the tokens bucket, direct or through the stream API.
	var reads atomic.Int64
	for _, subj := range []string{"$JS.API.DIRECT.GET.KV_tokens", "$JS.API.DIRECT.GET.KV_tokens.>", "$JS.API.STREAM.MSG.GET.KV_tokens"} {
		if _, err := nc.Subscribe(subj, func(*nats.Msg) { reads.Add(1) }); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if !m.leader.State().Leader {
			return errors.New("not leading yet")
		}
		if _, e := getToken(t, nc, "daraja-test"); !strings.HasPrefix(e, "502 ") {
			return fmt.Errorf("got %q", e)
		}
		return nil
	})
	reads.Store(0)
	for range 3 {
		time.Sleep(300 * time.Millisecond) // past a remembered miss (natsx.LookupConfig.Negative)
		if _, e := getToken(t, nc, "daraja-test"); !strings.HasPrefix(e, "502 ") {
			t.Fatalf("got %q, want 502", e)
		}
	}
	if n := reads.Load(); n != 0 {
		t.Fatalf("the leader read the bucket %d times for 3 token.get it had no token for", n)
	}
}

// TestReadyNeedsTheServiceConnection: /readyz's check fails once the
// request-reply service's own connection is gone, even with the main one
// up — a replica that cannot answer token.get is not ready.
func TestReadyNeedsTheServiceConnection(t *testing.T) {
	m, _ := startMain(t, simulator.New(simulator.Config{}), "")
	ctx := context.Background()
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error { return m.readyCheck(ctx) })
	m.svcNC.Close()
	if err := m.readyCheck(ctx); err == nil || !m.nc.IsConnected() {
		t.Fatalf("service connection closed: ready check %v (main connection up: %v), want not ready", err, m.nc.IsConnected())
	}
}
