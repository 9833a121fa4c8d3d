// Command scalebench measures one refresher with many providers (SPEC §8):
// it runs the simulator in-process with a fixed token latency, starts a
// refresher process (an embedded NATS server, everything on 127.0.0.1) with
// N providers — registered through tokenbus.providers.put, or written in a
// generated config file — and reports:
//
//   - ready: from the first put (api) or the process start (config) until
//     every provider serves a token; puts begin once the refresher leads
//     (a warm-up provider, not counted, has its token: a refresher just
//     started waits up to a second after taking the lease before it calls
//     anyone, which is no part of onboarding);
//   - the bound, N × latency / fetch_concurrency, and the same at the
//     simulator's measured time per token request (the latency plus its
//     timer's lateness and scheduling on the shared cores): the floor
//     under ready;
//   - the peak number of token requests in flight at the simulator (bounded
//     by fetch_concurrency), and their mean while the puts ran and after
//     (sampled every 10 ms; below fetch_concurrency the fill waits for
//     something besides the provider, such as a core);
//   - the refresher's resident memory (VmRSS once ready, and its peak VmHWM);
//   - the put rate (api): tokenbus.providers.put_many batches of --put-batch
//     providers, 4 in flight (--put-batch 1: single puts, 32 in flight);
//   - the refresher's CPU: process CPU seconds until ready, and its idle
//     CPU (share of one core) over --idle once every token is fresh;
//   - its garbage collections during the fill (run with GODEBUG=gctrace=1):
//     how many, their concurrent mark phases' total and longest time, and
//     the live heap;
//   - token.get latency (p50, p99) during the fill (2 callers asking for
//     providers already put; a 503 for a token not yet fetched counts as an
//     answer) and over random providers once ready;
//   - the latency (p50, p99) of the status endpoints while filling (asked
//     in rounds, --probe-every apart) and once ready (50 times each): token.status
//     {"limit":1}, tokenbus.providers.list (a page of 1000 after a random
//     provider), the status page's /status.json (its default page) and
//     /metrics;
//   - with --pprof DIR: a CPU profile of the refresher over the first
//     --cpu-profile of the fill and over the idle window (which starts once
//     the fill profile has ended), heap profiles (after a GC) once ready and
//     once idle, MemStats and the goroutine count, written to DIR for go
//     tool pprof.
//
// With --takeover it measures a leader change instead (takeover.go): a
// nats-server process and two refresher processes; once every token is
// ready it SIGKILLs the leader, then (the killed replica restarted as a
// standby) SIGTERMs the new one, and reports for each how long the standby
// took to lead and to serve every provider, the token requests the
// simulator received after the signal (0: no valid token is fetched again)
// and both replicas' RSS.
//
// Usage:
//
//	go run ./tools/cmd/scalebench --providers 10000 --source api
//	go run ./tools/cmd/scalebench --providers 10000 --source config --refresher ./bin/refresher
//	go run ./tools/cmd/scalebench --providers 100000 --takeover
//
// Without --refresher (and, for --takeover, --nats-server) it builds
// services/refresher/cmd/refresher (and nats-server) into a temporary
// directory (run it from the repository root). Everything it starts
// is stopped before it exits, and it gives up after --timeout.
package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokenbus/tokenbus/libs/simulator"
	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "scalebench:", err)
		os.Exit(1)
	}
}

type options struct {
	providers   int
	source      string
	concurrency int
	latency     time.Duration
	env         []string // added to the refresher's environment
	refresher   string
	gets        int
	timeout     time.Duration
	keep        bool
	putBatch    int
	idle        time.Duration
	pprofDir    string
	probeEvery  time.Duration
	putRate     int
	cpuProfile  time.Duration
	takeover    bool
	natsServer  string
	leaseTTL    time.Duration
	replicas    int
}

