package sim

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/leader"
	"github.com/tokenbus/tokenbus/services/refresher/pool"
	"github.com/tokenbus/tokenbus/services/refresher/refresh"
)

// The mPay part of the simulation: three replicas run the real leader,
// gate, pool.Pool and pool.Filler code against a simulated work-queue
// stream (one stream per bucket, a subject and a durable consumer per
// provider, per-message TTLs, AckWait redelivery, the fence record with
// expected-last-subject-sequence checks, R3's 10164, lost replies and acks,
// slow commits, partitioned replicas) and a simulated mPay whose tokens are
// single-use. Claimers on every replica claim all along; the schedule
// SIGTERMs and restarts replicas, cuts them off, and rotates a provider's
// credentials (every replica applies the put as cmd/refresher does).
const (
	poolProviders = 2
	poolSize      = 3
	mpayLife      = 20 * time.Second // a quarter (5 s) is the pool's margin
	poolChaos     = 30 * time.Second
)

// Invariants of the pool simulation.
const (
	invHandedTwice  = "no-single-use-token-handed-out-twice"
	invReplacedCred = "no-replaced-credential-token-handed-out" // after a replica applied a rotation
	invPoolLease    = "no-mint-without-lease"                   // as no-call-without-lease
	invPoolOneCall  = "one-mint-per-credential"                 // the gate's one call per credential
	invPoolServed   = "pool-serves-after-faults"                // with faults stopped, claims are served
)

var poolSeeds = flag.Int("pool-seeds", 200, "how many seeds TestPoolSimulation runs (20 with -race; -seeds, if given, counts)")

func TestPoolSimulation(t *testing.T) {
	from, n := *first, uint64(*poolSeeds)
	if raceEnabled {
		n = min(n, 20)
	}
	if *seeds != 0 { // a soak of both simulations
		n = uint64(*seeds)
	}
	if *only != 0 {
		from, n = *only, 1
	}
	for seed := from; seed < from+n; seed++ {
		t.Run(fmt.Sprint("seed-", seed), func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				ps := newPoolSim(seed)
				ps.run()
				for _, v := range ps.w.violations {
					t.Errorf("seed %d: %s", seed, v)
				}
				if len(ps.w.violations) > 0 {
					t.Logf("replay: go test ./services/refresher/sim -run TestPoolSimulation -seed %d -v\nschedule:\n%s", seed, strings.Join(ps.w.trace, "\n"))
				} else if *only != 0 {
					t.Logf("schedule:\n%s", strings.Join(ps.w.trace, "\n"))
				}
			})
		})
	}
}

// poolSim is one simulated deployment of mPay pools under one seed.
type poolSim struct {
	w      *world
	stream *bucket // the pool stream: token subjects and fence records
	mu     sync.Mutex
	queues map[string]*poolQueue
	creds  map[string]*mpayCred
	reps   []*poolReplica
	handed map[string]string // token -> replica that handed it out
}

// poolReplica is one refresher process serving the pools.
type poolReplica struct {
	*replica
	pools   map[string]*pool.Pool
	applied map[string]uint64 // the credential generation applied, per provider
}

// mpayCred is one mPay provider's credentials over time: gen counts the
// rotations; each token records the generation it was minted with.
type mpayCred struct {
	name     string
	gen      uint64
	n        int
	minted   map[string]uint64 // token -> generation
	inFlight []string
}

func newPoolSim(seed uint64) *poolSim {
	w := newWorld(seed)
	ps := &poolSim{w: w, stream: newBucket(w, "pool"), queues: map[string]*poolQueue{}, creds: map[string]*mpayCred{}, handed: map[string]string{}}
	for i := range poolProviders {
		name := fmt.Sprint("mpay-", i)
		ps.creds[name] = &mpayCred{name: name, gen: 1, minted: map[string]uint64{}}
		ps.queues[name] = &poolQueue{ps: ps, name: name}
	}
	return ps
}

// mpayCaller is one credential generation as one replica calls it.
type mpayCaller struct {
	ps  *poolSim
	c   *mpayCred
	r   *poolReplica
	gen uint64
}

