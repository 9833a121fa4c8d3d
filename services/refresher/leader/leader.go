// Package leader owns leadership among refresher replicas: the election (a
// lease in its own KV bucket, <bucket>-lease, key _lease), the fenced writes
// of token keys under the current term (key _term of the tokens bucket), the
// forwarding of token.refresh from standbys to the leader, and the provider
// loops that only the leader runs.
//
// The loops are a changeable set of named Loops. Set starts (or replaces) a
// loop now if this replica leads, or remembers it for when it leads; Remove
// stops one and deletes its token key with a fenced delete. On becoming
// leader a replica writes its term, starts every loop, serves forwarded
// refreshes, and deletes the token keys of providers it has no loop for. While
// it leads it checks every write to a token key (Accept): a token it did not
// write is logged, counted and replaced at once.
//
// Every provider call passes through the leader's Gate (lease held with time
// left, one call per credential, fetch_concurrency, calls in flight
// tracked). A stop is graceful: a loop that is stopped (SIGTERM, a provider
// removed or replaced) lets its call in flight finish and publishes its
// token, and the lease is renewed until every call has ended, and only then
// released. Only a lost lease cancels calls; a token fetched then cannot be
// written, and its loop counts it (tokenbus_tokens_discarded_total).
//
// docs/leadership.md gives the reasoning and the assumptions (pause and
// clock-rate bounds).
package leader

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenbus/tokenbus/libs/tokenclient/natstrace"
	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher"
)

// RefreshPrefix is the internal subject prefix a standby forwards a
// token.refresh to: only the leader subscribes.
const RefreshPrefix = "tokenbus.leader.refresh."

// Loop calls one provider while this replica leads: a refresh manager or a
// single-use pool filler. Run returns when ctx ends. A Loop that is also
// Scheduled is started and stopped with Start and Stop instead, and runs no
// goroutine of its own.
type Loop interface {
	Run(ctx context.Context) error
}

// Scheduled is a Loop that runs on a shared scheduler (a refresh manager):
// Start returns at once, its calls are admitted under ctx; Stop is
// graceful: it returns once the loop's call in flight has ended and its
// token is published (or, with the lease lost, given up).
type Scheduled interface {
	Start(ctx context.Context)
	Stop()
}

// Keeper is a Loop that keeps one shared token in the tokens bucket (a
// refresh manager). The leader checks writes to its key against it.
type Keeper interface {
	Loop
	// Owns reports whether tok, stored at rev, is no replacement of the
	// keeper's own token: its own (published or about to be), or not newer
	// than its last publish.
	Owns(tok wire.Token, rev uint64) bool
	// Repair publishes the keeper's own token again at once.
	Repair()
}

// Refresher handles a rejected-token report; the leader calls it for
// refreshes forwarded from standbys.
type Refresher interface {
	Refresh(ctx context.Context, invalid string) ([]byte, error)
}

// Config configures a Leader.
type Config struct {
	// Lease configures the election; Lease.KV is the lease bucket and
	// Lease.Holder names this replica (and every write it makes).
	Lease LeaseConfig
	// JetStream and Tokens are the tokens bucket the leader writes.
	JetStream jetstream.JetStream
	Tokens    jetstream.KeyValue
	// Batches, if set, commits the token writes that queue up together as
	// one atomic batch (AtomicBatches on the tokens bucket's JetStream, or
	// the simulation's); without it every write is committed on its own.
	Batches BatchPublisher
	// Conn carries forwarded refreshes, and the resuming check of a lapsed
	// lease.
	Conn *nats.Conn
	// Transport, if set, carries forwarded refreshes instead of Conn (the
	// simulation's bus).
	Transport Transport
	// ErrorCode maps a failed forwarded refresh to its wire code and
	// message (rpc.Code); 503 and the error text if nil.
	ErrorCode func(provider string, err error) (int, string)
	// OnForeignWrite, if set, is called for each token write to a provider
	// key that this leader did not make (metrics), with its revision.
	OnForeignWrite func(provider string, rev uint64)
	// RefreshTimeout bounds a forwarded refresh; 15 s if zero.
	RefreshTimeout time.Duration
	// FetchConcurrency bounds the provider calls in flight at once
	// (fetch_concurrency); 16 if zero.
	FetchConcurrency int
	// Loaded, if set, is closed once this replica knows every provider it
	// serves (the credential bucket is read): a new leader deletes the
	// token keys of providers it has no loop for only after that, never
	// the tokens of runtime providers it has not loaded yet.
	Loaded <-chan struct{}
	// Inherited, if set, reads the last message of every token key for a
	// new leader's check of what it inherits, instead of JetStream (the
	// simulation's bucket).
	Inherited Inherited
	Logger    *slog.Logger
}

