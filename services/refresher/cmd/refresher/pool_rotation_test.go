package main

import (
	"bytes"
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

	"github.com/nats-io/nats.go"

	"github.com/tokenbus/tokenbus/libs/simulator"
	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/config"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
	"github.com/tokenbus/tokenbus/services/refresher/pool"
)

// mintLog is an mPay simulator behind a recording proxy: which username
// each token was minted with. Token requests take delay.
type mintLog struct {
	mu    sync.Mutex
	by    map[string]string // token -> username
	delay time.Duration
}

func (l *mintLog) serve(t *testing.T, sim *simulator.Server) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v2/auth" {
			sim.ServeHTTP(w, r)
			return
		}
		body, _ := io.ReadAll(r.Body)
		var creds struct {
			Username string `json:"username"`
		}
		_ = json.Unmarshal(body, &creds)
		time.Sleep(l.delay)
		r.Body = io.NopCloser(bytes.NewReader(body))
		rec := httptest.NewRecorder()
		sim.ServeHTTP(rec, r)
		var out struct {
			Token string `json:"token"`
		}
		if json.Unmarshal(rec.Body.Bytes(), &out) == nil && out.Token != "" {
			l.mu.Lock()
			l.by[out.Token] = creds.Username
			l.mu.Unlock()
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
	}))
	t.Cleanup(srv.Close)
	return srv
}

func (l *mintLog) user(token string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.by[token]
}

// claim is one token.get of a single-use provider: when it was sent, and
// what it got.
type claim struct {
	sent  time.Time
	got   time.Time
	token string
	err   string
}

// TestRuntimeSingleUseRotationAndDelete (issue 17, item 8): after a runtime
// put rotates an mPay provider's credentials, or a delete removes it, no
// token minted with the old credentials is handed out — not the ones ready
// in the pool, not the one the old filler was minting when the put came
// (its call finishes and it publishes), not one fetched by a claim racing
// the rotation; and no token is handed out twice. Token requests take
// 300 ms so that the old filler is mid-call when the put is applied.
func TestRuntimeSingleUseRotationAndDelete(t *testing.T) {
	sim := simulator.New(simulator.Config{})
	ml := &mintLog{by: map[string]string{}, delay: 300 * time.Millisecond}
	srv := ml.serve(t, sim)
	m, _ := startRuntime(t, runtimeSetup{dir: t.TempDir(), simURL: srv.URL, keys: fmt.Sprintf("[{id: k1, key: %q}]", newKey())})
	t.Cleanup(func() { _ = m.Close() })
	nc := testutil.Connect(t, m.ns)
	const name = "mpay-rot"
	entry := func(user string) map[string]any {
		return map[string]any{"name": name, "kind": "mpay", "base_url": srv.URL, "username": user,
			"password": simulator.DerivedSecret(user), "pool": 5}
	}
	if code, b := request(t, nc, wire.ProvidersPutSubject, entry("merchant-old")); code != 0 {
		t.Fatalf("put: %d %s", code, b)
	}
	// applied waits until this replica serves name with user (or, with "",
	// no longer serves it) and returns when it saw it.
	applied := func(user string) time.Time {
		t.Helper()
		testutil.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
			sv := m.set.Get(name)
			switch {
			case user == "" && sv == nil:
				return nil
			case user != "" && sv != nil && sv.Credential == (config.Provider{Kind: config.KindMPay, BaseURL: srv.URL, Username: user}).Credential():
				return nil
			}
			return fmt.Errorf("%s not applied yet", user)
		})
		return time.Now()
	}
	applied("merchant-old")
	handed := map[string]bool{}
	var (
		mu     sync.Mutex
		claims []claim
	)
	get := func() claim {
		c := claim{sent: time.Now()}
		tok, e := getToken(t, nc, name)
		c.token, c.err, c.got = tok.AccessToken, e, time.Now()
		mu.Lock()
		claims = append(claims, c)
		mu.Unlock()
		return c
	}
	// The pool is full of the old credentials' tokens.
	testutil.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if n, err := m.set.Get(name).Endpoint.(*pool.Pool).Ready(context.Background()); err != nil || n < 5 {
			return fmt.Errorf("ready %d %v", n, err)
		}
		return nil
	})
	// One claim, so that the old filler is minting a replacement (300 ms)
	// when the put comes; a claimer keeps claiming throughout, racing the
	// rotation.
	if c := get(); c.err != "" {
		t.Fatalf("claim: %s", c.err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			get()
			time.Sleep(100 * time.Millisecond)
		}
	})
	time.Sleep(30 * time.Millisecond)
	if code, b := request(t, nc, wire.ProvidersPutSubject, entry("merchant-new")); code != 0 {
		t.Fatalf("rotate: %d %s", code, b)
	}
	rotated := applied("merchant-new")
	// Claims sent right after the rotation is applied, while the pool still
	// holds old tokens and the old filler's last one is on its way.
	for range 3 {
		wg.Go(func() { get() })
	}
	testutil.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, c := range claims {
			if c.sent.After(rotated) && c.err == "" {
				n++
			}
		}
		if n < 6 {
			return fmt.Errorf("%d claims served since the rotation", n)
		}
		return nil
	})
	close(stop)
	wg.Wait()

	// A claim waiting for a refill (the pool drained, the filler mid-call)
	// while the provider is deleted gets no token.
	stop = make(chan struct{})
	drained := make(chan struct{})
	wg.Go(func() {
		defer close(drained)
		for {
			select {
			case <-stop:
				return
			default:
			}
			get()
		}
	})
	time.Sleep(400 * time.Millisecond)
	if code, b := request(t, nc, wire.ProvidersDeleteSubject, map[string]string{"name": name}); code != 0 {
		t.Fatalf("delete: %d %s", code, b)
	}
	deleted := applied("")
	close(stop)
	<-drained
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	// A claim that passed its checks just before the change was applied
	// may be answered a little after this test saw the change.
	const slack = 50 * time.Millisecond
	var old, afterDelete, served int
	for _, c := range claims {
		if c.err != "" {
			continue
		}
		served++
		if handed[c.token] {
			t.Errorf("a single-use token was handed out twice")
		}
		handed[c.token] = true
		user := ml.user(c.token)
		if user == "" {
			t.Errorf("a token the simulator never minted was handed out")
		}
		// Sent after the rotation was applied, or answered well after it
		// (a claim racing it: its checks ran after the rotation).
		if user == "merchant-old" && (c.sent.After(rotated) || c.got.After(rotated.Add(slack))) {
			old++
		}
		if c.sent.After(deleted) || c.got.After(deleted.Add(slack)) {
			afterDelete++
		}
	}
	if old > 0 || afterDelete > 0 {
		t.Fatalf("of %d claims served, %d sent after the rotation got a token of the replaced credentials, %d were answered after the delete", served, old, afterDelete)
	}
	// Nothing of the provider is left in the pool stream.
	js, _ := m.nc.JetStream()
	si, err := js.StreamInfo("TOKENBUS_POOL_"+m.Config.Bucket, &nats.StreamInfoRequest{SubjectsFilter: "tokenbus.pool.>"})
	if err != nil {
		t.Fatal(err)
	}
	for subj, n := range si.State.Subjects {
		if strings.HasSuffix(subj, "."+name) && n > 0 {
			t.Fatalf("%d tokens left on %s after the delete", n, subj)
		}
	}
}
