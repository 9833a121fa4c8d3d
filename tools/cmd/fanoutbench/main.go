// Command fanoutbench measures how tokens reach a fleet of followers, side by
// side for the two follow modes of the Go client (SPEC §9): FollowUpdates
// (token.updates.<provider>, a subscription per client) and FollowKVWatch (a
// KV watch, a JetStream consumer per client).
//
// For each mode and each fleet size N it starts a fresh nats-server with
// JetStream in this process, the tokens bucket as the refresher opens it
// (republish on), and a token.get responder; then a child process (this
// program again) connects N clients following one provider, spread over
// connections of -per-conn clients each as a fleet of pods would be. The
// parent writes a new token to the bucket every -interval, -rotations times,
// stamping the write time into the token's issued_at; each client records
// when the token reached its memory. It reports the propagation from the KV
// write to each client and to the last client of each rotation (p50, p99,
// max), the JetStream consumers on the tokens stream while the clients
// follow, and the server process's memory (Go heap in use after a GC and
// RSS; the clients run in the child, so this is the server's).
//
// Everything runs on loopback and stops by itself:
//
//	go run ./tools/cmd/fanoutbench -n 100,1000 -rotations 20
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenbus/tokenbus/libs/tokenclient"
	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/natsx"
	"github.com/tokenbus/tokenbus/services/refresher/rpc"
)

const provider = "bench"

func main() {
	var (
		sizes     = flag.String("n", "100,1000", "fleet sizes: comma-separated client counts")
		perConn   = flag.Int("per-conn", 50, "clients per NATS connection")
		rotations = flag.Int("rotations", 20, "tokens written per run")
		interval  = flag.Duration("interval", time.Second, "time between two writes")
		modes     = flag.String("modes", "updates,kv-watch", "follow modes to measure: updates, kv-watch")
		child     = flag.Bool("child", false, "internal: run the clients (started by the parent)")
		url       = flag.String("url", "", "internal: the server's URL (child)")
		n         = flag.Int("clients", 0, "internal: the number of clients (child)")
		mode      = flag.String("mode", "", "internal: the follow mode (child)")
	)
	flag.Parse()
	if *child {
		if err := runChild(*url, *mode, *n, *perConn, *rotations); err != nil {
			fmt.Fprintln(os.Stderr, "fanoutbench child:", err)
			os.Exit(1)
		}
		return
	}
	cfg := config{perConn: *perConn, rotations: *rotations, interval: *interval}
	for _, s := range strings.Split(*sizes, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || v <= 0 {
			fmt.Fprintf(os.Stderr, "fanoutbench: -n: %q is not a positive count\n", s)
			os.Exit(2)
		}
		cfg.sizes = append(cfg.sizes, v)
	}
	for _, m := range strings.Split(*modes, ",") {
		if _, err := parseMode(strings.TrimSpace(m)); err != nil {
			fmt.Fprintln(os.Stderr, "fanoutbench:", err)
			os.Exit(2)
		}
		cfg.modes = append(cfg.modes, strings.TrimSpace(m))
	}
	if cfg.perConn <= 0 || cfg.rotations <= 0 || cfg.interval <= 0 {
		fmt.Fprintln(os.Stderr, "fanoutbench: -per-conn, -rotations and -interval must be positive")
		os.Exit(2)
	}
	if err := run(cfg, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "fanoutbench:", err)
		os.Exit(1)
	}
}

type config struct {
	sizes     []int
	modes     []string
	perConn   int
	rotations int
	interval  time.Duration
}

func parseMode(s string) (tokenclient.FollowMode, error) {
	switch s {
	case "updates":
		return tokenclient.FollowUpdates, nil
	case "kv-watch":
		return tokenclient.FollowKVWatch, nil
	}
	return 0, fmt.Errorf("unknown mode %q (updates, kv-watch)", s)
}

// result is one run's figures.
type result struct {
	mode      string
	n, conns  int
	perClient []time.Duration // every delivery
	last      []time.Duration // per rotation: the last client's
	missed    int
	consumers int
	heapBase  uint64
	heap      uint64
	rss       uint64
	setup     time.Duration
}