// Leader runs the election and, while this replica leads, its loops.
type Leader struct {
	cfg   Config
	lease *Lease
	fence fence
	gate  *Gate
	log   *slog.Logger

	mu      sync.Mutex
	loops   map[string]Loop
	lctx    context.Context // non-nil while leading
	running map[string]*running
	// leaving holds, per provider, a loop being stopped (replaced or
	// removed) until it has: the tokens it publishes meanwhile are its own,
	// not foreign writes.
	leaving map[string]Loop
	// counted is, per provider, the revision up to which a write it did
	// not make is not counted as foreign: the last foreign write counted
	// (the watch and the takeover check may both see one write), or this
	// replica's own delete of a removed provider's key (the removed loop's
	// last token, which the watch may deliver after the removal, is older).
	counted map[string]uint64
	// refused holds the providers whose writes Accept refused while this
	// replica led: when the term ends, their keepers adopt what the bucket
	// holds then (Adopter).
	refused map[string]bool
	// undeleted holds the token keys of removed providers whose delete
	// failed (Remove, the sweep): retried every retry period while leading.
	undeleted map[string]bool
	wg        sync.WaitGroup // forwarded refreshes
}

// Adopter is a Keeper that takes as its copy the token its key holds when a
// term ends in which Accept refused writes to that key: a deposed leader
// (one that believed it led while paused or cut off, and refused the new
// leader's writes as foreign) then serves the new leader's token rather than
// its own copy, which may expire before the next write.
type Adopter interface {
	Adopt(tok wire.Token, rev uint64)
}

// running is a loop started (or about to be) in the current term. The
// fields other than loop are guarded by the leader's mutex.
type running struct {
	name string
	loop Loop
	// ready, if not nil, is closed once a Set that waits for the loop's
	// predecessor to stop has started the loop, or given up (cancelled).
	ready     chan struct{}
	started   bool
	cancelled bool
	// A Loop that is not Scheduled runs on a goroutine until cancel; done
	// is closed when it returns.
	cancel context.CancelFunc
	done   chan struct{}
}

// Successor is a Loop that takes over from the loop it replaces (Set), once
// that one has stopped and before it starts: a refresh manager adopts the
// token its predecessor published last; a pool filler drops the tokens
// minted with the replaced credentials.
type Successor interface {
	Takeover(ctx context.Context, old any)
}

// Retirer is a Loop with something to clean up when its provider is
// removed, after it has stopped (a pool filler empties its pool).
type Retirer interface {
	Retire(ctx context.Context) error
}

// New returns a Leader for cfg.
func New(cfg Config) (*Leader, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Lease.Logger == nil {
		cfg.Lease.Logger = cfg.Logger
	}
	if cfg.RefreshTimeout <= 0 {
		cfg.RefreshTimeout = 15 * time.Second
	}
	if cfg.ErrorCode == nil {
		cfg.ErrorCode = func(_ string, err error) (int, string) { return wire.CodeUnavailable, err.Error() }
	}
	if cfg.JetStream == nil || cfg.Tokens == nil {
		return nil, errors.New("leader: the tokens bucket is required")
	}
	if cfg.FetchConcurrency <= 0 {
		cfg.FetchConcurrency = 16
	}
	if cfg.Inherited == nil {
		cfg.Inherited = jsInherited{js: cfg.JetStream, bucket: cfg.Tokens.Bucket()}
	}
	if cfg.Transport == nil {
		cfg.Transport = noTransport{}
		if cfg.Conn != nil {
			cfg.Transport = natsTransport{cfg.Conn}
		}
	}
	l := &Leader{
		cfg: cfg, log: cfg.Logger,
		fence: fence{js: cfg.JetStream, kv: cfg.Tokens, writer: cfg.Lease.Holder, batches: cfg.Batches, turn: make(chan struct{}, 1), log: cfg.Logger},
		loops: map[string]Loop{}, running: map[string]*running{}, leaving: map[string]Loop{}, counted: map[string]uint64{},
		refused: map[string]bool{}, undeleted: map[string]bool{},
	}
	if cfg.Conn != nil && cfg.Lease.OnLapse == nil && cfg.Lease.HolderResuming == nil {
		cfg.Lease.OnLapse, cfg.Lease.HolderResuming = l.lapsed, l.resuming
	}
	ls, err := NewLease(cfg.Lease)
	if err != nil {
		return nil, err
	}
	l.lease, l.gate = ls, newGate(ls, cfg.FetchConcurrency)
	return l, nil
}

// ResumingPrefix is the internal subject prefix on which a holder whose
// lease lapsed (JetStream could not commit its renewals) answers, for a
// while, that it is alive and resuming term <n>: standbys ask before taking
// the lease over, so that a healed partition, whose stream leaders are
// re-elected, does not move the lease to whoever writes first.
const ResumingPrefix = "tokenbus.leader.resuming."

