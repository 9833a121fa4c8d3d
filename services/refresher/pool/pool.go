// Package pool hands out single-use tokens (mPay's) exactly once across every
// refresher replica and restart. It owns the pool: a JetStream work-queue
// stream per KV bucket (file storage, one subject per provider) whose
// messages are ready tokens, each published with a per-message TTL so that a
// token disappears by itself before its unused lifetime runs out, and a
// durable pull consumer per provider with explicit acks.
//
// A Pool serves requests on any replica: it claims one message, checks it, and
// hands the token out only once the server has confirmed the ack that removes
// it from the stream — a token may be lost on a failure, never handed out
// twice. A Filler, run by the leader only, calls the provider to keep the pool
// at its size, refills after claims and expiries, and answers claimers that
// find the pool empty whether a refill is coming (so that they wait) or the
// provider is failing (so that they get a 503 at once).
//
// Every publish is fenced: the server checks it against the provider's fence
// record in the stream, which a newer term's filler, a filler of rotated
// credentials or a removal replaces, so a deposed filler adds nothing. Every
// token carries the generation of the credentials it was minted with, and no
// pool hands out one older than the newest generation it was given
// (SetGeneration, Close). The pool reaches JetStream only through Queue and
// Signals, so that the deterministic simulation (package sim) drives the same
// code. docs/single-use-tokens.md gives the reasoning.
//
// No token value is ever written to the KV bucket: KV watchers never see one.
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

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher"
)

// Names of the pool's NATS resources. The stream of bucket B is
// StreamPrefix+B with subjects SubjectPrefix+B+".<provider>"; the filler of
// provider P listens on SubjectPrefix+B+".<P>.demand".
const (
	StreamPrefix  = "TOKENBUS_POOL_"
	SubjectPrefix = "tokenbus.pool."
	// AckWait is how long a claimed token stays invisible to other claimers
	// before the server would deliver it again. A claimer hands its token out
	// only if its ack was confirmed well within AckWait (see claim).
	AckWait = 30 * time.Second
	// fillerQueue is the queue group of the fillers' demand subscriptions.
	fillerQueue = "tokenbus-pool"
)

// DefaultWait is how long a claim waits for a refill by default: shorter
// than a client's default request timeout (tokenclient.DefaultTimeout, 5 s),
// so that the client gets the pool's 503 rather than a timeout of its own.
const DefaultWait = 4 * time.Second

// Errors of the pool.
var (
	// ErrNoFiller is returned, wrapped in refresher.ErrNoToken, when the pool
	// is empty and no refresher answers for its filler (no leader yet, or the
	// leader is not filling this pool).
	ErrNoFiller = errors.New("pool: no refresher is filling the pool")
	// ErrEmpty is returned, wrapped in refresher.ErrNoToken, when the pool
	// stayed empty for the whole wait.
	ErrEmpty = errors.New("pool: the pool is empty")
)

// Store is the pool stream of one KV bucket.
type Store struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	bucket string
	stream string

	replicas int

	mu     sync.Mutex
	floors map[string]*atomic.Uint64 // per provider: the oldest generation handed out
}

// Open creates or updates the pool stream of bucket (work-queue retention,
// file storage, per-message TTLs, replicas as given, at least 1) and returns
// a Store on it.
func Open(ctx context.Context, nc *nats.Conn, bucket string, replicas int) (*Store, error) {
	ctx, cancel := withTimeout(ctx, 2*time.Minute)
	defer cancel()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("pool: jetstream: %w", err)
	}
	s := &Store{nc: nc, js: js, bucket: bucket, stream: StreamPrefix + bucket, replicas: max(replicas, 1), floors: map[string]*atomic.Uint64{}}
	err = refresher.UntilReady(ctx, nil, func(ctx context.Context) error {
		_, err := js.CreateOrUpdateStream(ctx, s.streamConfig(bucket, replicas))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("pool: open stream %s: %w", s.stream, err)
	}
	return s, nil
}

func (s *Store) streamConfig(bucket string, replicas int) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        s.stream,
		Description: "tokenbus: ready single-use tokens of bucket " + bucket + ", each handed out once",
		Subjects:    []string{SubjectPrefix + bucket + ".*"},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
		AllowMsgTTL: true,
		// A runaway filler cannot fill the disk: past this many ready tokens
		// per provider, publishing fails.
		MaxMsgsPerSubject:    4096,
		Discard:              jetstream.DiscardNew,
		DiscardNewPerSubject: true,
		MaxMsgSize:           64 << 10,
	}
}