func run(cfg config, w io.Writer) error {
	var results []result
	for _, n := range cfg.sizes {
		for _, m := range cfg.modes {
			fmt.Fprintf(os.Stderr, "fanoutbench: %d clients, %s ...\n", n, m)
			r, err := runOne(cfg, m, n)
			if err != nil {
				return fmt.Errorf("%d clients, %s: %w", n, m, err)
			}
			results = append(results, r)
		}
	}
	fmt.Fprintf(w, "%d rotations %v apart, %d clients per connection, GOMAXPROCS %d, %s/%s\n\n",
		cfg.rotations, cfg.interval, cfg.perConn, runtime.GOMAXPROCS(0), runtime.GOOS, runtime.GOARCH)
	fmt.Fprintln(w, "| clients | mode | conns | write→client p50 | p99 | write→last client p50 | p99 | max | missed | JetStream consumers | server heap (Δ) | server RSS | clients ready in |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range results {
		fmt.Fprintf(w, "| %d | %s | %d | %s | %s | %s | %s | %s | %d | %d | %s (+%s) | %s | %s |\n",
			r.n, r.mode, r.conns, ms(pct(r.perClient, 50)), ms(pct(r.perClient, 99)),
			ms(pct(r.last, 50)), ms(pct(r.last, 99)), ms(pct(r.last, 100)), r.missed, r.consumers,
			mib(r.heap), mib(r.heap-min(r.heap, r.heapBase)), mib(r.rss), r.setup.Round(10*time.Millisecond))
	}
	return nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }
func mib(b uint64) string       { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// pct returns the p-th percentile of ds (nearest rank; 100 is the maximum).
func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[min(max(i-1, 0), len(s)-1)]
}

// source answers token.get with the last token written and its revision.
type source struct{ cur atomic.Pointer[entry] }

type entry struct {
	body []byte
	rev  uint64
}

var _ rpc.Revisioned = (*source)(nil)

func (s *source) Get(ctx context.Context) ([]byte, error) {
	b, _, err := s.GetRevision(ctx)
	return b, err
}

func (s *source) GetRevision(context.Context) ([]byte, uint64, error) {
	e := s.cur.Load()
	if e == nil {
		return nil, 0, errors.New("fanoutbench: no token yet")
	}
	return e.body, e.rev, nil
}

func (s *source) Refresh(ctx context.Context, _ string) ([]byte, error) { return s.Get(ctx) }

func runOne(cfg config, mode string, n int) (result, error) {
	r := result{mode: mode, n: n, conns: (n + cfg.perConn - 1) / cfg.perConn}
	dir, err := os.MkdirTemp("", "fanoutbench-")
	if err != nil {
		return r, err
	}
	defer os.RemoveAll(dir)
	ns, err := server.NewServer(&server.Options{
		ServerName: "fanoutbench", Host: "127.0.0.1", Port: server.RANDOM_PORT,
		JetStream: true, StoreDir: dir, NoLog: true, NoSigs: true, MaxPayload: 1 << 20,
	})
	if err != nil {
		return r, err
	}
	ns.Start()
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	if !ns.ReadyForConnections(10 * time.Second) {
		return r, errors.New("nats-server not ready")
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		return r, err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	store, err := natsx.OpenStore(ctx, nc, wire.DefaultBucket, 1, nil)
	if err != nil {
		return r, err
	}
	src := &source{}
	svc, err := rpc.Start(nc, rpc.Config{Sources: map[string]rpc.Source{provider: src}})
	if err != nil {
		return r, err
	}
	defer func() { _ = svc.Stop() }()
	write := func(i int) error {
		now := time.Now()
		tok := wire.Token{Provider: provider, AccessToken: fmt.Sprintf("rot-%d", i), TokenType: "Bearer",
			IssuedAt: now, ExpiresAt: now.Add(time.Hour)}
		rev, err := store.Publish(ctx, tok)
		if err != nil {
			return err
		}
		b, err := json.Marshal(tok)
		if err != nil {
			return err
		}
		src.cur.Store(&entry{body: b, rev: rev})
		return nil
	}
	if err := write(0); err != nil {
		return r, err
	}
	r.heapBase = heapInUse()

	exe, err := os.Executable()
	if err != nil {
		return r, err
	}
	// The child stops by itself; this bounds it if it does not.
	cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Minute+time.Duration(cfg.rotations)*cfg.interval)
	defer ccancel()
	cmd := exec.CommandContext(cctx, exe, "-child", "-url", ns.ClientURL(), "-mode", mode,
		"-clients", strconv.Itoa(n), "-per-conn", strconv.Itoa(cfg.perConn), "-rotations", strconv.Itoa(cfg.rotations))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return r, err
	}
	defer stdin.Close()
	out, err := cmd.StdoutPipe()
	if err != nil {
		return r, err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return r, err
	}
	defer func() { _ = cmd.Wait() }()
	lines := bufio.NewScanner(out)
	lines.Buffer(nil, 64<<20)
	if !lines.Scan() || lines.Text() != "ready" {
		return r, fmt.Errorf("child did not get ready (%q)", lines.Text())
	}
	r.setup = time.Since(start)

	js, err := jetstream.New(nc)
	if err != nil {
		return r, err
	}
	stream, err := js.Stream(ctx, "KV_"+wire.DefaultBucket)
	if err != nil {
		return r, err
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return r, err
	}
	r.consumers = info.State.Consumers

	tick := time.NewTicker(cfg.interval)
	for i := 1; i <= cfg.rotations; i++ {
		<-tick.C
		if err := write(i); err != nil {
			tick.Stop()
			return r, err
		}
	}
	tick.Stop()
	r.heap, r.rss = heapInUse(), rss()
	stopTimer := time.AfterFunc(3*time.Second, func() { _, _ = io.WriteString(stdin, "stop\n") })
	defer stopTimer.Stop()

	if !lines.Scan() {
		return r, fmt.Errorf("child gave no result: %v", lines.Err())
	}
	var res childResult
	if err := json.Unmarshal(lines.Bytes(), &res); err != nil {
		return r, fmt.Errorf("child result: %w", err)
	}
	for _, rot := range res.Rotations {
		var last time.Duration
		for _, ns := range rot {
			d := time.Duration(ns)
			r.perClient = append(r.perClient, d)
			last = max(last, d)
		}
		r.missed += n - len(rot)
		if len(rot) > 0 {
			r.last = append(r.last, last)
		}
	}
	return r, nil
}

