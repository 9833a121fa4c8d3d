package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokenbus/tokenbus/libs/simulator"
	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/httpapi"
)

// TakeoverResult is a --takeover run's figures.
type TakeoverResult struct {
	Providers       int     `json:"providers"`
	Source          string  `json:"source"`
	LeaseTTLSeconds float64 `json:"lease_ttl_seconds"`
	// Replicas is the buckets' replicas (3: a three-node cluster).
	Replicas     int     `json:"replicas"`
	PutSeconds   float64 `json:"put_seconds,omitempty"`
	PutPerSecond float64 `json:"puts_per_second,omitempty"`
	// ReadySeconds: from the first put (or the start) until both replicas
	// hold every token.
	ReadySeconds float64 `json:"ready_seconds"`
	// PutInFlightMean and FillInFlightMean are the simulator's token
	// requests in flight, mean while the puts ran and after (of
	// fetch_concurrency).
	PutInFlightMean  float64 `json:"put_in_flight_mean,omitempty"`
	FillInFlightMean float64 `json:"fill_in_flight_mean"`
	// LeaderRSSMiB and StandbyRSSMiB are the replicas' RSS once ready.
	LeaderRSSMiB  float64           `json:"leader_rss_mib"`
	StandbyRSSMiB float64           `json:"standby_rss_mib"`
	Kill          *TakeoverFigures  `json:"sigkill"`
	Term          *TakeoverFigures  `json:"sigterm"`
	LoadAvg       string            `json:"loadavg_at_end"`
	Notes         map[string]string `json:"notes,omitempty"`
}

// TakeoverFigures is one leader change.
type TakeoverFigures struct {
	// LeadSeconds: from the signal until the standby reports that it leads.
	LeadSeconds float64 `json:"lead_seconds"`
	// ServeSeconds: until it leads and reports every provider ok (a valid
	// token in its copy, served by token.get).
	ServeSeconds float64 `json:"serve_seconds"`
	// TokenRequests the simulator received from the signal until
	// SettleSeconds after the new leader led: 0 when no token still valid
	// was fetched again.
	TokenRequests int64   `json:"token_requests_after_signal"`
	SettleSeconds float64 `json:"settle_seconds"`
	// Gets and GetFailures count token.get requests (2 callers, random
	// providers) from the signal to the end of the settle window, and
	// those that failed; GetP99MS is their p99.
	Gets        int     `json:"token_gets"`
	GetFailures int     `json:"token_get_failures"`
	GetP99MS    float64 `json:"token_get_p99_ms"`
	// NewLeaderRSSMiB is the new leader's RSS after the settle window.
	NewLeaderRSSMiB float64 `json:"new_leader_rss_mib"`
	// ExitCode is the stopped replica's exit status (-1: killed).
	ExitCode int `json:"stopped_exit_code"`
}

// replica is one refresher process of a --takeover run.
type replica struct {
	name, bin, cfg string
	httpPort       int
	pprofPort      int // serves /debug/pprof/ when not 0 (--pprof)
	log            io.Writer
	cmd            *exec.Cmd
	done           chan struct{}
}

func (r *replica) start() error {
	args := []string{"--config", r.cfg}
	if r.pprofPort != 0 {
		args = append(args, "--debug-pprof", fmt.Sprintf("127.0.0.1:%d", r.pprofPort))
	}
	r.cmd = exec.Command(r.bin, args...)
	r.cmd.Stdout, r.cmd.Stderr = io.Discard, r.log
	if err := r.cmd.Start(); err != nil {
		return fmt.Errorf("start replica %s: %w", r.name, err)
	}
	r.done = make(chan struct{})
	go func() { _ = r.cmd.Wait(); close(r.done) }()
	return nil
}