func (p mpayCaller) Token(ctx context.Context) (refresher.Token, error) {
	w, c, r := p.ps.w, p.c, p.r
	w.mu.Lock()
	if len(c.inFlight) > 0 {
		w.violateLocked(invPoolOneCall, "%s called by %s while %v had a call in flight", c.name, r.name, c.inFlight)
	}
	for _, o := range w.reps {
		if o != r.replica && o.l.Valid() {
			w.violateLocked(invPoolLease, "%s called by %s while %s holds a valid lease", c.name, r.name, o.name)
		}
	}
	c.inFlight = append(c.inFlight, r.name)
	latency := 20*time.Millisecond + time.Duration(w.source("mpay", c.name).Int64N(int64(400*time.Millisecond)))
	w.mu.Unlock()
	leave := func() {
		for i, n := range c.inFlight {
			if n == r.name {
				c.inFlight = append(c.inFlight[:i], c.inFlight[i+1:]...)
				break
			}
		}
	}
	select {
	case <-time.After(latency):
	case <-ctx.Done():
		w.mu.Lock()
		leave()
		w.mu.Unlock()
		return refresher.Token{}, ctx.Err()
	}
	w.mu.Lock()
	leave()
	c.n++
	tok := fmt.Sprintf("%s-g%d-%d", c.name, p.gen, c.n)
	c.minted[tok] = p.gen
	w.mu.Unlock()
	now := time.Now()
	return refresher.Token{AccessToken: refresher.Secret(tok), TokenType: "Bearer", IssuedAt: now, ExpiresAt: now.Add(mpayLife)}, nil
}

// poolQueue is one provider's subject of the simulated pool stream and its
// durable consumer. Tokens are the stream's committed messages on the
// provider's key (ingested in commit order); the fence record is key
// "_fence-<provider>".
type poolQueue struct {
	ps   *poolSim
	name string

	mu        sync.Mutex
	next      int // the stream log index ingested up to
	msgs      []*poolMsg
	waiting   int
	listeners []*poolListener
}

type poolMsg struct {
	seq          uint64
	body         []byte
	gen          uint64
	expires      time.Time
	pendingUntil time.Time
	delivered    uint64
	removed      bool
}

type poolListener struct {
	fn func(answer func([]byte))
}

func (q *poolQueue) fenceKey() string { return "_fence-" + q.name }

// ingest takes the stream's newly committed tokens (q.mu held).
func (q *poolQueue) ingest() {
	b := q.ps.stream
	b.mu.Lock()
	defer b.mu.Unlock()
	for ; q.next < len(b.log); q.next++ {
		r := b.log[q.next]
		if r.key != q.name {
			continue
		}
		gen, _ := strconv.ParseUint(r.hdr.Get(pool.HeaderGeneration), 10, 64)
		ttl, _ := time.ParseDuration(r.hdr.Get("Sim-TTL"))
		q.msgs = append(q.msgs, &poolMsg{seq: r.seq, body: r.data, gen: gen, expires: r.at.Add(ttl)})
	}
}

// view is the queue as replica r reaches it (a pool.Queue).
func (q *poolQueue) view(r *poolReplica) *poolView { return &poolView{q: q, r: r} }

type poolView struct {
	q *poolQueue
	r *poolReplica
}

// fenced commits a message checked against the fence record at seq,
// retrying R3's 10164 as the JetStream implementation does.
func (v *poolView) fenced(ctx context.Context, key string, data []byte, hdr nats.Header, seq uint64) (uint64, error) {
	fk := v.q.fenceKey()
	for try := 0; ; try++ {
		n, err := v.q.ps.stream.commit(ctx, v.r.replica, proposal{key: key, data: data, op: jetstream.KeyValuePut, hdr: hdr, expect: fk, check: func(b *bucket) error {
			if b.last[fk].seq != seq {
				return &jetstream.APIError{Code: 400, ErrorCode: jetstream.JSErrCodeStreamWrongLastSequence, Description: "wrong last sequence"}
			}
			return nil
		}})
		var apiErr *jetstream.APIError
		switch {
		case err == nil:
			return n, nil
		case errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant && try < 5:
			select {
			case <-ctx.Done():
				return 0, ctx.Err()
			case <-time.After(time.Duration(try+1) * 10 * time.Millisecond):
			}
		case errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence:
			return 0, fmt.Errorf("%w: %w", pool.ErrFenced, err)
		default:
			return 0, err
		}
	}
}

