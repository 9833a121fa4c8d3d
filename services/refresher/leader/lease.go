package leader

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// LeaseKey is the lease's key in the lease bucket. It starts with "_", so it
// can never be a provider name.
const LeaseKey = "_lease"

// KV is what the lease needs of its bucket. LeaseBucket adapts a
// jetstream.KeyValue; tests use an in-memory one.
type KV interface {
	Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error)
	Create(ctx context.Context, key string, value []byte) (uint64, error)
	Update(ctx context.Context, key string, value []byte, revision uint64) (uint64, error)
	// Watch reports changes of key from now on.
	Watch(ctx context.Context, key string) (jetstream.KeyWatcher, error)
}

// LeaseBucket adapts a JetStream KV bucket (<bucket>-lease) to KV.
func LeaseBucket(kv jetstream.KeyValue) KV { return jsKV{kv} }

type jsKV struct{ kv jetstream.KeyValue }

// Get returns key's entry. A key whose last entry is a delete or purge
// marker answers jetstream.ErrKeyDeleted (with the marker's entry, when
// known), a key that never existed
// jetstream.ErrKeyNotFound: a standby creates a lease that never existed at
// once, but waits a ttl before it creates one someone deleted (the holder
// may still act until its next renewal).
func (b jsKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	e, err := b.kv.Get(ctx, key)
	if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return e, err
	}
	if h, herr := b.kv.History(ctx, key); herr == nil && len(h) > 0 {
		return h[len(h)-1], jetstream.ErrKeyDeleted // the marker: its revision tells deletes apart
	}
	return nil, err
}
func (b jsKV) Create(ctx context.Context, key string, value []byte) (uint64, error) {
	return b.kv.Create(ctx, key, value)
}
func (b jsKV) Update(ctx context.Context, key string, value []byte, rev uint64) (uint64, error) {
	return b.kv.Update(ctx, key, value, rev)
}
func (b jsKV) Watch(ctx context.Context, key string) (jetstream.KeyWatcher, error) {
	return b.kv.Watch(ctx, key, jetstream.UpdatesOnly())
}

// Clock tells the time; the lease's timing runs on it. Tests inject their own
// or run in a testing/synctest bubble.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Record is the lease's value in KV.
type Record struct {
	// Holder names the replica holding the lease.
	Holder string `json:"holder"`
	// Term is the lease bucket revision at which the holder acquired the
	// lease: it grows with every change of holder. 0 on the acquiring write
	// itself (whose revision is the term).
	Term uint64 `json:"term,omitempty"`
	// TTLMillis is the holder's lease TTL, for people only: a standby waits
	// its own TTL, never a record's (a record may be forged).
	TTLMillis int64 `json:"ttl_ms"`
	// RenewedAt is the holder's wall clock at renewal, for people only.
	RenewedAt time.Time `json:"renewed_at"`
	// Released is set by a holder that stopped cleanly: every call it made
	// has finished and its tokens are published, so a standby takes the
	// lease over at once instead of after a ttl.
	Released bool `json:"released,omitempty"`
}