// Result is one run's figures.
type Result struct {
	Providers        int     `json:"providers"`
	Source           string  `json:"source"`
	FetchConcurrency int     `json:"fetch_concurrency"`
	LatencyMS        float64 `json:"token_latency_ms"`
	PutSeconds       float64 `json:"put_seconds,omitempty"`
	PutPerSecond     float64 `json:"puts_per_second,omitempty"`
	PutBatch         int     `json:"put_batch,omitempty"`
	ReadySeconds     float64 `json:"ready_seconds"`
	BoundSeconds     float64 `json:"bound_seconds"`
	// The simulator's own time per token request (in its handler: the
	// latency, plus its timer's lateness and its scheduling), mean over the
	// fill, and the bound at that time instead of the nominal latency: what
	// fetch_concurrency slots kept busy all along would take.
	SimRequestMS      float64 `json:"sim_token_request_ms"`
	BoundAtSimSeconds float64 `json:"bound_at_sim_request_seconds"`
	// The refresher's own time per token request, mean over the fill
	// (tokenbus_upstream_duration_seconds: from building the request to
	// the answer parsed), and how much of it was spent outside the
	// simulator's handler: the loopback exchange and both sides' waits for
	// a core (issue 20, session 9: 0.16 ms of it is the refresher's code).
	UpstreamMS   float64 `json:"refresher_upstream_ms,omitempty"`
	OutsideSimMS float64 `json:"upstream_outside_sim_ms,omitempty"`
	PeakInFlight int64   `json:"peak_in_flight"`
	// The simulator's token requests in flight, sampled every 10 ms: their
	// mean while the puts ran (api) and from then until ready. Below
	// fetch_concurrency the fill waits for something besides the provider.
	PutInFlightMean  float64 `json:"put_in_flight_mean,omitempty"`
	FillInFlightMean float64 `json:"fill_in_flight_mean"`
	RSSMiB           float64 `json:"rss_mib"`
	PeakRSSMiB       float64 `json:"peak_rss_mib"`
	GetP50MS         float64 `json:"token_get_p50_ms"`
	GetP99MS         float64 `json:"token_get_p99_ms"`
	Gets             int     `json:"token_gets"`
	FillGetP50MS     float64 `json:"fill_token_get_p50_ms,omitempty"`
	FillGetP99MS     float64 `json:"fill_token_get_p99_ms,omitempty"`
	FillGets         int     `json:"fill_token_gets,omitempty"`
	// The fill's answers apart: a token served, and an error (a 503 for
	// a provider whose token is not fetched yet).
	FillServedP99MS float64 `json:"fill_token_get_served_p99_ms,omitempty"`
	FillServed      int     `json:"fill_token_get_served,omitempty"`
	FillErrorP99MS  float64 `json:"fill_token_get_error_p99_ms,omitempty"`
	// The fill's answers by phase: asked while the puts ran, and after.
	FillDuringPutsP99MS float64 `json:"fill_token_get_p99_during_puts_ms,omitempty"`
	FillAfterPutsP99MS  float64 `json:"fill_token_get_p99_after_puts_ms,omitempty"`
	CPUSecondsReady     float64 `json:"cpu_seconds_to_ready"`
	// The refresher's garbage collections during the fill (GODEBUG=gctrace=1):
	// how many, their concurrent mark phases' total and longest wall time,
	// and the live heap the last one marked.
	FillGCCycles    int     `json:"fill_gc_cycles"`
	FillGCMarkMS    float64 `json:"fill_gc_mark_ms"`
	FillGCMarkMaxMS float64 `json:"fill_gc_mark_max_ms"`
	LiveHeapMiB     int     `json:"live_heap_mb"`
	IdleCPUPercent  float64 `json:"idle_cpu_percent_of_core"`
	IdleSeconds     float64 `json:"idle_window_seconds"`
	IdleRSSMiB      float64 `json:"idle_rss_mib"`
	// StatusEndpoints times token.status, tokenbus.providers.list,
	// /status.json and /metrics, by those names.
	StatusEndpoints map[string]*EndpointLatency `json:"status_endpoints"`
	LoadAvg         string                      `json:"loadavg_at_end"`
}

