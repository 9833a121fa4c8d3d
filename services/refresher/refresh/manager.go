// Package refresh owns the life of each provider's token inside a refresher:
// fetch at start, publish, refresh ahead of expiry with jitter, retry with
// exponential backoff (transient failures) or slowly (permanent ones), and
// refresh on demand when a caller reports the current token rejected. It
// serves the current token from memory and never an expired one. One
// Scheduler runs the refreshes of every provider of a refresher (a timer
// heap and a few workers); a provider's Manager is only its state.
package refresh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/metrics"
)

// Publisher stores a fresh token where the fleet can see it (the KV bucket)
// and returns the revision it was stored at.
type Publisher interface {
	Publish(ctx context.Context, tok wire.Token) (uint64, error)
}

// encodedPublisher is a Publisher that also takes the token already encoded
// (leader.Leader): the JSON a manager serves is the JSON it stores, encoded
// once per token instead of once for each.
type encodedPublisher interface {
	PublishEncoded(ctx context.Context, provider string, encoded []byte) (uint64, error)
}

func exponential(initial, max time.Duration) *backoff.ExponentialBackOff {
	return backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(initial),
		backoff.WithMaxInterval(max),
		backoff.WithMultiplier(2),
		backoff.WithRandomizationFactor(0.5),
		backoff.WithMaxElapsedTime(0),
	)
}

// Config configures a Manager.
type Config struct {
	// Name is the provider's configured name (subject token and KV key).
	Name string
	// Kind is the provider kind, for status reports.
	Kind     string
	Provider refresher.Provider
	// Publisher receives every fresh token; nil publishes nowhere.
	Publisher Publisher
	// RefreshBefore is how long before expiry to refresh; zero means
	// DefaultRefreshBefore of the token's lifetime.
	RefreshBefore time.Duration
	Backoff       refresher.Backoff
	Logger        *slog.Logger
	// Now returns the current time; time.Now if nil.
	Now func() time.Time
	// Tracer records refresh and attempt spans; the global provider if nil.
	Tracer trace.Tracer
	// Recorder is told about every upstream attempt (metrics, the status
	// page's history); nil records nothing.
	Recorder refresher.Recorder
	// Gate, if set, admits every provider call (the leader's gate for this
	// provider's credential): it waits for the call's turn and refuses,
	// with an error wrapping refresher.ErrNotAllowed, while this replica
	// does not hold the lease with time left. The call and the publish of
	// its token run under the Call's context, so a stopped Run finishes
	// them before it returns. nil calls at once, under Run's context.
	Gate func(ctx context.Context) (Call, error)
	// Discarded, if set, is told about each token the provider issued that
	// was never published, with the reason (metrics.DiscardReasons).
	Discarded func(reason string)
	// RefreshCooldown is the least time between two refreshes forced by
	// token.refresh reports (SPEC §3); DefaultRefreshCooldown if zero.
	RefreshCooldown time.Duration
	// StaleBefore, if set, marks a token issued before it as fetched with
	// replaced credentials: Run fetches at once instead of keeping it (a
	// runtime provider put with new credentials, SPEC §8).
	StaleBefore time.Time
	// Observer is told about the provider's transitions while Run runs
	// (events); nil tells no one.
	Observer Observer
	// Rand, if set, is the source of the refresh-time and backoff jitter
	// (the simulation: a seed fixes them); math/rand/v2's global source if
	// nil. The manager owns it.
	Rand *rand.Rand
}

// Call is one provider call admitted by the gate (leader.Call).
type Call interface {
	// Context is what the call and the publish of its token run under.
	Context() context.Context
	// Called frees the call's concurrency slot once the provider answered.
	Called()
	// Done ends the call: its token is published, or given up.
	Done()
	// Held reports whether the lease the call was admitted under is still
	// held (a token given up while it is was lost to the bucket, not to a
	// lost lease).
	Held() bool
}