// LeaseConfig configures a Lease. Zero durations take defaults derived from TTL.
type LeaseConfig struct {
	// KV is the lease bucket (<bucket>-lease).
	KV KV
	// Holder names this replica.
	Holder string
	// TTL is how long a lease lasts without renewal.
	TTL time.Duration
	// RenewDeadline is how long after a renewal was sent the holder still
	// acts as leader; default 2/3 of TTL. Must be below TTL.
	RenewDeadline time.Duration
	// RetryPeriod is how often the holder renews and a standby checks;
	// default TTL/5. Must be below RenewDeadline.
	RetryPeriod time.Duration
	// AcquireDelay is how long a new holder waits before starting its work,
	// so that calls a deposed holder had in flight have finished; default
	// RetryPeriod, at most 1 s.
	AcquireDelay time.Duration
	// DrainTimeout bounds a clean stop: after the context of Run ends, the
	// holder keeps renewing while its work finishes the provider calls in
	// flight and publishes their tokens, for at most this long; then the
	// work is cancelled as on a lost lease. Default 15 s (the default
	// provider request timeout, 10 s, and a publish).
	DrainTimeout time.Duration
	// Clock tells the time; the real clock if nil.
	Clock Clock
	// Logger receives leadership changes.
	Logger *slog.Logger
	// OnChange, if set, is called on every change of leadership as seen by
	// this replica (for metrics).
	OnChange func(State)
	// OnRenewFailure, if set, is called for every failed renewal.
	OnRenewFailure func(error)
	// OnLapse, if set, is told when this holder's lease lapses at its
	// deadline with no conflicting write seen (JetStream could not commit
	// its renewals), and until when it tries to resume it (Resuming).
	OnLapse func(term uint64, until time.Time)
	// HolderResuming, if set, asks whether the holder of term is alive and
	// resuming its lapsed lease; a standby defers its takeover while it is.
	// Leader wires both over NATS.
	HolderResuming func(ctx context.Context, term uint64) bool
}

func (c LeaseConfig) withDefaults() LeaseConfig {
	if c.RenewDeadline <= 0 {
		c.RenewDeadline = c.TTL * 2 / 3
	}
	if c.RetryPeriod <= 0 {
		c.RetryPeriod = c.TTL / 5
	}
	if c.AcquireDelay <= 0 {
		c.AcquireDelay = min(c.RetryPeriod, time.Second)
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = 15 * time.Second
	}
	if c.Clock == nil {
		c.Clock = realClock{}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func (c LeaseConfig) validate() error {
	switch {
	case c.KV == nil || c.Holder == "":
		return errors.New("leader: the lease bucket and the holder's name are required")
	case c.TTL <= 0:
		return errors.New("leader: lease ttl must be positive")
	case c.RenewDeadline >= c.TTL:
		return fmt.Errorf("leader: renew_deadline (%v) must be less than ttl (%v): the margin between them covers pauses and clock-rate differences", c.RenewDeadline, c.TTL)
	case c.RetryPeriod >= c.RenewDeadline:
		return fmt.Errorf("leader: retry_period (%v) must be less than renew_deadline (%v), so a holder renews several times before its deadline", c.RetryPeriod, c.RenewDeadline)
	case c.RetryPeriod <= 0:
		return errors.New("leader: retry_period must be positive")
	}
	return nil
}

// State is the leadership as one replica sees it.
type State struct {
	// Leader reports whether this replica holds a valid lease.
	Leader bool
	// Holder names the lease holder last seen ("" if none).
	Holder string
	// Term is the holder's term last seen.
	Term uint64
}

// Lease campaigns for the lease and runs the leader's work while it holds
// it. Its methods are safe for concurrent use.
type Lease struct {
	cfg   LeaseConfig
	clock Clock

	mu       sync.Mutex
	leader   bool
	rev      uint64    // our last write of the lease key
	deadline time.Time // no provider call at or after it
	state    State
	// lapsed is the term whose lease lapsed at its deadline with no
	// conflicting write seen, while this replica may resume it (until
	// lapsedUntil); 0 if none.
	lapsed      uint64
	lapsedUntil time.Time
}

// NewLease returns a Lease for cfg, or an error if its timing is invalid.
func NewLease(cfg LeaseConfig) (*Lease, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Lease{cfg: cfg, clock: cfg.Clock}, nil
}

// Valid reports whether this replica holds the lease and its local deadline
// has not passed. Check it immediately before every provider call.
func (l *Lease) Valid() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.leader && l.clock.Now().Before(l.deadline)
}

// Left returns how long this replica may still act as leader without
// another renewal (0 if it does not hold the lease).
func (l *Lease) Left() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.leader {
		return 0
	}
	return max(l.deadline.Sub(l.clock.Now()), 0)
}

// State returns the leadership as this replica sees it.
func (l *Lease) State() State {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.state
	s.Leader = l.leader && l.clock.Now().Before(l.deadline)
	return s
}

