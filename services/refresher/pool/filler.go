package pool

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/metrics"
)

// FillerConfig configures a Filler.
type FillerConfig struct {
	// Provider mints one single-use token per call.
	Provider refresher.Provider
	// Backoff bounds retries after failures, as for refresh.Manager.
	Backoff refresher.Backoff
	// Concurrency bounds the token requests in flight at once; 4 if zero.
	Concurrency int
	// Poll is the longest the filler waits between counts of the pool when
	// nothing else wakes it; it also counts the pool as soon as the first
	// token it minted expires (so tokens dropped by their TTL are replaced
	// then). 10 s if zero: one consumer-info request per provider per poll,
	// not per second.
	Poll time.Duration
	// Logger receives refills and failures.
	Logger *slog.Logger
	// Tracer records a span per refill; the global provider if nil.
	Tracer trace.Tracer
	// Recorder is told about every upstream token request (metrics, the
	// status page's history); nil records nothing.
	Recorder refresher.Recorder
	// Gate, if set, admits every provider call (the leader's gate for this
	// provider's credential) and refuses, with an error wrapping
	// refresher.ErrNotAllowed, while this replica does not hold the lease
	// with time left. The call and the publish of its token run under the
	// Call's context: a stopped filler finishes them. nil calls at once.
	Gate func(ctx context.Context) (Call, error)
	// Discarded, if set, is told about each token the provider issued that
	// was not put in the pool, with the reason (metrics.DiscardReasons).
	Discarded func(reason string)
}

// Call is one provider call admitted by the gate (leader.Call).
type Call interface {
	// Context is what the call and the publish of its token run under.
	Context() context.Context
	// Called frees the call's concurrency slot once the provider answered.
	Called()
	// Done ends the call: its token is published, or given up.
	Done()
	// Term is the lease term the call was admitted under: the filler's
	// publishes are fenced on it.
	Term() uint64
	// Held reports whether that lease is still held with its deadline
	// ahead: a token that could not be published while it is was not lost
	// to a lost lease.
	Held() bool
}

// Filler keeps one provider's pool full. Only the leader runs it: it is the
// one part of the pool that calls the provider. Create it with NewFiller and
// run it with Run.
type Filler struct {
	pool *Pool
	cfg  FillerConfig
	log  *slog.Logger
	tr   trace.Tracer
	kick chan struct{}

	// expMu guards expires: when each token this filler published leaves
	// the pool by its TTL (sorted; pruned as they pass).
	expMu   sync.Mutex
	expires []time.Time

	// fmu guards the fence this filler wrote (fenceSeq 0: none yet):
	// writing it holds fmu, publishes under it share fmu. On a replicated
	// stream (serial), publishes also take turn, one at a time: the server
	// refuses a fenced publish while another naming the same fence record
	// commits.
	fmu       sync.RWMutex
	fenceTerm uint64
	fenceSeq  uint64
	fenceAt   time.Time
	serial    bool
	turn      chan struct{}

	// listenRetry is how long the filler waits before listening for
	// claimers again after a failure (tests shorten it).
	listenRetry time.Duration
}

// NewFiller returns a filler for p that mints with cfg.Provider.
func NewFiller(p *Pool, cfg FillerConfig) *Filler {
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 4
	}
	if cfg.Poll <= 0 {
		cfg.Poll = 10 * time.Second
	}
	f := &Filler{pool: p, cfg: cfg, log: cfg.Logger, tr: cfg.Tracer, kick: make(chan struct{}, 1), turn: make(chan struct{}, 1), serial: !p.parallel, listenRetry: time.Second}
	if f.log == nil {
		f.log = slog.New(slog.DiscardHandler)
	}
	f.log = f.log.With(slog.String("provider", p.cfg.Name))
	if f.tr == nil {
		f.tr = otel.Tracer("github.com/tokenbus/tokenbus/services/refresher/pool")
	}
	return f
}