// lapsed answers on ResumingPrefix+term until until, while the lease still
// may be resumed.
func (l *Leader) lapsed(term uint64, until time.Time) {
	sub, err := l.cfg.Conn.Subscribe(ResumingPrefix+strconv.FormatUint(term, 10), func(m *nats.Msg) {
		if l.lease.Resuming(term) {
			_ = m.Respond([]byte(l.cfg.Lease.Holder))
		}
	})
	if err != nil {
		return
	}
	time.AfterFunc(time.Until(until), func() { _ = sub.Unsubscribe() })
}

// resuming asks whether the holder of term is alive and resuming its lease.
// No answer (no such holder, or it cannot be reached: a partition) is no.
func (l *Leader) resuming(ctx context.Context, term uint64) bool {
	ctx, cancel := context.WithTimeout(ctx, min(l.lease.cfg.RetryPeriod, 500*time.Millisecond))
	defer cancel()
	_, err := l.cfg.Conn.RequestWithContext(ctx, ResumingPrefix+strconv.FormatUint(term, 10), nil)
	return err == nil
}

// Gate returns the gate every provider call of this replica passes through.
func (l *Leader) Gate() *Gate { return l.gate }

// Valid reports whether this replica holds a valid lease; loops check it
// immediately before every provider call.
func (l *Leader) Valid() bool { return l.lease.Valid() }

// State returns the leadership as this replica sees it.
func (l *Leader) State() State { return l.lease.State() }

// Run campaigns until ctx ends, leading whenever it holds the lease. When ctx
// ends, the loops are stopped gracefully (their calls in flight finish and
// their tokens are published, within the lease's DrainTimeout), and then the
// lease is released, so a standby takes over at once.
func (l *Leader) Run(ctx context.Context) error { return l.lease.Run(ctx, l.lead) }

// Set makes loop the loop of name: started at once if this replica leads,
// else when it does. A loop it replaces is stopped first (its call in flight
// finishes and its token is published), the new one takes over from it
// (Successor) and only then starts; Set waits for that. The leader's mutex
// is not held meanwhile, and no other provider is waited for.
func (l *Leader) Set(name string, loop Loop) {
	l.mu.Lock()
	old := l.running[name]
	delete(l.running, name)
	if old != nil {
		old.cancelled = true
		l.leaving[name] = old.loop
	}
	l.loops[name] = loop
	delete(l.undeleted, name)
	var r *running
	lctx := l.lctx
	if lctx != nil {
		r = &running{name: name, loop: loop}
		if old != nil {
			r.ready = make(chan struct{})
		} else {
			l.startLocked(r)
		}
		l.running[name] = r
	}
	l.mu.Unlock()
	if old == nil {
		return
	}
	l.stop(old)
	if r == nil {
		l.forgetLeaving(name, old.loop)
		return
	}
	if s, ok := loop.(Successor); ok && lctx.Err() == nil {
		s.Takeover(lctx, old.loop)
	}
	l.mu.Lock()
	if !r.cancelled && l.lctx == lctx {
		l.startLocked(r)
	}
	// Only now are the old loop's last writes the new loop's own.
	if l.leaving[name] == old.loop {
		delete(l.leaving, name)
	}
	close(r.ready)
	l.mu.Unlock()
}

// forgetLeaving ends the time during which old's writes count as name's.
func (l *Leader) forgetLeaving(name string, old Loop) {
	l.mu.Lock()
	if l.leaving[name] == old {
		delete(l.leaving, name)
	}
	l.mu.Unlock()
}

// Remove stops name's loop (its call in flight finishes and its token is
// published first) and, if this replica leads, deletes its token key with a
// fenced delete (a replica that does not lead leaves that to the leader,
// which deletes keys it has no loop for).
func (l *Leader) Remove(ctx context.Context, name string) error {
	l.mu.Lock()
	old := l.running[name]
	delete(l.running, name)
	delete(l.loops, name)
	delete(l.counted, name)
	delete(l.refused, name)
	if old != nil {
		old.cancelled = true
		l.leaving[name] = old.loop
	}
	leading := l.lctx != nil
	l.mu.Unlock()
	if old != nil {
		l.stop(old)
		if r, ok := old.loop.(Retirer); ok && leading {
			if err := r.Retire(ctx); err != nil {
				l.log.Warn("leader: cleaning up after a removed provider", slog.String("provider", name), slog.String("error", err.Error()))
			}
		}
	}
	var err error
	if leading {
		rev, werr := l.write(ctx, name, nil, true)
		l.deleted(name, rev, werr) // a failed delete is retried while this replica leads
		if werr != nil {
			err = fmt.Errorf("leader: delete the token of %s: %w", name, werr)
		}
	}
	if old != nil {
		l.forgetLeaving(name, old.loop)
	}
	return err
}

