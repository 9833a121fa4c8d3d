package clustertest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenbus/tokenbus/libs/simulator"
	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
)

// partitionFor is how long TestPartition keeps the leader's node cut off
// from the other two.
const partitionFor = 15 * time.Second

// link is a TCP proxy in front of one node's cluster port for the route
// connections another node dials: the test cuts it (closing every
// connection through it and refusing new ones) and restores it.
type link struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	cut    bool
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

func startLink(t *testing.T, target string) *link {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &link{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	l.wg.Go(l.accept)
	t.Cleanup(func() {
		_ = ln.Close()
		l.setCut(true)
		l.wg.Wait()
	})
	return l
}

func (l *link) addr() string { return l.ln.Addr().String() }

func (l *link) accept() {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		l.mu.Lock()
		if l.cut {
			l.mu.Unlock()
			_ = c.Close()
			continue
		}
		l.mu.Unlock()
		up, err := net.DialTimeout("tcp", l.target, time.Second)
		if err != nil {
			_ = c.Close()
			continue
		}
		l.mu.Lock()
		if l.cut {
			l.mu.Unlock()
			_ = c.Close()
			_ = up.Close()
			continue
		}
		l.conns[c], l.conns[up] = struct{}{}, struct{}{}
		l.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			_, _ = io.Copy(dst, src)
			_ = dst.Close()
			_ = src.Close()
			l.mu.Lock()
			delete(l.conns, dst)
			delete(l.conns, src)
			l.mu.Unlock()
		}
		l.wg.Go(func() { pipe(up, c) })
		l.wg.Go(func() { pipe(c, up) })
	}
}

// setCut cuts the link (closing what passes through it) or restores it.
func (l *link) setCut(cut bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cut = cut
	if cut {
		for c := range l.conns {
			_ = c.Close()
		}
	}
}

// partitionable is a three-node cluster whose route connections all pass
// through links: links[i][j] carries the routes node i dials to node j.
type partitionable struct {
	nodes []*node
	links [3][3]*link
}

// url is node i's client URL.
func (p *partitionable) url(i int) string { return fmt.Sprintf("nats://127.0.0.1:%d", p.nodes[i].port) }

// isolate cuts (or restores) every route between node k and the others.
func (p *partitionable) isolate(k int, cut bool) {
	for j := range 3 {
		if j != k {
			p.links[k][j].setCut(cut)
			p.links[j][k].setCut(cut)
		}
	}
}

// startPartitionable starts three nodes whose routes go through links. Each
// node advertises an address nobody listens on, so that a node never learns
// (by gossip) another's real cluster port and routes around the links; and
// no client URLs, so that every client stays on the node it was given.
func startPartitionable(t *testing.T) *partitionable {
	t.Helper()
	ports := freePorts(t, 7)
	dead := ports[6] // nobody listens there
	dir := t.TempDir()
	p := &partitionable{}
	for i := range 3 {
		for j := range 3 {
			if i != j {
				p.links[i][j] = startLink(t, fmt.Sprintf("127.0.0.1:%d", ports[3+j]))
			}
		}
	}
	for i := range 3 {
		var routes []string
		for j := range 3 {
			if j != i {
				routes = append(routes, "nats-route://"+p.links[i][j].addr())
			}
		}
		conf := filepath.Join(dir, fmt.Sprintf("n%d.conf", i))
		body := fmt.Sprintf(`server_name: n%d
listen: 127.0.0.1:%d
ping_interval: "1s"
ping_max: 2
jetstream { store_dir: %q, sync_interval: always }
cluster { name: tokenbus, listen: 127.0.0.1:%d, advertise: "127.0.0.1:%d", no_advertise: true, routes: [%s] }
`, i, ports[i], filepath.Join(dir, fmt.Sprint("n", i)), ports[3+i], dead, strings.Join(routes, ", "))
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		p.nodes = append(p.nodes, &node{proc: startProc(t, fmt.Sprint("nats-n", i), bin.natsServer, "-c", conf), port: ports[i]})
	}
	return p
}

// sideLoad asks for tokens through one node, one attempt of 1 s a request,
// and records each request's time and outcome.
type sideLoad struct {
	mu   sync.Mutex
	reqs []request
	stop chan struct{}
	done chan struct{}
}

type request struct {
	provider string
	at       time.Time
	ok       bool
	expired  bool
	why      string
}