// Manager keeps one provider's token fresh. Make it with a Scheduler's
// NewManager (or NewManager, which gives it a scheduler of its own), start
// it with Start (or Run), read it with Current; Refresh asks for a new
// token. It holds only what is its provider's own: what every provider
// shares (publisher, gate, backoff settings, logger, tracer, observers,
// clock) is its scheduler's, and it has no goroutine, timer, context or
// channel of its own.
type Manager struct {
	s        *Scheduler
	name     string
	kind     string
	cred     string
	provider refresher.Provider
	// before and cooldown are RefreshBefore and RefreshCooldown.
	before, cooldown time.Duration
	staleBefore      time.Time
	slot             Slot
	rnd              *jitter // nil: math/rand/v2's global source
	// published is the revision of this manager's last successful publish.
	published atomic.Uint64
	// fetched is the last token this manager's own call fetched: a copy
	// that is this token (served before its publish, or the watch's echo
	// of it) is this manager's own, never an unverified one.
	fetched atomic.Pointer[string]

	// Scheduling state, guarded by the scheduler's mutex.
	ctx      context.Context // Start's; nil while stopped
	next     int64           // when the next turn is due (scheduler clock)
	expiryAt int64           // when to check that the token left service; 0: no check
	key      int64           // the key of the heap it is in
	idx      int32           // its index in that heap
	where    uint8           // which heap (inNone, inTimers, inEmpty, inValid)
	state    uint8           // stIdle, stQueued, stRunning, stStopping, stParked
	repair   bool            // a repair asked for, not yet taken
	kick     *kick           // a forced refresh asked for, not yet taken
	stopped  chan struct{}   // closed when a turn in progress ends for Stop
	abort    context.CancelFunc

	// pending is a token the provider issued that is not yet published: it
	// is served from this replica meanwhile, and only its publish is
	// retried (fetching another would, for Daraja, kill it fleet-wide).
	// call is the gate's admission it came from, held until the token is
	// published or given up. Both, and run, belong to the turn in progress,
	// or to the scheduler (under its mutex) between turns; they outlive one
	// turn, so a stop publishes the token before Stop returns.
	pending *refresher.Token
	call    Call
	run     *refreshRun

	// mu guards h and the cooldown.
	mu        sync.Mutex
	h         health
	forcedAt  time.Time // the last refresh forced by a report (the cooldown)
	forcedBad string
}

// refreshRun is one refresh in progress, from its first attempt until it
// succeeds: its span, the attempts made, the request that asked for it, and
// the backoff of its retries (made on the first failure, dropped with the
// run on success).
type refreshRun struct {
	span      trace.Span
	attempts  int
	link      trace.SpanContext // the token.refresh request that asked for the next refresh
	transient backOff
	permanent backOff
}

// DefaultRefreshCooldown is the refresh cooldown of a provider that sets none.
const DefaultRefreshCooldown = 5 * time.Second

// NewManager returns a manager for cfg.Provider with a scheduler of its own
// (one provider call at a time). A refresher with many providers makes one
// Scheduler and its managers with Scheduler.NewManager instead.
func NewManager(cfg Config) *Manager {
	sc := SchedulerConfig{
		Publisher: cfg.Publisher, Backoff: cfg.Backoff, Logger: cfg.Logger, Now: cfg.Now, Tracer: cfg.Tracer,
		Recorder: cfg.Recorder, Discarded: cfg.Discarded, Observer: cfg.Observer, Workers: 1,
	}
	if gate := cfg.Gate; gate != nil {
		sc.Gate = func(ctx context.Context, _ string) (Call, error) { return gate(ctx) }
	}
	return NewScheduler(sc).NewManager(ProviderConfig{
		Name: cfg.Name, Kind: cfg.Kind, Provider: cfg.Provider, RefreshBefore: cfg.RefreshBefore,
		RefreshCooldown: cfg.RefreshCooldown, StaleBefore: cfg.StaleBefore, Rand: cfg.Rand,
	})
}

