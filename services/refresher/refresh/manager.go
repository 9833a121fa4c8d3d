// Package refresh owns the life of each provider's token inside a refresher:
// fetch at start, publish, refresh ahead of expiry with jitter, retry with
// exponential backoff (transient failures) or slowly (permanent ones), and
// refresh on demand when a caller reports the current token rejected. It
// serves the current token from memory and never an expired one.
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
	"go.opentelemetry.io/otel"
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

// Manager keeps one provider's token fresh. Create it with NewManager, run it
// with Run, read it with Current; Refresh asks for a new token.
type Manager struct {
	cfg    Config
	log    *slog.Logger
	now    func() time.Time
	slot   *Slot
	kick   chan kick
	repair chan struct{}
	tr     trace.Tracer
	rnd    jitter
	// pending is a token the provider issued that is not yet published: it
	// is served from this replica meanwhile, and only its publish is
	// retried (fetching another would, for Daraja, kill it fleet-wide).
	// call is the gate's admission it came from, held until the token is
	// published or given up. Both belong to Run (and the step it waits for);
	// they outlive one step, so a stop publishes the token before Run
	// returns.
	pending *refresher.Token
	call    Call
	// published is the revision of this manager's last successful publish.
	published atomic.Uint64
	// health follows the run of failures since the last success, for the
	// provider's condition and its events.
	health *health
	// forced is the last refresh forced by a report (the cooldown).
	forcedMu  sync.Mutex
	forcedAt  time.Time
	forcedBad string
}

// DefaultRefreshCooldown is the refresh cooldown of a provider that sets none.
const DefaultRefreshCooldown = 5 * time.Second

// NewManager returns a manager for cfg.Provider.
func NewManager(cfg Config) *Manager {
	cfg.Backoff = cfg.Backoff.WithDefaults()
	m := &Manager{cfg: cfg, log: cfg.Logger, now: cfg.Now, slot: newSlot(), kick: make(chan kick, 4), repair: make(chan struct{}, 1), tr: cfg.Tracer, rnd: jitter{r: cfg.Rand}}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	m.log = m.log.With(slog.String("provider", cfg.Name))
	if m.now == nil {
		m.now = time.Now
	}
	if m.cfg.RefreshCooldown <= 0 {
		m.cfg.RefreshCooldown = DefaultRefreshCooldown
	}
	if m.tr == nil {
		m.tr = otel.Tracer("github.com/tokenbus/tokenbus/services/refresher/refresh")
	}
	m.health = newHealth(cfg.Name, cfg.Observer, m.now, m.slot)
	return m
}

// Status reports the provider's state for token.status and the status page.
func (m *Manager) Status() wire.ProviderStatus {
	st := wire.ProviderStatus{Name: m.cfg.Name, Kind: m.cfg.Kind, State: wire.StateNoToken}
	now := m.now()
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
	cond, since, cause := m.health.condition()
	st.Condition, st.ConditionSince, st.Cause = cond, &since, cause
	return st
}

// Brief returns what Status reports in State and Condition, building
// nothing else and allocating nothing: token.status's summary and the
// metrics count every provider with it.
func (m *Manager) Brief() (state, condition string) {
	now, e := m.now(), m.slot.Load()
	state = wire.StateNoToken
	if e != nil && servable(e.Token, now) {
		state = wire.StateOK
		if _, err := m.slot.LastError(); err != nil {
			state = wire.StateFailing
		}
	}
	condition, _, _ = m.health.conditionAt(now, e)
	return state, condition
}

// Name returns the provider name.
func (m *Manager) Name() string { return m.cfg.Name }

// Slot returns the manager's token slot.
func (m *Manager) Slot() *Slot { return m.slot }

// Current returns the current token, pre-encoded, or an error wrapping
// refresher.ErrNoToken when none is valid at this moment.
func (m *Manager) Current() (*Entry, error) { return m.slot.Valid(m.now()) }

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
	margin := m.cfg.RefreshBefore
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