func startSideLoad(t *testing.T, url string, providers []string) *sideLoad {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	l := &sideLoad{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		defer nc.Close()
		for i := 0; ; i++ {
			select {
			case <-l.stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			r := request{provider: providers[i%len(providers)], at: time.Now()}
			msg, err := nc.Request(wire.GetSubject(r.provider), nil, time.Second)
			var tok wire.Token
			switch {
			case err != nil:
				r.why = err.Error()
			case msg.Header.Get(wire.HeaderErrorCode) != "":
				r.why = msg.Header.Get(wire.HeaderErrorCode) + " " + msg.Header.Get(wire.HeaderError)
			case json.Unmarshal(msg.Data, &tok) != nil:
				r.why = "malformed reply"
			default:
				r.ok, r.expired = true, tok.Expired(time.Now())
			}
			l.mu.Lock()
			l.reqs = append(l.reqs, r)
			l.mu.Unlock()
		}
	}()
	return l
}

func (l *sideLoad) finish() []request { close(l.stop); <-l.done; return l.reqs }

// published is a token as stored in the bucket's stream.
type publishedToken struct {
	provider string
	stored   time.Time // the server's timestamp
	tok      wire.Token
}

// recordTokens follows every token stored in the tokens bucket's stream.
func recordTokens(t *testing.T, js jetstream.JetStream) func() []publishedToken {
	t.Helper()
	var (
		mu  sync.Mutex
		out []publishedToken
	)
	cons, err := js.OrderedConsumer(context.Background(), "KV_tokens", jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		var tok wire.Token
		md, err := m.Metadata()
		if err != nil || json.Unmarshal(m.Data(), &tok) != nil || tok.AccessToken == "" {
			return
		}
		mu.Lock()
		out = append(out, publishedToken{provider: tok.Provider, stored: md.Timestamp, tok: tok})
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cc.Stop)
	return func() []publishedToken {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(out)
	}
}

// validPublished reports whether, at time at, the bucket held a token of
// provider that a replica may serve (stored before at, not within the
// serving margin of its expiry).
func validPublished(ps []publishedToken, provider string, at time.Time) bool {
	for _, p := range ps {
		if p.provider != provider || !p.stored.Before(at) {
			continue
		}
		margin := min(time.Second, p.tok.ExpiresAt.Sub(p.tok.IssuedAt)/10)
		if at.Before(p.tok.ExpiresAt.Add(-margin)) {
			return true
		}
	}
	return false
}

// metric reads one counter's total from a replica's /metrics (summing
// every label set); -1 if it is not exported.
func metric(addr, name string) float64 {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	total, found := 0.0, false
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+" ") && !strings.HasPrefix(line, name+"{") {
			continue
		}
		f := strings.Fields(line)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
			total += v
			found = true
		}
	}
	if !found {
		return -1
	}
	return total
}

// probe writes to an R3 bucket through one node every 50 ms, recording
// when writes succeed.
type probe struct {
	mu   sync.Mutex
	oks  []time.Time
	stop chan struct{}
	done chan struct{}
}

func startProbe(t *testing.T, url string) *probe {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	var kv jetstream.KeyValue
	testutil.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() (err error) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		kv, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "probe", Replicas: 3, Storage: jetstream.FileStorage})
		return err
	})
	p := &probe{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		defer nc.Close()
		for {
			select {
			case <-p.stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			_, err := kv.Put(ctx, "k", []byte("v"))
			cancel()
			if err == nil {
				p.mu.Lock()
				p.oks = append(p.oks, time.Now())
				p.mu.Unlock()
			}
		}
	}()
	return p
}

// firstAfter returns the first successful write after t.
func (p *probe) firstAfter(t time.Time) time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, ok := range p.oks {
		if ok.After(t) {
			return ok
		}
	}
	return time.Time{}
}

func (p *probe) finish() { close(p.stop); <-p.done }

// leaders samples the leader of a stream, as seen through one node, every
// 100 ms.
type leaders struct {
	mu      sync.Mutex
	samples []sample
	stop    chan struct{}
	done    chan struct{}
}

type sample struct {
	at     time.Time
	leader string // "" while the stream has none (or JetStream did not answer)
}

