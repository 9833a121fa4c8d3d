package tests

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/tokenbus/tokenbus/libs/simulator"
	"github.com/tokenbus/tokenbus/libs/tokenclient"
	"github.com/tokenbus/tokenbus/tests/harness"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// newClient returns a tokenclient on its own connection, closed when the
// test ends, and the events its watch saw.
func newClient(t *testing.T, h *harness.Harness, opts ...tokenclient.Option) (*tokenclient.Client, *events) {
	t.Helper()
	ev := &events{}
	opts = append([]tokenclient.Option{tokenclient.WithBucket(h.Bucket), tokenclient.WithProviders(h.Provider), tokenclient.WithOnUpdate(ev.add)}, opts...)
	tc, err := tokenclient.New(h.Connect(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tc.Close() })
	return tc, ev
}

// requestClient returns a tokenclient that keeps no copy (every Token is a
// token.get request), on its own connection, closed when the test ends.
func requestClient(tb testing.TB, h *harness.Harness) *tokenclient.Client {
	tb.Helper()
	tc, err := tokenclient.New(h.Connect(), tokenclient.WithoutWatch())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = tc.Close() })
	return tc
}

// events records what a client's watch saw.
type events struct {
	mu   sync.Mutex
	list []tokenclient.Event
}

func (e *events) add(ev tokenclient.Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.list = append(e.list, ev)
}

// seen reports whether the watch delivered access token tok, and when.
func (e *events) seen(tok string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, ev := range e.list {
		if ev.Token.AccessToken == tok {
			return true
		}
	}
	return false
}

// forModes runs test in each FollowMode.
func forModes(t *testing.T, test func(*testing.T, tokenclient.FollowMode)) {
	for _, mode := range []tokenclient.FollowMode{tokenclient.FollowUpdates, tokenclient.FollowKVWatch} {
		t.Run(mode.String(), func(t *testing.T) { test(t, mode) })
	}
}