// Held reads the lease record and reports whether it still names this
// replica in its current term: a check against the server, not against the
// local deadline.
func (l *Lease) Held(ctx context.Context) bool {
	l.mu.Lock()
	term, leader := l.state.Term, l.leader
	l.mu.Unlock()
	if !leader {
		return false
	}
	e, err := l.get(ctx)
	if err != nil {
		return false
	}
	rec, _ := decode(e)
	return rec.Holder == l.cfg.Holder && recordTerm(rec, e) == term
}

// Run campaigns until ctx ends. While this replica holds the lease it calls
// lead with two contexts: stop ends when the work should wind down (ctx
// ended, or the lease was lost), lost ends only when the lease was lost (its
// deadline passed, or the record changed) or the drain bound ran out.
// Provider calls and the writes of their tokens run under lost, so a clean
// stop lets them finish; the lease is renewed until lead returns, and only
// then released (a record marked released, which a standby takes over at
// once). Run waits for lead to return before campaigning again.
func (l *Lease) Run(ctx context.Context, lead func(stop, lost context.Context)) error {
	for {
		if !l.campaign(ctx) {
			return nil
		}
		lost, cancelLost := context.WithCancel(context.WithoutCancel(ctx))
		stop, cancelStop := context.WithCancel(lost)
		unhook := context.AfterFunc(ctx, func() {
			cancelStop()
			// The drain is bounded: past it, the work is cancelled as on a
			// lost lease (and whatever it could not publish is counted).
			go func() {
				select {
				case <-l.clock.After(l.cfg.DrainTimeout):
					cancelLost()
				case <-lost.Done():
				}
			}()
		})
		done := make(chan struct{})
		go func() {
			defer close(done)
			select {
			case <-l.clock.After(l.cfg.AcquireDelay):
				lead(stop, lost)
			case <-stop.Done():
			}
		}()
		kept := l.hold(lost, done)
		cancelLost()
		cancelStop()
		unhook()
		<-done
		l.setLeader(false, 0, time.Time{})
		if ctx.Err() != nil {
			if kept {
				l.release()
			}
			return nil
		}
	}
}

// campaign waits until this replica acquires the lease (true) or ctx ends.
// A standby takes a lease over once it has seen the same revision, unchanged,
// for its own TTL: whatever the record says (a hostile record may claim an
// hour, or not be JSON at all), no replica waits longer than that.
func (l *Lease) campaign(ctx context.Context) bool {
	ctx, stop := context.WithCancel(ctx)
	defer stop() // ends this campaign's watcher
	var (
		seenRev uint64
		seenAt  time.Time
	)
	updates := l.watch(ctx)
	var (
		deletedAt  time.Time // when this replica first saw the key deleted
		deletedRev uint64    // by the marker at this revision (0: unknown)
	)
	for {
		entry, err := l.get(ctx)
		if !errors.Is(err, jetstream.ErrKeyDeleted) {
			deletedAt = time.Time{}
		} else if entry != nil && entry.Revision() != deletedRev {
			// Another delete: the key was written in between (a holder
			// may have acquired it since the last look), so the wait starts
			// again (seed 9556 of the simulation).
			deletedAt, deletedRev = time.Time{}, entry.Revision()
		}
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			// Never created: nobody can hold it.
			if l.tryCreate(ctx) {
				return true
			}
		case errors.Is(err, jetstream.ErrKeyDeleted):
			// Deleted from outside (a clean release marks the record
			// instead): its holder may act until its next renewal finds it
			// gone, so wait a whole ttl, as for a record that stopped
			// changing.
			if deletedAt.IsZero() {
				deletedAt = l.clock.Now()
				l.observe("", 0)
			} else if l.clock.Now().Sub(deletedAt) >= l.cfg.TTL && l.tryCreate(ctx) {
				return true
			}
		case err != nil:
			if ctx.Err() == nil {
				l.cfg.Logger.Warn("leader: cannot read the lease", slog.String("error", err.Error()))
			}
		default:
			rec, derr := decode(entry)
			if derr != nil && entry.Revision() != seenRev {
				l.cfg.Logger.Warn("leader: the lease record is not a lease; it is taken over after the ttl", slog.Uint64("revision", entry.Revision()))
			}
			term := recordTerm(rec, entry)
			l.observe(rec.Holder, term)
			switch {
			case derr == nil && rec.Released && rec.Holder == "":
				// Released by a holder that stopped cleanly: at once.
				if l.tryTakeOver(ctx, entry.Revision()) {
					return true
				}
				seenRev, seenAt = entry.Revision(), l.clock.Now()
			case derr == nil && rec.Holder == l.cfg.Holder:
				// The record names this replica (its holder name is its
				// process's own): its own lease lapsed while JetStream could
				// not commit, or its takeover committed but the reply was
				// lost. Nobody has written it since: take it back at once
				// (compare-and-swap on the revision read), rather than wait
				// a ttl as for another replica's record.
				if l.tryTakeOver(ctx, entry.Revision()) {
					return true
				}
			case entry.Revision() != seenRev:
				seenRev, seenAt = entry.Revision(), l.clock.Now()
			case l.clock.Now().Sub(seenAt) >= l.cfg.TTL:
				if l.cfg.HolderResuming != nil && l.cfg.HolderResuming(ctx, term) {
					// The holder is alive and resuming its lapsed lease
					// once JetStream commits again (a healed partition
					// re-electing stream leaders): wait, do not race it.
					seenAt = l.clock.Now()
				} else if l.tryTakeOver(ctx, entry.Revision()) {
					return true
				}
			}
		}
		select {
		case <-ctx.Done():
			return false
		case <-updates:
		case <-l.clock.After(l.cfg.RetryPeriod):
		}
	}
}

