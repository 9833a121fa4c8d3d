package main

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/tokenbus/tokenbus/libs/simulator"
	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/config"
	"github.com/tokenbus/tokenbus/services/refresher/credentials"
	"github.com/tokenbus/tokenbus/services/refresher/events"
	"github.com/tokenbus/tokenbus/services/refresher/httpapi"
	"github.com/tokenbus/tokenbus/services/refresher/leader"
	"github.com/tokenbus/tokenbus/services/refresher/metrics"
	"github.com/tokenbus/tokenbus/services/refresher/natsx"
	"github.com/tokenbus/tokenbus/services/refresher/pool"
	"github.com/tokenbus/tokenbus/services/refresher/provider/httpx"
	"github.com/tokenbus/tokenbus/services/refresher/refresh"
	"github.com/tokenbus/tokenbus/services/refresher/registry"
	"github.com/tokenbus/tokenbus/services/refresher/rpc"
	"github.com/tokenbus/tokenbus/services/refresher/seal"
	"github.com/tokenbus/tokenbus/services/refresher/telemetry"
)

//go:embed demo.yaml
var demoConfig []byte

// Options are the command-line choices.
type Options struct {
	ConfigPath      string
	Demo            bool
	SimulatorListen string
	// Lookup resolves ${NAME} in the configuration; os.LookupEnv if nil.
	Lookup func(string) (string, bool)
	// Backoff overrides retry timing (tests).
	Backoff refresher.Backoff
	// Instance names this replica; host-pid if empty.
	Instance string
}

// Main is the refresher process: Run starts every part and returns, Close
// stops them in reverse order.
type Main struct {
	opts           Options
	stdout, stderr io.Writer
	logger         *slog.Logger

	Config   *config.Config
	Sim      *simulator.Server
	simSrv   *http.Server
	ns       *server.Server
	nc       *nats.Conn
	svcNC    *nats.Conn // the request-reply service's own (rpc)
	store    *natsx.Store
	svc      *rpc.Service
	httpSrv  *http.Server
	httpAddr string
	telStop  func(context.Context) error
	obs      *observability
	// Metrics records the process's metrics; the leader lease reports to it
	// (SetLeader, LeaseRenewalFailed). Set by Run.
	Metrics  *metrics.Metrics
	instance string
	leader   *leader.Leader
	// sched runs the turns of every refresh manager (one heap, a few
	// workers; no goroutine per provider).
	sched *refresh.Scheduler
	// events publishes provider events (token.events.<provider>).
	events *events.Publisher
	// ready answers /readyz: start-up's progress, then a live check.
	ready readiness
	// demoDir is the demo's temporary JetStream store, removed by Close.
	demoDir string
	// jsWaitLogged is when start-up last logged waiting for JetStream.
	jsWaitLogged time.Time
	cancel       context.CancelFunc
	wg           sync.WaitGroup

	// pools is the single-use token pool stream, if any provider needs it.
	pools     *pool.Store
	poolsOnce sync.Mutex
	// set is every provider served, config-file and runtime; the leader
	// runs the loops that call them while this replica leads, every call
	// through its gate.
	set *registry.Set
	// lookup reads the bucket for a provider this replica's copy has no
	// valid token of (bucketSource).
	lookup *natsx.Lookup
	// creds is the credential bucket of runtime providers; nil when no
	// sealing key is configured.
	creds          *credentials.Store
	credsReady     chan struct{}
	credsReadyOnce sync.Once
	resealKick     chan struct{}
	// sealWaitLogged: fleetOpensFormat said once that re-sealing waits.
	sealWaitLogged bool
}

// NewMain returns a Main that logs to stderr and prints its banner to stdout.

// A shared-token source answers token.get with the token's KV revision
// (header Tokenbus-Revision), which followers of token.updates order by.
var _ rpc.Revisioned = leader.Source{}

func NewMain(opts Options, stdout, stderr io.Writer) *Main {
	if opts.Lookup == nil {
		opts.Lookup = os.LookupEnv
	}
	return &Main{opts: opts, stdout: stdout, stderr: stderr, logger: newLogger(stderr, "info", "text")}
}