// EndpointLatency is one status endpoint's latency while filling and once
// every token is ready, in milliseconds.
type EndpointLatency struct {
	FillP50MS float64 `json:"fill_p50_ms"`
	FillP99MS float64 `json:"fill_p99_ms"`
	FillN     int     `json:"fill_requests"`
	P50MS     float64 `json:"p50_ms"`
	P99MS     float64 `json:"p99_ms"`
	N         int     `json:"requests"`
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var o options
	fs := flag.NewFlagSet("scalebench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&o.providers, "providers", 1000, "how many providers (1 to 100000)")
	fs.StringVar(&o.source, "source", "api", "api (tokenbus.providers.put) or config (a generated config file)")
	fs.IntVar(&o.concurrency, "fetch-concurrency", 16, "the refresher's fetch_concurrency")
	fs.DurationVar(&o.latency, "latency", 20*time.Millisecond, "the simulator's token latency")
	fs.StringVar(&o.refresher, "refresher", "", "refresher binary (default: build ./services/refresher/cmd/refresher)")
	fs.IntVar(&o.gets, "gets", 20000, "token.get requests to time once ready")
	fs.DurationVar(&o.timeout, "timeout", 10*time.Minute, "give up after this long")
	fs.BoolVar(&o.keep, "keep", false, "keep the temporary directory")
	fs.IntVar(&o.putBatch, "put-batch", 250, "api: providers per tokenbus.providers.put_many (1: single tokenbus.providers.put requests)")
	fs.IntVar(&o.putRate, "put-rate", 0, "the refresher's credentials.put_rate: providers stored per second at most (0: its default, 2,500; -1: no bound)")
	fs.DurationVar(&o.probeEvery, "probe-every", 250*time.Millisecond, "pause between rounds of the status endpoints' probes during the fill (each round asks token.status, tokenbus.providers.list, /status.json and /metrics)")
	fs.DurationVar(&o.idle, "idle", 10*time.Second, "how long to measure idle CPU once every token is fresh")
	fs.Func("env", "KEY=VALUE in the refresher's environment, e.g. GOMEMLIMIT=400MiB (repeatable)", func(v string) error {
		if k, _, ok := strings.Cut(v, "="); !ok || k == "" {
			return fmt.Errorf("want KEY=VALUE, got %q", v)
		}
		o.env = append(o.env, v)
		return nil
	})
	fs.StringVar(&o.pprofDir, "pprof", "", "write CPU and heap profiles of the refresher to this directory (runs it with --debug-pprof; with --takeover: a CPU profile of the leader over the fill)")
	fs.DurationVar(&o.cpuProfile, "cpu-profile", 30*time.Second, "with --pprof: length of the CPU profile taken from the first put")
	fs.BoolVar(&o.takeover, "takeover", false, "measure a leader change (SIGKILL, then SIGTERM) with two refresher processes and a nats-server process")
	fs.StringVar(&o.natsServer, "nats-server", "", "--takeover: nats-server binary (default: build github.com/nats-io/nats-server/v2)")
	fs.DurationVar(&o.leaseTTL, "lease-ttl", 10*time.Second, "--takeover: the refreshers' lease.ttl")
	fs.IntVar(&o.replicas, "replicas", 1, "--takeover: the buckets' replicas; 3 runs a three-node cluster of nats-server processes with sync_interval always, as deploy/ does")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.providers < 1 || o.providers > 100000 || (o.source != "api" && o.source != "config") || o.concurrency < 1 ||
		o.putBatch < 1 || o.putBatch > wire.ProvidersPutManyMax || o.idle < 0 || (o.replicas != 1 && o.replicas != 3) || (o.replicas != 1 && !o.takeover) {
		return fmt.Errorf("want --providers 1..100000, --source api|config, --fetch-concurrency ≥ 1, --put-batch 1..%d, --idle ≥ 0, --replicas 1|3 (3 with --takeover)", wire.ProvidersPutManyMax)
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	if o.takeover {
		res, err := benchTakeover(ctx, o, stderr)
		if err != nil {
			return err
		}
		b, _ := json.MarshalIndent(res, "", "  ")
		_, err = fmt.Fprintf(stdout, "%s\n", b)
		return err
	}
	res, err := bench(ctx, o, stderr)
	if err != nil {
		return err
	}
	b, _ := json.MarshalIndent(res, "", "  ")
	_, err = fmt.Fprintf(stdout, "%s\n", b)
	return err
}

// merchant names provider i; merchantCred is its consumer key.
func merchant(i int) string     { return fmt.Sprintf("m-%05d", i) }
func merchantCred(i int) string { return fmt.Sprintf("merchant-%05d", i) }

// warmUpName names the provider put before the clock starts (warmUp).
const warmUpName = "warm-up"

// warmUp puts one provider and waits for its token: the refresher then
// leads and calls providers.
func warmUp(ctx context.Context, nc *nats.Conn, simURL string) error {
	key := "merchant-" + warmUpName // the simulator's rule for many credentials (simulator.Config.ManyPrefix)
	body, _ := json.Marshal(map[string]string{"name": warmUpName, "kind": "daraja", "base_url": simURL,
		"consumer_key": key, "consumer_secret": simulator.DerivedSecret(key)})
	msg, err := nc.RequestWithContext(ctx, wire.ProvidersPutSubject, body)
	if err != nil {
		return fmt.Errorf("warm-up put: %w", err)
	}
	if code := msg.Header.Get("Nats-Service-Error-Code"); code != "" {
		return fmt.Errorf("warm-up put refused: %s %s", code, msg.Header.Get("Nats-Service-Error"))
	}
	q, _ := json.Marshal(wire.StatusRequest{Provider: warmUpName, Limit: 1})
	for {
		if msg, err := nc.Request(wire.StatusSubject, q, 5*time.Second); err == nil {
			var st wire.Status
			if json.Unmarshal(msg.Data, &st) == nil && len(st.Providers) == 1 {
				if p := st.Providers[0]; p.State == wire.StateOK {
					return nil
				} else if p.LastError != "" {
					return fmt.Errorf("the warm-up provider failed: %s", p.LastError)
				}
			}
		}
		select {
		case <-ctx.Done():
			return errors.New("the warm-up provider got no token")
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// putBody is provider i as the body of tokenbus.providers.put.
func putBody(i int, simURL string) json.RawMessage {
	b, _ := json.Marshal(map[string]string{"name": merchant(i), "kind": "daraja", "base_url": simURL,
		"consumer_key": merchantCred(i), "consumer_secret": simulator.DerivedSecret(merchantCred(i))})
	return b
}

// newKey returns a fresh sealing key, base64.
func newKey() string {
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	return base64.StdEncoding.EncodeToString(key)
}

// writeConfig writes a refresher configuration to path: NATS as natsCfg
// (a YAML flow mapping), the HTTP surface on httpPort, the sealing key,
// extra top-level YAML, and with --source config every provider.
func writeConfig(path string, o options, natsCfg string, httpPort int, key, extra, simURL string) error {
	var cfg strings.Builder
	fmt.Fprintf(&cfg, `nats: %s
http: {listen: "127.0.0.1:%d"}
log: {level: warn}
fetch_concurrency: %d
credentials:
  keys: [{id: k1, key: %q}]
  put_rate: %d
%s`, natsCfg, httpPort, o.concurrency, key, o.putRate, extra)
	if o.source == "config" {
		cfg.WriteString("providers:\n")
		for i := range o.providers {
			fmt.Fprintf(&cfg, "  - name: %s\n    kind: daraja\n    base_url: %s\n    consumer_key: %s\n    consumer_secret: %s\n",
				merchant(i), simURL, merchantCred(i), simulator.DerivedSecret(merchantCred(i)))
		}
	}
	return os.WriteFile(path, []byte(cfg.String()), 0o600)
}

// binary returns path if set, else builds pkg into dir/name (from the
// repository root).
func binary(ctx context.Context, path, dir, name, pkg string, log io.Writer) (string, error) {
	if path != "" {
		return path, nil
	}
	out := filepath.Join(dir, name)
	fmt.Fprintf(log, "building %s…\n", name)
	build := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	build.Stdout, build.Stderr = log, log
	if err := build.Run(); err != nil {
		return "", fmt.Errorf("build %s (run from the repository root, or pass its binary): %w", name, err)
	}
	return out, nil
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func bench(ctx context.Context, o options, log io.Writer) (*Result, error) {
	dir, err := os.MkdirTemp("", "scalebench-")
	if err != nil {
		return nil, err
	}
	if !o.keep {
		defer os.RemoveAll(dir)
	}
	bin, err := binary(ctx, o.refresher, dir, "refresher", "./services/refresher/cmd/refresher", log)
	if err != nil {
		return nil, err
	}

	// The simulator, in this process, on loopback.
	sim, simURL, stopSim, err := startSimulator(o.latency)
	if err != nil {
		return nil, err
	}
	defer stopSim()

	natsPort, err := freePort()
	if err != nil {
		return nil, err
	}
	httpPort, err := freePort()
	if err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(dir, "refresher.yaml")
	natsCfg := fmt.Sprintf(`{embedded: {listen: "127.0.0.1:%d", store_dir: %q}}`, natsPort, filepath.Join(dir, "nats"))
	if err := writeConfig(cfgPath, o, natsCfg, httpPort, newKey(), "", simURL); err != nil {
		return nil, err
	}

	args := []string{"--config", cfgPath}
	var pprofURL string
	if o.pprofDir != "" {
		if err := os.MkdirAll(o.pprofDir, 0o755); err != nil {
			return nil, err
		}
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		pprofURL = fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/", port)
		args = append(args, "--debug-pprof", fmt.Sprintf("127.0.0.1:%d", port))
	}
	start := time.Now()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(append(os.Environ(), o.env...), "GODEBUG="+strings.Trim(os.Getenv("GODEBUG")+",gctrace=1", ","))
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	var gc gcTrace
	go gc.copy(stderr, log)
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}()

	var nc *nats.Conn
	for {
		nc, err = nats.Connect(fmt.Sprintf("nats://127.0.0.1:%d", natsPort), nats.Timeout(time.Second))
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("the refresher did not start: %w", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	defer nc.Close()
	// Wait for the service.
	for {
		if _, err := nc.Request(wire.StatusSubject, nil, time.Second); err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil, errors.New("the refresher does not answer token.status")
		}
	}
	// A refresher just started takes the lease and then waits its acquire
	// delay (up to 1 s) before it calls any provider; onboarding runs on one
	// that already leads. So the clock starts once a warm-up provider, put
	// through the API, has its token (the first second of every earlier
	// fill was that delay).
	warm := 0
	if o.source == "api" {
		t := time.Now()
		if err := warmUp(ctx, nc, simURL); err != nil {
			return nil, err
		}
		warm = 1
		fmt.Fprintf(log, "leading, warm-up token in %.1fs\n", time.Since(t).Seconds())
	}
	res := &Result{Providers: o.providers, Source: o.source, FetchConcurrency: o.concurrency, LatencyMS: float64(o.latency) / 1e6}
	pid := cmd.Process.Pid
	var profiles sync.WaitGroup
	if pprofURL != "" {
		profiles.Go(func() {
			if err := fetch(ctx, fmt.Sprintf("%sprofile?seconds=%d", pprofURL, int(o.cpuProfile.Seconds())),
				filepath.Join(o.pprofDir, fmt.Sprintf("cpu-fill-%d.pprof", o.providers)), o.cpuProfile+30*time.Second); err != nil {
				fmt.Fprintln(log, "cpu profile:", err)
			}
		})
	}
	// token.get during the fill: 2 callers, providers already put.
	var put atomic.Int64
	if o.source == "config" {
		put.Store(int64(o.providers))
	}
	fillCtx, endFill := context.WithCancel(ctx)
	defer endFill()
	var putsDone atomic.Bool
	putsDone.Store(o.source == "config")
	fillLat := make(chan fillTimes, 1)
	go func() {
		fillLat <- fillGets(fillCtx, nc, func() string { return merchant(mrand.IntN(int(max(put.Load(), 1)))) }, &putsDone)
	}()
	httpBase := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	fillProbes := make(chan map[string][]time.Duration, 1)
	go func() { fillProbes <- probeEndpoints(fillCtx, nc, httpBase, o.providers, o.probeEvery, 0, log) }()
	inFlight := inFlightMeans(fillCtx, func() int64 { n, _ := sim.InFlight(); return n }, &putsDone)
	gc0 := gc.cycles() // from the first put (api), from the start (config)
	if o.source == "config" {
		gc0 = 0
	}
	if o.source == "api" {
		start = time.Now()
		body := func(i int) json.RawMessage { return putBody(i, simURL) }
		var err error
		if o.putBatch == 1 {
			err = putAll(ctx, nc, o.providers, body, &put)
		} else {
			err = putBatches(ctx, nc, o.providers, o.putBatch, body, &put)
		}
		if err != nil {
			return nil, err
		}
		putsDone.Store(true)
		res.PutSeconds = time.Since(start).Seconds()
		res.PutPerSecond = float64(o.providers) / res.PutSeconds
		res.PutBatch = o.putBatch
		fmt.Fprintf(log, "%d providers put in %.1fs (%.0f/s)\n", o.providers, res.PutSeconds, res.PutPerSecond)
	}
	// Ready: every provider ok.
	for {
		msg, err := nc.Request(wire.StatusSubject, []byte(`{"limit":1}`), 5*time.Second)
		if err == nil {
			var st wire.Status
			if json.Unmarshal(msg.Data, &st) == nil && st.Summary != nil && st.Summary.States[wire.StateOK] >= o.providers+warm {
				break
			}
		}
		select {
		case <-ctx.Done():
			return nil, errors.New("not every provider became ready in time")
		case <-time.After(50 * time.Millisecond):
		}
	}
	res.ReadySeconds = time.Since(start).Seconds()
	res.CPUSecondsReady = procCPU(pid)
	if n, busy := sim.Answered(); n > 0 {
		res.SimRequestMS = float64(busy) / float64(n) / 1e6
		res.BoundAtSimSeconds = float64(o.providers) * res.SimRequestMS / 1e3 / float64(o.concurrency)
	}
	if ms, n, err := upstreamMeanMS(ctx, httpBase); err != nil {
		fmt.Fprintln(log, "upstream latency from /metrics:", err)
	} else if n > 0 {
		res.UpstreamMS = ms
		if res.SimRequestMS > 0 {
			res.OutsideSimMS = ms - res.SimRequestMS
		}
		fmt.Fprintf(log, "the refresher's token requests took %.2f ms on average (%d), %.2f ms of it outside the simulator's handler\n", ms, n, res.OutsideSimMS)
	}
	res.FillGCCycles, res.FillGCMarkMS, res.FillGCMarkMaxMS, res.LiveHeapMiB = gc.since(gc0)
	fmt.Fprintf(log, "fill: %d garbage collections, %.0f ms of concurrent mark in all (longest %.0f ms); live heap %d MB\n",
		res.FillGCCycles, res.FillGCMarkMS, res.FillGCMarkMaxMS, res.LiveHeapMiB)
	endFill()
	means := <-inFlight
	res.PutInFlightMean, res.FillInFlightMean = means[0], means[1]
	fmt.Fprintf(log, "token requests in flight at the simulator (of %d): %.1f while the puts ran, %.1f after\n", o.concurrency, means[0], means[1])
	fl := <-fillLat
	fillTimes := <-fillProbes
	all := append(slices.Clone(fl.served), fl.errors...)
	res.FillGets, res.FillServed = len(all), len(fl.served)
	res.FillGetP50MS, res.FillGetP99MS = percentile(all, 0.50), percentile(all, 0.99)
	res.FillServedP99MS, res.FillErrorP99MS = percentile(fl.served, 0.99), percentile(fl.errors, 0.99)
	res.FillDuringPutsP99MS, res.FillAfterPutsP99MS = percentile(fl.duringPuts, 0.99), percentile(fl.afterPuts, 0.99)
	fmt.Fprintf(log, "fill token.get p99 %.1f ms: %.1f ms while the puts ran, %.1f ms after\n", res.FillGetP99MS, res.FillDuringPutsP99MS, res.FillAfterPutsP99MS)
	res.BoundSeconds = float64(o.providers) * o.latency.Seconds() / float64(o.concurrency)
	_, res.PeakInFlight = sim.InFlight()
	fmt.Fprintf(log, "ready in %.1fs (bound %.1fs; %.1fs at the simulator's %.2f ms a request); peak in flight %d; %.1f CPU seconds\n",
		res.ReadySeconds, res.BoundSeconds, res.BoundAtSimSeconds, res.SimRequestMS, res.PeakInFlight, res.CPUSecondsReady)
	if pprofURL != "" {
		if err := fetch(ctx, pprofURL+"heap?gc=1", filepath.Join(o.pprofDir, fmt.Sprintf("heap-ready-%d.pprof", o.providers)), time.Minute); err != nil {
			fmt.Fprintln(log, "heap profile:", err)
		}
	}

	// token.get latency, 8 callers, random providers.
	lat, err := gets(ctx, nc, o.gets, func() string { return merchant(mrand.IntN(o.providers)) })
	if err != nil {
		return nil, err
	}
	res.Gets = len(lat)
	res.GetP50MS, res.GetP99MS = percentile(lat, 0.50), percentile(lat, 0.99)
	res.RSSMiB, res.PeakRSSMiB = procMem(pid)
	res.StatusEndpoints = endpointLatencies(fillTimes, probeEndpoints(ctx, nc, httpBase, o.providers, 0, 50, log))
	for _, n := range endpointNames {
		if e := res.StatusEndpoints[n]; e != nil {
			fmt.Fprintf(log, "%s: p50 %.1f ms, p99 %.1f ms filling; p50 %.1f ms, p99 %.1f ms ready\n", n, e.FillP50MS, e.FillP99MS, e.P50MS, e.P99MS)
		}
	}

	// Idle: every token fresh, nobody asking. The fill's CPU profile
	// must have ended: the process profiles one window at a time (an
	// idle profile asked for meanwhile was refused, and idle CPU read 0 %
	// over 0 s).
	profiles.Wait()
	if o.idle > 0 {
		cpu0, t0 := procCPU(pid), time.Now()
		if pprofURL != "" {
			// The idle window is a CPU profile: what the refresher does
			// when there is nothing to do.
			if err := fetch(ctx, fmt.Sprintf("%sprofile?seconds=%d", pprofURL, max(int(o.idle.Seconds()), 1)),
				filepath.Join(o.pprofDir, fmt.Sprintf("cpu-idle-%d.pprof", o.providers)), o.idle+30*time.Second); err != nil {
				fmt.Fprintln(log, "idle cpu profile:", err)
			}
		}
		// Without a profile (or if it failed), the window is waited out.
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Until(t0.Add(o.idle))):
		}
		res.IdleSeconds = time.Since(t0).Seconds()
		res.IdleCPUPercent = 100 * (procCPU(pid) - cpu0) / res.IdleSeconds
		res.IdleRSSMiB, _ = procMem(pid)
		fmt.Fprintf(log, "idle: %.2f%% of a core over %.0fs\n", res.IdleCPUPercent, res.IdleSeconds)
	}
	if pprofURL != "" {
		for file, what := range map[string]string{
			"heap-idle-%d.pprof": "heap?gc=1",
			// MemStats (stacks, heap, GC goal) and the goroutine count.
			"memstats-idle-%d.txt":   "heap?debug=1",
			"goroutines-idle-%d.txt": "goroutine?debug=1",
		} {
			if err := fetch(ctx, pprofURL+what, filepath.Join(o.pprofDir, fmt.Sprintf(file, o.providers)), time.Minute); err != nil {
				fmt.Fprintln(log, "profile:", err)
			}
		}
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		res.LoadAvg = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	return res, nil
}

// endpointNames are the status endpoints probeEndpoints times.
var endpointNames = []string{"token.status", "tokenbus.providers.list", "/status.json", "/metrics"}

// probeEndpoints asks each status endpoint once a round — token.status
// {"limit":1}, tokenbus.providers.list after a random provider (a page of
// 1000), /status.json (the status page's default page) and /metrics, one
// after the other — with rounds every apart (back to back if 0), until ctx
// ends or after rounds rounds (0: until ctx ends). It returns each
// endpoint's times; a request that fails is logged, not timed.
func probeEndpoints(ctx context.Context, nc *nats.Conn, httpBase string, providers int, every time.Duration, rounds int, log io.Writer) map[string][]time.Duration {
	out := map[string][]time.Duration{}
	client := &http.Client{Timeout: 30 * time.Second}
	logged := map[string]bool{}
	ask := func(name string, f func(context.Context) error) {
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		t := time.Now()
		if err := f(rctx); err != nil {
			if ctx.Err() == nil && !logged[name] {
				logged[name] = true
				fmt.Fprintf(log, "%s: %v\n", name, err)
			}
			return
		}
		out[name] = append(out[name], time.Since(t))
	}
	natsAsk := func(subject string, body []byte) func(context.Context) error {
		return func(ctx context.Context) error {
			msg, err := nc.RequestWithContext(ctx, subject, body)
			if err == nil && msg.Header.Get(wire.HeaderErrorCode) != "" {
				err = fmt.Errorf("%s %s", msg.Header.Get(wire.HeaderErrorCode), msg.Header.Get(wire.HeaderError))
			}
			return err
		}
	}
	httpAsk := func(path string) func(context.Context) error {
		return func(ctx context.Context) error {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, httpBase+path, nil)
			resp, err := client.Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if _, err := io.Copy(io.Discard, resp.Body); err != nil {
				return err
			}
			if resp.StatusCode != http.StatusOK {
				return errors.New(resp.Status)
			}
			return nil
		}
	}
	for n := 0; ctx.Err() == nil && (rounds == 0 || n < rounds); n++ {
		after, _ := json.Marshal(wire.ProviderListRequest{After: merchant(mrand.IntN(providers)), Limit: wire.StatusPageMax})
		ask("token.status", natsAsk(wire.StatusSubject, []byte(`{"limit":1}`)))
		ask("tokenbus.providers.list", natsAsk(wire.ProvidersListSubject, after))
		ask("/status.json", httpAsk("/status.json"))
		ask("/metrics", httpAsk("/metrics"))
		if every > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(every):
			}
		}
	}
	return out
}

// endpointLatencies sums up probeEndpoints' times while filling and once
// ready.
func endpointLatencies(fill, ready map[string][]time.Duration) map[string]*EndpointLatency {
	out := map[string]*EndpointLatency{}
	for _, n := range endpointNames {
		f, r := fill[n], ready[n]
		out[n] = &EndpointLatency{FillP50MS: percentile(f, 0.50), FillP99MS: percentile(f, 0.99), FillN: len(f),
			P50MS: percentile(r, 0.50), P99MS: percentile(r, 0.99), N: len(r)}
	}
	return out
}

// putBatches puts n providers through tokenbus.providers.put_many, batch at
// a time, 4 batches in flight; put counts the providers stored so far.
func putBatches(ctx context.Context, nc *nats.Conn, n, batch int, body func(int) json.RawMessage, put *atomic.Int64) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	sem := make(chan struct{}, 4)
	for lo := 0; lo < n; lo += batch {
		hi := min(lo+batch, n)
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			req := wire.ProviderPutManyRequest{}
			for i := lo; i < hi; i++ {
				req.Providers = append(req.Providers, body(i))
			}
			b, _ := json.Marshal(req)
			msg, err := nc.RequestWithContext(ctx, wire.ProvidersPutManySubject, b)
			var r wire.ProviderPutManyReply
			switch {
			case err != nil:
			case msg.Header.Get(wire.HeaderErrorCode) != "":
				err = fmt.Errorf("put_many %d–%d: %s %s", lo, hi-1, msg.Header.Get(wire.HeaderErrorCode), msg.Header.Get(wire.HeaderError))
			case json.Unmarshal(msg.Data, &r) != nil || r.Stored != hi-lo:
				err = fmt.Errorf("put_many %d–%d: %d refused: %s", lo, hi-1, r.Refused, firstRefusal(r))
			}
			if err != nil {
				mu.Lock()
				if first == nil {
					first = err
				}
				mu.Unlock()
				return
			}
			// Providers are put in order; a caller may ask for any below.
			for cur := put.Load(); int64(hi) > cur && !put.CompareAndSwap(cur, int64(hi)); cur = put.Load() {
			}
		})
	}
	wg.Wait()
	return first
}