func waitReady(t *testing.T, tc *tokenclient.Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tc.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestWatchSeesRotation: a new token published by the refresher reaches a
// watching client's memory, and Token serves it from there.
func TestWatchSeesRotation(t *testing.T) { forModes(t, testWatchSeesRotation) }

func testWatchSeesRotation(t *testing.T, mode tokenclient.FollowMode) {
	h := harness.Start(t, harness.Config{})
	tc, ev := newClient(t, h, tokenclient.WithFollowMode(mode))
	waitReady(t, tc)
	first := h.Current()
	if !ev.seen(first.AccessToken) {
		t.Fatal("the watch did not load the current token")
	}
	got, err := tc.Token(context.Background(), h.Provider)
	if err != nil || got != first {
		t.Fatalf("Token = %+v, %v; want %+v", got, err, first)
	}

	next := h.ForceRefresh()
	harness.CheckFor(t, 2*time.Second, 5*time.Millisecond, func() error {
		got, err := tc.Token(context.Background(), h.Provider)
		if err != nil {
			return err
		}
		if got.AccessToken != next.AccessToken {
			return fmt.Errorf("still serving %s…", got.AccessToken[:6])
		}
		return nil
	})
	if !ev.seen(next.AccessToken) {
		t.Fatal("the new token did not come through the watch")
	}
}

// TestTransportAfterForcedRotation: the provider rotates its keys, so the
// token every replica holds is rejected; a call through Transport reports it,
// the refresher fetches one new token, and the call succeeds on its one retry.
func TestTransportAfterForcedRotation(t *testing.T) {
	h := harness.Start(t, harness.Config{})
	tc, _ := newClient(t, h)
	waitReady(t, tc)
	client := &http.Client{Transport: tc.Transport(h.Provider, nil), Timeout: 10 * time.Second}
	stk := func() (int, string) {
		t.Helper()
		resp, err := client.Post(h.SimURL+"/mpesa/stkpush/v1/processrequest", "application/json", strings.NewReader(`{"Amount":"1"}`))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := stk(); code != 200 {
		t.Fatalf("before rotation: %d %s", code, body)
	}
	before := h.Sim.Stats(simulator.Daraja)

	h.Sim.Rotate(simulator.Daraja)
	if code, body := stk(); code != 200 || !strings.Contains(body, "Success") {
		t.Fatalf("after rotation: %d %s", code, body)
	}
	after := h.Sim.Stats(simulator.Daraja)
	if d := after.ProtectedRejected - before.ProtectedRejected; d != 1 {
		t.Errorf("rejected calls: %d, want exactly 1 (one retry)", d)
	}
	if d := after.ProtectedOK - before.ProtectedOK; d != 1 {
		t.Errorf("accepted calls: %d, want 1", d)
	}
	if d := after.TokensIssued - before.TokensIssued; d != 1 {
		t.Errorf("tokens issued: %d, want 1", d)
	}
	// The next call goes straight through with the new token.
	if code, _ := stk(); code != 200 {
		t.Fatalf("next call: %d", code)
	}
	if h.Sim.Stats(simulator.Daraja).ProtectedRejected != after.ProtectedRejected {
		t.Error("the next call was rejected first")
	}
}

// TestThousandGoroutines: 1,000 goroutines read tokens while the refresher
// rotates them (run with -race). Every answer is a valid token the simulator
// issued, and while the watch has one the readers never leave memory.
func TestThousandGoroutines(t *testing.T) { forModes(t, testThousandGoroutines) }

func testThousandGoroutines(t *testing.T, mode tokenclient.FollowMode) {
	h := harness.Start(t, harness.Config{})
	tc, _ := newClient(t, h, tokenclient.WithFollowMode(mode))
	waitReady(t, tc)
	issued := func() map[string]bool {
		m := map[string]bool{}
		for _, e := range h.Sim.Log() {
			if e.Token != "" {
				m[e.Token] = true
			}
		}
		return m
	}
	var (
		wg     sync.WaitGroup
		served sync.Map
		calls  atomic.Int64
		stop   = make(chan struct{})
	)
	for range 1000 {
		wg.Go(func() {
			for i := 0; i < 20; i++ {
				tok, err := tc.Token(context.Background(), h.Provider)
				if err != nil {
					t.Errorf("Token: %v", err)
					return
				}
				if tok.Expired(time.Now()) {
					t.Errorf("expired token served: %v", tok.ExpiresAt)
				}
				served.Store(tok.AccessToken, true)
				calls.Add(1)
			}
		})
	}
	rot := make(chan struct{})
	go func() {
		defer close(rot)
		for range 3 {
			select {
			case <-stop:
				return
			default:
			}
			h.ForceRefresh()
		}
	}()
	wg.Wait()
	close(stop)
	<-rot
	known := issued()
	n := 0
	served.Range(func(k, _ any) bool {
		n++
		if !known[k.(string)] {
			t.Errorf("served a token the simulator never issued")
		}
		return true
	})
	t.Logf("%d calls, %d distinct tokens", calls.Load(), n)
}

// TestServerRestartMidWatch: NATS restarts (same port and store) under a
// watching client; once it is back and a new token is published, the
// client's memory has it within 2 s. A stock KV watcher on the same server
// is measured beside it for comparison.
func TestServerRestartMidWatch(t *testing.T) { forModes(t, testServerRestartMidWatch) }

func testServerRestartMidWatch(t *testing.T, mode tokenclient.FollowMode) {
	h := harness.Start(t, harness.Config{})
	tc, ev := newClient(t, h, tokenclient.WithFollowMode(mode), tokenclient.WithErrorHandler(func(err error) { t.Logf("watch: %v", err) }))
	waitReady(t, tc)

	stock := h.Connect()
	js, err := jetstream.New(stock)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(context.Background(), h.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	sw, err := kv.WatchAll(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sw.Stop() }()
	var stockSaw sync.Map
	go func() {
		for e := range sw.Updates() {
			if e != nil {
				stockSaw.Store(string(e.Value()), time.Now())
			}
		}
	}()

	h.RestartNATS()
	// The refresher reconnects and answers again; then a new token.
	var (
		next  string
		asked time.Time
	)
	harness.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if !h.Refresher().NC.IsConnected() {
			return errors.New("refresher not reconnected")
		}
		return nil
	})
	harness.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		asked = time.Now()
		tok, err := h.TryForceRefresh()
		next = tok.AccessToken
		return err
	})
	published := time.Now()
	harness.CheckFor(t, 2*time.Second, 5*time.Millisecond, func() error {
		if !ev.seen(next) {
			return errors.New("the watch has not delivered the new token")
		}
		return nil
	})
	got, err := tc.Token(context.Background(), h.Provider)
	if err != nil || got.AccessToken != next {
		t.Fatalf("Token = %v, %v", got.AccessToken != "", err)
	}
	t.Logf("tokenclient had the new token in memory within %v of asking the refresher for it", time.Since(asked).Round(time.Millisecond))
	// Give the stock watcher as long again, for the record only.
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		seenStock := false
		stockSaw.Range(func(k, v any) bool {
			if strings.Contains(k.(string), next) {
				seenStock = true
				t.Logf("stock watcher saw it %v after it was published", v.(time.Time).Sub(published).Round(time.Millisecond))
			}
			return !seenStock
		})
		if seenStock {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("stock watcher had not seen it %v after it was published", time.Since(published).Round(time.Millisecond))
}