// watch returns a channel that receives when the lease key changes; it is
// only a hint to look again sooner (the loop polls regardless), so it is set
// up off the loop's path: creating a watcher waits on JetStream, which may be
// unreachable just then (a reconnect). It stops when ctx ends.
func (l *Lease) watch(ctx context.Context) <-chan struct{} {
	ch := make(chan struct{}, 1)
	go func() {
		w, err := l.cfg.KV.Watch(ctx, LeaseKey)
		if err != nil {
			return
		}
		defer func() { _ = w.Stop() }()
		for {
			select {
			case <-ctx.Done():
				return
			case _, ok := <-w.Updates():
				if !ok {
					return
				}
				select {
				case ch <- struct{}{}:
				default:
				}
			}
		}
	}()
	return ch
}

func (l *Lease) get(ctx context.Context) (jetstream.KeyValueEntry, error) {
	ctx, cancel := context.WithTimeout(ctx, l.cfg.RetryPeriod)
	defer cancel()
	return l.cfg.KV.Get(ctx, LeaseKey)
}

func (l *Lease) record(term uint64) []byte {
	b, _ := json.Marshal(Record{Holder: l.cfg.Holder, Term: term, TTLMillis: l.cfg.TTL.Milliseconds(), RenewedAt: l.clock.Now().UTC()})
	return b
}

func (l *Lease) tryCreate(ctx context.Context) bool {
	sent := l.clock.Now()
	ctx, cancel := context.WithTimeout(ctx, l.cfg.RetryPeriod)
	defer cancel()
	rev, err := l.cfg.KV.Create(ctx, LeaseKey, l.record(0))
	if err != nil {
		return false
	}
	l.acquired(rev, sent)
	return true
}

func (l *Lease) tryTakeOver(ctx context.Context, rev uint64) bool {
	sent := l.clock.Now()
	ctx, cancel := context.WithTimeout(ctx, l.cfg.RetryPeriod)
	defer cancel()
	newRev, err := l.cfg.KV.Update(ctx, LeaseKey, l.record(0), rev)
	if err != nil {
		return false
	}
	l.acquired(newRev, sent)
	return true
}