// Stream returns the stream's name.
func (s *Store) Stream() string { return s.stream }

// Config configures one provider's pool.
type Config struct {
	// Name is the provider's configured name.
	Name string
	// Kind is the provider kind, for status reports.
	Kind string
	// Size is how many ready tokens the filler keeps; at least 1.
	Size int
	// Margin is how long before its expiry a ready token is dropped: it is
	// published with a TTL of its remaining lifetime minus Margin, and a
	// claimed token with less than Margin/2 left is not handed out. Zero
	// means a quarter of the token's lifetime (30 s of mPay's 2 minutes).
	Margin time.Duration
	// Wait bounds how long a claim waits for a refill while the filler says
	// one is coming; DefaultWait if zero. When the filler is failing or absent, an
	// empty pool answers at once.
	Wait time.Duration
	// Logger receives warnings about dropped tokens.
	Logger *slog.Logger
	// Now returns the current time; time.Now if nil.
	Now func() time.Time
	// Generation is the generation of the provider's credentials (a
	// runtime provider's revision in the credential bucket; 0 for the
	// configuration file's): the filler tags each token it mints with it,
	// and no token of an older generation is handed out (SetGeneration).
	Generation uint64

	ackWait time.Duration // AckWait if zero (tests shorten it)
}

// Pool serves one provider's single-use tokens: each Get claims a token no
// one was handed before. It implements the rpc package's Source and Blocking
// interfaces and is safe for concurrent use.
type Pool struct {
	cfg Config
	q   Queue
	sig Signals
	log *slog.Logger
	now func() time.Time
	gen atomic.Uint64
	// floor is the oldest generation handed out, shared by the pools of
	// one provider on one Store (a replaced pool still answering a claim
	// knows its successor's generation); closed: the provider is gone.
	floor  *atomic.Uint64
	closed atomic.Bool
	// parallel: the stream has one replica, so fenced publishes need not
	// take turns (a replicated stream refuses one while another commits).
	parallel bool

	mu       sync.Mutex
	lastErr  error
	errAt    time.Time
	lastMint time.Time
	// ready and readyAt: the last count of ready tokens, shared by readers
	// of Ready for readyMaxAge.
	ready   int
	readyAt time.Time
	// readyGen counts claims and mints: a count taken across one of them is
	// not shared, as it may predate it.
	readyGen uint64
	// counted: ready holds a count (however old); recounting: a background
	// recount for Status is under way.
	counted    bool
	recounting atomic.Bool
}