// TestServerLosesStore: the server comes back with an empty store and the
// refresher creates the bucket again, so revisions start over. The client
// notices that the bucket is a new one and loads it from the start, rather
// than waiting for revisions past the ones it had seen.
func TestServerLosesStore(t *testing.T) { forModes(t, testServerLosesStore) }

func testServerLosesStore(t *testing.T, mode tokenclient.FollowMode) {
	h := harness.Start(t, harness.Config{})
	tc, ev := newClient(t, h, tokenclient.WithFollowMode(mode), tokenclient.WithWatchRetry(100*time.Millisecond))
	waitReady(t, tc)
	h.ForceRefresh() // revision 2: more than the new bucket will have
	h.Refresher().Stop()
	h.StopNATS()
	h.WipeStore()
	h.StartNATS()
	h.StartRefresher()
	fresh := h.Current()
	harness.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if !ev.seen(fresh.AccessToken) {
			return errors.New("the watch has not delivered the new bucket's token")
		}
		return nil
	})
	if got, err := tc.Token(context.Background(), h.Provider); err != nil || got.AccessToken != fresh.AccessToken {
		t.Fatalf("Token = %v, %v", got.AccessToken == fresh.AccessToken, err)
	}
}

// TestExpiredNeverReturned: the provider goes down, the last token expires;
// from that moment Token answers ErrUnavailable, never the expired token,
// from memory or over request-reply.
func TestExpiredNeverReturned(t *testing.T) {
	h := harness.Start(t, harness.Config{DarajaTTL: 2 * time.Second, RefreshBefore: time.Millisecond})
	tc, _ := newClient(t, h)
	waitReady(t, tc)
	h.Sim.SetFaults(simulator.Daraja, simulator.Faults{Outage: true})
	last := h.Current()

	var (
		wg        sync.WaitGroup
		unavail   atomic.Int64
		stop      = make(chan struct{})
		badServed atomic.Int64
	)
	for range 8 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				tok, err := tc.Token(context.Background(), h.Provider)
				now := time.Now()
				switch {
				case err == nil && !now.Before(tok.ExpiresAt):
					badServed.Add(1)
				case errors.Is(err, tokenclient.ErrUnavailable):
					unavail.Add(1)
				case err != nil:
					t.Errorf("Token: %v", err)
				}
				time.Sleep(time.Millisecond)
			}
		})
	}
	// Past the last token's expiry, with a margin for the refresher to see it.
	harness.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if time.Now().Before(last.ExpiresAt.Add(200 * time.Millisecond)) {
			return errors.New("not expired yet")
		}
		if unavail.Load() == 0 {
			return errors.New("no ErrUnavailable yet")
		}
		return nil
	})
	close(stop)
	wg.Wait()
	if n := badServed.Load(); n > 0 {
		t.Fatalf("%d expired tokens served", n)
	}
	_, err := tc.Token(context.Background(), h.Provider)
	var e *tokenclient.Error
	if !errors.As(err, &e) || e.Code != 503 {
		t.Fatalf("after expiry: err = %v, want a 503 *Error", err)
	}
}