// Status reports the provider's state for token.status and the status page.
func (m *Manager) Status() wire.ProviderStatus {
	st := wire.ProviderStatus{Name: m.name, Kind: m.kind, State: wire.StateNoToken}
	now := m.s.now()
	if e := m.slot.Load(); e != nil {
		exp, iss := e.Token.ExpiresAt, e.Token.IssuedAt
		st.ExpiresAt, st.LastRefresh = &exp, &iss
		if servable(e.Token, now) {
			st.State = wire.StateOK
		}
	}
	if at, err := m.slot.LastError(); err != nil {
		st.LastError, st.LastErrorAt = err.Error(), &at
		if st.State == wire.StateOK {
			st.State = wire.StateFailing
		}
	}
	cond, since, cause := m.condition()
	st.Condition, st.ConditionSince, st.Cause = cond, &since, cause
	return st
}

// Brief returns what Status reports in State and Condition, building
// nothing else and allocating nothing: token.status's summary and the
// metrics count every provider with it.
func (m *Manager) Brief() (state, condition string) { return m.BriefAt(m.s.now()) }

// Now reads the clock the manager's states are reckoned by. A walk over
// many managers reads it once and asks each BriefAt that instant: a quarter
// of a 100,000-provider count was its clock reads.
func (m *Manager) Now() time.Time { return m.s.now() }

// BriefAt is Brief as of now.
func (m *Manager) BriefAt(now time.Time) (state, condition string) {
	e := m.slot.Load()
	state = wire.StateNoToken
	if e != nil && servable(e.Token, now) {
		state = wire.StateOK
		if _, err := m.slot.LastError(); err != nil {
			state = wire.StateFailing
		}
	}
	condition, _, _ = m.conditionAt(now, e)
	return state, condition
}

// Name returns the provider name.
func (m *Manager) Name() string { return m.name }

// Slot returns the manager's token slot.
func (m *Manager) Slot() *Slot { return &m.slot }

// Current returns the current token, pre-encoded, or an error wrapping
// refresher.ErrNoToken when none is valid at this moment.
func (m *Manager) Current() (*Entry, error) { return m.slot.Valid(m.s.now()) }

// Get returns the current token as wire JSON, from memory.
func (m *Manager) Get(context.Context) ([]byte, error) {
	e, err := m.Current()
	if err != nil {
		return nil, err
	}
	return e.JSON, nil
}

// GetRevision is Get that also returns the KV revision the token was stored
// at (0 if not stored yet).
func (m *Manager) GetRevision(context.Context) ([]byte, uint64, error) {
	e, err := m.Current()
	if err != nil {
		return nil, 0, err
	}
	return e.JSON, e.Revision, nil
}

// DefaultRefreshBefore returns the default refresh margin for a token of
// lifetime life: a fifth of it, at most 5 minutes (Daraja's hour-long token
// is refreshed 5 minutes ahead, Airtel's 3-minute token 36 s ahead).
func DefaultRefreshBefore(life time.Duration) time.Duration {
	return min(life/5, 5*time.Minute)
}

// refreshAt returns when to refresh tok: RefreshBefore (or the default) ahead
// of expiry, minus up to a quarter of that margin of jitter so replicas and
// providers do not refresh in lockstep. A margin at or above the lifetime is
// cut to half the lifetime.
func (m *Manager) refreshAt(tok refresher.Token) time.Time {
	life := tok.Lifetime()
	margin := m.before
	if margin <= 0 {
		margin = DefaultRefreshBefore(life)
	}
	if margin >= life {
		margin = life / 2
	}
	jitter := time.Duration(0)
	if q := int64(margin / 4); q > 0 {
		jitter = time.Duration(m.int64N(q))
	}
	return tok.ExpiresAt.Add(-margin - jitter)
}

// Run starts the manager (Start), keeps its token fresh until ctx ends, and
// stops it (Stop). It returns nil. A refresher runs its managers with Start
// and Stop on a shared Scheduler; Run is for a manager on its own.
func (m *Manager) Run(ctx context.Context) error {
	m.Start(ctx)
	<-ctx.Done()
	m.Stop()
	return nil
}

// Start schedules the manager's first call: at once, unless its slot holds
// a valid token (published by a previous leader), which is refreshed on its
// normal schedule. Its calls are admitted by the scheduler's gate under ctx;
// ctx's end stops its calls (Stop ends it). Start on a started manager does
// nothing.
func (m *Manager) Start(ctx context.Context) { m.s.start(m, ctx) }