// Run fetches a token at once, then keeps it fresh until ctx ends. It returns
// nil when ctx is cancelled.
func (m *Manager) Run(ctx context.Context) error {
	transient := m.exponential(m.cfg.Backoff.Initial, m.cfg.Backoff.Max)
	permanent := m.exponential(m.cfg.Backoff.PermanentInitial, m.cfg.Backoff.PermanentMax)
	timer := time.NewTimer(m.firstRefresh())
	defer timer.Stop()
	var (
		span     trace.Span
		attempts int
		link     trace.SpanContext // the token.refresh request that asked for the next refresh
	)
	endSpan := func(outcome string, err error) {
		if span == nil {
			return
		}
		span.SetAttributes(attribute.Int("tokenbus.attempts", attempts), attribute.String("tokenbus.outcome", outcome))
		if err != nil {
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
		span, attempts = nil, 0
	}
	defer func() { endSpan("cancelled", nil) }()
	m.health.run(true)
	defer m.health.run(false)

	for {
		select {
		case <-ctx.Done():
			m.stop()
			return nil
		case k := <-m.kick:
			if k.replace && m.ownCopy() {
				continue // the leader asks about a token this manager published itself
			}
			if !m.stale(k.bad) || m.failing() {
				continue // already replaced, or retrying on its own schedule
			}
			if m.pending != nil && m.pending.AccessToken.Reveal() == k.bad && !k.replace {
				m.settle() // the provider rejected it: fetch another
			} // (asked by the leader, Replace: its own token, issued and not yet published, is published)
			timer.Stop()
			link = k.from
		case <-m.repair:
			// Someone else's token was written to our key: write ours again.
			if e := m.slot.Load(); e != nil && !e.Token.Expired(m.now()) && m.pending == nil {
				m.pending = &refresher.Token{AccessToken: refresher.Secret(e.Token.AccessToken), TokenType: e.Token.TokenType, IssuedAt: e.Token.IssuedAt, ExpiresAt: e.Token.ExpiresAt}
			}
			timer.Stop()
		case <-timer.C:
		}
		if m.pending != nil && !m.usable(*m.pending) {
			m.discard(metrics.DiscardExpired)
		}

		step := func() bool {
			// The call and the publish run under the gate's context: a
			// stop of this loop lets them finish, a lost lease ends them.
			base := ctx
			if m.call != nil {
				base = m.call.Context()
			}
			var sctx context.Context
			if span == nil {
				// A refresh asked for by token.refresh links to that request's span.
				sctx, span = m.tr.Start(base, "tokenbus.refresh", trace.WithAttributes(attribute.String("tokenbus.provider", m.cfg.Name)),
					trace.WithLinks(trace.Link{SpanContext: link}))
				link = trace.SpanContext{}
			} else {
				sctx = trace.ContextWithSpan(base, span)
			}
			attempts++
			fetch := m.pending == nil // else it only publishes a token already issued
			tok, err := m.attempt(sctx, attempts)
			if base.Err() != nil {
				return true
			}
			if err == nil {
				transient.Reset()
				permanent.Reset()
				endSpan("ok", nil)
				m.health.succeeded(tok.Wire(m.cfg.Name), m.published.Load(), fetch)
				next := m.refreshAt(tok)
				m.log.InfoContext(sctx, "token refreshed", slog.Time("expires_at", tok.ExpiresAt), slog.Time("next_refresh", next))
				timer.Reset(max(next.Sub(m.now()), 0))
				return false
			}
			if errors.Is(err, refresher.ErrNotAllowed) {
				// Lost the lease (or the write was fenced off): not a provider
				// failure. Leader work is about to be cancelled; wait quietly.
				m.log.Info("refresh skipped: not the lease holder", slog.String("error", err.Error()))
				timer.Reset(m.cfg.Backoff.Initial)
				return false
			}
			if m.pending != nil {
				// The provider answered; only the publish failed. Retry the
				// publish alone, on the transient schedule.
				wait := transient.NextBackOff()
				m.log.WarnContext(sctx, "token publish failed; serving the token from this replica and retrying the publish", slog.String("error", err.Error()), slog.Duration("retry_in", wait))
				timer.Reset(wait)
				return false
			}
			m.slot.Fail(err, m.now())
			kind := refresher.Classify(err)
			var wait time.Duration
			if kind == refresher.Permanent {
				wait = permanent.NextBackOff()
				endSpan("failed", err)
				transient.Reset()
			} else {
				wait = transient.NextBackOff()
			}
			wait = retryIn(kind, err, wait, m.cfg.Backoff, m.slot.Load(), m.now())
			m.health.failed(err, wait)
			m.log.WarnContext(sctx, "token refresh failed", slog.String("kind", kind.String()), slog.String("error", err.Error()), slog.Duration("retry_in", wait))
			timer.Reset(wait)
			return false
		}
		// One step (the attempt, its span and logs) runs on a short-lived
		// goroutine: its deep stack (HTTP, JSON, tracing, the KV write) is
		// freed when it ends, so the goroutine that waits here between
		// refreshes stays small. With thousands of providers that is most of
		// the memory each one costs.
		if m.pending == nil && m.cfg.Gate != nil {
			// Wait for the gate here, on this small goroutine, rather than
			// on thousands of step goroutines at a start.
			c, err := m.cfg.Gate(ctx)
			if err != nil {
				if ctx.Err() != nil {
					m.stop()
					return nil
				}
				// Not the lease holder (or too little time left on the
				// lease): not a provider failure. Leader work is about to be
				// cancelled, or the lease renewed; wait quietly.
				m.log.Info("refresh skipped: not the lease holder", slog.String("error", err.Error()))
				timer.Reset(m.cfg.Backoff.Initial)
				continue
			}
			m.call = c
		}
		var stop bool
		offload(func() { stop = step() })
		if m.pending == nil {
			m.settle()
		}
		if stop {
			m.stop()
			return nil
		}
	}
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
		m.log.Warn("a token the provider issued was not published", slog.String("reason", reason))
		if m.cfg.Discarded != nil {
			m.cfg.Discarded(reason)
		}
	}
	m.settle()
}