// Pool creates or updates the durable consumer of provider cfg.Name and
// returns its pool.
func (s *Store) Pool(ctx context.Context, cfg Config) (*Pool, error) {
	if err := cfg.complete(); err != nil {
		return nil, err
	}
	ctx, cancel := withTimeout(ctx, 2*time.Minute)
	defer cancel()
	subject := SubjectPrefix + s.bucket + "." + cfg.Name
	var cons jetstream.Consumer
	err := refresher.UntilReady(ctx, nil, func(ctx context.Context) (err error) {
		cons, err = s.js.CreateOrUpdateConsumer(ctx, s.stream, s.consumerConfig(cfg, subject))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("pool: %s: consumer: %w", cfg.Name, err)
	}
	s.mu.Lock()
	floor := s.floors[cfg.Name]
	if floor == nil {
		floor = new(atomic.Uint64)
		s.floors[cfg.Name] = floor
	}
	s.mu.Unlock()
	q := &jsQueue{js: s.js, stream: s.stream, subject: subject, fence: fenceSubject(s.bucket, cfg.Name), cons: cons}
	p := newPool(cfg, q, natsSignals{nc: s.nc, demand: subject + ".demand"}, floor)
	p.parallel = s.replicas == 1
	return p, nil
}

// complete checks c and fills in its defaults (Wait, the ack wait).
func (c *Config) complete() error {
	if c.Size < 1 {
		return fmt.Errorf("pool: %s: size %d, want at least 1", c.Name, c.Size)
	}
	if c.Wait <= 0 {
		c.Wait = DefaultWait
	}
	if c.ackWait <= 0 {
		c.ackWait = AckWait
	}
	return nil
}

// New returns the pool of cfg.Name on q, signalling its filler through sig:
// for tests that drive the pool against a simulated stream. Store.Pool is
// the production constructor.
func New(cfg Config, q Queue, sig Signals) (*Pool, error) {
	if err := cfg.complete(); err != nil {
		return nil, err
	}
	return newPool(cfg, q, sig, new(atomic.Uint64)), nil
}

func newPool(cfg Config, q Queue, sig Signals, floor *atomic.Uint64) *Pool {
	p := &Pool{cfg: cfg, q: q, sig: sig, floor: floor, log: cfg.Logger, now: cfg.Now}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	p.log = p.log.With(slog.String("provider", cfg.Name))
	if p.now == nil {
		p.now = time.Now
	}
	p.SetGeneration(cfg.Generation)
	return p
}

// Successor returns a pool of the same provider on the same stream with
// cfg (its credentials rotated), sharing p's oldest generation handed out:
// p stops handing out tokens older than the generation its successor is
// given (SetGeneration). Store.Pool does the same for pools it opens.
func (p *Pool) Successor(cfg Config) (*Pool, error) {
	if err := cfg.complete(); err != nil {
		return nil, err
	}
	n := newPool(cfg, p.q, p.sig, p.floor)
	n.parallel = p.parallel
	return n, nil
}

// SetGeneration makes gen the generation of the credentials this pool's
// filler mints with, before the filler runs, and stops every pool of the
// provider on this Store from handing out a token of an older generation,
// including claims already under way on a pool gen replaces (runtime
// providers rotated: docs/single-use-tokens.md).
func (p *Pool) SetGeneration(gen uint64) {
	p.gen.Store(gen)
	for {
		cur := p.floor.Load()
		if cur >= gen || p.floor.CompareAndSwap(cur, gen) {
			return
		}
	}
}

// Generation returns the generation of the credentials the pool's filler
// mints with.
func (p *Pool) Generation() uint64 { return p.gen.Load() }

// Close stops the pool from handing out anything more, claims under way
// included: its provider was removed.
func (p *Pool) Close() { p.closed.Store(true) }

// consumerConfig is the durable pull consumer that claims cfg's tokens.
func (s *Store) consumerConfig(cfg Config, subject string) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       "pool-" + cfg.Name,
		Description:   "tokenbus: claims of " + cfg.Name + "'s single-use tokens",
		FilterSubject: subject,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       cfg.ackWait,
		MaxDeliver:    -1,
		MaxWaiting:    4096,
		MaxAckPending: 4096,
	}
}

// Name returns the provider name.
func (p *Pool) Name() string { return p.cfg.Name }

// Blocking reports true: Get waits on JetStream, so the rpc service calls it
// off the endpoint goroutine.
func (p *Pool) Blocking() bool { return true }

// readyMaxAge is how old a count Ready may answer with: token.status, every
// open status page and every metrics scrape share one consumer-info request
// a second instead of making one each.
const readyMaxAge = time.Second

// Ready returns how many tokens are ready in the pool (not yet claimed), as
// counted at most readyMaxAge ago. The filler's own decisions use live counts.
func (p *Pool) Ready(ctx context.Context) (int, error) {
	p.mu.Lock()
	if !p.readyAt.IsZero() && time.Since(p.readyAt) < readyMaxAge {
		n := p.ready
		p.mu.Unlock()
		return n, nil
	}
	p.mu.Unlock()
	ready, _, err := p.counts(ctx)
	return ready, err
}

// lastCount returns the last count of ready tokens without waiting on
// JetStream (token.status answers on the endpoint's goroutine); if it is
// older than readyMaxAge it starts one recount in the background.
func (p *Pool) lastCount() (int, bool) {
	p.mu.Lock()
	n, counted := p.ready, p.counted
	stale := p.readyAt.IsZero() || time.Since(p.readyAt) >= readyMaxAge
	p.mu.Unlock()
	if stale && p.recounting.CompareAndSwap(false, true) {
		go func() {
			defer p.recounting.Store(false)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_, _, _ = p.counts(ctx)
		}()
	}
	return n, counted
}

// forgetReady drops the shared count, so that a change this replica made is
// seen by its next reader at once (other replicas' at most readyMaxAge late).
func (p *Pool) forgetReady() {
	p.mu.Lock()
	p.readyAt = time.Time{}
	p.readyGen++
	p.mu.Unlock()
}