// startLocked starts r's loop under the leading context: a Scheduled loop
// with Start; any other on a goroutine of its own, which runs it again after
// a retry period if it returns an error before its context ends (a failure,
// such as a subscription that could not be made, does not disable a
// provider for a whole term).
func (l *Leader) startLocked(r *running) {
	r.started = true
	if s, ok := r.loop.(Scheduled); ok {
		s.Start(l.lctx)
		return
	}
	ctx, cancel := context.WithCancel(l.lctx)
	r.cancel, r.done = cancel, make(chan struct{})
	go func() {
		defer close(r.done)
		for ctx.Err() == nil {
			err := r.loop.Run(ctx)
			if ctx.Err() != nil {
				return
			}
			msg := "provider loop ended; starting it again"
			if err != nil {
				msg = "provider loop failed; starting it again: " + err.Error()
			}
			l.log.Error(msg, slog.String("provider", r.name))
			t := time.NewTimer(l.lease.cfg.RetryPeriod)
			select {
			case <-ctx.Done():
			case <-t.C:
			}
			t.Stop()
		}
	}()
}

// stop stops r, which the caller took out of l.running, gracefully: it
// returns once r's loop has stopped (or was never started). It must not be
// called with the leader's mutex held.
func (l *Leader) stop(r *running) {
	l.mu.Lock()
	r.cancelled = true // (already, by whoever took it out of l.running)
	ready := r.ready
	l.mu.Unlock()
	if ready != nil {
		<-ready // a Set is starting it once its predecessor stopped
	}
	l.mu.Lock()
	started := r.started
	l.mu.Unlock()
	if !started {
		return
	}
	if s, ok := r.loop.(Scheduled); ok {
		s.Stop()
		return
	}
	r.cancel()
	<-r.done
}

// stopAll stops every loop in rs, a few at a time: a loop with a call in
// flight does not hold up the others' stop.
func (l *Leader) stopAll(rs []*running) {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		next int
	)
	for range min(len(rs), 32) {
		wg.Go(func() {
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= len(rs) {
					return
				}
				l.stop(rs[i])
			}
		})
	}
	wg.Wait()
}

// lead is the leader's work for one term: stop ends it gracefully (the calls
// in flight finish and their tokens are published), lost ends when the
// lease is lost (calls are cancelled).
func (l *Leader) lead(stop, lost context.Context) {
	term := l.lease.State().Term
	for {
		err := l.fence.begin(stop, term, time.Now(), l.lease.Held)
		if err == nil {
			break
		}
		if errors.Is(err, refresher.ErrNotAllowed) {
			l.log.Warn("leader: a newer term has written the term record; this replica does not lead", slog.String("error", err.Error()))
			<-stop.Done()
			return
		}
		l.log.Warn("leader: cannot write the term record; retrying", slog.String("error", err.Error()))
		select {
		case <-stop.Done():
			return
		case <-time.After(l.lease.cfg.RetryPeriod):
		}
	}
	defer l.fence.end()
	l.gate.begin(lost, term)
	l.mu.Lock()
	l.lctx = stop
	// In name order: a seed of the simulation replays the same start.
	for _, name := range slices.Sorted(maps.Keys(l.loops)) {
		r := &running{name: name, loop: l.loops[name]}
		l.startLocked(r)
		l.running[name] = r
	}
	l.mu.Unlock()

	l.wg.Go(func() { l.serveForwarded(stop) })
	l.wg.Go(func() {
		if l.cfg.Loaded != nil {
			select {
			case <-l.cfg.Loaded:
			case <-stop.Done():
				return
			}
		}
		l.sweep(stop)
	})
	l.checkInherited(stop)
	l.retryDeletes(stop)
	l.mu.Lock()
	// In name order: a seed of the simulation replays the same stop.
	var stopping []*running
	for _, name := range slices.Sorted(maps.Keys(l.running)) {
		r := l.running[name]
		r.cancelled = true // a Set waiting for r's predecessor does not start it
		stopping = append(stopping, r)
		delete(l.running, name)
	}
	l.lctx = nil
	l.mu.Unlock()
	l.stopAll(stopping)
	l.adoptRefused()
	l.wg.Wait()
	// Calls that are not a loop's (a forwarded refresh's) end too before
	// the lease is released.
	l.gate.end(lost)
}

// forwardQueue is the queue group in which leaders serve forwarded refreshes.
const forwardQueue = "tokenbus-leader"