// Run loads the configuration, starts the simulator (demo), NATS, the
// managers, the micro service and the HTTP server, then returns.
func (m *Main) Run(ctx context.Context) error {
	lookup := m.opts.Lookup
	if m.opts.Demo {
		if err := m.startSimulator(); err != nil {
			return err
		}
		simURL := "http://" + m.simSrv.Addr
		base := lookup
		lookup = func(k string) (string, bool) {
			if k == "TOKENBUS_SIMULATOR_URL" {
				return simURL, true
			}
			return base(k)
		}
	}
	var (
		cfg *config.Config
		err error
	)
	if m.opts.ConfigPath != "" {
		cfg, err = config.Load(m.opts.ConfigPath, lookup)
	} else {
		cfg, err = config.Parse(demoConfig, lookup)
		if err == nil {
			err = m.freshDemoStore(cfg)
		}
		if v, ok := lookup("TOKENBUS_CREDENTIALS_KEY"); ok && err == nil {
			// The demo turns runtime providers on when given a sealing key.
			cfg.Credentials.Keys = []config.CredentialKey{{ID: "demo", Key: refresher.Secret(v)}}
			err = cfg.Validate()
		}
	}
	if err != nil {
		return err
	}
	m.Config = cfg
	m.logger = newLogger(m.stderr, cfg.Log.Level, cfg.Log.Format)
	m.ready.logger = m.logger
	for _, p := range cfg.Providers {
		// A token must outlive a failover: a standby takes over about
		// lease.ttl after the leader's last renewal.
		if rb := p.RefreshBefore.D(); rb > 0 && rb < cfg.Lease.TTL.D()+cfg.Lease.RetryPeriod.D() {
			m.logger.Warn("refresh_before is shorter than a leader failover: the token may expire while a standby takes over",
				slog.String("provider", p.Name), slog.Duration("refresh_before", rb), slog.Duration("lease_ttl", cfg.Lease.TTL.D()))
		}
	}
	instance := m.opts.Instance
	if instance == "" {
		instance = instanceID()
	}
	m.instance = instance
	if m.telStop, err = telemetry.Setup(ctx, "tokenbus-refresher", Version, instance); err != nil {
		return err
	}
	// One transport for every provider: its idle connections, the lease
	// check every request passes as it leaves, and the tracing.
	transport := httpx.Instrument(httpx.WithUserAgent(leader.Guard(httpx.NewTransport(cfg.FetchConcurrency)), "tokenbus-refresher/"+Version+" ("+instance+")"))
	names := make([]string, 0, len(cfg.Providers))
	for _, p := range cfg.Providers {
		names = append(names, p.Name)
	}
	if m.obs, err = newObservability(names, instance); err != nil {
		return err
	}
	m.Metrics = m.obs.metrics
	// /readyz answers 503, with the reason, from here until start-up ends.
	m.ready.starting("connecting to NATS")
	if err := m.startHTTP(cfg.HTTP.Listen); err != nil {
		return err
	}
	if cfg.NATS.URL == "" {
		ec := natsx.EmbeddedConfig{
			Listen: cfg.NATS.Embedded.Listen, StoreDir: cfg.NATS.Embedded.StoreDir,
			ConfigFile: cfg.NATS.Embedded.Config, Insecure: cfg.NATS.Embedded.Insecure,
		}
		if c := cfg.NATS.Embedded.Cluster; c != nil {
			ec.Cluster = &natsx.ClusterConfig{Name: c.Name, Listen: c.Listen, Routes: c.Routes}
		}
		m.ns, err = natsx.StartEmbedded(ec)
		if err != nil {
			return listenProblem(err, m.opts.Demo && m.opts.ConfigPath == "")
		}
		m.logger.Info("embedded nats-server started", slog.String("url", m.ns.ClientURL()), slog.String("store_dir", cfg.NATS.Embedded.StoreDir))
	}
	cc := connectConfig(cfg.NATS, "tokenbus-refresher "+instance, m.logger, m.ns)
	if m.nc, err = m.dial(ctx, cc); err != nil {
		return err
	}
	// Provider events go out on the refresher's own connection; only the
	// lease holder publishes them.
	m.events = events.New(events.Config{Conn: m.nc, Leader: instance, Logger: m.logger, OnPublish: m.Metrics.Event})
	m.store, err = natsx.OpenStore(ctx, m.nc, cfg.Bucket, cfg.NATS.Replicas, m.waitingForJetStream)
	if err != nil {
		return natsx.JetStreamProblem(err)
	}
	var loaded chan struct{}
	if len(cfg.Credentials.Keys) > 0 {
		loaded = make(chan struct{})
		m.credsReady = loaded
	}
	var batches leader.BatchPublisher // on R1 every write on its own (natsx.Store.Batches)
	if m.store.Batches() {
		batches = leader.AtomicBatches(m.store.JetStream())
	}
	m.leader, err = leader.New(leader.Config{
		Lease: leader.LeaseConfig{
			KV: leader.LeaseBucket(m.store.Lease()), Holder: instance,
			TTL: cfg.Lease.TTL.D(), RenewDeadline: cfg.Lease.RenewDeadline.D(), RetryPeriod: cfg.Lease.RetryPeriod.D(),
			DrainTimeout: DrainTimeout(cfg),
			OnChange: func(st leader.State) {
				m.Metrics.SetLeader(st.Leader)
				if st.Leader {
					m.kickReseal(true) // entries sealed with an older key are re-sealed by the leader
				}
			},
			OnRenewFailure: func(error) { m.Metrics.LeaseRenewalFailed() },
		},
		JetStream: m.store.JetStream(), Tokens: m.store.KV(), Conn: m.nc,
		Batches:   batches,
		ErrorCode: rpc.Code, Logger: m.logger,
		OnForeignWrite: func(provider string, rev uint64) {
			m.Metrics.ForeignWrite(provider)
			m.events.ForeignWrite(provider, rev)
		},
		FetchConcurrency: cfg.FetchConcurrency,
		Loaded:           loaded,
	})
	if err != nil {
		return err
	}
	gate := m.leader.Gate()
	m.sched = refresh.NewScheduler(refresh.SchedulerConfig{
		Publisher: m.leader, Backoff: m.opts.Backoff, Logger: m.logger, Recorder: m.obs, Observer: m.events,
		Discarded: func(reason string) { m.Metrics.TokenDiscarded(reason) },
		Gate: func(ctx context.Context, cred string) (refresh.Call, error) {
			c, err := gate.Enter(ctx, cred)
			if err != nil {
				return nil, err
			}
			return c, nil
		},
		// The gate bounds the calls (fetch_concurrency); the other
		// workers publish (a fenced, fsync'd write) or wait at the gate,
		// so that a freed slot finds a call ready to enter. With as many
		// again (2×) a 100,000-provider fill kept 14.9 of 16 slots busy
		// and was ready in 139.1-139.9 s; with 4×, 15.05 and 138.2 s;
		// 8× gained nothing more (issue 20, docs/benchmarks.md).
		Workers: 4 * max(cfg.FetchConcurrency, 1),
	})

	m.set = registry.New()
	m.lookup = m.newLookup()
	if err := m.forgetMissesOnUpdates(); err != nil {
		return err
	}
	m.Metrics.SetKnown(m.set.Known)
	m.Metrics.RegisterSummary(m.set.Summary)
	for _, p := range cfg.Providers {
		if err := m.serveConfig(ctx, p, transport); err != nil {
			return err
		}
	}
	var reg rpc.Registry
	if len(cfg.Credentials.Keys) > 0 {
		if m.creds, err = m.openCredentials(ctx); err != nil {
			return err
		}
		reg = registry.NewRegistry(m.set, m.creds)
	}

	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	m.cancel = cancel
	// Every replica follows the credential bucket and serves its runtime
	// providers; it has them all before it campaigns, so that a new leader
	// takes every provider over at once (and does not delete their tokens as
	// those of providers it does not have).
	if m.creds != nil {
		m.resealKick = make(chan struct{}, 1)
		m.wg.Go(func() {
			m.creds.Watch(runCtx, m.nc, func(ev credentials.Event) { m.applyCredential(runCtx, ev, transport) })
		})
		m.wg.Go(func() { m.reseal(runCtx) })
		select {
		case <-m.credsReady:
		case <-time.After(30 * time.Second):
			m.logger.Warn("runtime providers: the credential bucket was not read within 30s; continuing")
		}
	}
	// Every replica keeps its copy of every token current from the bucket;
	// the leader first checks that it wrote what it sees. It answers
	// token.get only once the copy holds every published token (or after
	// copyWait): a replica that joined the queue group first would answer
	// 503 for tokens the others serve (a rolling upgrade's new replica did).
	current := make(chan struct{})
	var currentOnce sync.Once
	hooks := m.watchHooks()
	hooks.Current = func() { currentOnce.Do(func() { close(current) }) }
	m.wg.Go(func() {
		m.store.Watch(runCtx, m.nc, func(tok wire.Token, rev uint64) {
			if m.leader.Accept(runCtx, tok, rev) {
				m.set.Token(tok, rev)
			}
		}, hooks)
	})
	select {
	case <-current:
	case <-time.After(copyWait):
		m.logger.Warn("the token bucket was not read within " + copyWait.String() + "; answering from a partial copy (token.get reads the bucket for the rest)")
	}
	// The request-reply service has a connection of its own, so that a
	// token.get does not queue behind the watches' deliveries and the
	// publishes' acknowledgements on one connection (issue 20: token.get's
	// p99 while 100,000 providers fill; docs/benchmarks.md).
	svcCC := connectConfig(cfg.NATS, "tokenbus-refresher "+instance+" service", m.logger, m.ns)
	if m.svcNC, err = m.dial(ctx, svcCC); err != nil {
		return err
	}
	if m.svc, err = rpc.Start(m.svcNC, rpc.Config{Version: Version, Lookup: m.set.Lookup, Status: m.Status, Registry: reg, Logger: m.logger, Recorder: m.Metrics,
		PutRate: m.Config.Credentials.PutsPerSecond()}); err != nil {
		return err
	}
	// Only the lease holder runs the loops that call providers (refresh
	// managers, single-use pool fillers) and serves forwarded refreshes.
	m.wg.Go(func() { _ = m.leader.Run(runCtx) })
	m.ready.setStarted(m.readyCheck)
	m.wg.Go(func() { m.ready.monitor(runCtx, 5*time.Second) })
	m.banner()
	return nil
}