// counts returns how many tokens are ready and how many claimers are waiting
// for one, as one snapshot of the consumer.
func (p *Pool) counts(ctx context.Context) (ready, waiting int, err error) {
	ctx, cancel := withTimeout(ctx, 5*time.Second)
	defer cancel()
	p.mu.Lock()
	gen := p.readyGen
	p.mu.Unlock()
	ready, waiting, err = p.q.Counts(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("pool: %s: consumer info: %w", p.cfg.Name, err)
	}
	p.mu.Lock()
	if p.readyGen == gen {
		p.ready, p.readyAt, p.counted = ready, time.Now(), true
	}
	p.mu.Unlock()
	return ready, waiting, nil
}

// purge removes every ready token of this pool from the stream.
func (p *Pool) purge(ctx context.Context) error {
	ctx, cancel := withTimeout(ctx, 5*time.Second)
	defer cancel()
	p.forgetReady()
	if err := p.q.Purge(ctx); err != nil {
		return fmt.Errorf("pool: %s: empty the pool: %w", p.cfg.Name, err)
	}
	return nil
}

// Refresh handles a report that invalid was rejected: single-use tokens are
// never reused, so it claims a fresh one, as Get does.
func (p *Pool) Refresh(ctx context.Context, _ string) ([]byte, error) { return p.Get(ctx) }

// Get claims a token no one was handed before and returns it as wire JSON.
// If the pool is empty it asks the filler: when the filler is failing it
// returns at once an error wrapping refresher.ErrNoToken and the provider's
// *refresher.ProviderError; when no filler answers, one wrapping ErrNoFiller;
// otherwise it waits up to Config.Wait for a refill (ErrEmpty after that).
func (p *Pool) Get(ctx context.Context) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.Wait)
	defer cancel()
	b, err := p.claim(ctx, 0)
	if b != nil || err != nil {
		return b, err
	}
	for {
		if err := p.ask(ctx); err != nil {
			return nil, err
		}
		d, ok := ctx.Deadline()
		wait := min(time.Until(d), 250*time.Millisecond)
		if !ok || wait <= 10*time.Millisecond {
			return nil, fmt.Errorf("%w: %w", refresher.ErrNoToken, ErrEmpty)
		}
		if b, err := p.claim(ctx, wait); b != nil || err != nil {
			return b, err
		}
	}
}

// claim fetches one ready token, waiting up to wait for one (0: not at all),
// and returns it once it is safely removed from the pool; nil, nil if there
// was none. A token is handed out only if:
//   - it was minted with the provider's current credentials: its generation
//     is not older than the newest this Store's pools were given, and the
//     pool is not closed (checked once the ack is confirmed, the last step
//     before the token is returned);
//   - this is its first delivery (a redelivered token was claimed by someone
//     whose ack never came; dropping it rules out a second hand-out even if
//     that ack was merely late);
//   - it has at least Margin/2 of its lifetime left;
//   - the server confirmed the ack, within AckWait/2 of the fetch: the server
//     cannot have redelivered it before then, so no one else can hold it.
//
// Tokens failing a check are acked (removed) and dropped.
func (p *Pool) claim(ctx context.Context, wait time.Duration) ([]byte, error) {
	for ctx.Err() == nil {
		start := time.Now()
		msg, err := p.q.Fetch(ctx, wait)
		if err != nil {
			return nil, fmt.Errorf("%w: pool: %s: fetch: %w", refresher.ErrNoToken, p.cfg.Name, err)
		}
		if msg == nil {
			return nil, nil
		}
		p.forgetReady() // a token left the pool: the next reader counts again
		body, why := p.check(msg)
		if why != "" {
			msg.Drop()
			p.log.Warn("single-use token dropped", slog.String("reason", why))
			continue
		}
		if err := msg.Ack(ctx); err != nil {
			// Not confirmed: the token may or may not be removed; it is
			// not handed out (if it was not removed, it is redelivered
			// after AckWait and dropped as a redelivery).
			p.log.Warn("single-use token dropped", slog.String("reason", "ack not confirmed"), slog.String("error", err.Error()))
			continue
		}
		if took := time.Since(start); took > p.cfg.ackWait/2 {
			p.log.Warn("single-use token dropped", slog.String("reason", "claim too slow to be sure of its ack"), slog.Duration("took", took))
			continue
		}
		if why := p.replaced(msg); why != "" {
			p.log.Warn("single-use token dropped", slog.String("reason", why))
			continue
		}
		p.claimed()
		return body, nil
	}
	return nil, fmt.Errorf("%w: %w", refresher.ErrNoToken, ctx.Err())
}