// serveForwarded answers refreshes forwarded by standbys until ctx ends, in
// a queue group: with two replicas that both believe they lead (for at most
// a renewal), each forwarded refresh is handled once. A subscription that
// fails is tried again every retry period.
func (l *Leader) serveForwarded(ctx context.Context) {
	for {
		sub, err := l.cfg.Transport.QueueSubscribe(RefreshPrefix+"*", forwardQueue, l.onForwarded(ctx))
		if err == nil {
			<-ctx.Done()
			_ = sub.Unsubscribe()
			return
		}
		l.log.Error("leader: cannot serve forwarded refreshes; retrying", slog.String("error", err.Error()))
		select {
		case <-ctx.Done():
			return
		case <-time.After(l.lease.cfg.RetryPeriod):
		}
	}
}

// sweep deletes the token keys of providers this leader has no loop for.
func (l *Leader) sweep(ctx context.Context) {
	lister, err := l.cfg.Tokens.ListKeys(ctx)
	if err != nil {
		if ctx.Err() == nil && !errors.Is(err, jetstream.ErrNoKeysFound) {
			l.log.Warn("leader: cannot list the token keys", slog.String("error", err.Error()))
		}
		return
	}
	var stale []string
	for k := range lister.Keys() {
		if strings.HasPrefix(k, "_") {
			continue
		}
		l.mu.Lock()
		_, ok := l.loops[k]
		l.mu.Unlock()
		if !ok {
			stale = append(stale, k)
		}
	}
	for _, k := range stale {
		l.mu.Lock()
		delete(l.counted, k)
		l.mu.Unlock()
		rev, err := l.write(ctx, k, nil, true)
		l.deleted(k, rev, err)
		if err != nil {
			l.log.Warn("leader: cannot delete the token of a provider no longer configured; retrying", slog.String("provider", k), slog.String("error", err.Error()))
			continue
		}
		l.log.Info("deleted the token of a provider no longer configured", slog.String("provider", k))
	}
}

// deleted records the outcome of this replica's delete of the token key of
// name, a provider it has no loop for: a delete that failed is retried
// (retryDeletes); one stored at rev makes every write below rev old news
// that is not counted as foreign when the watch delivers it late (the
// removed loop's last token). Nothing is recorded if name has a loop again.
func (l *Leader) deleted(name string, rev uint64, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, back := l.loops[name]; back {
		return
	}
	if err != nil {
		l.undeleted[name] = true
		return
	}
	delete(l.undeleted, name)
	l.counted[name] = max(l.counted[name], rev)
}

// retryDeletes deletes, every retry period until ctx ends, the token keys
// of removed providers whose delete failed: a write that timed out (a
// partition, a slow stream) does not leave a removed provider's token in
// the bucket for the rest of the term.
func (l *Leader) retryDeletes(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(l.lease.cfg.RetryPeriod):
		}
		l.mu.Lock()
		names := slices.Sorted(maps.Keys(l.undeleted))
		l.mu.Unlock()
		for _, name := range names {
			rev, err := l.write(ctx, name, nil, true)
			l.deleted(name, rev, err)
			if err != nil {
				continue
			}
			l.log.Info("deleted the token of a removed provider", slog.String("provider", name))
		}
	}
}

// checkInherited looks at the token each keeper inherits from before this
// term: one that no leader wrote (no writer header: a `nats kv put` while no
// replica led) is counted and replaced by a fresh token. It reads the last
// message of every key in one pass (Config.Inherited), not one request per
// keeper: a leader taking over 100,000 providers makes a handful of
// JetStream requests, not 100,000. A pass that fails is tried again every
// retry period for the term.
func (l *Leader) checkInherited(ctx context.Context) {
	l.mu.Lock()
	keepers := map[string]Loop{}
	for name, loop := range l.loops {
		if _, ok := loop.(Refresher); ok {
			if _, ok := loop.(Keeper); ok {
				keepers[name] = loop
			}
		}
	}
	l.mu.Unlock()
	if len(keepers) == 0 {
		return
	}
	for {
		seen := make(map[string]bool, len(keepers))
		err := l.cfg.Inherited.LastPerKey(ctx, func(key string, h nats.Header, seq uint64) {
			loop, ok := keepers[key]
			if !ok {
				return
			}
			seen[key] = true
			if h.Get("KV-Operation") != "" {
				unverified(loop) // the key deleted: no writer to check
				return
			}
			l.inherited(ctx, key, loop, h, seq)
		})
		if err == nil {
			// No record at all (the bucket was deleted and created again):
			// a copy this replica holds cannot be checked against its
			// writer (it may be one no leader wrote, taken while standing
			// by), so it is not published again but replaced.
			for _, name := range slices.Sorted(maps.Keys(keepers)) {
				if !seen[name] {
					unverified(keepers[name])
				}
			}
		}
		if err == nil || ctx.Err() != nil {
			return
		}
		l.log.Warn("leader: cannot read the tokens stream to check inherited tokens; retrying", slog.String("error", err.Error()))
		select {
		case <-ctx.Done():
			return
		case <-time.After(l.lease.cfg.RetryPeriod):
		}
	}
}

