// Package harness runs a complete tokenbus in the test process for tests of
// its clients: the provider simulator over real HTTP, nats-server with
// JetStream on a loopback port and a file store, and a refresher assembled
// from the services/refresher packages (KV store, refresh manager with the
// Daraja provider, micro service) connected over TCP, so that it lives
// through a restart of the server as a deployed one would.
//
// It exists as a package, not as test files, so that tests in other modules
// (the tools: tokenctl, the example service) can use it. It lives in the
// tests module, which may depend on nats-server; the client library may not.
package harness

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http/httptest"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/tokenbus/tokenbus/libs/simulator"
	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/events"
	"github.com/tokenbus/tokenbus/services/refresher/natsx"
	"github.com/tokenbus/tokenbus/services/refresher/provider/daraja"
	"github.com/tokenbus/tokenbus/services/refresher/refresh"
	"github.com/tokenbus/tokenbus/services/refresher/rpc"
)

// Config shapes a Harness. The zero value is a Daraja provider named
// "daraja-test" with hour-long tokens, publishing to bucket "tokens".
type Config struct {
	// Provider is the provider name (default "daraja-test").
	Provider string
	// Bucket is the KV bucket (default wire.DefaultBucket).
	Bucket string
	// DarajaTTL is the simulator's Daraja token lifetime (default 1h).
	DarajaTTL time.Duration
	// RefreshBefore is the refresher's refresh margin (default: its own).
	RefreshBefore time.Duration
	// RefreshCooldown is the refresher's refresh cooldown (SPEC §3). The
	// default is 1ms, not the product's 5s, so that tests may force
	// refreshes back to back; set it to test the cooldown.
	RefreshCooldown time.Duration
	// Users, if set, are the server's only users (anonymous connections are
	// refused). The first one is the refresher's: give it every permission
	// (nil Permissions). Connect then needs nats.UserInfo.
	Users []*server.User
}

// Harness is a running simulator and NATS server, and optionally a refresher.
type Harness struct {
	// Sim is the simulator; SimURL its base URL.
	Sim    *simulator.Server
	SimURL string
	// Provider and Bucket are as configured.
	Provider string
	Bucket   string
	// URL is the NATS server's client URL; it stays the same across restarts.
	URL string
	// refURL is URL with the refresher's user and password, if Users is set.
	refURL string

	tb       testing.TB
	cfg      Config
	storeDir string
	port     int

	mu  sync.Mutex
	ns  *server.Server
	ref *Refresher
}

// New starts the simulator and a NATS server with JetStream, without a
// refresher (see StartRefresher). Everything stops when the test ends.
func New(tb testing.TB, cfg Config) *Harness {
	tb.Helper()
	if cfg.Provider == "" {
		cfg.Provider = "daraja-test"
	}
	if cfg.Bucket == "" {
		cfg.Bucket = wire.DefaultBucket
	}
	if cfg.DarajaTTL <= 0 {
		cfg.DarajaTTL = time.Hour
	}
	sim := simulator.New(simulator.Config{DarajaTTL: cfg.DarajaTTL})
	srv := httptest.NewServer(sim)
	tb.Cleanup(srv.Close)
	h := &Harness{Sim: sim, SimURL: srv.URL, Provider: cfg.Provider, Bucket: cfg.Bucket, tb: tb, cfg: cfg, storeDir: tb.TempDir()}
	h.StartNATS()
	tb.Cleanup(h.StopNATS)
	return h
}

// Start is New followed by StartRefresher.
func Start(tb testing.TB, cfg Config) *Harness {
	tb.Helper()
	h := New(tb, cfg)
	h.StartRefresher()
	return h
}

