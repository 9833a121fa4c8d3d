package refresh

import (
	"container/heap"
	"context"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenbus/tokenbus/services/refresher"
)

// SchedulerConfig configures a Scheduler: what every provider of a
// refresher shares.
type SchedulerConfig struct {
	// Publisher receives every fresh token; nil publishes nowhere.
	Publisher Publisher
	Backoff   refresher.Backoff
	Logger    *slog.Logger
	// Now returns the current time; time.Now if nil.
	Now func() time.Time
	// Tracer records refresh and attempt spans; the global provider if nil.
	Tracer trace.Tracer
	// Recorder is told about every upstream attempt (metrics, the status
	// page's history); nil records nothing.
	Recorder refresher.Recorder
	// Gate, if set, admits every provider call for credential (the
	// leader's gate): it waits for the call's turn and refuses, with an
	// error wrapping refresher.ErrNotAllowed, while this replica does not
	// hold the lease with time left. The call and the publish of its token
	// run under the Call's context, so a stopped manager finishes them
	// before Stop returns. nil calls at once, under Start's context.
	Gate func(ctx context.Context, credential string) (Call, error)
	// Discarded, if set, is told about each token the provider issued that
	// was never published, with the reason (metrics.DiscardReasons).
	Discarded func(reason string)
	// Observer is told about the providers' transitions while they are
	// started (events); nil tells no one.
	Observer Observer
	// Workers bounds the turns (a gate admission, a call, a publish) in
	// progress at once; DefaultWorkers if zero. The gate bounds the
	// provider calls themselves (fetch_concurrency): a few more workers
	// than that keep the gate busy while others publish.
	Workers int
}

// DefaultWorkers is the Workers of a SchedulerConfig that sets none.
const DefaultWorkers = 16

// ProviderConfig configures one provider's Manager on a Scheduler.
type ProviderConfig struct {
	// Name is the provider's configured name (subject token and KV key).
	Name string
	// Kind is the provider kind, for status reports.
	Kind     string
	Provider refresher.Provider
	// Credential names the provider's credential for the gate (one call
	// per credential at a time); Name if empty.
	Credential string
	// RefreshBefore is how long before expiry to refresh; zero means
	// DefaultRefreshBefore of the token's lifetime.
	RefreshBefore time.Duration
	// RefreshCooldown is the least time between two refreshes forced by
	// token.refresh reports (SPEC §3); DefaultRefreshCooldown if zero.
	RefreshCooldown time.Duration
	// StaleBefore, if set, marks a token issued before it as fetched with
	// replaced credentials: the manager fetches at once instead of keeping
	// it (a runtime provider put with new credentials, SPEC §8).
	StaleBefore time.Time
	// Rand, if set, is the source of the refresh-time and backoff jitter
	// (the simulation: a seed fixes them); math/rand/v2's global source if
	// nil. The manager owns it.
	Rand *rand.Rand
}

// Scheduler runs the turns of many managers: one timer heap of managers
// keyed by when their next turn is due, and at most Workers turns at a time,
// each on a short-lived goroutine (its deep stack — HTTP, JSON, tracing,
// the KV write — is freed when it ends). Nothing runs per provider between
// turns: no goroutine, timer, context or channel. A dispatching goroutine
// runs while any manager is started.
//
// Of the managers that are due, those whose token is about to leave service
// go first (in the order it leaves), then those with no valid token (in the
// order they became due), then those whose valid token is merely due for
// refresh. A token is about to leave service once half the time between its
// refresh becoming due and its leaving service has passed: a fill of many
// new providers does not starve the refresh of a token in use.
type Scheduler struct {
	cfg   SchedulerConfig
	now   func() time.Time
	log   *slog.Logger
	tr    trace.Tracer
	epoch time.Time

	mu sync.Mutex
	// timers holds started managers that are not due yet (keyed by due
	// time, or by a token's expiry check if sooner); empty and valid hold
	// the due ones with no valid token (keyed by due time) and with one
	// (keyed by when it is about to leave service).
	timers, empty, valid mheap
	started              int  // managers started and not stopped
	busy                 int  // turns in progress
	active               bool // the dispatching goroutine runs
	wake                 chan struct{}
}

