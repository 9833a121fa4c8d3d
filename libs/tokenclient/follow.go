package tokenclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
)

// FollowMode says how a Client keeps its in-memory copy of tokens current.
type FollowMode int

const (
	// FollowUpdates (the default) follows each provider the Client is asked
	// about, or is given WithProviders, on the core NATS subject
	// token.updates.<provider>, where the server republishes every write to
	// the tokens bucket (SPEC §9), and reads its current value once with
	// token.get. It costs the NATS servers one subscription per provider
	// followed and no JetStream consumer, and needs only the reader
	// permissions of SPEC §10.
	FollowUpdates FollowMode = iota
	// FollowKVWatch watches the whole KV bucket instead: one JetStream
	// consumer per Client, every provider's token loaded at start. It needs
	// the JetStream API permissions of a KV watcher. For a few processes
	// that want every token of the bucket; not for a fleet.
	FollowKVWatch
)

// String returns "updates" or "kv-watch".
func (m FollowMode) String() string {
	switch m {
	case FollowUpdates:
		return "updates"
	case FollowKVWatch:
		return "kv-watch"
	}
	return "FollowMode(" + strconv.Itoa(int(m)) + ")"
}

// readKind says how far a read of the current value may be trusted against
// the updates applied while it was in flight.
type readKind int

const (
	readNone readKind = iota
	// readStrict: taken only if its revision is newer than the one held
	// (the first read, a gap): a responder that lags cannot undo an update.
	readStrict
	// readReset: taken unless an update was applied while it was in flight
	// (then as readStrict). After a reconnect or a sequence that went back
	// (a recreated bucket, a server that lost its store) the sequence held
	// may belong to a stream that no longer exists.
	readReset
)

// followed is one provider the follower follows.
type followed struct {
	sub *nats.Subscription
	// seq is the sequence (KV revision) of the value held, token or delete;
	// 0 when none is known.
	seq uint64
	// gen counts the updates applied, so a read knows whether one came in
	// while it was in flight.
	gen uint64
	// stale is the read the provider needs, if any.
	stale readKind
	// shared: a revision was seen for it (an update, or a read carrying
	// one), so it is a shared-token provider and reading it in the
	// background claims nothing. Single-use providers never are.
	shared bool
	// answered: a read got an answer from the refresher (WaitReady).
	answered bool
	// declared: given WithProviders, so read in the background even before
	// it is known to be shared.
	declared bool
	// confirmed: the server took the subscription (a flush came back with no
	// permissions violation for it). Until then reads are not cached: a
	// copy that updates never reach would go stale.
	confirmed bool
	// denied: the server refused the subscription; the provider is served
	// over request-reply only.
	denied bool
}

// follower keeps the client's cache current from token.updates.<provider>
// (FollowUpdates). Subscription handlers apply updates; one goroutine does
// the background reads (after a reconnect, a gap, at start).
type follower struct {
	c      *Client
	status chan nats.Status
	poke   chan struct{}

	mu sync.Mutex
	// evMu keeps events in the order their changes were applied: it is
	// taken before mu is released and held while the handler runs.
	evMu   sync.Mutex
	p      map[string]*followed
	closed bool
	// waiting counts providers given WithProviders not answered yet.
	waiting int
}

func newFollower(c *Client) *follower {
	f := &follower{c: c, poke: make(chan struct{}, 1), p: map[string]*followed{}}
	// A listener of our own: the caller's handlers on nc stay untouched.
	f.status = c.nc.StatusChanged(nats.CONNECTED, nats.CLOSED)
	return f
}

// start follows the providers given WithProviders; WaitReady waits until
// the refresher has answered a read of each.
func (f *follower) start() {
	f.mu.Lock()
	for _, p := range f.c.o.providers {
		if st, err := f.ensureLocked(p); st != nil && !st.declared {
			st.declared = true
			st.stale = readStrict
			f.waiting++
		} else if err != nil {
			f.c.report(err)
		}
	}
	ready := f.waiting == 0
	f.mu.Unlock()
	if ready {
		f.c.markReady()
	}
	f.kick()
}

// run does the background reads until the client is closed.
func (f *follower) run() {
	defer close(f.c.done)
	defer f.c.nc.RemoveStatusListener(f.status)
	defer f.unsubscribeAll()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-f.c.stop:
			return
		case s := <-f.status:
			if s != nats.CONNECTED {
				continue
			}
			// Reconnected, perhaps to a server that restarted or lost its
			// store: whatever was published meanwhile was missed.
			f.markAll(readReset)
		case <-f.poke:
		case <-timer.C:
		}
		if f.readStale() {
			f.c.clearReport()
		} else {
			timer.Reset(f.c.o.watchRetry)
		}
	}
}