// check says why msg must not be handed out, or "".
func (p *Pool) check(msg Delivery) ([]byte, string) {
	if why := p.replaced(msg); why != "" {
		return nil, why
	}
	if msg.Delivered() != 1 {
		return nil, "redelivered"
	}
	var tok wire.Token
	if err := json.Unmarshal(msg.Data(), &tok); err != nil || tok.AccessToken == "" {
		return nil, "not a token"
	}
	if tok.ExpiresAt.Sub(p.now()) < p.margin(tok.ExpiresAt.Sub(tok.IssuedAt))/2 {
		return nil, "about to expire"
	}
	return msg.Data(), ""
}

// replaced says why msg, minted with credentials since replaced or of a
// provider since removed, must not be handed out, or "".
func (p *Pool) replaced(msg Delivery) string {
	switch {
	case p.closed.Load():
		return "provider removed"
	case msg.Generation() < p.floor.Load():
		return "minted with replaced credentials"
	}
	return ""
}

// margin returns the configured margin, or a quarter of life.
func (p *Pool) margin(life time.Duration) time.Duration {
	if p.cfg.Margin > 0 {
		return p.cfg.Margin
	}
	return life / 4
}

// demandReply is the filler's answer: whether it is failing, and why.
type demandReply struct {
	Failing bool   `json:"failing"`
	Kind    string `json:"kind,omitempty"`
	Status  int    `json:"status,omitempty"`
	Code    string `json:"code,omitempty"`
	Message string `json:"message,omitempty"`
}

// ask wakes the filler, telling it that a claimer waits, and returns nil if a
// refill is coming, or the error to answer with. (The filler counts the
// waiting claimers itself, from the consumer's waiting pull requests.)
func (p *Pool) ask(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	data, err := p.sig.Ask(rctx)
	switch {
	case errors.Is(err, ErrNoFiller):
		return fmt.Errorf("%w: %w", refresher.ErrNoToken, ErrNoFiller)
	case err != nil && ctx.Err() != nil:
		return fmt.Errorf("%w: %w", refresher.ErrNoToken, ErrEmpty)
	case err != nil:
		return fmt.Errorf("%w: %w (%w)", refresher.ErrNoToken, ErrNoFiller, err)
	}
	var r demandReply
	if err := json.Unmarshal(data, &r); err != nil {
		return fmt.Errorf("%w: pool: %s: bad answer from the filler", refresher.ErrNoToken, p.cfg.Name)
	}
	if !r.Failing {
		return nil
	}
	kind := refresher.Transient
	if r.Kind == refresher.Permanent.String() {
		kind = refresher.Permanent
	}
	return fmt.Errorf("%w: %w", refresher.ErrNoToken, &refresher.ProviderError{Kind: kind, StatusCode: r.Status, Code: r.Code, Message: r.Message})
}

// claimed tells the filler, if any, that a token was taken.
func (p *Pool) claimed() { p.sig.Claimed() }

// Status reports the pool for token.status: how many tokens are ready and,
// on the replica that fills it, the last failure and the last token minted.
func (p *Pool) Status() wire.ProviderStatus {
	st := wire.ProviderStatus{Name: p.cfg.Name, Kind: p.cfg.Kind, State: wire.StateNoToken}
	if n, ok := p.lastCount(); ok {
		st.Pool = &n
		if n > 0 {
			st.State = wire.StateOK
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.lastMint.IsZero() {
		t := p.lastMint
		st.LastRefresh = &t
	}
	if p.lastErr != nil {
		at := p.errAt
		st.LastError, st.LastErrorAt = p.lastErr.Error(), &at
		if st.State == wire.StateOK {
			st.State = wire.StateFailing
		}
	}
	return st
}

func (p *Pool) minted(at time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.lastMint, p.lastErr = at, nil
	// A token joined the pool: the next reader counts again.
	p.readyAt = time.Time{}
	p.readyGen++
}

func (p *Pool) failed(err error, at time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.lastErr, p.errAt = err, at
}

// failure returns the last failure since the last token minted, or nil.
func (p *Pool) failure() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lastErr
}

// withTimeout applies d to ctx when it has no deadline.
func withTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, d)
}