// NewScheduler returns a scheduler for cfg. It runs nothing until a manager
// is started.
func NewScheduler(cfg SchedulerConfig) *Scheduler {
	cfg.Backoff = cfg.Backoff.WithDefaults()
	if cfg.Workers <= 0 {
		cfg.Workers = DefaultWorkers
	}
	s := &Scheduler{cfg: cfg, now: cfg.Now, log: cfg.Logger, tr: cfg.Tracer, epoch: time.Now(), wake: make(chan struct{}, 1)}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.tr == nil {
		s.tr = otel.Tracer("github.com/tokenbus/tokenbus/services/refresher/refresh")
	}
	s.timers.where, s.empty.where, s.valid.where = inTimers, inEmpty, inValid
	return s
}

// NewManager returns a manager of p on this scheduler.
func (s *Scheduler) NewManager(p ProviderConfig) *Manager {
	if p.RefreshCooldown <= 0 {
		p.RefreshCooldown = DefaultRefreshCooldown
	}
	if p.Credential == "" {
		p.Credential = p.Name
	}
	m := &Manager{s: s, name: p.Name, kind: p.Kind, cred: p.Credential, provider: p.Provider,
		before: p.RefreshBefore, cooldown: p.RefreshCooldown, staleBefore: p.StaleBefore, idx: -1}
	if p.Rand != nil {
		m.rnd = &jitter{r: p.Rand}
	}
	m.h.start = s.now()
	return m
}

// Manager states, under the scheduler's mutex.
const (
	stIdle     uint8 = iota // not started (or stopped)
	stQueued                // started, in a heap
	stRunning               // a turn in progress
	stStopping              // being stopped: Stop waits for the turn in progress, or publishes
	stParked                // started, but its context ended: no turns until Stop
)

// Heaps a manager can be in.
const (
	inNone uint8 = iota
	inTimers
	inEmpty
	inValid
)

// mono returns the scheduler's clock: monotonic nanoseconds since it was
// made.
func (s *Scheduler) mono() int64 { return int64(time.Since(s.epoch)) }

// at converts a time of the Now clock into the scheduler's clock, as the
// same distance from now.
func (s *Scheduler) at(t time.Time, mono int64) int64 { return mono + int64(t.Sub(s.now())) }

func (s *Scheduler) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// start is Manager.Start.
func (s *Scheduler) start(m *Manager, ctx context.Context) {
	m.setRunning(true)
	s.mu.Lock()
	defer s.mu.Unlock()
	if m.state != stIdle {
		return
	}
	m.ctx = ctx
	now := s.mono()
	m.next = now + int64(m.firstRefresh())
	m.expiryAt = 0
	if k := m.kick; k != nil {
		m.kick = nil
		s.applyKickLocked(m, *k, now)
	}
	if m.repair {
		s.applyRepairLocked(m, now)
	}
	m.state = stQueued
	s.timers.add(m, m.next)
	s.started++
	if !s.active {
		s.active = true
		go s.dispatch()
	}
	s.signal()
}

// stop is Manager.Stop.
func (s *Scheduler) stop(m *Manager) {
	s.mu.Lock()
	switch m.state {
	case stIdle, stStopping:
		s.mu.Unlock()
		return // not started, or another Stop has it
	case stRunning:
		m.state = stStopping
		ch := make(chan struct{})
		m.stopped = ch
		if m.abort != nil {
			m.abort() // waiting for the gate: give up the wait
		}
		s.mu.Unlock()
		<-ch // the turn ended; the turn left m to us
		s.mu.Lock()
	case stQueued:
		s.removeLocked(m)
	}
	// Stopping until finished: a Start meanwhile is ignored, a kick or a
	// repair is kept for the next Start.
	m.state = stStopping
	m.stopped, m.kick, m.repair = nil, nil, false
	s.started--
	s.signal()
	s.mu.Unlock()
	m.finish()
	m.setRunning(false)
	s.mu.Lock()
	m.state, m.ctx = stIdle, nil
	s.mu.Unlock()
}