// Run fills the pool at once, then keeps it at its size until ctx ends: it
// refills after claims (claimers tell it), when the first token it
// published leaves the pool by its TTL, at most Poll apart otherwise, and,
// with backoff, after failures. It answers claimers that find the pool
// empty. A failure to listen for claimers does not stop it: it fills
// meanwhile and listens again after a second. It returns nil when ctx is
// cancelled.
func (f *Filler) Run(ctx context.Context) error {
	// Claimers are answered until Run returns: while a stopped filler
	// finishes its calls in flight, a claimer waits for their tokens.
	lctx, stopListening := context.WithCancel(context.WithoutCancel(ctx))
	listening := make(chan struct{})
	go func() {
		defer close(listening)
		f.listen(lctx)
	}()
	defer func() { stopListening(); <-listening }()

	b := f.cfg.Backoff
	transient := exponential(b.Initial, b.Max, 500*time.Millisecond, 30*time.Second)
	permanent := exponential(b.PermanentInitial, b.PermanentMax, 30*time.Second, 10*time.Minute)
	timer := time.NewTimer(0)
	defer timer.Stop()
	backingOff := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-f.kick:
			if backingOff {
				continue // retries keep their schedule; claimers are told it is failing
			}
			timer.Stop()
		case <-timer.C:
			backingOff = false
		}
		err := f.fill(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			transient.Reset()
			permanent.Reset()
			timer.Reset(f.nextCount())
			continue
		}
		f.pool.failed(err, f.pool.now())
		kind := refresher.Classify(err)
		var wait time.Duration
		if kind == refresher.Permanent {
			wait = permanent.NextBackOff()
			transient.Reset()
		} else {
			wait = transient.NextBackOff()
		}
		var pe *refresher.ProviderError
		if errors.As(err, &pe) && pe.RetryAfter > wait {
			wait = pe.RetryAfter
		}
		f.log.Warn("single-use token pool refill failed", slog.String("kind", kind.String()), slog.String("error", err.Error()), slog.Duration("retry_in", wait))
		backingOff = true
		timer.Reset(wait)
	}
}

// listen answers claimers until ctx ends; a failed subscription is tried
// again every listenRetry, so it never disables the filler for a term.
func (f *Filler) listen(ctx context.Context) {
	for {
		stop, err := f.pool.sig.Listen(f.onDemand)
		if err == nil {
			<-ctx.Done()
			stop()
			return
		}
		f.log.Error("single-use token pool: cannot listen for claimers; retrying", slog.String("error", err.Error()))
		select {
		case <-ctx.Done():
			return
		case <-time.After(f.listenRetry):
		}
	}
}

// nextCount returns how long to wait before counting the pool again: until
// the first token this filler published leaves the pool by its TTL, at most
// Poll. (Claims wake the filler at once: they need no count of their own.)
func (f *Filler) nextCount() time.Duration {
	now := time.Now()
	f.expMu.Lock()
	defer f.expMu.Unlock()
	i := 0
	for i < len(f.expires) && !f.expires[i].Add(expiryGrace).After(now) {
		i++
	}
	f.expires = f.expires[i:]
	wait := f.cfg.Poll
	if len(f.expires) > 0 {
		wait = min(wait, max(f.expires[0].Add(expiryGrace).Sub(now), 10*time.Millisecond))
	}
	return wait
}

// expiryGrace is how long after a token's TTL the filler counts the pool:
// the server removes expired messages on its own timer, a little late.
const expiryGrace = time.Second

// noteExpiry records that a token just published leaves the pool at at. At
// most a few pools' worth are kept (the earliest count).
func (f *Filler) noteExpiry(at time.Time) {
	f.expMu.Lock()
	defer f.expMu.Unlock()
	i, _ := slices.BinarySearchFunc(f.expires, at, time.Time.Compare)
	f.expires = slices.Insert(f.expires, i, at)
	if limit := 4 * (f.pool.cfg.Size + f.cfg.Concurrency); len(f.expires) > limit {
		f.expires = f.expires[:limit]
	}
}