// Stop ends the manager's calls gracefully: a call in flight finishes and a
// token the provider issued that is not published yet is published now,
// retried while the call's context lasts (a clean stop: the lease is renewed
// meanwhile) and the token is valid. Only a lost lease (or a stop's bound
// running out) gives it up, counted. It returns once that is done; the
// manager may be started again.
func (m *Manager) Stop() { m.s.stop(m) }

// turn is one due turn: the gate's admission, then one attempt (a call and
// the publish of its token, or the publish alone of a pending token). It
// returns when the next turn is due, and ended when the attempt's context
// ended (a lost lease, or the manager's context).
func (m *Manager) turn() (wait time.Duration, ended bool) {
	if m.pending != nil && !m.usable(*m.pending) {
		m.discard(metrics.DiscardExpired)
	}
	if m.pending == nil && m.s.cfg.Gate != nil {
		gctx, cancel := context.WithCancel(m.ctx)
		if !m.s.setAbort(m, cancel) {
			cancel()
			return 0, true // stopped meanwhile
		}
		c, err := m.s.cfg.Gate(gctx, m.cred)
		m.s.setAbort(m, nil)
		cancel()
		if err != nil {
			if gctx.Err() != nil {
				return 0, true
			}
			// Not the lease holder (or too little time left on the
			// lease): not a provider failure. Leader work is about to be
			// stopped, or the lease renewed; wait quietly.
			m.s.log.Info("refresh skipped: not the lease holder", slog.String("provider", m.name), slog.String("error", err.Error()))
			return m.s.cfg.Backoff.Initial, false
		}
		m.call = c
	}
	wait, ended = m.step()
	if m.pending == nil {
		m.settle()
	}
	return wait, ended
}

// step makes one attempt under the call's context (or the manager's, with
// no gate): a stop lets the call finish, a lost lease ends it.
func (m *Manager) step() (wait time.Duration, ended bool) {
	base := m.ctx
	if m.call != nil {
		base = m.call.Context()
	}
	if m.run == nil {
		m.run = &refreshRun{}
	}
	r := m.run
	var sctx context.Context
	if r.span == nil {
		// A refresh asked for by token.refresh links to that request's span.
		sctx, r.span = m.s.tr.Start(base, "tokenbus.refresh", trace.WithAttributes(attribute.String("tokenbus.provider", m.name)),
			trace.WithLinks(trace.Link{SpanContext: r.link}))
		r.link = trace.SpanContext{}
	} else {
		sctx = trace.ContextWithSpan(base, r.span)
	}
	r.attempts++
	fetch := m.pending == nil // else it only publishes a token already issued
	tok, err := m.attempt(sctx, r.attempts)
	if base.Err() != nil {
		return 0, true
	}
	log := m.s.log
	if err == nil {
		m.endSpan("ok", nil)
		m.run = nil // the backoff goes with the run of failures
		m.succeeded(tok.Wire(m.name), m.published.Load(), fetch)
		next := m.refreshAt(tok)
		log.InfoContext(sctx, "token refreshed", slog.String("provider", m.name), slog.Time("expires_at", tok.ExpiresAt), slog.Time("next_refresh", next))
		return max(next.Sub(m.s.now()), 0), false
	}
	b := m.s.cfg.Backoff
	if errors.Is(err, refresher.ErrNotAllowed) {
		// Lost the lease (or the write was fenced off): not a provider
		// failure. Leader work is about to be stopped; wait quietly.
		log.Info("refresh skipped: not the lease holder", slog.String("provider", m.name), slog.String("error", err.Error()))
		return b.Initial, false
	}
	if r.transient == nil {
		r.transient = m.exponential(b.Initial, b.Max)
	}
	if m.pending != nil {
		// The provider answered; only the publish failed. Retry the
		// publish alone, on the transient schedule.
		wait := r.transient.NextBackOff()
		log.WarnContext(sctx, "token publish failed; serving the token from this replica and retrying the publish", slog.String("provider", m.name), slog.String("error", err.Error()), slog.Duration("retry_in", wait))
		return wait, false
	}
	m.slot.Fail(err, m.s.now())
	kind := refresher.Classify(err)
	if kind == refresher.Permanent {
		if r.permanent == nil {
			r.permanent = m.exponential(b.PermanentInitial, b.PermanentMax)
		}
		wait = r.permanent.NextBackOff()
		m.endSpan("failed", err)
		r.transient.Reset()
	} else {
		wait = r.transient.NextBackOff()
	}
	wait = retryIn(kind, err, wait, b, m.slot.Load(), m.s.now())
	checkAt := m.failed(err, wait)
	m.s.expiryCheckAt(m, checkAt)
	log.WarnContext(sctx, "token refresh failed", slog.String("provider", m.name), slog.String("kind", kind.String()), slog.String("error", err.Error()), slog.Duration("retry_in", wait))
	return wait, false
}