func startLeaders(t *testing.T, js jetstream.JetStream, stream string) *leaders {
	t.Helper()
	l := &leaders{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for {
			select {
			case <-l.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			sm := sample{at: time.Now()}
			if s, err := js.Stream(ctx, stream); err == nil && s.CachedInfo().Cluster != nil {
				sm.leader = s.CachedInfo().Cluster.Leader
			}
			cancel()
			l.mu.Lock()
			l.samples = append(l.samples, sm)
			l.mu.Unlock()
		}
	}()
	return l
}

func (l *leaders) finish() []sample { close(l.stop); <-l.done; return l.samples }

// firstLed returns the first sample in [from, to) with a leader other than
// not ("" none).
func firstLed(ss []sample, from, to time.Time, not string) time.Time {
	for _, s := range ss {
		if !s.at.Before(from) && s.at.Before(to) && s.leader != "" && s.leader != not {
			return s.at
		}
	}
	return time.Time{}
}

// leaderless returns how long, in total, the samples in [from, to) saw no
// leader.
func leaderless(ss []sample, from, to time.Time) time.Duration {
	var d time.Duration
	for i, s := range ss {
		if s.at.Before(from) || !s.at.Before(to) || s.leader != "" || i+1 >= len(ss) {
			continue
		}
		d += ss[i+1].at.Sub(s.at)
	}
	return d
}

// TestPartition cuts the lease holder's NATS node off from the other two
// (its route connections closed through the links, not the process killed)
// for partitionFor, under token.get load on both sides, then heals it:
//
//   - on the majority side, token.get answers a token whenever a published
//     one is valid (≥ 99 % of requests);
//   - the cut-off leader makes no provider call after its lease (its
//     renew_deadline after the cut), until it holds the lease again;
//   - the majority side leads again once JetStream can commit there;
//   - after the heal one replica leads and calls, without flapping;
//   - tokens lost with a lease (issued to the cut-off leader, never
//     published) are counted: tokenbus_tokens_discarded_total.
func TestPartition(t *testing.T) {
	if testing.Short() {
		t.Skip("runs real processes for ~60 s")
	}
	// 6 s tokens refreshed 2 s ahead: the majority's new leader rotates
	// them during the cut, so the standbys must serve tokens published
	// while their watches may lag.
	const life = 6 * time.Second
	sim := simulator.New(simulator.Config{DarajaTTL: life})
	addDarajaApps(sim)
	simSrv := httptest.NewServer(sim)
	defer simSrv.Close()
	names, providers := darajaProviders(simSrv.URL, "2s")

	cl := startPartitionable(t)
	var ncs []*nats.Conn
	for i := range 3 {
		nc, _ := connectCluster(t, cl.url(i))
		ncs = append(ncs, nc)
	}
	httpPorts := freePorts(t, 3)
	var reps []*replica
	for i := range 3 {
		reps = append(reps, startReplicaHTTP(t, i, cl.url(i), providers, httpPorts[i]))
	}
	httpAddr := func(r *replica) string {
		return fmt.Sprintf("127.0.0.1:%d", httpPorts[slices.Index(reps, r)])
	}
	testutil.CheckFor(t, 60*time.Second, 100*time.Millisecond, func() error {
		st := statuses(ncs[0])
		for _, r := range reps {
			s := st[r.instance]
			if len(s.Providers) != darajaApps {
				return fmt.Errorf("replica %s not up yet", r.instance)
			}
			for _, p := range s.Providers {
				if p.State != wire.StateOK {
					return fmt.Errorf("replica %s not serving %s yet: %+v", r.instance, p.Name, p)
				}
			}
		}
		_, err := leaderOf(ncs[0], reps)
		return err
	})
	first, _ := leaderOf(ncs[0], reps)
	k := slices.Index(reps, first) // the leader's node: the one cut off
	maj := (k + 1) % 3             // a node on the majority side
	_, majJS := connectCluster(t, cl.url(maj))
	tokens := recordTokens(t, majJS)
	leaseLeaders := startLeaders(t, majJS, "KV_tokens-lease")
	tokenLeaders := startLeaders(t, majJS, "KV_tokens")
	majProbe := startProbe(t, cl.url(maj))
	minProbe := startProbe(t, cl.url(k))
	time.Sleep(500 * time.Millisecond) // the recorders catch up
	recording := time.Now()
	discardedBefore := metric(httpAddr(first), "tokenbus_tokens_discarded_total")

	majLoad := startSideLoad(t, cl.url(maj), names)
	minLoad := startSideLoad(t, cl.url(k), names)
	time.Sleep(2 * time.Second)

	cut := time.Now()
	t.Logf("%s cut node n%d (leader %s) off", cut.Format("15:04:05.000"), k, first.instance)
	cl.isolate(k, true)
	time.Sleep(partitionFor)
	healed := time.Now()
	t.Logf("%s heal", healed.Format("15:04:05.000"))
	cl.isolate(k, false)

	// After the heal: one leader, reached by every replica's status.
	var final *replica
	testutil.CheckFor(t, 20*time.Second, 100*time.Millisecond, func() (err error) {
		final, err = leaderOf(ncs[maj], reps)
		if err == nil && len(statuses(ncs[maj])) != 3 {
			err = errors.New("not every replica answers yet")
		}
		return err
	})
	settled := time.Now()
	// Watch the healed cluster for a while: tokens rotate, nobody else leads.
	time.Sleep(8 * time.Second)
	end := time.Now()
	majReqs, minReqs := majLoad.finish(), minLoad.finish()
	majProbe.finish()
	minProbe.finish()
	leaseSamples, tokenSamples := leaseLeaders.finish(), tokenLeaders.finish()
	time.Sleep(time.Second) // the recorders catch up
	toks := tokens()

	// Who held the lease when, from each replica's log (the lease bucket
	// keeps one revision, and a recorder following it may miss the
	// acquiring write while its stream elects a leader).
	terms := leaseTerms(t, reps)
	var hs []string
	for _, tm := range terms {
		hs = append(hs, fmt.Sprintf("%s %+.1fs..%+.1fs", tm.holder, tm.from.Sub(cut).Seconds(), tm.to.Sub(cut).Seconds()))
	}
	t.Logf("lease terms (seconds from the cut): %v", hs)
	type change struct {
		at     time.Time
		holder string
	}
	var holders []change
	for _, tm := range terms {
		holders = append(holders, change{tm.from, tm.holder})
	}
	// The majority leads again once JetStream commits there.
	var takeover time.Time
	for _, c := range holders {
		if c.at.After(cut) && c.holder != first.instance {
			takeover = c.at
			break
		}
	}
	cutNode := fmt.Sprint("n", k)
	commits := firstLed(leaseSamples, cut.Add(100*time.Millisecond), healed, cutNode)
	t.Logf("majority: the lease stream has a leader %.1fs after the cut, the tokens stream %.1fs; an R3 write commits %.1fs after the cut (probe)",
		commits.Sub(cut).Seconds(), firstLed(tokenSamples, cut.Add(100*time.Millisecond), healed, cutNode).Sub(cut).Seconds(),
		majProbe.firstAfter(cut.Add(100*time.Millisecond)).Sub(cut).Seconds())
	if takeover.IsZero() || takeover.After(healed) {
		t.Errorf("no majority-side replica took the lease during the %v partition", partitionFor)
	} else {
		t.Logf("majority: lease taken over %.1fs after the cut (lease.ttl %v)", takeover.Sub(cut).Seconds(), leaseTTL)
		// A standby takes over one ttl after it last saw the lease change
		// (about the cut), once the lease stream can commit.
		from := cut.Add(leaseTTL)
		if commits.After(from) {
			from = commits
		}
		if limit := from.Add(time.Second); takeover.After(limit) {
			t.Errorf("takeover %.1fs after the cut; the lease stream had a leader from %.1fs: want within 1 s of max(ttl, that)",
				takeover.Sub(cut).Seconds(), commits.Sub(cut).Seconds())
		}
	}
	t.Logf("after the heal: the lease stream had no leader for %.1fs, the tokens stream for %.1fs (sampled every 100 ms)",
		leaderless(leaseSamples, healed, end).Seconds(), leaderless(tokenSamples, healed, end).Seconds())
	if rejoin := minProbe.firstAfter(healed); !rejoin.IsZero() {
		t.Logf("cut-off node: JetStream commits through it again %.1fs after the heal", rejoin.Sub(healed).Seconds())
	}

	// The cut-off leader: no provider call after its lease, until (if
	// ever) it holds the lease again.
	renewDeadline := leaseTTL * 2 / 3
	var rewon time.Time
	for _, c := range holders {
		if c.holder == first.instance && c.at.After(cut) {
			rewon = c.at
			break
		}
	}
	var lastCall time.Time
	for _, e := range sim.Log() {
		if !strings.Contains(e.UserAgent, first.instance) || e.Time.Before(cut) {
			continue
		}
		if rewon.IsZero() || e.Time.Before(rewon) {
			lastCall = e.Time
			if e.Time.After(cut.Add(renewDeadline)) {
				t.Errorf("the cut-off leader called the provider at %+.2fs, after its lease (renew_deadline %v)", e.Time.Sub(cut).Seconds(), renewDeadline)
			}
		}
	}
	if !lastCall.IsZero() {
		t.Logf("cut-off leader: last provider call %.2fs after the cut", lastCall.Sub(cut).Seconds())
	} else {
		t.Logf("cut-off leader: no provider call after the cut")
	}

	// Every provider call, throughout, by the holder of the moment; after
	// the heal, by one replica only, and the lease does not move.
	holderAt := func(at time.Time) string {
		for _, tm := range terms {
			if !at.Before(tm.from) && at.Before(tm.to) {
				return tm.holder
			}
		}
		return ""
	}
	callersAfter := map[string]int{}
	for _, e := range sim.Log() {
		if e.Time.Before(cut) {
			continue
		}
		caller := ""
		for _, r := range reps {
			if strings.Contains(e.UserAgent, r.instance) {
				caller = r.instance
			}
		}
		if e.Time.Before(cut.Add(renewDeadline)) && caller == first.instance {
			continue // the cut-off leader within its lease (checked above)
		}
		if h := holderAt(e.Time); h != caller {
			t.Errorf("provider call at %+.2fs by %q while the lease holder was %q", e.Time.Sub(cut).Seconds(), caller, h)
		}
		if e.Time.After(healed) {
			callersAfter[caller]++
		}
	}
	if len(callersAfter) > 1 {
		t.Errorf("after the heal %d replicas called the provider: %v", len(callersAfter), callersAfter)
	}
	// A new term of the same holder after the heal is the holder resuming
	// a lease that lapsed while the healed cluster re-elected its stream
	// leaders; a change of holder is a move.
	var moves, resumes []string
	for i, c := range holders {
		if i == 0 || !c.at.After(healed) {
			continue
		}
		if c.holder != holders[i-1].holder {
			moves = append(moves, fmt.Sprintf("%+.1fs %s", c.at.Sub(healed).Seconds(), c.holder))
		} else {
			resumes = append(resumes, fmt.Sprintf("%+.1fs (lapsed %+.1fs)", c.at.Sub(healed).Seconds(), terms[i-1].to.Sub(healed).Seconds()))
		}
	}
	if len(moves) > 0 {
		t.Errorf("the lease moved after the heal (seconds from the heal): %v", moves)
	}
	if len(resumes) > 0 {
		t.Logf("after the heal the holder resumed its lapsed lease (seconds from the heal): %v", resumes)
	}
	t.Logf("after the heal: one leader (%s) reported by all %.1fs after the heal; provider calls %v", final.instance, settled.Sub(healed).Seconds(), callersAfter)

	// token.get on the majority side: a token whenever a published one is
	// valid.
	var due, served, failedDue, expired, plainOK, plainFail int
	var reasons []string
	for _, r := range majReqs {
		if r.expired {
			expired++
		}
		if r.ok {
			plainOK++
		} else {
			plainFail++
		}
		if r.at.Before(cut) || r.at.After(healed) || !validPublished(toks, r.provider, r.at) {
			continue
		}
		due++
		if r.ok {
			served++
		} else {
			failedDue++
			if len(reasons) < 10 {
				reasons = append(reasons, fmt.Sprintf("%+.2fs %s", r.at.Sub(cut).Seconds(), r.why))
			}
		}
	}
	rate := float64(served) / float64(max(due, 1))
	t.Logf("majority token.get during the cut: %d of %d requests with a valid published token answered (%.2f%%); overall %d ok, %d failed; first failures: %v",
		served, due, 100*rate, plainOK, plainFail, reasons)
	if due < 100 || rate < 0.99 {
		t.Errorf("majority side: %.2f%% of %d requests served while a published token was valid, want ≥ 99%%", 100*rate, due)
	}
	if expired != 0 {
		t.Errorf("%d expired tokens served on the majority side", expired)
	}
	var minOK, minFail, minCut, minCutOK int
	for _, r := range minReqs {
		if r.ok {
			minOK++
		} else {
			minFail++
		}
		if r.at.After(cut) && r.at.Before(healed) {
			minCut++
			if r.ok {
				minCutOK++
			}
		}
	}
	t.Logf("cut-off side token.get: %d of %d answered during the cut (from the cut-off replica's memory); overall %d ok, %d failed",
		minCutOK, minCut, minOK, minFail)

	// Tokens lost with a lease: issued to the cut-off leader and never
	// published (its node could not commit, and then its lease went).
	published := map[string]time.Time{}
	for _, p := range toks {
		published[p.tok.AccessToken] = p.stored
	}
	// A publish that committed as the cut came may have lost its reply: its
	// writer cannot tell it from one that did not commit, and counts it
	// (docs/leadership.md). Such a token is published, but may be counted.
	lost, unsure := 0, 0
	for _, e := range sim.Log() {
		if e.Token == "" || !e.Time.After(recording) || !strings.Contains(e.UserAgent, first.instance) {
			continue
		}
		if stored, ok := published[e.Token]; !ok {
			lost++
		} else if stored.After(cut.Add(-time.Second)) {
			unsure++
		}
	}
	discarded := metric(httpAddr(first), "tokenbus_tokens_discarded_total")
	t.Logf("tokens the cut-off leader fetched and never published: %d (and %d published from a second before the cut, whose reply may have been lost); tokenbus_tokens_discarded_total on it: %v → %v",
		lost, unsure, discardedBefore, discarded)
	// A counter is exported from its first increment: absent is zero.
	if got := max(discarded, 0) - max(discardedBefore, 0); got < float64(lost) || got > float64(lost+unsure) {
		t.Errorf("tokenbus_tokens_discarded_total on the cut-off leader grew by %v, but it lost %d tokens with its lease (and %d more may have lost their publish's reply)", got, lost, unsure)
	}

	var calls, pubs []string
	for _, e := range sim.Log() {
		if e.Time.After(cut.Add(-time.Second)) {
			calls = append(calls, fmt.Sprintf("%+.1fs %s", e.Time.Sub(cut).Seconds(), e.UserAgent[strings.LastIndex(e.UserAgent, "-")+1:]))
		}
	}
	for _, p := range toks {
		if p.stored.After(cut.Add(-time.Second)) {
			pubs = append(pubs, fmt.Sprintf("%+.1fs %s", p.stored.Sub(cut).Seconds(), p.provider))
		}
	}
	if t.Failed() {
		t.Logf("provider calls (from the cut): %v", calls)
		t.Logf("tokens published (from the cut): %v", pubs)
	}
}

// startReplicaHTTP is startReplica with /metrics on a known port.
func startReplicaHTTP(t *testing.T, i int, urls, providers string, httpPort int) *replica {
	t.Helper()
	conf := filepath.Join(t.TempDir(), "refresher.yaml")
	body := fmt.Sprintf(`nats: {url: %q, replicas: 3}
lease: {ttl: %s, retry_period: 200ms}
http: {listen: "127.0.0.1:%d"}
log: {level: debug}
providers:
%s`, urls, leaseTTL, httpPort, providers)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startProc(t, fmt.Sprint("refresher-", i), bin.refresher, "--config", conf)
	host, _ := os.Hostname()
	return &replica{proc: p, instance: host + "-" + strconv.Itoa(p.pid())}
}

// term is one replica's hold of the lease, from its own log: from "lease
// acquired" to "lease lost" or "lease released" (or now).
type term struct {
	holder   string
	from, to time.Time
}

// leaseTerms reads every replica's log for its terms, in order.
func leaseTerms(t *testing.T, reps []*replica) []term {
	t.Helper()
	var out []term
	for _, r := range reps {
		var cur *term
		for _, line := range strings.Split(r.out.String(), "\n") {
			if !strings.HasPrefix(line, "time=") {
				continue
			}
			at, err := time.Parse(time.RFC3339Nano, strings.Fields(line)[0][len("time="):])
			if err != nil {
				continue
			}
			switch {
			case strings.Contains(line, `msg="lease acquired`):
				cur = &term{holder: r.instance, from: at, to: time.Now()}
			case cur != nil && (strings.Contains(line, `msg="lease lost`) || strings.Contains(line, `msg="lease released`)):
				cur.to = at
				out = append(out, *cur)
				cur = nil
			}
		}
		if cur != nil {
			out = append(out, *cur)
		}
	}
	slices.SortFunc(out, func(a, b term) int { return a.from.Compare(b.from) })
	return out
}