// copyWait bounds how long Run waits for the token watch's first complete
// copy of the bucket before it answers requests.
const copyWait = 5 * time.Second

// Status reports this replica's view for token.status and the status page:
// its leadership, the summary of every provider, and the page of providers
// q asks for (config-file ones in configuration order, then runtime ones by
// name), as wire.Status.Page would cut it.
func (m *Main) Status(q wire.StatusRequest) wire.Status {
	ls := m.leader.State()
	sum, page, next := m.set.Status(q, true)
	return wire.Status{Instance: m.instance, Version: Version, Leader: ls.Leader, LeaderInstance: ls.Holder, Term: ls.Term,
		SealFormat: credentials.Format, Summary: &sum, Providers: page, Next: next}
}

// openCredentials opens the credential bucket with the configured keys.
func (m *Main) openCredentials(ctx context.Context) (*credentials.Store, error) {
	keys := make([]seal.Key, 0, len(m.Config.Credentials.Keys))
	for i, k := range m.Config.Credentials.Keys {
		key, err := seal.ParseKey(k.ID, k.Key.Reveal())
		if err != nil {
			return nil, fmt.Errorf("refresher: credentials.keys[%d]: %w", i, err)
		}
		keys = append(keys, key)
	}
	ring, err := seal.NewKeyring(keys...)
	if err != nil {
		return nil, fmt.Errorf("refresher: credentials.keys: %w", err)
	}
	return credentials.Open(ctx, m.nc, m.Config.Credentials.Bucket, m.Config.NATS.Replicas, ring,
		credentials.WithLimits(credentials.Limits{MaxBytes: int64(m.Config.Credentials.MaxBytes), MaxValueSize: int32(m.Config.Credentials.MaxValueSize)}))
}