// stop ends the process if it runs (SIGTERM, then SIGKILL after 30 s).
func (r *replica) stop() {
	if r.cmd == nil {
		return
	}
	select {
	case <-r.done:
		return
	default:
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
	case <-time.After(30 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.done
	}
}

// status reads the replica's /status.json (its summary and leadership).
func (r *replica) status(ctx context.Context) (wire.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/status.json?limit=1", r.httpPort), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return wire.Status{}, err
	}
	defer resp.Body.Close()
	var sj httpapi.StatusJSON
	if err := json.NewDecoder(resp.Body).Decode(&sj); err != nil {
		return wire.Status{}, err
	}
	return sj.Status, nil
}

// await polls the replica's status every 20 ms until ok says so.
func (r *replica) await(ctx context.Context, what string, ok func(wire.Status) bool) error {
	for {
		if st, err := r.status(ctx); err == nil && ok(st) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("replica %s: %s: %w", r.name, what, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// benchTakeover runs a --takeover measurement.
func benchTakeover(ctx context.Context, o options, log io.Writer) (*TakeoverResult, error) {
	dir, err := os.MkdirTemp("", "scalebench-takeover-")
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
	nsBin, err := binary(ctx, o.natsServer, dir, "nats-server", "github.com/nats-io/nats-server/v2", log)
	if err != nil {
		return nil, err
	}

	sim, simURL, stopSim, err := startSimulator(o.latency)
	if err != nil {
		return nil, err
	}
	defer stopSim()

	url, stopNATS, err := startNATS(ctx, nsBin, dir, o.replicas, log)
	if err != nil {
		return nil, err
	}
	defer stopNATS()
	var nc *nats.Conn
	for {
		if nc, err = nats.Connect(url, nats.Timeout(time.Second)); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("nats-server did not start: %w", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	defer nc.Close()

	key := newKey()
	extra := fmt.Sprintf("lease: {ttl: %s}\n", o.leaseTTL)
	reps := make([]*replica, 2)
	for i, name := range []string{"a", "b"} {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		r := &replica{name: name, bin: bin, cfg: filepath.Join(dir, name+".yaml"), httpPort: port, log: log}
		if o.pprofDir != "" && name == "a" {
			if r.pprofPort, err = freePort(); err != nil {
				return nil, err
			}
		}
		if err := writeConfig(r.cfg, o, fmt.Sprintf("{url: %q, replicas: %d}", url, o.replicas), port, key, extra, simURL); err != nil {
			return nil, err
		}
		reps[i] = r
		defer r.stop()
	}
	a, b := reps[0], reps[1]
	// a leads: it starts first and b waits for that.
	start := time.Now()
	if err := a.start(); err != nil {
		return nil, err
	}
	if err := a.await(ctx, "leading", func(st wire.Status) bool { return st.Leader }); err != nil {
		return nil, err
	}
	if err := b.start(); err != nil {
		return nil, err
	}
	if err := b.await(ctx, "started", func(st wire.Status) bool { return st.Summary != nil }); err != nil {
		return nil, err
	}
	res := &TakeoverResult{Providers: o.providers, Source: o.source, LeaseTTLSeconds: o.leaseTTL.Seconds(), Replicas: o.replicas}
	if o.pprofDir != "" {
		// The leader's CPU over the fill: a leads (it started first).
		if err := os.MkdirAll(o.pprofDir, 0o755); err != nil {
			return nil, err
		}
		var profile sync.WaitGroup
		defer profile.Wait()
		profile.Go(func() {
			url := fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/profile?seconds=%d", a.pprofPort, int(o.cpuProfile.Seconds()))
			if err := fetch(ctx, url, filepath.Join(o.pprofDir, fmt.Sprintf("cpu-fill-r%d-%d.pprof", o.replicas, o.providers)), o.cpuProfile+30*time.Second); err != nil {
				fmt.Fprintln(log, "cpu profile:", err)
			}
		})
	}
	fillCtx, endFill := context.WithCancel(ctx)
	defer endFill()
	var putsDone atomic.Bool
	putsDone.Store(o.source == "config")
	inFlight := inFlightMeans(fillCtx, func() int64 { n, _ := sim.InFlight(); return n }, &putsDone)
	if o.source == "api" {
		start = time.Now()
		body := func(i int) json.RawMessage { return putBody(i, simURL) }
		var put atomic.Int64
		if err := putBatches(ctx, nc, o.providers, o.putBatch, body, &put); err != nil {
			return nil, err
		}
		putsDone.Store(true)
		res.PutSeconds = time.Since(start).Seconds()
		res.PutPerSecond = float64(o.providers) / res.PutSeconds
		fmt.Fprintf(log, "%d providers put in %.1fs (%.0f/s)\n", o.providers, res.PutSeconds, res.PutPerSecond)
	}
	allOK := func(st wire.Status) bool { return st.Summary != nil && st.Summary.States[wire.StateOK] >= o.providers }
	for _, r := range reps {
		if err := r.await(ctx, "every token ready", allOK); err != nil {
			return nil, err
		}
	}
	res.ReadySeconds = time.Since(start).Seconds()
	endFill()
	means := <-inFlight
	res.PutInFlightMean, res.FillInFlightMean = means[0], means[1]
	leader, standby, err := roles(ctx, a, b)
	if err != nil {
		return nil, err
	}
	res.LeaderRSSMiB, _ = procMem(leader.cmd.Process.Pid)
	res.StandbyRSSMiB, _ = procMem(standby.cmd.Process.Pid)
	fmt.Fprintf(log, "ready in %.1fs; RSS leader (%s) %.0f MiB, standby (%s) %.0f MiB\n", res.ReadySeconds, leader.name, res.LeaderRSSMiB, standby.name, res.StandbyRSSMiB)

	settle := max(o.leaseTTL, 5*time.Second)
	if res.Kill, err = takeover(ctx, nc, sim, leader, standby, syscall.SIGKILL, settle, o.providers, allOK, log); err != nil {
		return nil, err
	}
	// The killed replica comes back as a standby, holding every token,
	// before the new leader stops.
	if err := leader.start(); err != nil {
		return nil, err
	}
	if err := leader.await(ctx, "every token in its copy", allOK); err != nil {
		return nil, err
	}
	if leader, standby, err = roles(ctx, a, b); err != nil {
		return nil, err
	}
	if res.Term, err = takeover(ctx, nc, sim, leader, standby, syscall.SIGTERM, settle, o.providers, allOK, log); err != nil {
		return nil, err
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		res.LoadAvg = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	return res, nil
}

// roles returns which of a and b leads now (the lease may have moved since
// a first led, on a loaded machine) and which stands by.
func roles(ctx context.Context, a, b *replica) (leader, standby *replica, err error) {
	for {
		sa, ea := a.status(ctx)
		sb, eb := b.status(ctx)
		switch {
		case ea == nil && eb == nil && sa.Leader && !sb.Leader:
			return a, b, nil
		case ea == nil && eb == nil && sb.Leader && !sa.Leader:
			return b, a, nil
		}
		select {
		case <-ctx.Done():
			return nil, nil, errors.New("no single leader among the two replicas")
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// takeover stops the leader with sig and measures how the standby takes
// over (TakeoverFigures).
func takeover(ctx context.Context, nc *nats.Conn, sim *simulator.Server, leader, standby *replica, sig syscall.Signal, settle time.Duration, providers int, allOK func(wire.Status) bool, log io.Writer) (*TakeoverFigures, error) {
	f := &TakeoverFigures{SettleSeconds: settle.Seconds()}
	before := sim.Stats(simulator.Daraja).TokenRequests
	getCtx, endGets := context.WithCancel(ctx)
	defer endGets()
	type got struct {
		lat  []time.Duration
		fail int
	}
	gotc := make(chan got, 2)
	for range 2 {
		go func() {
			var g got
			for getCtx.Err() == nil {
				t := time.Now()
				msg, err := nc.Request(wire.GetSubject(merchant(mrand.IntN(providers))), nil, 5*time.Second)
				if err != nil || msg.Header.Get(wire.HeaderErrorCode) != "" {
					g.fail++
				} else {
					g.lat = append(g.lat, time.Since(t))
				}
				time.Sleep(5 * time.Millisecond)
			}
			gotc <- g
		}()
	}
	t0 := time.Now()
	if err := leader.cmd.Process.Signal(sig); err != nil {
		return nil, err
	}
	if err := standby.await(ctx, "leading", func(st wire.Status) bool { return st.Leader }); err != nil {
		return nil, err
	}
	f.LeadSeconds = time.Since(t0).Seconds()
	if err := standby.await(ctx, "serving every provider", allOK); err != nil {
		return nil, err
	}
	f.ServeSeconds = time.Since(t0).Seconds()
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(time.Until(t0.Add(time.Duration(f.LeadSeconds*float64(time.Second)) + settle))):
	}
	f.TokenRequests = sim.Stats(simulator.Daraja).TokenRequests - before
	endGets()
	var lat []time.Duration
	for range 2 {
		g := <-gotc
		lat = append(lat, g.lat...)
		f.GetFailures += g.fail
	}
	f.Gets, f.GetP99MS = len(lat)+f.GetFailures, percentile(lat, 0.99)
	f.NewLeaderRSSMiB, _ = procMem(standby.cmd.Process.Pid)
	select {
	case <-leader.done:
	case <-time.After(30 * time.Second):
		return nil, errors.New("the stopped leader did not exit within 30 s")
	}
	f.ExitCode = leader.cmd.ProcessState.ExitCode()
	fmt.Fprintf(log, "%s: the standby led after %.2fs and served every provider after %.2fs; %d token requests after the signal; %d of %d token.get failed\n",
		sig, f.LeadSeconds, f.ServeSeconds, f.TokenRequests, f.GetFailures, f.Gets)
	return f, nil
}

// startNATS starts the NATS servers of a --takeover run, each its own
// process on loopback with JetStream: one with the server's defaults, or
// (replicas 3) a three-node cluster that syncs every write to disk as the
// configurations in deploy/ do. It returns the client URL(s) and a stop.
func startNATS(ctx context.Context, bin, dir string, replicas int, log io.Writer) (string, func(), error) {
	nodes := 1
	if replicas > 1 {
		nodes = 3
	}
	ports := make([]int, 2*nodes)
	for i := range ports {
		p, err := freePort()
		if err != nil {
			return "", nil, err
		}
		ports[i] = p
	}
	var procs []*exec.Cmd
	stop := func() {
		for _, p := range procs {
			_ = p.Process.Signal(syscall.SIGTERM)
			_ = p.Wait()
		}
	}
	var urls, routes []string
	for i := range nodes {
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", ports[i]))
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", ports[nodes+i]))
	}
	for i := range nodes {
		args := []string{"-a", "127.0.0.1", "-p", fmt.Sprint(ports[i]), "-js", "-sd", filepath.Join(dir, fmt.Sprint("nats", i)), "-l", filepath.Join(dir, fmt.Sprintf("nats-server-%d.log", i))}
		if nodes > 1 {
			conf := filepath.Join(dir, fmt.Sprintf("n%d.conf", i))
			body := fmt.Sprintf("server_name: n%d\njetstream { store_dir: %q, sync_interval: always }\ncluster { name: scalebench, listen: 127.0.0.1:%d, routes: [%s] }\n",
				i, filepath.Join(dir, fmt.Sprint("nats", i)), ports[nodes+i], strings.Join(routes, ", "))
			if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
				stop()
				return "", nil, err
			}
			args = []string{"-c", conf, "-a", "127.0.0.1", "-p", fmt.Sprint(ports[i]), "-l", filepath.Join(dir, fmt.Sprintf("nats-server-%d.log", i))}
		}
		ns := exec.CommandContext(ctx, bin, args...)
		ns.Stdout, ns.Stderr = io.Discard, log
		if err := ns.Start(); err != nil {
			stop()
			return "", nil, fmt.Errorf("start nats-server: %w", err)
		}
		procs = append(procs, ns)
	}
	return strings.Join(urls, ","), stop, nil
}