// endSpan ends the refresh span in progress, if any.
func (m *Manager) endSpan(outcome string, err error) {
	r := m.run
	if r == nil || r.span == nil {
		return
	}
	r.span.SetAttributes(attribute.Int("tokenbus.attempts", r.attempts), attribute.String("tokenbus.outcome", outcome))
	if err != nil {
		r.span.SetStatus(codes.Error, err.Error())
	}
	r.span.End()
	r.span, r.attempts = nil, 0
}

// settle ends the gate's admission of the last call, if any, and forgets a
// pending token (published, or rejected by the provider).
func (m *Manager) settle() {
	m.pending = nil
	if m.call != nil {
		m.call.Done()
		m.call = nil
	}
}

// discard gives up the pending token. One the provider issued to this
// manager's call (not a copy held for a repair) is reported to Discarded.
func (m *Manager) discard(reason string) {
	if m.pending != nil && m.call != nil {
		m.s.log.Warn("a token the provider issued was not published", slog.String("provider", m.name), slog.String("reason", reason))
		if m.s.cfg.Discarded != nil {
			m.s.cfg.Discarded(reason)
		}
	}
	m.settle()
}

// finish ends the manager's turns: a token the provider issued and that is
// not published yet is published now, retried while the call's context
// lasts and the token is valid. Only a lost lease (or a stop's bound running
// out) gives it up, counted.
func (m *Manager) finish() {
	defer m.endSpan("cancelled", nil)
	if m.pending == nil || m.call == nil {
		m.settle()
		return
	}
	ctx := m.call.Context()
	wait := m.exponential(20*time.Millisecond, time.Second)
	for {
		if !m.usable(*m.pending) {
			m.discard(metrics.DiscardExpired)
			return
		}
		if ctx.Err() != nil {
			if m.call.Held() {
				m.discard(metrics.DiscardPublishFailed) // the stop's bound ran out
			} else {
				m.discard(metrics.DiscardLeaseLost)
			}
			return
		}
		if m.publish(ctx, *m.pending) == nil {
			m.settle()
			return
		}
		t := time.NewTimer(wait.NextBackOff())
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
}

// Takeover adopts what old, the manager this one replaces (a runtime
// provider put again), published last, once old has stopped: its token is
// this manager's until it is refreshed (at once, if it was issued before
// StaleBefore), and its writes are not foreign ones.
func (m *Manager) Takeover(_ context.Context, old any) {
	o, ok := old.(*Manager)
	if !ok || o == m {
		return
	}
	if e := o.slot.Load(); e != nil {
		m.slot.Store(e)
	}
	if p := o.published.Load(); p > m.published.Load() {
		m.published.Store(p)
	}
}

// firstRefresh returns how long a started manager waits before its first
// call: at once, unless the slot already holds a valid token (published by a
// previous leader), which is then refreshed on its normal schedule. A new
// leader thus does not replace a fresh Daraja token, which would invalidate
// it fleet-wide.
func (m *Manager) firstRefresh() time.Duration {
	e := m.slot.Load()
	if e == nil || e.Token.Expired(m.s.now()) || e.Token.IssuedAt.Before(m.staleBefore) {
		return 0
	}
	at := m.refreshAt(refresher.Token{IssuedAt: e.Token.IssuedAt, ExpiresAt: e.Token.ExpiresAt})
	return max(at.Sub(m.s.now()), 0)
}

// attempt makes one upstream call and publishes its token; with a pending
// token (issued, not yet published) it only publishes that. A token the
// provider issued is kept in m.pending, and served, until its publish
// succeeds.
func (m *Manager) attempt(ctx context.Context, n int) (refresher.Token, error) {
	if m.pending != nil {
		tok := *m.pending
		if err := m.publish(ctx, tok); err != nil {
			return tok, err
		}
		m.pending = nil
		return tok, nil
	}
	ctx, span := m.s.tr.Start(ctx, "tokenbus.refresh.attempt", trace.WithAttributes(
		attribute.String("tokenbus.provider", m.name), attribute.Int("tokenbus.attempt", n)))
	defer span.End()
	start := time.Now()
	tok, err := m.provider.Token(ctx)
	took := time.Since(start)
	if m.call != nil {
		m.call.Called() // the concurrency slot covers the provider call only
	}
	if err == nil {
		// Serve it at once, whatever happens to the publish.
		m.pending = &tok
		own := tok.AccessToken.Reveal()
		m.fetched.Store(&own)
		var e *Entry
		if e, err = NewEntry(tok.Wire(m.name), m.slot.revision()); err == nil {
			m.slot.Store(e)
			err = m.publishEntry(ctx, e)
		}
		if err == nil {
			m.pending = nil
		}
	}
	if m.s.cfg.Recorder != nil && ctx.Err() == nil {
		m.s.cfg.Recorder.RecordAttempt(m.name, took, err)
	}
	if err != nil {
		span.SetAttributes(attribute.String("tokenbus.error_kind", refresher.Classify(err).String()))
		span.SetStatus(codes.Error, err.Error())
		return tok, err
	}
	span.SetAttributes(attribute.String("tokenbus.expires_at", tok.ExpiresAt.UTC().Format(time.RFC3339)))
	return tok, nil
}

// usable reports whether tok may still be served and published.
func (m *Manager) usable(tok refresher.Token) bool { return m.s.now().Before(tok.ExpiresAt) }

func (m *Manager) publish(ctx context.Context, tok refresher.Token) error {
	e, err := NewEntry(tok.Wire(m.name), 0)
	if err != nil {
		return err
	}
	return m.publishEntry(ctx, e)
}

// publishEntry stores e's token (its JSON as it is, where the Publisher
// takes it so) and serves it at the revision stored.
func (m *Manager) publishEntry(ctx context.Context, e *Entry) error {
	var rev uint64
	if p := m.s.cfg.Publisher; p != nil {
		var err error
		if ep, ok := p.(encodedPublisher); ok {
			rev, err = ep.PublishEncoded(ctx, m.name, e.JSON)
		} else {
			rev, err = p.Publish(ctx, e.Token)
		}
		if err != nil {
			return fmt.Errorf("refresh: publish %s: %w", m.name, err)
		}
		m.published.Store(rev)
	}
	m.slot.Store(&Entry{Token: e.Token, JSON: e.JSON, Revision: rev})
	return nil
}

// Owns reports whether tok, seen in the bucket at rev, is no replacement of
// this manager's token: rev is not newer than the copy it holds (its last
// publish, or a later write it took; its last publish if it holds none), or
// tok is the token it holds (published, or issued and about to be). The
// copy's revision, not the highest one ever published: a bucket deleted and
// created again starts its revisions from 1, and a write there below an
// old publish is news (the sim's bucket-recreated schedule).
func (m *Manager) Owns(tok wire.Token, rev uint64) bool {
	e := m.slot.Load()
	last := m.published.Load()
	if e != nil && e.Revision != 0 {
		last = e.Revision
	}
	if rev <= last {
		return true // not newer than what it holds: old news, not a replacement
	}
	return e != nil && e.Token.AccessToken == tok.AccessToken
}

// Repair asks Run to publish its token again at once (or to fetch one if it
// holds none): someone else's token was written to its key.
func (m *Manager) Repair() {
	m.noteRepair()
	m.s.repair(m)
}

// Replace asks Run to fetch a new token at once if bad is still its current
// one: the leader found bad in the bucket, written by no leader. Unlike
// Refresh it is not subject to the refresh cooldown (it is no caller's
// report), and it is asked again in every term that finds bad.
func (m *Manager) Replace(bad string) { m.s.kick(m, kick{bad: bad, replace: true}) }

// kick asks Run for a refresh because bad was rejected; from is the span of
// the request that reported it.
type kick struct {
	bad  string
	from trace.SpanContext
	// replace: asked by the leader (Replace), not by a caller's report: a
	// pending token equal to bad is this manager's own, not a rejected one.
	replace bool
}

// failing reports whether the last refresh failed: retries then follow the
// backoff schedule, and token.refresh requests do not add upstream calls.
func (m *Manager) failing() bool {
	_, err := m.slot.LastError()
	return err != nil
}

// CooldownLeft reports how long until a refresh may be forced again (0: now):
// at most one forced refresh per RefreshCooldown (SPEC §3). Anything that
// refreshes ahead of the schedule on a caller's behalf (token.refresh,
// token.get's min_validity) asks here first and records its refresh with
// ForceNow.
func (m *Manager) CooldownLeft() time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cooldownLeftLocked(m.s.now())
}