// unverified tells a keeper that the token it holds has no record in the
// bucket to check its writer against (refresh.Manager.Unverified).
func unverified(loop Loop) {
	if u, ok := loop.(interface{ Unverified() }); ok {
		u.Unverified()
	}
}

// inherited checks the last message of keeper loop's key name, at seq with
// headers h, as this term began.
func (l *Leader) inherited(ctx context.Context, name string, loop Loop, h nats.Header, seq uint64) {
	if h.Get(HeaderWriter) != "" || h.Get("KV-Operation") != "" {
		return
	}
	data, err := l.cfg.Inherited.Message(ctx, seq)
	if err != nil {
		return // replaced since: the watch checks the new value
	}
	var tok wire.Token
	if json.Unmarshal(data, &tok) != nil || tok.AccessToken == "" {
		return
	}
	// Counted once (this replica's watch may have seen it in an earlier
	// term), but repaired in every term that finds it: a repair that an
	// earlier term could not write is not skipped.
	if l.foreign(name, seq) {
		l.log.Warn("leader: the token on this provider's key was not written by a leader; replacing it", slog.String("provider", name), slog.Uint64("revision", seq))
	}
	k := loop.(Keeper)
	if !k.Owns(tok, seq) {
		k.Repair() // its own copy is another token: write that again
		return
	}
	// Its own copy is this token (taken while it stood by): fetch a new
	// one, whatever the refresh cooldown (this is no caller's report).
	if rp, ok := loop.(interface{ Replace(bad string) }); ok {
		rp.Replace(tok.AccessToken)
		return
	}
	r := loop.(Refresher)
	l.wg.Go(func() {
		rctx, cancel := context.WithTimeout(ctx, l.cfg.RefreshTimeout)
		defer cancel()
		_, _ = r.Refresh(rctx, tok.AccessToken)
	})
}

// Publish stores tok under its provider key, fenced by the current term
// (refresh.Publisher). A write refused because this replica no longer leads
// wraps refresher.ErrNotAllowed.
func (l *Leader) Publish(ctx context.Context, tok wire.Token) (uint64, error) {
	b, err := json.Marshal(tok)
	if err != nil {
		return 0, fmt.Errorf("leader: encode token: %w", err)
	}
	return l.write(ctx, tok.Provider, b, false)
}

// PublishEncoded is Publish of a token already encoded as JSON (the bytes a
// refresh manager serves): stored as they are under provider's key.
func (l *Leader) PublishEncoded(ctx context.Context, provider string, encoded []byte) (uint64, error) {
	return l.write(ctx, provider, encoded, false)
}

// write is a fenced write. If the term record moved although the lease
// still names this replica in its term (someone wrote _term, or the bucket
// was recreated), the term is written again and the write retried once.
func (l *Leader) write(ctx context.Context, key string, data []byte, del bool) (uint64, error) {
	if !l.lease.Valid() {
		return 0, refresher.ErrNotAllowed
	}
	seq := l.fence.armed()
	rev, err := l.fence.write(ctx, key, data, del)
	if !errors.Is(err, errFenceMoved) {
		return rev, err
	}
	if !l.lease.Held(ctx) {
		return 0, fmt.Errorf("%w: %w", refresher.ErrNotAllowed, err)
	}
	l.log.Warn("leader: the term record was changed by someone else; writing it again", slog.String("key", TermKey))
	// No term record at all: the bucket was deleted and created again (or
	// the record deleted). Every keeper publishes its token again: the
	// bucket lost them, and replicas starting now would have none to serve
	// until each provider's next refresh.
	_, gerr := l.cfg.Tokens.Get(ctx, TermKey)
	if err := l.fence.rearm(ctx, seq, l.lease.State().Term, time.Now(), l.lease.Held); err != nil {
		return 0, err
	}
	if errors.Is(gerr, jetstream.ErrKeyNotFound) {
		l.log.Warn("leader: the tokens bucket lost its term record (deleted and created again?); publishing every token again")
		l.repairAll()
	}
	return l.fence.write(ctx, key, data, del)
}

// repairAll asks every keeper to publish its token again: the bucket lost
// them. A keeper that can tell (a refresh manager: Recreated) publishes its
// copy again only if that is its own last publish, and fetches a new token
// otherwise (a copy taken while standing by may be one no leader wrote).
func (l *Leader) repairAll() {
	l.mu.Lock()
	var keepers []Keeper
	for _, name := range slices.Sorted(maps.Keys(l.loops)) {
		if k, ok := l.loops[name].(Keeper); ok {
			keepers = append(keepers, k)
		}
	}
	l.mu.Unlock()
	for _, k := range keepers {
		if r, ok := k.(interface{ Recreated() }); ok {
			r.Recreated()
			continue
		}
		k.Repair()
	}
}

