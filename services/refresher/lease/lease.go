// Package lease elects the one refresher replica that may call providers: a
// lease held in the tokens KV bucket, acquired with Create, renewed with a
// revision-checked Update well before it expires, and released with a
// revision-checked Delete on clean shutdown.
//
// Safety does not rest on synchronised clocks. The holder keeps a local
// deadline on the monotonic clock (the send time of its last successful
// renewal + RenewDeadline) and makes no provider call past it; a standby takes
// the lease over only after it has seen the same lease revision, unchanged, for
// a whole TTL on its own monotonic clock. Because a standby's observation of a
// renewal happens after that renewal was sent, the holder stops at least
// TTL − RenewDeadline before any standby can take over, which covers clock-rate
// differences up to (TTL − RenewDeadline)/TTL and scheduling delays up to that
// margin. Writes are fenced besides (see Fence): the lease key lives in the same
// stream as the tokens, so JetStream itself rejects a token written under a
// lease revision that is no longer current.
package lease

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

// DefaultKey is the lease's key in the tokens bucket. It starts with "_", so
// it can never be a provider name; clients watching the bucket skip it.
const DefaultKey = "_lease"

// ErrNotLeader is returned by Fence when this replica does not hold a valid
// lease.
var ErrNotLeader = errors.New("lease: not the leader")

// Record is the lease's value in KV.
type Record struct {
	// Holder names the replica holding the lease.
	Holder string `json:"holder"`
	// Term is the KV revision at which the holder acquired the lease: it
	// grows with every change of holder. 0 on the acquiring write itself.
	Term uint64 `json:"term,omitempty"`
	// TTLMillis is the holder's lease TTL; a standby waits at least this long.
	TTLMillis int64 `json:"ttl_ms"`
	// RenewedAt is the holder's wall clock at renewal, for people only.
	RenewedAt time.Time `json:"renewed_at"`
}

// Config configures an Elector. Zero durations take defaults derived from TTL.
type Config struct {
	// KV is the tokens bucket.
	KV jetstream.KeyValue
	// Key is the lease key; DefaultKey if empty.
	Key string
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
	// Logger receives leadership changes.
	Logger *slog.Logger
	// OnChange, if set, is called on every change of leadership as seen by
	// this replica (for metrics).
	OnChange func(State)
	// OnRenewFailure, if set, is called for every failed renewal.
	OnRenewFailure func(error)
}