// ForceNow records a refresh forced now, for the token bad ("" if none):
// the cooldown starts again.
func (m *Manager) ForceNow(bad string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.forcedAt, m.forcedBad = m.s.now(), bad
}

func (m *Manager) cooldownLeftLocked(now time.Time) time.Duration {
	if m.forcedAt.IsZero() {
		return 0
	}
	return max(m.forcedAt.Add(m.cooldown).Sub(now), 0)
}

// forceFor decides what a report of bad, the current token, does: join the
// forced refresh already under way for bad (join), force one now (no join,
// no wait: the cooldown starts), or wait that long (the cooldown of the
// last forced refresh, which produced the token now reported).
func (m *Manager) forceFor(bad string) (join bool, wait time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.s.now()
	left := m.cooldownLeftLocked(now)
	switch {
	case left > 0 && m.forcedBad == bad:
		return true, 0
	case left > 0:
		return false, left
	}
	m.forcedAt, m.forcedBad = now, bad
	return false, 0
}

// stale reports whether bad is still the current token (or there is none),
// i.e. whether a refresh on its account is due.
func (m *Manager) stale(bad string) bool {
	e := m.slot.Load()
	return e == nil || e.Token.AccessToken == bad || e.Token.Expired(m.s.now())
}

// Refresh handles a report that invalid was rejected by the provider. If
// invalid is no longer the current token it returns the current one at once;
// otherwise it asks Run for a new token and waits for it (or for the refresh
// to fail, or ctx to end). Any number of concurrent callers reporting the same
// token cause one upstream call.
func (m *Manager) Refresh(ctx context.Context, invalid string) ([]byte, error) {
	e, err := m.refresh(ctx, invalid)
	if err != nil {
		return nil, err
	}
	return e.JSON, nil
}