// openPool opens the single-use token pool of p (the pool stream first, once)
// and its filler, which minting with prov keeps it full. With gauge, the
// pool's size is reported in tokenbus_pool_size.
func (m *Main) openPool(ctx context.Context, p config.Provider, prov refresher.Provider, gauge bool, gate func(context.Context) (pool.Call, error), discarded func(string)) (*pool.Pool, *pool.Filler, error) {
	m.poolsOnce.Lock()
	if m.pools == nil {
		var err error
		if m.pools, err = pool.Open(ctx, m.nc, m.Config.Bucket, m.Config.NATS.Replicas); err != nil {
			m.poolsOnce.Unlock()
			return nil, nil, err
		}
	}
	m.poolsOnce.Unlock()
	pl, err := m.pools.Pool(ctx, pool.Config{Name: p.Name, Kind: p.Kind, Size: p.Pool, Logger: m.logger})
	if err != nil {
		return nil, nil, err
	}
	filler := pool.NewFiller(pl, pool.FillerConfig{Provider: prov, Backoff: m.opts.Backoff, Logger: m.logger, Gate: gate, Discarded: discarded, Recorder: m.obs})
	if gauge {
		m.Metrics.RegisterPool(p.Name, func() int {
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			defer cancel()
			n, _ := pl.Ready(ctx)
			return n
		})
	}
	return pl, filler, nil
}