// Holds reports whether this replica leads and name's loop is its own
// alone: a Keeper, with no loop it replaced still leaving. Then a token in
// the bucket that the loop's memory lacks is one Accept would refuse, so a
// token.get this replica has no token for need not read the bucket
// (TestLeaderDoesNotReadTheBucketOnAMiss).
func (l *Leader) Holds(name string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, keeper := l.loops[name].(Keeper)
	return l.lctx != nil && keeper && l.leaving[name] == nil
}

// Accept is told about every token write the replica's watch sees and
// reports whether the replica should take it as its copy. While this replica
// leads, a write to a provider key it did not make is refused: logged,
// counted, and repaired at once (the keeper publishes its own token again; a
// key of a provider it does not have is deleted).
func (l *Leader) Accept(ctx context.Context, tok wire.Token, rev uint64) bool {
	l.mu.Lock()
	loop, ok := l.loops[tok.Provider]
	old := l.leaving[tok.Provider]
	pending := l.undeleted[tok.Provider] // a removed provider's key, its delete being retried
	leading := l.lctx != nil
	l.mu.Unlock()
	if !leading {
		return true
	}
	// While leading, a write is checked even when the lease is in doubt
	// (a renewal failing): a foreign token is not taken, and the repair is
	// retried by the keeper until its fenced write goes through or the term
	// ends.
	if k, isKeeper := old.(Keeper); isKeeper && k.Owns(tok, rev) {
		return true // the last token of a loop being replaced or removed
	}
	// Past the lease's deadline (this replica paused, or starved, longer
	// than its lease) the term is over but for its ending: a write it did
	// not make is most likely the next leader's, not a forgery. It is
	// neither counted nor logged as foreign (no false alert), nor deleted;
	// it is refused all the same, the keeper's repair goes nowhere without
	// the lease, and the term's end hands the keeper what the key then
	// holds (adoptRefused). Simulation invariant foreign-write-is-foreign.
	lapsed := !l.lease.Valid()
	if !ok {
		if lapsed || pending || !l.foreign(tok.Provider, rev) {
			// The next leader's, this replica's own removed loop's (its
			// delete pending or stored later), or counted already.
			return false
		}
		l.log.Warn("leader: a token was written for a provider this leader does not have; deleting it", slog.String("provider", tok.Provider), slog.Uint64("revision", rev))
		if _, err := l.write(ctx, tok.Provider, nil, true); err != nil {
			l.log.Warn("leader: cannot delete a foreign token", slog.String("provider", tok.Provider), slog.String("error", err.Error()))
		}
		return false
	}
	k, ok := loop.(Keeper)
	if !ok || k.Owns(tok, rev) {
		return true
	}
	if !lapsed && l.foreign(tok.Provider, rev) {
		l.log.Warn("leader: a token this leader did not write was stored for its provider; replacing it", slog.String("provider", tok.Provider), slog.Uint64("revision", rev))
	}
	k.Repair() // idempotent: also when the takeover check counted it first
	l.mu.Lock()
	if l.lctx != nil {
		l.refused[tok.Provider] = true
	}
	l.mu.Unlock()
	return false
}

// adoptRefused hands each keeper whose writes were refused during the term
// that ended what its key holds now (Adopter), read from the bucket: not the
// refused write itself, which a repair may have replaced, or a bucket
// deleted and created again may have outdated.
func (l *Leader) adoptRefused() {
	l.mu.Lock()
	adopters := map[string]Adopter{}
	for name := range l.refused {
		if a, ok := l.loops[name].(Adopter); ok {
			adopters[name] = a
		}
	}
	l.refused = map[string]bool{}
	l.mu.Unlock()
	for _, name := range slices.Sorted(maps.Keys(adopters)) {
		ctx, cancel := context.WithTimeout(context.Background(), l.lease.cfg.RetryPeriod)
		e, err := l.cfg.Tokens.Get(ctx, name)
		cancel()
		var tok wire.Token
		if err != nil || json.Unmarshal(e.Value(), &tok) != nil || tok.AccessToken == "" {
			continue
		}
		adopters[name].Adopt(tok, e.Revision())
	}
}

// foreign counts a write to provider's key at rev that no leader made, once:
// it reports false for a revision already counted (the takeover check and
// the watch can both see one write).
func (l *Leader) foreign(provider string, rev uint64) bool {
	l.mu.Lock()
	if rev != 0 && l.counted[provider] >= rev {
		l.mu.Unlock()
		return false
	}
	l.counted[provider] = rev
	l.mu.Unlock()
	if l.cfg.OnForeignWrite != nil {
		l.cfg.OnForeignWrite(provider, rev)
	}
	return true
}