func (v *poolView) Publish(ctx context.Context, m pool.Minted) error {
	hdr := nats.Header{}
	hdr.Set(pool.HeaderGeneration, strconv.FormatUint(m.Generation, 10))
	hdr.Set("Sim-TTL", m.TTL.String())
	_, err := v.fenced(ctx, v.q.name, m.Body, hdr, m.Fence)
	return err
}

func (v *poolView) Fetch(ctx context.Context, wait time.Duration) (pool.Delivery, error) {
	q := v.q
	deadline := time.Now().Add(wait)
	q.mu.Lock()
	defer q.mu.Unlock()
	for {
		q.ingest()
		now := time.Now()
		for _, m := range q.msgs {
			if m.removed || now.Before(m.pendingUntil) {
				continue
			}
			if !now.Before(m.expires) {
				m.removed = true // the server drops it by its TTL
				continue
			}
			m.delivered++
			m.pendingUntil = now.Add(pool.AckWait)
			return &poolDelivery{v: v, m: m, n: m.delivered}, nil
		}
		if wait <= 0 || !now.Before(deadline) || ctx.Err() != nil {
			return nil, nil
		}
		q.waiting++
		q.mu.Unlock()
		select {
		case <-time.After(min(20*time.Millisecond, time.Until(deadline))):
		case <-ctx.Done():
		}
		q.mu.Lock()
		q.waiting--
	}
}

func (v *poolView) Purge(ctx context.Context) error {
	q := v.q
	q.mu.Lock()
	defer q.mu.Unlock()
	q.ingest()
	now := time.Now()
	for _, m := range q.msgs {
		if !now.Before(m.pendingUntil) {
			m.removed = true
		}
	}
	return nil
}

func (v *poolView) Counts(context.Context) (int, int, error) {
	q := v.q
	q.mu.Lock()
	defer q.mu.Unlock()
	q.ingest()
	now := time.Now()
	ready := 0
	for _, m := range q.msgs {
		if !m.removed && !now.Before(m.pendingUntil) && now.Before(m.expires) {
			ready++
		}
	}
	return ready, q.waiting, nil
}

func (v *poolView) LastFence(context.Context) (pool.Fence, uint64, error) {
	r, ok := v.q.ps.stream.get(v.q.fenceKey())
	if !ok {
		return pool.Fence{}, 0, nil
	}
	var f pool.Fence
	_ = json.Unmarshal(r.data, &f)
	return f, r.seq, nil
}

func (v *poolView) WriteFence(ctx context.Context, f pool.Fence, after uint64) (uint64, error) {
	b, _ := json.Marshal(f)
	return v.fenced(ctx, v.q.fenceKey(), b, nats.Header{}, after)
}

// poolDelivery is one delivered token.
type poolDelivery struct {
	v *poolView
	m *poolMsg
	n uint64
}

func (d *poolDelivery) Data() []byte       { return d.m.body }
func (d *poolDelivery) Generation() uint64 { return d.m.gen }
func (d *poolDelivery) Delivered() uint64  { return d.n }
func (d *poolDelivery) Drop()              { d.remove() }

func (d *poolDelivery) remove() {
	d.v.q.mu.Lock()
	d.m.removed = true
	d.v.q.mu.Unlock()
}

// Ack is confirmed, lost after it took effect, or (cut off) never made.
func (d *poolDelivery) Ack(ctx context.Context) error {
	trip, slow, lose, cut := d.v.q.ps.w.writeFaults(d.v.r.replica, "pool-ack", d.v.q.name)
	if cut {
		<-ctx.Done()
		return errTimeout
	}
	time.Sleep(trip + slow)
	d.remove()
	if lose || ctx.Err() != nil {
		return errTimeout
	}
	return nil
}

// poolSignals is the demand subject of one provider: a queue group of the
// fillers listening.
type poolSignals struct{ q *poolQueue }

func (s poolSignals) listener() *poolListener {
	s.q.mu.Lock()
	defer s.q.mu.Unlock()
	if len(s.q.listeners) == 0 {
		return nil
	}
	return s.q.listeners[0]
}