// kick asks for a refresh of m at once, because k.bad was rejected: taken
// now if m waits for its turn, after its turn if one is in progress, at
// Start if it is not started.
func (s *Scheduler) kick(m *Manager, k kick) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m.state == stQueued {
		if s.applyKickLocked(m, k, s.mono()) {
			s.requeueLocked(m)
		}
		return
	}
	if m.kick == nil || !m.stale(m.kick.bad) {
		m.kick = &k
	}
}

// applyKickLocked takes a kick: unless bad was already replaced (or m is
// retrying on its own schedule), m's turn is due now. It reports whether
// it took it.
func (s *Scheduler) applyKickLocked(m *Manager, k kick, now int64) bool {
	if k.replace && m.ownCopy() {
		return false // the leader asks about a token this manager published itself
	}
	if !m.stale(k.bad) || m.failing() {
		return false // already replaced, or retrying on its own schedule
	}
	if m.pending != nil && m.pending.AccessToken.Reveal() == k.bad && !k.replace {
		m.settle() // the provider rejected it: fetch another
	}
	// (asked by the leader, Replace: its own token, issued and not yet
	// published, is published)
	if k.from.IsValid() {
		if m.run == nil {
			m.run = &refreshRun{}
		}
		m.run.link = k.from
	}
	m.next = now
	return true
}

// repair asks for m's token to be published again at once.
func (s *Scheduler) repair(m *Manager) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m.state == stQueued {
		s.applyRepairLocked(m, s.mono())
		s.requeueLocked(m)
		return
	}
	m.repair = true
}

// applyRepairLocked takes a repair: someone else's token was written to
// m's key; m publishes its own again (or fetches one if it holds none).
func (s *Scheduler) applyRepairLocked(m *Manager, now int64) {
	m.repair = false
	if e := m.slot.Load(); e != nil && !e.Token.Expired(m.s.now()) && m.pending == nil {
		m.pending = &refresher.Token{AccessToken: refresher.Secret(e.Token.AccessToken), TokenType: e.Token.TokenType, IssuedAt: e.Token.IssuedAt, ExpiresAt: e.Token.ExpiresAt}
	}
	m.next = now
}

// requeueLocked puts a queued m back in the timer heap at its (new) due time.
func (s *Scheduler) requeueLocked(m *Manager) {
	s.removeLocked(m)
	s.timers.add(m, timerKey(m))
	s.signal()
}

func timerKey(m *Manager) int64 {
	if m.expiryAt != 0 && m.expiryAt < m.next {
		return m.expiryAt
	}
	return m.next
}

func (s *Scheduler) removeLocked(m *Manager) {
	switch m.where {
	case inTimers:
		s.timers.remove(m)
	case inEmpty:
		s.empty.remove(m)
	case inValid:
		s.valid.remove(m)
	}
}

// setAbort records how to abort m's wait for the gate (nil: not waiting).
// It reports false if m is being stopped.
func (s *Scheduler) setAbort(m *Manager, abort context.CancelFunc) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	m.abort = abort
	return m.state != stStopping
}

// expiryCheckAt asks for m's token to be checked at at (the moment it
// leaves service) while its refreshes fail; zero asks nothing.
func (s *Scheduler) expiryCheckAt(m *Manager, at time.Time) {
	if at.IsZero() {
		return
	}
	s.mu.Lock()
	m.expiryAt = s.at(at, s.mono())
	s.mu.Unlock()
}

// dispatch runs while any manager is started: it moves managers whose turn
// is due from the timer heap to the due heaps, and starts their turns while
// workers are free.
func (s *Scheduler) dispatch() {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		s.mu.Lock()
		if s.started == 0 && s.busy == 0 {
			s.active = false
			s.mu.Unlock()
			return
		}
		now := s.mono()
		checks := s.dueLocked(now)
		var turns []*Manager
		for s.busy < s.cfg.Workers {
			m := s.pickLocked(now)
			if m == nil {
				break
			}
			m.state = stRunning
			s.busy++
			turns = append(turns, m)
		}
		wait := time.Duration(-1)
		if s.busy < s.cfg.Workers && s.timers.Len() > 0 {
			wait = time.Duration(s.timers.top().key - now)
		}
		s.mu.Unlock()
		for _, m := range turns {
			go s.work(m)
		}
		if len(checks) > 0 {
			for _, m := range checks {
				again := m.checkExpiry()
				s.mu.Lock()
				if m.state == stQueued && m.where == inNone {
					if !again.IsZero() {
						m.expiryAt = s.at(again, s.mono())
					}
					s.timers.add(m, timerKey(m))
				}
				s.mu.Unlock()
			}
			continue
		}
		if wait < 0 {
			<-s.wake
			continue
		}
		timer.Reset(wait)
		select {
		case <-timer.C:
		case <-s.wake:
			timer.Stop()
		}
	}
}