// Retire is called after the provider was removed and this filler has
// stopped (leader.Retirer): it writes a retired fence record, so that no
// filler of this provider's generation — a deposed leader's included — can
// publish again, and empties the pool. (Every replica's Pool, closed on the
// removal, hands nothing out meanwhile.)
func (f *Filler) Retire(ctx context.Context) error {
	ferr := f.fence(ctx, true)
	if err := f.pool.purge(ctx); err != nil {
		return err
	}
	return ferr
}

// Takeover is called before this filler, which replaces old (a runtime
// provider put with new credentials), starts, once old has stopped
// (leader.Successor). It writes this filler's fence record, so that no
// filler of the replaced credentials — a deposed leader's included — can
// publish again, and then empties the pool of the tokens minted with them.
// (Every replica's Pool given the new generation hands none of them out
// even before: SetGeneration.)
func (f *Filler) Takeover(ctx context.Context, old any) {
	if o, ok := old.(*Filler); !ok || o == f {
		return
	}
	if err := f.fence(ctx, false); err != nil {
		f.log.Warn("cannot fence off the replaced credentials' filler", slog.String("error", err.Error()))
	}
	if err := f.pool.purge(ctx); err != nil {
		f.log.Warn("cannot empty the pool of tokens minted with replaced credentials", slog.String("error", err.Error()))
	}
}

// fence writes this filler's fence record (retired: the provider's last)
// under the current term, if the gate admits a call.
func (f *Filler) fence(ctx context.Context, retired bool) error {
	term := uint64(0)
	if f.cfg.Gate != nil {
		c, err := f.cfg.Gate(ctx)
		if err != nil {
			return err
		}
		defer c.Done()
		term, ctx = c.Term(), c.Context()
	}
	// Bounded whatever the Queue does: a write that never commits (a
	// replica cut off) must not hold up the successor's start for ever.
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	f.fmu.Lock()
	defer f.fmu.Unlock()
	return f.arm(ctx, term, retired)
}

// arm writes this filler's fence record for term, after the provider's
// last one, unless that one supersedes it (a newer term, newer credentials,
// or a removal): then the filler publishes nothing more, and arm returns an
// error wrapping refresher.ErrNotAllowed. Called with fmu held.
func (f *Filler) arm(ctx context.Context, term uint64, retired bool) error {
	gen := f.pool.Generation()
	for try := 0; ; try++ {
		last, seq, err := f.pool.q.LastFence(ctx)
		if err != nil {
			return fmt.Errorf("pool: %s: read the fence record: %w", f.pool.cfg.Name, err)
		}
		if last.supersedes(term, gen) {
			f.fenceSeq = 0
			return fmt.Errorf("%w: pool: %s: a newer term, newer credentials or a removal fills this pool (term %d, generation %d)",
				refresher.ErrNotAllowed, f.pool.cfg.Name, last.Term, last.Generation)
		}
		nseq, err := f.pool.q.WriteFence(ctx, Fence{Term: term, Generation: gen, Retired: retired}, seq)
		if errors.Is(err, ErrFenced) && try < 3 {
			continue // someone wrote a record since: read it
		}
		if err != nil {
			f.fenceSeq = 0
			return fmt.Errorf("pool: %s: write the fence record: %w", f.pool.cfg.Name, err)
		}
		f.fenceTerm, f.fenceSeq, f.fenceAt = term, nseq, time.Now()
		if retired {
			f.fenceSeq = 0
		}
		return nil
	}
}