func (s poolSignals) Ask(ctx context.Context) ([]byte, error) {
	l := s.listener()
	if l == nil {
		return nil, pool.ErrNoFiller
	}
	got := make(chan []byte, 1)
	l.fn(func(b []byte) { got <- b })
	select {
	case b := <-got:
		return b, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (s poolSignals) Claimed() {
	if l := s.listener(); l != nil {
		l.fn(nil)
	}
}

func (s poolSignals) Listen(fn func(answer func([]byte))) (func(), error) {
	l := &poolListener{fn: fn}
	s.q.mu.Lock()
	s.q.listeners = append(s.q.listeners, l)
	s.q.mu.Unlock()
	return func() {
		s.q.mu.Lock()
		defer s.q.mu.Unlock()
		for i, o := range s.q.listeners {
			if o == l {
				s.q.listeners = append(s.q.listeners[:i], s.q.listeners[i+1:]...)
				return
			}
		}
	}, nil
}

// startReplica starts a refresher process serving every pool.
func (ps *poolSim) startReplica(slot int) *poolReplica {
	w := ps.w
	w.mu.Lock()
	w.generation++
	r := &poolReplica{replica: &replica{w: w, name: fmt.Sprintf("r%d.%d", slot, w.generation), mgrs: map[string]*refresh.Manager{}, done: make(chan struct{})},
		pools: map[string]*pool.Pool{}, applied: map[string]uint64{}}
	rate := 1 + maxDrift*(2*w.rng.Float64()-1)
	w.mu.Unlock()
	l, err := leader.New(leader.Config{
		Lease: leader.LeaseConfig{KV: leaseKV{b: w.lease, from: r.replica}, Holder: r.name, TTL: ttl, RenewDeadline: renewDeadline, RetryPeriod: retryPeriod,
			DrainTimeout: 2 * time.Second, Clock: driftClock{origin: time.Now(), rate: rate}},
		JetStream: simJS{b: w.tokens, from: r.replica}, Tokens: tokensKV{b: w.tokens, from: r.replica}, Batches: simJS{b: w.tokens, from: r.replica},
		FetchConcurrency: 2,
	})
	if err != nil {
		panic(err)
	}
	r.l = l
	ps.mu.Lock()
	for name, c := range ps.creds {
		w.mu.Lock()
		gen := c.gen
		w.mu.Unlock()
		p, f := ps.build(r, name, gen, nil)
		r.pools[name], r.applied[name] = p, gen
		l.Set(name, f)
	}
	ps.mu.Unlock()
	runCtx, stopRun := context.WithCancel(context.Background())
	go func() {
		defer close(r.done)
		_ = l.Run(runCtx)
	}()
	r.cancel = stopRun
	w.logf("start %s (clock rate %.3f)", r.name, rate)
	return r
}

// build makes provider name's pool (the successor of prev, if any) and
// filler on r, minting with generation gen.
func (ps *poolSim) build(r *poolReplica, name string, gen uint64, prev *pool.Pool) (*pool.Pool, *pool.Filler) {
	q := ps.queues[name]
	cfg := pool.Config{Name: name, Kind: "mpay", Size: poolSize, Generation: gen, Logger: ps.logger(r)}
	var (
		p   *pool.Pool
		err error
	)
	if prev != nil {
		p, err = prev.Successor(cfg)
	} else {
		p, err = pool.New(cfg, q.view(r), poolSignals{q: q})
	}
	if err != nil {
		panic(err)
	}
	gate := r.l.Gate()
	f := pool.NewFiller(p, pool.FillerConfig{
		Provider: mpayCaller{ps: ps, c: ps.creds[name], r: r, gen: gen},
		Backoff:  refresher.Backoff{Initial: 200 * time.Millisecond, Max: 2 * time.Second},
		Gate: func(ctx context.Context) (pool.Call, error) {
			c, err := gate.Enter(ctx, name)
			if err != nil {
				return nil, err
			}
			return c, nil
		},
		Discarded: func(reason string) { ps.w.discard(r.replica, reason) },
		Logger:    ps.logger(r),
	})
	return p, f
}

// logger writes r's pool and filler warnings into the schedule's trace.
func (ps *poolSim) logger(r *poolReplica) *slog.Logger {
	return slog.New(traceHandler{w: ps.w, name: r.name})
}

// traceHandler is a slog.Handler appending records at Warn and above to
// the world's trace.
type traceHandler struct {
	w     *world
	name  string
	attrs []slog.Attr
}

func (h traceHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }

func (h traceHandler) Handle(_ context.Context, rec slog.Record) error {
	var b strings.Builder
	for _, a := range h.attrs {
		fmt.Fprintf(&b, " %s", a)
	}
	rec.Attrs(func(a slog.Attr) bool { fmt.Fprintf(&b, " %s", a); return true })
	h.w.logf("%s: %s%s", h.name, rec.Message, b.String())
	return nil
}

func (h traceHandler) WithAttrs(as []slog.Attr) slog.Handler {
	h.attrs = append(append([]slog.Attr(nil), h.attrs...), as...)
	return h
}

func (h traceHandler) WithGroup(string) slog.Handler { return h }

// claim claims one token of name on r and checks it.
func (ps *poolSim) claim(r *poolReplica, name string) bool {
	w := ps.w
	ps.mu.Lock()
	p, gen := r.pools[name], r.applied[name]
	ps.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), pool.DefaultWait)
	defer cancel()
	b, err := p.Get(ctx)
	if err != nil {
		return false
	}
	var tok wire.Token
	_ = json.Unmarshal(b, &tok)
	w.mu.Lock()
	defer w.mu.Unlock()
	minted, ok := ps.creds[name].minted[tok.AccessToken]
	switch {
	case !ok:
		w.violateLocked(invHandedTwice, "%s handed out %q, which mPay never minted", r.name, tok.AccessToken)
	case ps.handed[tok.AccessToken] != "":
		w.violateLocked(invHandedTwice, "%s handed out %s, already handed out by %s", r.name, tok.AccessToken, ps.handed[tok.AccessToken])
	case minted < gen:
		w.violateLocked(invReplacedCred, "%s handed out %s (generation %d) in a claim that began after it applied generation %d", r.name, tok.AccessToken, minted, gen)
	}
	ps.handed[tok.AccessToken] = r.name
	return true
}