// StartNATS starts the NATS server, on the port it had before if it ran
// before, with the same store.
func (h *Harness) StartNATS() {
	h.tb.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ns != nil {
		return
	}
	port := h.port
	if port == 0 {
		port = server.RANDOM_PORT
	}
	var (
		ns  *server.Server
		err error
	)
	// The port may take a moment to be free again after a shutdown.
	for deadline := time.Now().Add(10 * time.Second); ; {
		ns, err = server.NewServer(&server.Options{
			ServerName: "harness", Host: "127.0.0.1", Port: port,
			JetStream: true, StoreDir: h.storeDir, NoLog: true, NoSigs: true,
			Users: h.cfg.Users,
		})
		if err == nil {
			ns.Start()
			if ns.ReadyForConnections(10 * time.Second) {
				break
			}
			ns.Shutdown()
			err = fmt.Errorf("nats-server on port %d not ready", port)
		}
		if time.Now().After(deadline) {
			h.tb.Fatalf("harness: start nats-server: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	h.ns = ns
	h.port = ns.Addr().(*net.TCPAddr).Port
	h.URL = fmt.Sprintf("nats://127.0.0.1:%d", h.port)
	h.refURL = h.URL
	if len(h.cfg.Users) > 0 {
		u := h.cfg.Users[0]
		h.refURL = (&url.URL{Scheme: "nats", User: url.UserPassword(u.Username, u.Password), Host: fmt.Sprintf("127.0.0.1:%d", h.port)}).String()
	}
}

// StopNATS shuts the NATS server down and waits for it.
func (h *Harness) StopNATS() {
	h.mu.Lock()
	ns := h.ns
	h.ns = nil
	h.mu.Unlock()
	if ns != nil {
		ns.Shutdown()
		ns.WaitForShutdown()
	}
}

// RestartNATS stops the server and starts it again on the same port and
// store.
func (h *Harness) RestartNATS() {
	h.tb.Helper()
	h.StopNATS()
	h.StartNATS()
}

// WipeStore deletes the server's JetStream store; call it while the server
// is stopped, to have it come back empty, as a server that lost its disk would.
func (h *Harness) WipeStore() {
	h.tb.Helper()
	if err := os.RemoveAll(h.storeDir); err != nil {
		h.tb.Fatal(err)
	}
	if err := os.MkdirAll(h.storeDir, 0o700); err != nil {
		h.tb.Fatal(err)
	}
}

// Connect opens a client connection that reconnects forever and quickly,
// closed when the test ends.
func (h *Harness) Connect(opts ...nats.Option) *nats.Conn {
	h.tb.Helper()
	opts = append([]nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(50 * time.Millisecond)}, opts...)
	nc, err := nats.Connect(h.URL, opts...)
	if err != nil {
		h.tb.Fatalf("harness: connect: %v", err)
	}
	h.tb.Cleanup(nc.Close)
	return nc
}

// ConnectAdmin opens a connection with the refresher's permissions (every
// one), closed when the test ends.
func (h *Harness) ConnectAdmin() *nats.Conn {
	h.tb.Helper()
	nc, err := nats.Connect(h.refURL)
	if err != nil {
		h.tb.Fatalf("harness: connect: %v", err)
	}
	h.tb.Cleanup(nc.Close)
	return nc
}

// Refresher is the in-process refresher of a Harness.
type Refresher struct {
	NC      *nats.Conn
	Manager *refresh.Manager
	Service *rpc.Service
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// StartRefresher assembles a refresher on the harness's server — store,
// Daraja provider against the simulator, refresh manager, micro service —
// and waits for its first token. It stops when the test ends.
func (h *Harness) StartRefresher() *Refresher {
	h.tb.Helper()
	nc, err := natsx.Connect(natsx.ConnectConfig{URL: h.refURL, Name: "harness refresher"})
	if err != nil {
		h.tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	store, err := natsx.OpenStore(ctx, nc, h.Bucket, 1, nil)
	if err != nil {
		nc.Close()
		h.tb.Fatal(err)
	}
	mgr := refresh.NewManager(refresh.Config{
		Name: h.Provider, Kind: "daraja",
		Provider: daraja.New(daraja.Config{
			BaseURL: h.SimURL, ConsumerKey: "sim-consumer-key", ConsumerSecret: refresher.Secret("sim-consumer-secret"),
		}),
		Publisher:       store,
		RefreshBefore:   h.cfg.RefreshBefore,
		RefreshCooldown: cmp.Or(h.cfg.RefreshCooldown, time.Millisecond),
		Backoff:         refresher.Backoff{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond, PermanentInitial: time.Second, PermanentMax: time.Second},
		Observer:        events.New(events.Config{Conn: nc, Leader: "harness-1"}),
	})
	r := &Refresher{NC: nc, Manager: mgr}
	status := func(q wire.StatusRequest) wire.Status {
		return wire.Status{Instance: "harness-1", Version: "test", Leader: true, LeaderInstance: "harness-1",
			Providers: []wire.ProviderStatus{mgr.Status()}}.Page(q)
	}
	r.Service, err = rpc.Start(nc, rpc.Config{Version: "0.0.0-test", Sources: map[string]rpc.Source{h.Provider: mgr}, Status: status})
	if err != nil {
		nc.Close()
		h.tb.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	r.cancel = stop
	r.wg.Go(func() { _ = mgr.Run(runCtx) })
	h.tb.Cleanup(r.Stop)
	h.mu.Lock()
	h.ref = r
	h.mu.Unlock()
	// Ready once the first token is published, not only fetched: a token is
	// served from memory a moment before its publish ends, without a KV
	// revision, and a client's first read cannot order such a token against
	// the updates that follow.
	CheckFor(h.tb, 10*time.Second, 10*time.Millisecond, func() error {
		e, err := mgr.Current()
		if err == nil && e.Revision == 0 {
			err = errors.New("first token not published yet")
		}
		return err
	})
	return r
}

// Stop stops the refresher and closes its connection.
func (r *Refresher) Stop() {
	r.cancel()
	r.wg.Wait()
	_ = r.Service.Stop()
	r.NC.Close()
}

// Current returns the refresher's current token, failing the test if it has
// none.
func (h *Harness) Current() wire.Token {
	h.tb.Helper()
	r := h.Refresher()
	if r == nil {
		h.tb.Fatal("harness: no refresher")
	}
	e, err := r.Manager.Current()
	if err != nil {
		h.tb.Fatalf("harness: refresher has no token: %v", err)
	}
	return e.Token
}

// ForceRefresh makes the refresher fetch a new token, the way a caller
// reporting a rejected token would (token.refresh over its own connection),
// and returns the new token once it is published. It fails the test if
// that does not work.
func (h *Harness) ForceRefresh() wire.Token {
	h.tb.Helper()
	tok, err := h.TryForceRefresh()
	if err != nil {
		h.tb.Fatalf("harness: %v", err)
	}
	return tok
}

// TryForceRefresh is ForceRefresh returning its error.
func (h *Harness) TryForceRefresh() (wire.Token, error) {
	r := h.Refresher()
	if r == nil {
		return wire.Token{}, errors.New("no refresher")
	}
	e, err := r.Manager.Current()
	if err != nil {
		return wire.Token{}, err
	}
	nc, err := nats.Connect(h.refURL)
	if err != nil {
		return wire.Token{}, err
	}
	defer nc.Close()
	body, _ := json.Marshal(wire.RefreshRequest{InvalidToken: e.Token.AccessToken})
	msg, err := nc.Request(wire.RefreshSubject(h.Provider), body, 10*time.Second)
	if err != nil {
		return wire.Token{}, fmt.Errorf("token.refresh: %w", err)
	}
	if code := msg.Header.Get(wire.HeaderErrorCode); code != "" {
		return wire.Token{}, fmt.Errorf("token.refresh: %s %s", code, msg.Header.Get(wire.HeaderError))
	}
	var tok wire.Token
	if err := json.Unmarshal(msg.Data, &tok); err != nil {
		return wire.Token{}, err
	}
	if tok.AccessToken == e.Token.AccessToken {
		return wire.Token{}, errors.New("token.refresh answered the old token")
	}
	// token.refresh answers as soon as the new token is served, which is
	// before its publish: wait for the publish, so that a caller stopping
	// the refresher next does not stop it first.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if cur, err := r.Manager.Current(); err == nil && cur.Token.AccessToken == tok.AccessToken && cur.Revision > e.Revision {
			return tok, nil
		}
		if time.Now().After(deadline) {
			return wire.Token{}, errors.New("token.refresh's token was not published within 10 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Refresher returns the running refresher, or nil.
func (h *Harness) Refresher() *Refresher {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.ref
}

// CheckFor calls fn every interval until it returns nil, failing the test
// with fn's last error once timeout has passed.
func CheckFor(tb testing.TB, timeout, interval time.Duration, fn func() error) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("condition not met within %v: %v", timeout, err)
		}
		time.Sleep(interval)
	}
}