// stop ends Run: a token the provider issued and that is not published yet
// is published now, retried while the call's context lasts (a clean stop:
// the lease is renewed meanwhile) and the token is valid. Only a lost lease
// (or a stop's bound running out) gives it up, counted.
func (m *Manager) stop() {
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
		select {
		case <-ctx.Done():
		case <-time.After(wait.NextBackOff()):
		}
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

// offload runs fn on its own goroutine and waits for it.
func offload(fn func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	<-done
}

// firstRefresh returns how long Run waits before its first call: at once,
// unless the slot already holds a valid token (published by a previous
// leader), which is then refreshed on its normal schedule. A new leader thus
// does not replace a fresh Daraja token, which would invalidate it fleet-wide.
func (m *Manager) firstRefresh() time.Duration {
	e := m.slot.Load()
	if e == nil || e.Token.Expired(m.now()) || e.Token.IssuedAt.Before(m.cfg.StaleBefore) {
		return 0
	}
	at := m.refreshAt(refresher.Token{IssuedAt: e.Token.IssuedAt, ExpiresAt: e.Token.ExpiresAt})
	return max(at.Sub(m.now()), 0)
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
	ctx, span := m.tr.Start(ctx, "tokenbus.refresh.attempt", trace.WithAttributes(
		attribute.String("tokenbus.provider", m.cfg.Name), attribute.Int("tokenbus.attempt", n)))
	defer span.End()
	start := time.Now()
	tok, err := m.cfg.Provider.Token(ctx)
	took := time.Since(start)
	if m.call != nil {
		m.call.Called() // the concurrency slot covers the provider call only
	}
	if err == nil {
		// Serve it at once, whatever happens to the publish.
		m.pending = &tok
		if e, eerr := NewEntry(tok.Wire(m.cfg.Name), m.slot.revision()); eerr == nil {
			m.slot.Store(e)
		}
		if err = m.publish(ctx, tok); err == nil {
			m.pending = nil
		}
	}
	if m.cfg.Recorder != nil && ctx.Err() == nil {
		m.cfg.Recorder.RecordAttempt(m.cfg.Name, took, err)
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
func (m *Manager) usable(tok refresher.Token) bool { return m.now().Before(tok.ExpiresAt) }

func (m *Manager) publish(ctx context.Context, tok refresher.Token) error {
	w := tok.Wire(m.cfg.Name)
	var rev uint64
	if m.cfg.Publisher != nil {
		r, err := m.cfg.Publisher.Publish(ctx, w)
		if err != nil {
			return fmt.Errorf("refresh: publish %s: %w", m.cfg.Name, err)
		}
		rev = r
		m.published.Store(r)
	}
	e, err := NewEntry(w, rev)
	if err != nil {
		return err
	}
	m.slot.Store(e)
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
	m.health.repair()
	select {
	case m.repair <- struct{}{}:
	default:
	}
}

// Replace asks Run to fetch a new token at once if bad is still its current
// one: the leader found bad in the bucket, written by no leader. Unlike
// Refresh it is not subject to the refresh cooldown (it is no caller's
// report), and it is asked again in every term that finds bad.
func (m *Manager) Replace(bad string) {
	select {
	case m.kick <- kick{bad: bad, replace: true}:
	default:
	}
}

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
	m.forcedMu.Lock()
	defer m.forcedMu.Unlock()
	return m.cooldownLeftLocked(m.now())
}

// ForceNow records a refresh forced now, for the token bad ("" if none):
// the cooldown starts again.
func (m *Manager) ForceNow(bad string) {
	m.forcedMu.Lock()
	defer m.forcedMu.Unlock()
	m.forcedAt, m.forcedBad = m.now(), bad
}

func (m *Manager) cooldownLeftLocked(now time.Time) time.Duration {
	if m.forcedAt.IsZero() {
		return 0
	}
	return max(m.forcedAt.Add(m.cfg.RefreshCooldown).Sub(now), 0)
}

// forceFor decides what a report of bad, the current token, does: join the
// forced refresh already under way for bad (join), force one now (no join,
// no wait: the cooldown starts), or wait that long (the cooldown of the
// last forced refresh, which produced the token now reported).
func (m *Manager) forceFor(bad string) (join bool, wait time.Duration) {
	m.forcedMu.Lock()
	defer m.forcedMu.Unlock()
	now := m.now()
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
	return e == nil || e.Token.AccessToken == bad || e.Token.Expired(m.now())
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
			return nil, &refresher.CooldownError{Cooldown: m.cfg.RefreshCooldown, RetryAfter: wait}
		}
		select {
		case m.kick <- kick{bad: invalid, from: trace.SpanContextFromContext(ctx)}:
		default: // a refresh is already asked for; wait for it
		}
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