func (f *follower) kick() {
	select {
	case f.poke <- struct{}{}:
	default:
	}
}

// ensure follows provider if it does not yet, and returns the count of
// updates applied so far, for the read that follows.
func (f *follower) ensure(provider string) (gen uint64, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, err := f.ensureLocked(provider)
	if st == nil {
		if err != nil {
			f.c.report(err)
		}
		return 0, false
	}
	return st.gen, true
}

func (f *follower) ensureLocked(provider string) (*followed, error) {
	if st := f.p[provider]; st != nil {
		return st, nil
	}
	if f.closed || !wire.ValidName(provider) || f.c.o.singleUse[provider] {
		return nil, nil
	}
	sub, err := f.c.nc.Subscribe(wire.UpdatesSubject(provider), func(m *nats.Msg) { f.update(provider, m) })
	if err != nil {
		return nil, err
	}
	st := &followed{sub: sub}
	f.p[provider] = st
	return st, nil
}

// confirm checks, once per provider, that the server took its subscription:
// a flush (PING/PONG) comes back after the -ERR the server would have sent
// for a subscription the connection's permissions do not allow. A denied
// provider is unsubscribed and reported (ErrNotFollowing); it is served over
// request-reply, never from a copy that could not be kept current. It
// reports whether the provider's reads may be cached.
func (f *follower) confirm(ctx context.Context, provider string) bool {
	f.mu.Lock()
	st := f.p[provider]
	if st == nil || st.confirmed || st.denied {
		ok := st != nil && st.confirmed
		f.mu.Unlock()
		return ok
	}
	f.mu.Unlock()
	ctx, cancel := f.c.withTimeout(ctx)
	err := f.c.nc.FlushWithContext(ctx)
	cancel()
	if err != nil {
		return false // not connected: confirmed at the next read
	}
	le := f.c.nc.LastError()
	denied := le != nil && errors.Is(le, nats.ErrPermissionViolation) &&
		strings.Contains(le.Error(), `Subscription to "`+wire.UpdatesSubject(provider)+`"`)
	f.mu.Lock()
	if denied && !st.denied {
		st.denied = true
		_ = st.sub.Unsubscribe()
		f.c.cache.drop(provider)
	} else if !denied {
		st.confirmed = true
	}
	f.mu.Unlock()
	if denied {
		f.c.report(fmt.Errorf("tokenclient: follow %s: %w: %w", provider, ErrNotFollowing, le))
	}
	return !denied
}

// markAll asks for a read of every shared provider followed (and of those
// given WithProviders not answered yet). Others (a provider whose only reads
// carried no revision: single-use) are read only when Token asks.
func (f *follower) markAll(kind readKind) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, st := range f.p {
		if !st.denied && (st.shared || (st.declared && !st.answered)) {
			st.stale = max(st.stale, kind)
		}
	}
}

// mark asks for a read of one provider; the caller holds f.mu.
func (f *follower) mark(st *followed, kind readKind) {
	st.stale = max(st.stale, kind)
	f.kick()
}

func (f *follower) unsubscribeAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	for _, st := range f.p {
		_ = st.sub.Unsubscribe()
	}
}

// readStale reads every provider that needs it and reports whether all of
// them got an answer.
func (f *follower) readStale() bool {
	type job struct {
		provider string
		kind     readKind
		gen      uint64
	}
	var jobs []job
	f.mu.Lock()
	for p, st := range f.p {
		if st.stale != readNone {
			jobs = append(jobs, job{p, st.stale, st.gen})
			st.stale = readNone
		}
	}
	f.mu.Unlock()
	ok := true
	for _, j := range jobs {
		if f.c.bg.Err() != nil {
			return true
		}
		if !f.c.nc.IsConnected() {
			// The reconnect asks for every read again.
			f.remark(j.provider, j.kind)
			continue
		}
		if !f.confirm(f.c.bg, j.provider) {
			f.mu.Lock()
			denied := f.p[j.provider] != nil && f.p[j.provider].denied
			f.mu.Unlock()
			if !denied {
				f.remark(j.provider, j.kind)
				ok = false
			}
			continue
		}
		ctx, cancel := context.WithTimeout(f.c.bg, f.c.o.timeout)
		tok, rev, err := f.c.get(ctx, j.provider)
		cancel()
		var e *Error
		switch {
		case err == nil:
			f.read(j.provider, tok, rev, j.gen, j.kind)
		case errors.As(err, &e):
			f.refused(j.provider, e, j.gen)
		default:
			if f.c.bg.Err() == nil {
				f.c.report(err)
			}
			f.remark(j.provider, j.kind)
			ok = false
		}
	}
	return ok
}