func (l *Lease) acquired(rev uint64, sent time.Time) {
	l.mu.Lock()
	l.leader, l.rev, l.deadline = true, rev, sent.Add(l.cfg.RenewDeadline)
	l.lapsed, l.lapsedUntil = 0, time.Time{}
	l.state.Holder, l.state.Term = l.cfg.Holder, rev
	l.mu.Unlock()
	l.cfg.Logger.Info("lease acquired: this replica is the leader", slog.Uint64("term", rev))
	l.changed()
}

// hold renews the lease every RetryPeriod until done is closed (the work of
// the term has ended) or the lease is lost, and reports whether the lease is
// still held. A renewal in flight when done closes is waited for (up to the
// deadline), so that release writes over the revision actually in the
// bucket. Every request is bounded by RetryPeriod and by the deadline: a
// renewal whose reply is lost fails by its timeout and the next one finds
// the record still ours.
func (l *Lease) hold(ctx context.Context, done <-chan struct{}) bool {
	wait := true
	for {
		l.mu.Lock()
		deadline, rev, term := l.deadline, l.rev, l.state.Term
		l.mu.Unlock()
		next := l.clock.After(min(l.cfg.RetryPeriod, deadline.Sub(l.clock.Now())))
		if !wait {
			next = l.clock.After(0)
		}
		wait = true
		select {
		case <-done:
			return true
		case <-ctx.Done():
			// The drain bound ran out: the work is cancelled, the lease
			// is still ours to release.
			return l.Valid()
		case <-next:
		}
		if !l.clock.Now().Before(deadline) {
			l.lapse(term)
			l.lost("renew deadline passed")
			return false
		}
		sent := l.clock.Now()
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), min(l.cfg.RetryPeriod, deadline.Sub(sent)))
		newRev, err := l.cfg.KV.Update(rctx, LeaseKey, l.record(term), rev)
		cancel()
		switch {
		case err == nil:
			l.mu.Lock()
			l.rev, l.deadline = newRev, sent.Add(l.cfg.RenewDeadline)
			l.mu.Unlock()
		case errors.Is(err, jetstream.ErrKeyRevisionMismatch) && l.ours(ctx, term, deadline):
			// A renewal of ours landed but its reply was lost: carry on from
			// the revision it wrote (the deadline stays that of the last
			// renewal confirmed), and renew again at once.
			if l.cfg.OnRenewFailure != nil {
				l.cfg.OnRenewFailure(err)
			}
			wait = false
		case errors.Is(err, jetstream.ErrKeyRevisionMismatch), errors.Is(err, jetstream.ErrKeyNotFound), errors.Is(err, jetstream.ErrKeyDeleted):
			if l.cfg.OnRenewFailure != nil {
				l.cfg.OnRenewFailure(err)
			}
			l.lost("the lease record changed under this replica (another replica took it, or it was overwritten)")
			return false
		default:
			if l.cfg.OnRenewFailure != nil {
				l.cfg.OnRenewFailure(err)
			}
			l.cfg.Logger.Warn("leader: lease renewal failed; retrying until the deadline", slog.String("error", err.Error()), slog.Duration("left", deadline.Sub(l.clock.Now())))
		}
	}
}

// resumeFor is how long, after its lease lapsed, a holder tries to resume
// it and asks standbys to wait: three TTLs, and at least resumeMin, because
// JetStream's stream leader elections after a healed partition take seconds
// whatever the lease's timing (4-10 s measured). A holder that cannot write
// for longer (its own node cut off from JetStream, while core NATS still
// reaches the others) no longer holds the cluster without a leader.
func (c LeaseConfig) resumeFor() time.Duration { return max(3*c.TTL, resumeMin) }

const resumeMin = 15 * time.Second

// lapse records that term lapsed at its deadline with no conflicting write
// seen: this replica may take it back while the record still names it.
func (l *Lease) lapse(term uint64) {
	until := l.clock.Now().Add(l.cfg.resumeFor())
	l.mu.Lock()
	l.lapsed, l.lapsedUntil = term, until
	l.mu.Unlock()
	if l.cfg.OnLapse != nil {
		l.cfg.OnLapse(term, until)
	}
}