func firstRefusal(r wire.ProviderPutManyReply) string {
	for _, res := range r.Results {
		if res.Error != nil {
			return res.Error.Message
		}
	}
	return "malformed reply"
}

// fillTimes is how long each token.get answer of the fill took: a token
// served, or an error.
type fillTimes struct {
	served, errors []time.Duration
	// duringPuts and afterPuts are every answer again, by whether the
	// puts were still running when it was asked.
	duringPuts, afterPuts []time.Duration
}

// fillGets asks token.get of random providers already put, 2 callers, until
// ctx ends, and returns how long each answer took (a 503 for a token not yet
// fetched counts: the answer is what is timed), served and errors apart.
func fillGets(ctx context.Context, nc *nats.Conn, pick func() string, putsDone *atomic.Bool) fillTimes {
	var (
		wg  sync.WaitGroup
		mu  sync.Mutex
		out fillTimes
	)
	for range 2 {
		wg.Go(func() {
			var local fillTimes
			for ctx.Err() == nil {
				t, during := time.Now(), !putsDone.Load()
				msg, err := nc.Request(wire.GetSubject(pick()), nil, 5*time.Second)
				if err == nil {
					took := time.Since(t)
					if msg.Header.Get(wire.HeaderErrorCode) != "" {
						local.errors = append(local.errors, took)
					} else {
						local.served = append(local.served, took)
					}
					if during {
						local.duringPuts = append(local.duringPuts, took)
					} else {
						local.afterPuts = append(local.afterPuts, took)
					}
				}
				select {
				case <-ctx.Done():
				case <-time.After(5 * time.Millisecond):
				}
			}
			mu.Lock()
			out.served = append(out.served, local.served...)
			out.errors = append(out.errors, local.errors...)
			out.duringPuts = append(out.duringPuts, local.duringPuts...)
			out.afterPuts = append(out.afterPuts, local.afterPuts...)
			mu.Unlock()
		})
	}
	wg.Wait()
	return out
}