func (m *Main) startSimulator() error {
	m.Sim = simulator.New(simulator.Config{DarajaTTL: 60 * time.Second, OAuth2SubscriptionKey: "sim-subscription-key"})
	ln, err := net.Listen("tcp", m.opts.SimulatorListen)
	if err != nil {
		return listenFailed("--simulator-listen", m.opts.SimulatorListen, err)
	}
	m.simSrv = &http.Server{Addr: ln.Addr().String(), Handler: m.Sim, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = m.simSrv.Serve(ln) }()
	return nil
}

func (m *Main) startHTTP(listen string) error {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return listenFailed("http.listen", listen, err)
	}
	m.httpAddr = ln.Addr().String()
	m.httpSrv = &http.Server{Handler: httpapi.New(httpapi.Config{
		Ready: &m.ready, Metrics: m.obs.prom.Handler(), Status: m.pageStatus, History: m.obs.history,
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = m.httpSrv.Serve(ln) }()
	return nil
}

func (m *Main) banner() {
	url := natsx.RedactURL(m.Config.NATS.URL) // never print a user:password
	if m.ns != nil {
		url = m.ns.ClientURL()
	}
	fmt.Fprintf(m.stdout, "tokenbus refresher %s is running\n  NATS:      %s (bucket %q)\n  status:    http://%s/ (also /metrics, /healthz, /readyz)\n", Version, url, m.Config.Bucket, m.httpAddr)
	if m.simSrv != nil {
		fmt.Fprintf(m.stdout, "  simulator: http://%s\n", m.simSrv.Addr)
	}
	for _, p := range m.Config.Providers {
		fmt.Fprintf(m.stdout, "  provider %-16s get a token: go run ./tools/cmd/tokenctl --server %s get %s\n", p.Name, url, p.Name)
	}
	fmt.Fprintf(m.stdout, "  (or any NATS client: request %s<provider>, and follow %s<provider> for every new token)\n", wire.GetPrefix, wire.UpdatesPrefix)
}

// Close stops refreshing, stops the service, drains NATS and shuts the
// embedded server down. It is safe to call after a failed Run.
func (m *Main) Close() error {
	if m.cancel != nil {
		m.cancel()
	}
	m.wg.Wait()
	var errs []error
	if m.svc != nil {
		errs = append(errs, m.svc.Stop())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if m.httpSrv != nil {
		errs = append(errs, m.httpSrv.Shutdown(ctx))
	}
	natsx.Drain(m.svcNC, 5*time.Second)
	natsx.Drain(m.nc, 5*time.Second)
	if m.ns != nil {
		m.ns.Shutdown()
		m.ns.WaitForShutdown()
	}
	if m.simSrv != nil {
		// Close, not Shutdown: every provider loop has stopped, and a
		// connection our clients dialled for a cancelled request would hold
		// Shutdown for 5 s (net/http treats a new connection as active).
		errs = append(errs, m.simSrv.Close())
	}
	if m.telStop != nil {
		errs = append(errs, m.telStop(ctx))
	}
	if m.demoDir != "" {
		errs = append(errs, os.RemoveAll(m.demoDir))
	}
	errs = append(errs, m.obs.close(ctx))
	return errors.Join(errs...)
}

// DrainTimeout bounds a clean stop's wait for the provider calls in flight
// (and the publish of their tokens): the longest request timeout of the
// configured providers (at least the 10 s default) plus 5 s for the publish.
// Runtime providers with a longer timeout are cut at it. The process's stop
// takes at most this plus a few seconds to close, which the shipped
// terminationGracePeriodSeconds and TimeoutStopSec cover.
func DrainTimeout(cfg *config.Config) time.Duration {
	longest := 10 * time.Second
	for _, p := range cfg.Providers {
		longest = max(longest, p.Timeout.D())
	}
	return longest + 5*time.Second
}

// instanceID names this replica in logs, spans and the provider's User-Agent.
func instanceID() string {
	host, _ := os.Hostname()
	return host + "-" + strconv.Itoa(os.Getpid())
}

// connectConfig turns the nats section into the connection's settings.
func connectConfig(c config.NATS, name string, log *slog.Logger, embedded *server.Server) natsx.ConnectConfig {
	cc := natsx.ConnectConfig{
		URL: c.URL, Creds: c.Creds, User: c.User, Password: c.Password.Reveal(), NkeySeedFile: c.NkeySeedFile,
		Name: name, Logger: log, Embedded: embedded,
	}
	if t := c.TLS; t != nil {
		cc.CAFile, cc.CertFile, cc.KeyFile = t.CA, t.Cert, t.Key
	}
	return cc
}