// Resuming reports whether this replica's lease of term lapsed (JetStream
// could not commit its renewals) recently enough that it takes it back at
// once, while the record still names it, when JetStream commits again.
func (l *Lease) Resuming(term uint64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lapsed != 0 && l.lapsed == term && l.clock.Now().Before(l.lapsedUntil)
}

// ours reads the lease record and, if it names this replica in term, takes
// its revision as our last write. The read ends by the deadline: past it the
// replica does not lead, whatever the record says.
func (l *Lease) ours(ctx context.Context, term uint64, deadline time.Time) bool {
	rctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), deadline)
	defer cancel()
	e, err := l.get(rctx)
	if err != nil || !l.clock.Now().Before(deadline) {
		return false
	}
	if rec, _ := decode(e); rec.Holder != l.cfg.Holder || recordTerm(rec, e) != term {
		return false
	}
	l.mu.Lock()
	l.rev = e.Revision()
	l.mu.Unlock()
	return true
}

func (l *Lease) lost(why string) {
	l.mu.Lock()
	l.leader, l.rev, l.deadline = false, 0, time.Time{}
	l.state.Holder = "" // unknown until the next read
	l.mu.Unlock()
	l.cfg.Logger.Warn("lease lost: this replica stops calling providers", slog.String("reason", why))
	l.changed()
}

// release marks the lease released if it is still ours, so a standby can
// take over at once (a revision-checked write of a record with no holder;
// a deleted key, by contrast, is waited out for a ttl). If our last known
// revision is stale (a renewal whose reply was lost), it reads the record
// and marks it if it still names us in our term.
func (l *Lease) release() {
	l.mu.Lock()
	rev, term := l.rev, l.state.Term
	l.mu.Unlock()
	if rev == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	body, _ := json.Marshal(Record{Term: term, TTLMillis: l.cfg.TTL.Milliseconds(), RenewedAt: l.clock.Now().UTC(), Released: true})
	_, err := l.cfg.KV.Update(ctx, LeaseKey, body, rev)
	if err != nil {
		if e, gerr := l.cfg.KV.Get(ctx, LeaseKey); gerr == nil {
			if rec, _ := decode(e); rec.Holder == l.cfg.Holder && recordTerm(rec, e) == term {
				_, err = l.cfg.KV.Update(ctx, LeaseKey, body, e.Revision())
			}
		}
	}
	if err != nil {
		l.cfg.Logger.Warn("leader: lease release failed; a standby takes over after the ttl", slog.String("error", err.Error()))
		return
	}
	l.mu.Lock()
	l.rev = 0
	l.state.Holder = ""
	l.mu.Unlock()
	l.cfg.Logger.Info("lease released")
	l.changed()
}

func (l *Lease) setLeader(leader bool, rev uint64, deadline time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.leader, l.deadline = leader, deadline
	if leader {
		l.rev = rev
	}
}

func (l *Lease) observe(holder string, term uint64) {
	l.mu.Lock()
	changed := l.state.Holder != holder || l.state.Term != term
	l.state.Holder, l.state.Term = holder, term
	l.mu.Unlock()
	if changed {
		l.cfg.Logger.Info("lease holder observed", slog.String("holder", holder), slog.Uint64("term", term))
		l.changed()
	}
}

func (l *Lease) changed() {
	if l.cfg.OnChange != nil {
		l.cfg.OnChange(l.State())
	}
}

// decode reads a lease record; a record that is not one decodes as a lease
// with no holder (and the error says so).
func decode(entry jetstream.KeyValueEntry) (Record, error) {
	var r Record
	if err := json.Unmarshal(entry.Value(), &r); err != nil {
		return Record{}, fmt.Errorf("leader: malformed lease record: %w", err)
	}
	return r, nil
}

// recordTerm is the term of a lease record: its own Term once renewed, the
// revision of its acquiring write before.
func recordTerm(r Record, e jetstream.KeyValueEntry) uint64 {
	if r.Term != 0 {
		return r.Term
	}
	return e.Revision()
}
