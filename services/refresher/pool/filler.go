package pool

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
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
	// expires is the earliest pool expiry (unix nanoseconds) of the tokens
	// minted since the last count; 0 if none.
	expires atomic.Int64
}

// NewFiller returns a filler for p that mints with cfg.Provider.
func NewFiller(p *Pool, cfg FillerConfig) *Filler {
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 4
	}
	if cfg.Poll <= 0 {
		cfg.Poll = 10 * time.Second
	}
	f := &Filler{pool: p, cfg: cfg, log: cfg.Logger, tr: cfg.Tracer, kick: make(chan struct{}, 1)}
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
// refills after claims (claimers tell it), after tokens expire (it counts the
// pool every Poll) and, with backoff, after failures. It answers claimers
// that find the pool empty. It returns nil when ctx is cancelled, or an error
// if it cannot listen for claimers.
func (f *Filler) Run(ctx context.Context) error {
	sub, err := f.pool.store.nc.QueueSubscribe(f.pool.demand, fillerQueue, f.onDemand)
	if err != nil {
		return fmt.Errorf("pool: %s: listen for claimers: %w", f.pool.cfg.Name, err)
	}
	defer func() { _ = sub.Unsubscribe() }()

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

// nextCount returns how long to wait before counting the pool again: Poll,
// or less if a token minted since expires sooner.
func (f *Filler) nextCount() time.Duration {
	wait := f.cfg.Poll
	if e := f.expires.Swap(0); e != 0 {
		wait = min(wait, max(time.Until(time.Unix(0, e)), 10*time.Millisecond))
	}
	return wait
}

// noteExpiry records that a token minted now leaves the pool at at.
func (f *Filler) noteExpiry(at time.Time) {
	n := at.UnixNano()
	for {
		cur := f.expires.Load()
		if cur != 0 && cur <= n || f.expires.CompareAndSwap(cur, n) {
			return
		}
	}
}

// Retire empties the pool of tokens this filler minted, after its provider
// was removed (leader.Retirer): none is handed out once the provider is gone.
func (f *Filler) Retire(ctx context.Context) error { return f.pool.purge(ctx) }

// Takeover empties the pool before this filler, which replaces old (a
// runtime provider put with new credentials), starts (leader.Successor): a
// token minted with the replaced credentials is never handed out.
func (f *Filler) Takeover(ctx context.Context, old any) {
	if o, ok := old.(*Filler); !ok || o == f {
		return
	}
	if err := f.pool.purge(ctx); err != nil {
		f.log.Warn("cannot empty the pool of tokens minted with replaced credentials", slog.String("error", err.Error()))
	}
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

// onDemand answers a claimer: it wakes the refill loop and replies whether a
// refill is coming.
func (f *Filler) onDemand(msg *nats.Msg) {
	failure := f.pool.failure()
	select {
	case f.kick <- struct{}{}:
	default:
	}
	if msg.Reply == "" {
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
	_ = msg.Respond(body)
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
		return f.mintCalled(ctx, c.Called)
	}
	return f.mintCalled(ctx, func() {})
}

// mintCalled makes the provider call of mintOne; called is told when the
// provider has answered.
func (f *Filler) mintCalled(ctx context.Context, called func()) error {
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
	if _, err := f.pool.store.js.Publish(pctx, f.pool.subject, body, jetstream.WithMsgTTL(ttl), jetstream.WithExpectStream(f.pool.store.stream)); err != nil {
		reason := metrics.DiscardPublishFailed
		if ctx.Err() != nil {
			reason = metrics.DiscardLeaseLost
		}
		f.log.Warn("a token the provider issued was not put in the pool", slog.String("reason", reason), slog.String("error", err.Error()))
		if f.cfg.Discarded != nil {
			f.cfg.Discarded(reason)
		}
		return fmt.Errorf("pool: %s: publish a token: %w", f.pool.cfg.Name, err)
	}
	f.noteExpiry(now.Add(ttl))
	f.pool.minted(now)
	return nil
}