// remark puts back a read that could not be made.
func (f *follower) remark(provider string, kind readKind) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if st := f.p[provider]; st != nil {
		st.stale = max(st.stale, kind)
	}
}

// read applies the answer to a read of provider's current value, started
// when gen updates had been applied.
func (f *follower) read(provider string, tok Token, rev, gen uint64, kind readKind) {
	f.mu.Lock()
	st := f.p[provider]
	if st == nil {
		f.mu.Unlock()
		return
	}
	ready := f.answeredLocked(st)
	// A reply without a revision is a single-use token (or one not stored
	// yet): never cached.
	take := rev > 0 && st.confirmed && !st.denied && (rev > st.seq || (kind == readReset && st.gen == gen && rev != st.seq))
	if rev > 0 {
		st.shared = true
	}
	var ev *Event
	if take {
		st.seq = rev
		st.gen++
		f.c.cache.set(provider, tok, rev)
		ev = &Event{Provider: provider, Token: tok, Revision: rev}
	}
	f.unlockEmit(ev)
	if ready {
		f.c.markReady()
	}
}

// refused applies an error answer to a read: a provider the refresher no
// longer knows (404) stops being served, if nothing newer came meanwhile.
func (f *follower) refused(provider string, e *Error, gen uint64) {
	f.mu.Lock()
	st := f.p[provider]
	if st == nil {
		f.mu.Unlock()
		return
	}
	ready := f.answeredLocked(st)
	drop := e.Code == wire.CodeUnknownProvider && st.gen == gen
	var ev *Event
	if drop {
		st.gen++
		f.c.cache.drop(provider)
		ev = &Event{Provider: provider, Deleted: true}
	}
	f.unlockEmit(ev)
	if ready {
		f.c.markReady()
	}
}

// unlockEmit releases mu and, if ev is set, passes it to the update handler
// in the order the changes were applied.
func (f *follower) unlockEmit(ev *Event) {
	if ev == nil || f.c.o.onUpdate == nil {
		f.mu.Unlock()
		return
	}
	f.evMu.Lock()
	f.mu.Unlock()
	defer f.evMu.Unlock()
	f.c.emit(*ev)
}

// answeredLocked records that a read of st got an answer and reports whether
// that was the last one WaitReady waited for (the caller then marks the
// client ready, once it has applied the answer).
func (f *follower) answeredLocked(st *followed) bool {
	if st.answered {
		return false
	}
	st.answered = true
	if st.declared && f.waiting > 0 {
		f.waiting--
		return f.waiting == 0
	}
	return false
}

// update applies one message of token.updates.<provider> (SPEC §9).
func (f *follower) update(provider string, m *nats.Msg) {
	seq, _ := strconv.ParseUint(m.Header.Get(wire.HeaderSequence), 10, 64)
	if seq == 0 {
		return // not a republished write
	}
	last, _ := strconv.ParseUint(m.Header.Get(wire.HeaderLastSequence), 10, 64)
	op := m.Header.Get(wire.HeaderKVOperation)
	ev := Event{Provider: provider, Revision: seq, Deleted: op == "DEL" || op == "PURGE"}
	if !ev.Deleted {
		if err := json.Unmarshal(m.Data, &ev.Token); err != nil || ev.Token.AccessToken == "" ||
			(ev.Token.Provider != "" && ev.Token.Provider != provider) {
			return // not a token
		}
	}

	f.mu.Lock()
	st := f.p[provider]
	if st == nil || f.closed || st.denied {
		f.mu.Unlock()
		return
	}
	// An update proves the subscription; the token is a shared one.
	st.confirmed, st.shared = true, true
	switch {
	case seq > st.seq:
		if st.seq != 0 && last != st.seq {
			// A write of this key came between the one held and this one:
			// this one is newer, and the current value is read again.
			f.mark(st, readStrict)
		}
	case seq == st.seq:
		f.mu.Unlock()
		return // the value held
	case last == 0:
		// The key's first write in a stream that started over (the
		// bucket was recreated, or the server lost its store).
		f.mark(st, readReset)
	default:
		// Older than the value held: ignored. Seen only when the stream
		// started over and its first writes were missed; read it again.
		f.mark(st, readReset)
		f.mu.Unlock()
		return
	}
	st.seq = seq
	st.gen++
	if ev.Deleted {
		f.c.cache.drop(provider)
	} else {
		f.c.cache.set(provider, ev.Token, seq)
	}
	f.unlockEmit(&ev)
}