// TestBucketNotThereYet: a client started before any refresher ever ran
// falls back to request-reply (no responders: ErrUnavailable), keeps
// retrying the watch, and loads the tokens once the bucket appears.
func TestBucketNotThereYet(t *testing.T) {
	h := harness.New(t, harness.Config{})
	var watchErrs atomic.Int64
	tc, ev := newClient(t, h, tokenclient.WithFollowMode(tokenclient.FollowKVWatch), tokenclient.WithWatchRetry(50*time.Millisecond),
		tokenclient.WithErrorHandler(func(err error) {
			if errors.Is(err, jetstream.ErrBucketNotFound) {
				watchErrs.Add(1)
			}
		}))
	if _, err := tc.Token(context.Background(), h.Provider); !errors.Is(err, tokenclient.ErrUnavailable) {
		t.Fatalf("no refresher: err = %v, want ErrUnavailable", err)
	}
	harness.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if watchErrs.Load() == 0 {
			return errors.New("bucket-not-found not reported")
		}
		return nil
	})
	h.StartRefresher()
	waitReady(t, tc)
	want := h.Current()
	harness.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if !ev.seen(want.AccessToken) {
			return errors.New("watch has not loaded the token")
		}
		return nil
	})
	if got, err := tc.Token(context.Background(), h.Provider); err != nil || got.AccessToken != want.AccessToken {
		t.Fatalf("Token = %v, %v", got.AccessToken == want.AccessToken, err)
	}
}

// TestErrorsFromRefresher: the refresher's error replies map to the
// client's sentinels.
func TestErrorsFromRefresher(t *testing.T) {
	h := harness.Start(t, harness.Config{})
	tc, _ := newClient(t, h, tokenclient.WithoutWatch())
	_, err := tc.Token(context.Background(), "daraja-prod")
	var e *tokenclient.Error
	if !errors.Is(err, tokenclient.ErrUnknownProvider) || !errors.As(err, &e) || e.Code != 404 || !strings.Contains(e.Message, "daraja-prod") {
		t.Fatalf("unknown provider: %v", err)
	}
	tok, err := tc.Token(context.Background(), h.Provider)
	if err != nil || tok != h.Current() {
		t.Fatalf("request-reply Token = %+v, %v", tok, err)
	}
	fresh, err := tc.Invalidate(context.Background(), h.Provider, tok.AccessToken)
	if err != nil || fresh.AccessToken == tok.AccessToken || fresh != h.Current() {
		t.Fatalf("Invalidate = %v, %v", fresh.AccessToken == tok.AccessToken, err)
	}
}

// TestStatus gathers token.status from the refresher.
func TestStatus(t *testing.T) {
	h := harness.Start(t, harness.Config{})
	tc, _ := newClient(t, h, tokenclient.WithoutWatch(), tokenclient.WithStatusWait(200*time.Millisecond))
	st, err := tc.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 1 || !st[0].Leader || len(st[0].Providers) != 1 || st[0].Providers[0].Name != h.Provider ||
		st[0].Providers[0].State != "ok" {
		t.Fatalf("status = %+v", st)
	}
}

// TestCloseUnderLoad: Close while goroutines read tokens; they then get
// ErrClosed, and nothing leaks (goleak in TestMain).
func TestCloseUnderLoad(t *testing.T) {
	h := harness.Start(t, harness.Config{})
	tc, _ := newClient(t, h)
	waitReady(t, tc)
	var wg sync.WaitGroup
	var closed, calls atomic.Int64
	for range 16 {
		wg.Go(func() {
			for {
				calls.Add(1)
				_, err := tc.Token(context.Background(), h.Provider)
				if errors.Is(err, tokenclient.ErrClosed) {
					closed.Add(1)
					return
				}
				if err != nil {
					t.Errorf("Token: %v", err)
					return
				}
			}
		})
	}
	harness.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if calls.Load() < 10_000 {
			return errors.New("readers not running yet")
		}
		return nil
	})
	if err := tc.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if closed.Load() != 16 {
		t.Fatalf("%d readers saw ErrClosed, want 16", closed.Load())
	}
}