// get GETs url and returns its body if it answered 200.
func get(ctx context.Context, url string) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("%s: %s", url, resp.Status)
	}
	return resp.Body, nil
}

// fetch GETs url into path.
func fetch(ctx context.Context, url, path string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	body, err := get(ctx, url)
	if err != nil {
		return err
	}
	defer body.Close()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// procCPU returns pid's CPU time (user + system) in seconds.
func procCPU(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name (which may hold spaces) in parentheses.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100 // USER_HZ is 100 on Linux
}

// putAll puts n providers, 32 requests at a time; put counts the
// providers stored below which all are stored (approximately: single puts
// finish out of order).
func putAll(ctx context.Context, nc *nats.Conn, n int, body func(int) json.RawMessage, put *atomic.Int64) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	sem := make(chan struct{}, 32)
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			msg, err := nc.RequestWithContext(ctx, wire.ProvidersPutSubject, body(i))
			if err == nil && msg.Header.Get(wire.HeaderErrorCode) != "" {
				err = fmt.Errorf("put %d: %s %s", i, msg.Header.Get(wire.HeaderErrorCode), msg.Header.Get(wire.HeaderError))
			}
			if err != nil {
				mu.Lock()
				if first == nil {
					first = err
				}
				mu.Unlock()
				return
			}
			put.Store(int64(max(i-32, 0)))
		})
	}
	wg.Wait()
	return first
}