// claimers claim on every replica until ctx ends.
func (ps *poolSim) claimers(ctx context.Context, wg *sync.WaitGroup) {
	for slot := range replicas {
		for name := range ps.creds {
			rng := rand.New(rand.NewPCG(ps.w.seed, uint64(slot)*1000+uint64(len(name))+uint64(name[len(name)-1])))
			wg.Go(func() {
				for ctx.Err() == nil {
					time.Sleep(time.Duration(50+rng.IntN(700)) * time.Millisecond)
					ps.mu.Lock()
					r := ps.reps[slot]
					ps.mu.Unlock()
					ps.claim(r, name)
				}
			})
		}
	}
}

// rotate puts provider name again with new credentials: each replica
// applies it as cmd/refresher's applyCredential does (the successor pool
// given the new generation before it is served, then the filler replaced).
func (ps *poolSim) rotate(name string) {
	w := ps.w
	w.mu.Lock()
	c := ps.creds[name]
	c.gen++
	gen := c.gen
	w.mu.Unlock()
	w.logf("rotate %s to generation %d", name, gen)
	ps.mu.Lock()
	reps := append([]*poolReplica(nil), ps.reps...)
	ps.mu.Unlock()
	for _, r := range reps {
		ps.mu.Lock()
		prev := r.pools[name]
		ps.mu.Unlock()
		p, f := ps.build(r, name, gen, prev)
		p.SetGeneration(gen)
		ps.mu.Lock()
		r.pools[name], r.applied[name] = p, gen
		ps.mu.Unlock()
		r.l.Set(name, f)
	}
}