// publish puts one minted token in the pool, fenced on this filler's fence
// record for term (written first if this term has none yet). A refusal
// because the record moved on is followed by one more try after reading
// it — unless it is superseded (then the error wraps
// refresher.ErrNotAllowed and the token is discarded).
func (f *Filler) publish(ctx context.Context, term uint64, body []byte, ttl time.Duration) error {
	for try := 0; ; try++ {
		seq, err := f.armedFor(ctx, term)
		if err != nil {
			return err
		}
		err = f.publishAt(ctx, seq, Minted{Body: body, TTL: ttl, Generation: f.pool.Generation()})
		if errors.Is(err, ErrFenced) && try < 1 {
			f.fmu.Lock()
			if f.fenceSeq == seq {
				f.fenceSeq = 0
			}
			f.fmu.Unlock()
			continue
		}
		return err
	}
}

// armedFor returns the sequence of this filler's fence record for term,
// writing the record first if there is none yet (or it is half its TTL
// old).
func (f *Filler) armedFor(ctx context.Context, term uint64) (uint64, error) {
	ok := func() bool { return f.fenceSeq != 0 && f.fenceTerm == term && time.Since(f.fenceAt) <= FenceTTL/2 }
	f.fmu.RLock()
	seq, armed := f.fenceSeq, ok()
	f.fmu.RUnlock()
	if armed {
		return seq, nil
	}
	f.fmu.Lock()
	defer f.fmu.Unlock()
	if !ok() {
		if err := f.arm(ctx, term, false); err != nil {
			return 0, err
		}
	}
	return f.fenceSeq, nil
}

// publishAt publishes m fenced on the record at seq; the record is not
// rewritten meanwhile (fmu shared), and on a replicated stream publishes
// take turns.
func (f *Filler) publishAt(ctx context.Context, seq uint64, m Minted) error {
	f.fmu.RLock()
	defer f.fmu.RUnlock()
	if f.serial {
		select {
		case f.turn <- struct{}{}:
			defer func() { <-f.turn }()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	m.Fence = seq
	return f.pool.q.Publish(ctx, m)
}

func exponential(initial, maxInterval, defInitial, defMax time.Duration) *backoff.ExponentialBackOff {
	if initial <= 0 {
		initial = defInitial
	}
	if maxInterval <= 0 {
		maxInterval = defMax
	}
	return backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(initial),
		backoff.WithMaxInterval(maxInterval),
		backoff.WithMultiplier(2),
		backoff.WithRandomizationFactor(0.5),
		backoff.WithMaxElapsedTime(0),
	)
}

// onDemand answers a claimer (answer nil: a claim was made): it wakes the
// refill loop and replies whether a refill is coming.
func (f *Filler) onDemand(answer func([]byte)) {
	failure := f.pool.failure()
	select {
	case f.kick <- struct{}{}:
	default:
	}
	if answer == nil {
		return
	}
	r := demandReply{}
	if failure != nil {
		r = demandReply{Failing: true, Kind: refresher.Classify(failure).String(), Message: failure.Error()}
		var pe *refresher.ProviderError
		if errors.As(failure, &pe) {
			r.Status, r.Code, r.Message = pe.StatusCode, pe.Code, pe.Message
			if pe.Err != nil {
				r.Message += ": " + pe.Err.Error()
			}
		}
	}
	body, _ := json.Marshal(r)
	answer(body)
}

// fill counts the ready tokens and the waiting claimers, and mints what is
// missing: a token for each waiting claimer, plus the pool's size.
func (f *Filler) fill(ctx context.Context) error {
	ready, waiting, err := f.pool.counts(ctx)
	if err != nil {
		return err
	}
	need := f.pool.cfg.Size - ready + waiting
	if need <= 0 {
		return nil
	}
	ctx, span := f.tr.Start(ctx, "tokenbus.pool.fill", trace.WithAttributes(
		attribute.String("tokenbus.provider", f.pool.cfg.Name), attribute.Int("tokenbus.pool.ready", ready), attribute.Int("tokenbus.pool.waiting", waiting), attribute.Int("tokenbus.pool.need", need)))
	defer span.End()
	minted, err := f.mint(ctx, need)
	span.SetAttributes(attribute.Int("tokenbus.pool.minted", minted))
	if err != nil {
		span.SetAttributes(attribute.String("tokenbus.error_kind", refresher.Classify(err).String()))
		span.SetStatus(codes.Error, err.Error())
		return err
	}
	f.log.Debug("single-use token pool refilled", slog.Int("minted", minted), slog.Int("ready_before", ready), slog.Int("waiting", waiting))
	return nil
}

// mint asks the provider for n tokens, at most Concurrency at once, and
// publishes each. It stops at the first failure and returns how many tokens
// it published.
func (f *Filler) mint(ctx context.Context, n int) (int, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		minted   atomic.Int64
		errOnce  sync.Once
		firstErr error
		sem      = make(chan struct{}, f.cfg.Concurrency)
	)
	for range n {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := f.mintOne(ctx); err != nil {
				errOnce.Do(func() { firstErr = err; cancel() })
				return
			}
			minted.Add(1)
		}()
	}
	wg.Wait()
	return int(minted.Load()), firstErr
}