func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// rss reads this process's resident set size from /proc (0 elsewhere).
func rss() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// childResult is what the child prints: for each rotation, the propagation
// (ns) to every client that got it.
type childResult struct {
	Rotations [][]int64 `json:"rotations"`
}

func runChild(url, modeName string, n, perConn, rotations int) error {
	mode, err := parseMode(modeName)
	if err != nil {
		return err
	}
	var (
		mu    sync.Mutex
		lat   = make([][]int64, rotations)
		done  = make(chan struct{})
		total atomic.Int64
	)
	record := func(ev tokenclient.Event) {
		now := time.Now()
		i, err := strconv.Atoi(strings.TrimPrefix(ev.Token.AccessToken, "rot-"))
		if err != nil || i < 1 || i > rotations {
			return // the token current at start
		}
		mu.Lock()
		lat[i-1] = append(lat[i-1], now.Sub(ev.Token.IssuedAt).Nanoseconds())
		mu.Unlock()
		if total.Add(1) == int64(n*rotations) {
			close(done)
		}
	}
	var (
		conns   []*nats.Conn
		clients []*tokenclient.Client
	)
	defer func() {
		for _, c := range clients {
			_ = c.Close()
		}
		for _, nc := range conns {
			nc.Close()
		}
	}()
	for i := 0; i < n; i += perConn {
		nc, err := nats.Connect(url, nats.Name(fmt.Sprintf("fanoutbench-%d", i/perConn)), nats.MaxReconnects(-1))
		if err != nil {
			return err
		}
		conns = append(conns, nc)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var (
		wg     sync.WaitGroup
		errsMu sync.Mutex
		errs   []error
	)
	clients = make([]*tokenclient.Client, n)
	sem := make(chan struct{}, 32)
	for i := range n {
		tc, err := tokenclient.New(conns[i/perConn], tokenclient.WithFollowMode(mode), tokenclient.WithProviders(provider),
			tokenclient.WithOnUpdate(record), tokenclient.WithTimeout(30*time.Second))
		if err != nil {
			return err
		}
		clients[i] = tc
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := tc.WaitReady(ctx); err != nil {
				errsMu.Lock()
				errs = append(errs, err)
				errsMu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		return fmt.Errorf("%d clients not ready: %w", len(errs), errs[0])
	}
	// The parent writes "stop" on stdin a while after its last write:
	// whatever has not arrived by then is missed.
	stop := make(chan struct{})
	go func() {
		_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
		close(stop)
	}()
	fmt.Println("ready")
	select {
	case <-done:
	case <-stop:
	case <-ctx.Done():
	}
	mu.Lock()
	b, err := json.Marshal(childResult{Rotations: lat})
	mu.Unlock()
	if err != nil {
		return err
	}
	fmt.Println(string(b))
	return nil
}