// dueLocked moves the managers whose time has come out of the timer heap:
// those due to the due heaps, those due for an expiry check only into the
// returned list (they go back to the timer heap once checked).
func (s *Scheduler) dueLocked(now int64) (checks []*Manager) {
	for s.timers.Len() > 0 && s.timers.top().key <= now {
		m := s.timers.pop()
		if m.expiryAt != 0 && m.expiryAt <= now {
			m.expiryAt = 0
			if m.next > now {
				checks = append(checks, m)
				continue
			}
			// Due anyway; the turn's failure, if any, checks again.
		}
		if m.next > now {
			s.timers.add(m, timerKey(m))
			continue
		}
		e := m.slot.Load()
		if wall := s.now(); e != nil && servable(e.Token, wall) {
			end := s.at(servingEnd(e.Token), now)
			s.valid.add(m, m.next+(end-m.next)/2)
		} else {
			s.empty.add(m, m.next)
		}
	}
	return checks
}

// pickLocked returns the due manager to run next, or nil.
func (s *Scheduler) pickLocked(now int64) *Manager {
	switch {
	case s.valid.Len() > 0 && s.valid.top().key <= now:
		return s.valid.pop() // about to leave service
	case s.empty.Len() > 0:
		return s.empty.pop()
	case s.valid.Len() > 0:
		return s.valid.pop()
	}
	return nil
}

// work runs one turn of m and schedules the next.
func (s *Scheduler) work(m *Manager) {
	wait, ended := m.turn()
	if ended && m.ctx.Err() == nil {
		// The call's context ended (the lease was lost): give up the
		// pending token (counted) and try again later, if the lease is won
		// again before the manager is stopped.
		m.finish()
		if wait <= 0 {
			wait = s.cfg.Backoff.Initial
		}
		ended = false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.busy--
	s.signal()
	if m.state == stStopping {
		close(m.stopped) // Stop takes it from here
		return
	}
	if ended {
		m.state = stParked // its context ended: Stop ends it
		return
	}
	now := s.mono()
	m.next = now + int64(wait)
	if k := m.kick; k != nil {
		m.kick = nil
		s.applyKickLocked(m, *k, now)
	}
	if m.repair {
		s.applyRepairLocked(m, now)
	}
	m.state = stQueued
	s.timers.add(m, timerKey(m))
}

// mheap is a heap of managers by key.
type mheap struct {
	ms    []*Manager
	where uint8
}

func (h *mheap) Len() int           { return len(h.ms) }
func (h *mheap) Less(i, j int) bool { return h.ms[i].key < h.ms[j].key }
func (h *mheap) Swap(i, j int) {
	h.ms[i], h.ms[j] = h.ms[j], h.ms[i]
	h.ms[i].idx, h.ms[j].idx = int32(i), int32(j)
}
func (h *mheap) Push(x any) {
	m := x.(*Manager)
	m.idx, m.where = int32(len(h.ms)), h.where
	h.ms = append(h.ms, m)
}
func (h *mheap) Pop() any {
	n := len(h.ms) - 1
	m := h.ms[n]
	h.ms[n] = nil
	h.ms = h.ms[:n]
	m.idx, m.where = -1, inNone
	return m
}

func (h *mheap) top() *Manager { return h.ms[0] }
func (h *mheap) pop() *Manager { return heap.Pop(h).(*Manager) }
func (h *mheap) add(m *Manager, key int64) {
	m.key = key
	heap.Push(h, m)
}
func (h *mheap) remove(m *Manager) { heap.Remove(h, int(m.idx)) }