// mintOne fetches one token and publishes it with a TTL of its remaining
// lifetime minus the margin. A token whose publication is not confirmed is
// not published again: a second copy could be handed out twice.
func (f *Filler) mintOne(ctx context.Context) error {
	if f.cfg.Gate != nil {
		c, err := f.cfg.Gate(ctx)
		if err != nil {
			return err
		}
		defer c.Done()
		// The call and the publish run under the gate's context: a stop of
		// the filler lets them finish, a lost lease ends them.
		ctx = c.Context()
		return f.mintCalled(ctx, c.Term(), c.Called, c.Held)
	}
	return f.mintCalled(ctx, 0, func() {}, func() bool { return true })
}

// mintCalled makes the provider call of mintOne under term; called is told
// when the provider has answered, held says whether the lease is held.
func (f *Filler) mintCalled(ctx context.Context, term uint64, called func(), held func() bool) error {
	start := time.Now()
	tok, err := f.cfg.Provider.Token(ctx)
	called()
	if f.cfg.Recorder != nil && ctx.Err() == nil {
		f.cfg.Recorder.RecordAttempt(f.pool.cfg.Name, time.Since(start), err)
	}
	if err != nil {
		return err
	}
	now := f.pool.now()
	// JetStream keeps TTLs in whole seconds; rounding down drops a token
	// early, never late.
	ttl := (tok.ExpiresAt.Sub(now) - f.pool.margin(tok.Lifetime())).Truncate(time.Second)
	if ttl < time.Second {
		return &refresher.ProviderError{Kind: refresher.Permanent, Message: fmt.Sprintf("token lifetime %v is too short for a pool margin of %v", tok.Lifetime(), f.pool.margin(tok.Lifetime()))}
	}
	body, err := json.Marshal(tok.Wire(f.pool.cfg.Name))
	if err != nil {
		return fmt.Errorf("pool: encode token: %w", err)
	}
	pctx, cancel := withTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := f.publish(pctx, term, body, ttl); err != nil {
		// Lost to a lost lease only if it is lost (a stop's drain bound
		// can end the call's context while the lease is held), or a newer
		// term's filler fenced this one off.
		reason := metrics.DiscardPublishFailed
		if ctx.Err() != nil && !held() || errors.Is(err, refresher.ErrNotAllowed) {
			reason = metrics.DiscardLeaseLost
		}
		f.log.Warn("a token the provider issued was not put in the pool", slog.String("reason", reason), slog.String("error", err.Error()))
		if f.cfg.Discarded != nil {
			f.cfg.Discarded(reason)
		}
		return fmt.Errorf("pool: %s: publish a token: %w", f.pool.cfg.Name, err)
	}
	f.noteExpiry(time.Now().Add(ttl))
	f.pool.minted(now)
	return nil
}