func (ps *poolSim) run() {
	w := ps.w
	for i := range replicas {
		r := ps.startReplica(i)
		ps.mu.Lock()
		ps.reps = append(ps.reps, r)
		ps.mu.Unlock()
		w.mu.Lock()
		w.reps = append(w.reps, r.replica)
		w.mu.Unlock()
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	ps.claimers(ctx, &wg)
	finished := make(chan struct{})
	defer close(finished)
	go func() { // liveness: a stop or a rotation that never ends
		select {
		case <-finished:
		case <-time.After(poolChaos + 2*time.Minute):
			panic("stuck:\n" + strings.Join(w.trace, "\n"))
		}
	}()
	end := time.Now().Add(poolChaos)
	for time.Now().Before(end) {
		time.Sleep(time.Duration(200+w.rng.IntN(2000)) * time.Millisecond)
		w.check()
		ps.event()
	}
	w.mu.Lock()
	w.faults.slow, w.faults.lost = 0, 0
	for _, r := range w.reps {
		r.cut = false
	}
	w.mu.Unlock()
	w.logf("faults stop")
	cancel()
	wg.Wait()
	// With faults stopped, a leader comes (within ttl + 1 s) and every
	// pool serves once a publish cut off by the last fault has timed out
	// (5 s).
	time.Sleep(ttl + 7*time.Second)
	for name := range ps.creds {
		ps.mu.Lock()
		r := ps.reps[0]
		ps.mu.Unlock()
		ok := false
		for range 3 {
			if ok = ps.claim(r, name); ok {
				break
			}
		}
		if !ok {
			ld := "none"
			if l := w.leader(); l != nil {
				ld = l.name
			}
			n, waiting, _ := ps.queues[name].view(r).Counts(context.Background())
			f, seq, _ := ps.queues[name].view(r).LastFence(context.Background())
			ps.mu.Lock()
			st := r.pools[name].Status()
			ps.mu.Unlock()
			w.logf("%s: leader %s, ready %d, waiting %d, fence %+v at %d, status %+v", name, ld, n, waiting, f, seq, st)
		}
		if !ok {
			w.violate(invPoolServed, "%s: no claim served after the faults stopped", name)
		}
	}
	ps.mu.Lock()
	reps := append([]*poolReplica(nil), ps.reps...)
	ps.mu.Unlock()
	for _, r := range reps {
		r.stop()
	}
	w.mu.Lock()
	w.trace = append(w.trace, fmt.Sprintf("handed out %d tokens, discarded %v", len(ps.handed), w.discarded))
	w.mu.Unlock()
	time.Sleep(7 * time.Second) // the last partition's and fault's timers end
}

// event draws and plays one event of the schedule.
func (ps *poolSim) event() {
	w := ps.w
	k := w.rng.IntN(replicas)
	switch w.rng.IntN(8) {
	case 0, 1: // SIGTERM a replica, start it again
		ps.mu.Lock()
		r := ps.reps[k]
		ps.mu.Unlock()
		w.logf("SIGTERM %s", r.name)
		r.stop()
		time.Sleep(time.Duration(w.rng.IntN(2000)) * time.Millisecond)
		nr := ps.startReplica(k)
		ps.mu.Lock()
		ps.reps[k] = nr
		ps.mu.Unlock()
		w.mu.Lock()
		w.reps[k] = nr.replica
		w.mu.Unlock()
	case 2: // cut a replica off from the majority for a while
		w.mu.Lock()
		r := w.reps[k]
		d := time.Duration(500+w.rng.IntN(6000)) * time.Millisecond
		r.cut = true
		w.mu.Unlock()
		w.logf("partition %s for %v", r.name, d)
		go func() {
			time.Sleep(d)
			w.mu.Lock()
			r.cut = false
			w.mu.Unlock()
		}()
	case 3: // slow commits for a while
		d := time.Duration(1000+w.rng.IntN(5000)) * time.Millisecond
		w.logf("slow commits for %v", d)
		w.mu.Lock()
		w.faults.slow, w.faults.slowMax = 0.3, time.Duration(10+w.rng.IntN(1500))*time.Millisecond
		w.mu.Unlock()
		go func() {
			time.Sleep(d)
			w.mu.Lock()
			w.faults.slow = 0
			w.mu.Unlock()
		}()
	case 4: // replies and acks lost after they took effect, for a while
		d := time.Duration(1000+w.rng.IntN(5000)) * time.Millisecond
		w.logf("lost replies for %v", d)
		w.mu.Lock()
		w.faults.lost = 0.2
		w.mu.Unlock()
		go func() {
			time.Sleep(d)
			w.mu.Lock()
			w.faults.lost = 0
			w.mu.Unlock()
		}()
	case 5, 6: // a runtime put rotates a provider's credentials
		ps.rotate(fmt.Sprint("mpay-", w.rng.IntN(poolProviders)))
	default:
	}
}