// WithDefaults returns c with zero durations set to their defaults.
func (c Config) WithDefaults() Config {
	if c.Key == "" {
		c.Key = DefaultKey
	}
	if c.RenewDeadline <= 0 {
		c.RenewDeadline = c.TTL * 2 / 3
	}
	if c.RetryPeriod <= 0 {
		c.RetryPeriod = c.TTL / 5
	}
	if c.AcquireDelay <= 0 {
		c.AcquireDelay = min(c.RetryPeriod, time.Second)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate checks the timing ratios: TTL > RenewDeadline > RetryPeriod > 0.
func (c Config) Validate() error {
	switch {
	case c.TTL <= 0:
		return errors.New("lease: ttl must be positive")
	case c.RenewDeadline >= c.TTL:
		return fmt.Errorf("lease: renew_deadline (%v) must be less than ttl (%v): the margin between them covers pauses and clock-rate differences", c.RenewDeadline, c.TTL)
	case c.RetryPeriod >= c.RenewDeadline:
		return fmt.Errorf("lease: retry_period (%v) must be less than renew_deadline (%v), so a holder renews several times before its deadline", c.RetryPeriod, c.RenewDeadline)
	case c.RetryPeriod <= 0:
		return errors.New("lease: retry_period must be positive")
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

// Fence is what a leader's write must carry: the lease key's subject and the
// revision it must still have for the write to be accepted.
type Fence struct {
	// Subject is the lease key's stream subject, $KV.<bucket>.<key>.
	Subject string
	// Revision is the lease key's current revision (the holder's last write).
	Revision uint64
	// Term is the lease term.
	Term uint64
}

// Elector campaigns for the lease and runs the leader's work while it holds
// it. Its methods are safe for concurrent use.
type Elector struct {
	cfg     Config
	subject string

	mu       sync.Mutex
	leader   bool
	rev      uint64    // our last write of the lease key
	deadline time.Time // monotonic: no provider call at or after it
	state    State
}

// New returns an Elector for cfg, or an error if its timing is invalid.
func New(cfg Config) (*Elector, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.KV == nil || cfg.Holder == "" {
		return nil, errors.New("lease: KV and Holder are required")
	}
	return &Elector{cfg: cfg, subject: "$KV." + cfg.KV.Bucket() + "." + cfg.Key}, nil
}

// Config returns the elector's configuration with defaults applied.
func (e *Elector) Config() Config { return e.cfg }

// Valid reports whether this replica holds the lease and its local deadline
// has not passed. Check it immediately before every provider call.
func (e *Elector) Valid() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.leader && time.Now().Before(e.deadline)
}

// Fence returns the fence for a write, or ErrNotLeader.
func (e *Elector) Fence() (Fence, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.leader || !time.Now().Before(e.deadline) {
		return Fence{}, ErrNotLeader
	}
	return Fence{Subject: e.subject, Revision: e.rev, Term: e.state.Term}, nil
}

// State returns the leadership as this replica sees it.
func (e *Elector) State() State {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := e.state
	s.Leader = e.leader && time.Now().Before(e.deadline)
	return s
}

// Run campaigns until ctx ends. While this replica holds the lease it calls
// lead with a context that is cancelled as soon as the lease is lost or
// cannot be renewed in time, and waits for lead to return before campaigning
// again. When ctx ends, a held lease is released (revision-checked delete) so
// a standby takes over at once.
func (e *Elector) Run(ctx context.Context, lead func(ctx context.Context)) error {
	for {
		if !e.campaign(ctx) {
			return nil
		}
		lctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			select {
			case <-time.After(e.cfg.AcquireDelay):
				lead(lctx)
			case <-lctx.Done():
			}
		}()
		e.hold(lctx)
		cancel()
		<-done
		e.setLeader(false, 0, time.Time{})
		if ctx.Err() != nil {
			e.release()
			return nil
		}
	}
}

// campaign waits until this replica acquires the lease (true) or ctx ends.
func (e *Elector) campaign(ctx context.Context) bool {
	var (
		seenRev uint64
		seenAt  time.Time
	)
	updates := e.watch(ctx)
	for {
		entry, err := e.get(ctx)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			if e.tryCreate(ctx) {
				return true
			}
		case err != nil:
			e.cfg.Logger.Warn("lease: cannot read the lease", slog.String("error", err.Error()))
		default:
			rec := decode(entry)
			term := rec.Term
			if term == 0 {
				term = entry.Revision()
			}
			e.observe(rec.Holder, term)
			wait := max(e.cfg.TTL, time.Duration(rec.TTLMillis)*time.Millisecond)
			if entry.Revision() != seenRev {
				seenRev, seenAt = entry.Revision(), time.Now()
			} else if time.Since(seenAt) >= wait && e.tryTakeOver(ctx, entry.Revision()) {
				return true
			}
		}
		select {
		case <-ctx.Done():
			return false
		case <-updates:
		case <-time.After(e.cfg.RetryPeriod):
		}
	}
}

// watch returns a channel that receives when the lease key changes; it is
// only a hint to look again sooner (the loop polls regardless), so it is set
// up off the loop's path: creating a watcher waits on JetStream, which may be
// unreachable just then (a reconnect).
func (e *Elector) watch(ctx context.Context) <-chan struct{} {
	ch := make(chan struct{}, 1)
	go func() {
		w, err := e.cfg.KV.Watch(ctx, e.cfg.Key, jetstream.UpdatesOnly())
		if err != nil {
			return
		}
		defer w.Stop()
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

func (e *Elector) get(ctx context.Context) (jetstream.KeyValueEntry, error) {
	ctx, cancel := context.WithTimeout(ctx, e.cfg.RetryPeriod)
	defer cancel()
	return e.cfg.KV.Get(ctx, e.cfg.Key)
}

func (e *Elector) record(term uint64) []byte {
	b, _ := json.Marshal(Record{Holder: e.cfg.Holder, Term: term, TTLMillis: e.cfg.TTL.Milliseconds(), RenewedAt: time.Now().UTC()})
	return b
}

func (e *Elector) tryCreate(ctx context.Context) bool {
	sent := time.Now()
	ctx, cancel := context.WithTimeout(ctx, e.cfg.RetryPeriod)
	defer cancel()
	rev, err := e.cfg.KV.Create(ctx, e.cfg.Key, e.record(0))
	if err != nil {
		return false
	}
	e.acquired(rev, sent)
	return true
}

func (e *Elector) tryTakeOver(ctx context.Context, rev uint64) bool {
	sent := time.Now()
	ctx, cancel := context.WithTimeout(ctx, e.cfg.RetryPeriod)
	defer cancel()
	newRev, err := e.cfg.KV.Update(ctx, e.cfg.Key, e.record(0), rev)
	if err != nil {
		return false
	}
	e.acquired(newRev, sent)
	return true
}

func (e *Elector) acquired(rev uint64, sent time.Time) {
	e.setLeader(true, rev, sent.Add(e.cfg.RenewDeadline))
	e.mu.Lock()
	e.state.Holder, e.state.Term = e.cfg.Holder, rev
	e.mu.Unlock()
	e.cfg.Logger.Info("lease acquired: this replica is the leader", slog.Uint64("term", rev))
	e.changed()
}

// hold renews the lease every RetryPeriod until ctx ends or the lease is lost.
func (e *Elector) hold(ctx context.Context) {
	for {
		e.mu.Lock()
		deadline, rev, term := e.deadline, e.rev, e.state.Term
		e.mu.Unlock()
		wait := min(e.cfg.RetryPeriod, time.Until(deadline))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		if !time.Now().Before(deadline) {
			e.lost("renew deadline passed")
			return
		}
		sent := time.Now()
		rctx, cancel := context.WithDeadline(ctx, deadline)
		newRev, err := e.cfg.KV.Update(rctx, e.cfg.Key, e.record(term), rev)
		cancel()
		switch {
		case err == nil:
			e.setLeader(true, newRev, sent.Add(e.cfg.RenewDeadline))
		case errors.Is(err, jetstream.ErrKeyRevisionMismatch), errors.Is(err, jetstream.ErrKeyNotFound):
			if e.cfg.OnRenewFailure != nil {
				e.cfg.OnRenewFailure(err)
			}
			e.lost("another replica took the lease")
			return
		default:
			if ctx.Err() != nil {
				return
			}
			if e.cfg.OnRenewFailure != nil {
				e.cfg.OnRenewFailure(err)
			}
			e.cfg.Logger.Warn("lease: renewal failed; retrying until the deadline", slog.String("error", err.Error()), slog.Duration("left", time.Until(deadline)))
		}
	}
}

func (e *Elector) lost(why string) {
	e.setLeader(false, 0, time.Time{})
	e.mu.Lock()
	e.rev = 0
	e.state.Holder = "" // unknown until the next read
	e.mu.Unlock()
	e.cfg.Logger.Warn("lease lost: this replica stops calling providers", slog.String("reason", why))
	e.changed()
}

// release deletes the lease if it is still ours, so a standby can take over
// at once.
func (e *Elector) release() {
	e.mu.Lock()
	rev := e.rev
	e.mu.Unlock()
	if rev == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := e.cfg.KV.Delete(ctx, e.cfg.Key, jetstream.LastRevision(rev)); err != nil {
		e.cfg.Logger.Warn("lease: release failed; a standby takes over after the ttl", slog.String("error", err.Error()))
		return
	}
	e.mu.Lock()
	e.rev = 0
	e.state.Holder = ""
	e.mu.Unlock()
	e.cfg.Logger.Info("lease released")
	e.changed()
}

func (e *Elector) setLeader(leader bool, rev uint64, deadline time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.leader, e.deadline = leader, deadline
	if leader {
		e.rev = rev
	}
}

func (e *Elector) observe(holder string, term uint64) {
	e.mu.Lock()
	changed := e.state.Holder != holder || e.state.Term != term
	e.state.Holder, e.state.Term = holder, term
	e.mu.Unlock()
	if changed {
		e.cfg.Logger.Info("lease holder observed", slog.String("holder", holder), slog.Uint64("term", term))
		e.changed()
	}
}

func (e *Elector) changed() {
	if e.cfg.OnChange != nil {
		e.cfg.OnChange(e.State())
	}
}

func decode(entry jetstream.KeyValueEntry) Record {
	var r Record
	_ = json.Unmarshal(entry.Value(), &r)
	return r
}