func (m *Manager) refresh(ctx context.Context, invalid string) (*Entry, error) {
	changed := m.slot.Changed()
	if !m.stale(invalid) {
		return m.Current()
	}
	if _, err := m.slot.LastError(); err != nil {
		// Retrying on its own schedule: no extra upstream call, and never
		// the token the caller was told is rejected.
		return nil, fmt.Errorf("%w: %w", refresher.ErrNoToken, err)
	}
	if join, wait := m.forceFor(invalid); !join {
		if wait > 0 {
			return nil, &refresher.CooldownError{Cooldown: m.cooldown, RetryAfter: wait}
		}
		// A refresh already asked for is joined.
		m.s.kick(m, kick{bad: invalid, from: trace.SpanContextFromContext(ctx)})
	}
	for {
		select {
		case <-changed:
		case <-ctx.Done():
			if e, err := m.Current(); err == nil && e.Token.AccessToken != invalid {
				return e, nil
			}
			return nil, fmt.Errorf("%w: %w", refresher.ErrNoToken, ctx.Err())
		}
		changed = m.slot.Changed()
		if !m.stale(invalid) {
			return m.Current()
		}
		if _, err := m.slot.LastError(); err != nil {
			return nil, fmt.Errorf("%w: %w", refresher.ErrNoToken, err)
		}
	}
}