func gets(ctx context.Context, nc *nats.Conn, n int, pick func() string) ([]time.Duration, error) {
	var (
		wg  sync.WaitGroup
		mu  sync.Mutex
		out = make([]time.Duration, 0, n)
		bad int
	)
	per := n / 8
	for range 8 {
		wg.Go(func() {
			local := make([]time.Duration, 0, per)
			for range per {
				t := time.Now()
				msg, err := nc.RequestWithContext(ctx, wire.GetSubject(pick()), nil)
				if err != nil || msg.Header.Get(wire.HeaderErrorCode) != "" {
					mu.Lock()
					bad++
					mu.Unlock()
					continue
				}
				local = append(local, time.Since(t))
			}
			mu.Lock()
			out = append(out, local...)
			mu.Unlock()
		})
	}
	wg.Wait()
	if bad > 0 {
		return nil, fmt.Errorf("%d token.get requests failed", bad)
	}
	return out, nil
}

func percentile(d []time.Duration, p float64) float64 {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	i := int(math.Ceil(p*float64(len(d)))) - 1
	return float64(d[max(i, 0)]) / 1e6
}

// procMem returns VmRSS and VmHWM of pid in MiB (0 where /proc has none).
func procMem(pid int) (rss, hwm float64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "VmRSS:":
			rss = kb / 1024
		case "VmHWM:":
			hwm = kb / 1024
		}
	}
	return rss, hwm
}

// startSimulator serves a simulator whose Daraja token requests take
// latency, in this process on loopback, and returns it, its URL and what
// stops it.
func startSimulator(latency time.Duration) (*simulator.Server, string, func(), error) {
	sim := simulator.New(simulator.Config{})
	sim.SetFaults(simulator.Daraja, simulator.Faults{Latency: latency})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", nil, err
	}
	srv := &http.Server{Handler: sim, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return sim, "http://" + ln.Addr().String(), func() { _ = srv.Close() }, nil
}