// onForwarded answers refreshes forwarded by standbys (serveForwarded).
func (l *Leader) onForwarded(ctx context.Context) nats.MsgHandler {
	return func(msg *nats.Msg) {
		name := strings.TrimPrefix(msg.Subject, RefreshPrefix)
		l.mu.Lock()
		loop := l.loops[name]
		l.mu.Unlock()
		r, ok := loop.(Refresher)
		if !ok {
			l.reply(msg, name, nil, refresher.ErrUnknownProvider)
			return
		}
		var req wire.RefreshRequest
		if err := json.Unmarshal(msg.Data, &req); err != nil || req.InvalidToken == "" {
			l.reply(msg, name, nil, fmt.Errorf("%w: bad forwarded refresh", refresher.ErrBadRequest))
			return
		}
		l.wg.Go(func() {
			rctx, cancel := context.WithTimeout(natstrace.Extract(ctx, msg.Header), l.cfg.RefreshTimeout)
			defer cancel()
			body, err := r.Refresh(rctx, req.InvalidToken)
			l.reply(msg, name, body, err)
		})
	}
}

func (l *Leader) reply(msg *nats.Msg, provider string, body []byte, err error) {
	if msg.Reply == "" {
		return
	}
	if err == nil {
		_ = l.cfg.Transport.PublishMsg(&nats.Msg{Subject: msg.Reply, Data: body})
		return
	}
	code, text := l.cfg.ErrorCode(provider, err)
	body, _ = json.Marshal(wire.ErrorBody{Error: wire.ErrorDetail{Code: code, Message: text}})
	h := nats.Header{wire.HeaderErrorCode: {strconv.Itoa(code)}, wire.HeaderError: {text}}
	if ce := (*refresher.CooldownError)(nil); errors.As(err, &ce) {
		h.Set(wire.HeaderRetryAfter, strconv.Itoa(refresher.RetryAfterSeconds(ce.RetryAfter)))
	}
	_ = l.cfg.Transport.PublishMsg(&nats.Msg{Subject: msg.Reply, Data: body, Header: h})
}

// forward asks the leader to handle a refresh report for provider and returns
// its reply. With no leader reachable it returns an error wrapping
// refresher.ErrNoToken (503).
func (l *Leader) forward(ctx context.Context, provider, invalid string) ([]byte, error) {
	body, _ := json.Marshal(wire.RefreshRequest{InvalidToken: invalid})
	msg := &nats.Msg{Subject: RefreshPrefix + provider, Data: body}
	natstrace.Inject(ctx, msg)
	reply, err := l.cfg.Transport.RequestMsgWithContext(ctx, msg)
	if err != nil {
		return nil, fmt.Errorf("%w: no lease holder answered (%v)", refresher.ErrNoToken, err)
	}
	if c := reply.Header.Get(wire.HeaderErrorCode); c != "" {
		code, _ := strconv.Atoi(c)
		wait, _ := strconv.Atoi(reply.Header.Get(wire.HeaderRetryAfter))
		return nil, &refresher.RemoteError{Code: code, Message: reply.Header.Get(wire.HeaderError), RetryAfter: time.Duration(wait) * time.Second}
	}
	return reply.Data, nil
}

// Local is a shared-token provider's state on one replica (a refresh
// manager): its copy of the token, and a refresh it carries out when leading.
type Local interface {
	Get(ctx context.Context) ([]byte, error)
	// GetRevision is Get that also returns the token's KV revision (0 if
	// not stored yet).
	GetRevision(ctx context.Context) ([]byte, uint64, error)
	Refresh(ctx context.Context, invalid string) ([]byte, error)
}

// Source serves one shared-token provider on any replica (an rpc.Source):
// token.get from the replica's own copy, token.refresh by the local manager
// on the leader and forwarded to the leader from a standby.
type Source struct {
	Leader *Leader
	Name   string
	Local  Local
}

// Get returns the current token from memory.
func (s Source) Get(ctx context.Context) ([]byte, error) { return s.Local.Get(ctx) }

// GetRevision returns the current token from memory and its KV revision,
// which token.get's reply carries (rpc.Revisioned).
func (s Source) GetRevision(ctx context.Context) ([]byte, uint64, error) {
	return s.Local.GetRevision(ctx)
}

// Refresh handles a rejected-token report: on the leader by the local
// manager; on a standby it answers with its copy if that is already another
// token, else forwards to the leader.
func (s Source) Refresh(ctx context.Context, invalid string) ([]byte, error) {
	if s.Leader.Valid() {
		return s.Local.Refresh(ctx, invalid)
	}
	if b, err := s.Local.Get(ctx); err == nil {
		var tok wire.Token
		if json.Unmarshal(b, &tok) == nil && tok.AccessToken != invalid {
			return b, nil
		}
	}
	return s.Leader.forward(ctx, s.Name, invalid)
}
