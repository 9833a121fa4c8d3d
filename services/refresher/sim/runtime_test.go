package sim

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/leader"
	"github.com/tokenbus/tokenbus/services/refresher/refresh"
)

// More of the schedule: runtime providers put, rotated and deleted while
// the replicas run; process pauses longer than the lease; token.refresh
// reports on any replica (forwarded from standbys); the tokens bucket
// deleted and recreated. Their invariants (docs/leadership.md):
const (
	// A replica whose Set (a rotation) or Remove returned makes no call
	// with the replaced or removed credentials.
	invReplacedCreds = "no-call-with-replaced-credentials"
	// A removed provider's key holds no token once the faults stopped, and
	// no replica publishes a token of its after its Remove returned there
	// (nothing late of it can seed a later provider of that name).
	invRemovedKey = "removed-provider-leaves-no-token"
	// No request leaves a replica whose lease is not valid as it leaves (a
	// paused leader that wakes past its deadline sends nothing: leader.Guard).
	invPaused = "paused-leader-sends-nothing"
	// A forwarded refresh is handled by one replica, even while two believe
	// they lead.
	invForwardOnce = "forwarded-refresh-handled-once"
	// With faults stopped, a standby's report of its token is answered by
	// the leader with another token.
	invReportAnswered = "report-answered-after-faults"
)

// runtimeProviders is the state of the runtime providers rt-0 and rt-1.
type runtimeProviders struct {
	gen      int             // apps made so far (rt-N.v<gen>)
	removed  []string        // removed and not put again
	reported map[string]bool // tokens reported rejected (token.refresh)
}

// moreEvents plays events 10-14 of the schedule; r is a replica drawn for it.
func (w *world) moreEvents(e int, r *replica) {
	switch e {
	case 10:
		w.runtimePut(fmt.Sprint("rt-", w.rng.IntN(2)))
	case 11:
		w.runtimeDelete(fmt.Sprint("rt-", w.rng.IntN(2)))
	case 12: // pause the leader (if any) as its next call leaves
		if l := w.leader(); l != nil {
			r = l
		}
		d := ttl + time.Second + time.Duration(w.rng.Int64N(int64(ttl)))
		w.logf("%s will pause for %v as its next call leaves", r.name, d)
		w.mu.Lock()
		r.pauseNext = d
		w.mu.Unlock()
	case 13: // a token.refresh report on r
		w.mu.Lock()
		c := w.creds[w.rng.IntN(len(w.creds))]
		m := r.mgrs[c.name]
		w.mu.Unlock()
		if m == nil {
			return
		}
		w.logf("report %s's token on %s", c.name, r.name)
		go w.report(r, c.name, m)
	case 14: // the tokens bucket deleted and recreated (rarely)
		if w.rng.IntN(3) == 0 {
			w.logf("tokens bucket deleted and recreated")
			w.tokens.recreate()
		}
	}
}

// runtimePut puts name with a new app: every replica replaces its loop (a
// rotation) or adds one, as cmd/refresher's applyCredential.
func (w *world) runtimePut(name string) {
	w.mu.Lock()
	w.rt.gen++
	c := &credential{w: w, name: name, app: fmt.Sprintf("%s.v%d", name, w.rt.gen)}
	i := slices.IndexFunc(w.creds, func(o *credential) bool { return o.name == name })
	var old *credential
	if i >= 0 {
		old, w.creds[i] = w.creds[i], c
	} else {
		w.creds = append(w.creds, c)
	}
	w.rt.removed = slices.DeleteFunc(w.rt.removed, func(n string) bool { return n == name })
	reps := slices.Clone(w.reps)
	w.mu.Unlock()
	if old != nil {
		w.logf("put %s: rotated to %s", name, c.app)
	} else {
		w.logf("put %s: added with %s", name, c.app)
	}
	for _, r := range reps {
		w.mu.Lock()
		prev := r.mgrs[name]
		w.mu.Unlock()
		var staleBefore time.Time
		if prev != nil {
			staleBefore = time.Now() // replaced credentials: refetch at once
		}
		m := w.newManager(r, c, staleBefore)
		if prev != nil {
			if e := prev.Slot().Load(); e != nil {
				m.Slot().Store(e) // served until replaced
			}
		}
		w.mu.Lock()
		r.mgrs[name] = m
		w.mu.Unlock()
		r.l.Set(name, m)
		if old != nil {
			w.mu.Lock()
			r.retired[old] = "replaced"
			w.mu.Unlock()
		}
	}
}

// runtimeDelete deletes name: every replica stops serving it and removes its
// loop; the leader deletes its key.
func (w *world) runtimeDelete(name string) {
	w.mu.Lock()
	i := slices.IndexFunc(w.creds, func(o *credential) bool { return o.name == name })
	if i < 0 {
		w.mu.Unlock()
		return
	}
	c := w.creds[i]
	w.creds = slices.Delete(w.creds, i, i+1)
	w.rt.removed = append(w.rt.removed, name)
	reps := slices.Clone(w.reps)
	w.mu.Unlock()
	w.logf("delete %s (%s)", name, c.app)
	for _, r := range reps {
		w.mu.Lock()
		delete(r.mgrs, name)
		w.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = r.l.Remove(ctx, name)
		cancel()
		w.mu.Lock()
		r.retired[c] = "removed"
		w.mu.Unlock()
	}
}

// report sends a token.refresh report of m's token on r, as rpc does: the
// leader refreshes, a standby forwards to the leader.
func (w *world) report(r *replica, name string, m *refresh.Manager) (reported string, tok wire.Token, err error) {
	e, err := m.Current()
	if err != nil {
		return "", tok, err
	}
	reported = e.Token.AccessToken
	w.mu.Lock()
	w.rt.reported[reported] = true // rejected: dropped if not published yet, not lost
	w.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	body, err := leader.Source{Leader: r.l, Name: name, Local: m}.Refresh(ctx, reported)
	if err == nil {
		err = json.Unmarshal(body, &tok)
	}
	return reported, tok, err
}

// awake waits while r's process is paused (every request r makes).
func (r *replica) awake() {
	if r == nil {
		return
	}
	for {
		r.w.mu.Lock()
		until := r.pausedUntil
		r.w.mu.Unlock()
		d := time.Until(until)
		if d <= 0 {
			return
		}
		time.Sleep(min(d, 100*time.Millisecond)) // the faults' end wakes it
	}
}

type roundTrip func(*http.Request) (*http.Response, error)

func (f roundTrip) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }

// viaGuard sends the call through leader.Guard: admitted by the gate, the
// replica may pause (a GC pause, SIGSTOP) before the request leaves.
func (p caller) viaGuard(ctx context.Context) (refresher.Token, error) {
	w, r := p.c.w, p.r
	w.mu.Lock()
	d := r.pauseNext
	if d > 0 {
		r.pauseNext, r.pausedUntil = 0, time.Now().Add(d)
	}
	w.mu.Unlock()
	if d > 0 {
		w.logf("%s paused as its call of %s leaves", r.name, p.c.name)
	}
	r.awake() // the whole process is paused: its other calls too
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://daraja.sim/oauth/v1/generate", nil)
	if err != nil {
		return refresher.Token{}, err
	}
	var tok refresher.Token
	_, err = leader.Guard(roundTrip(func(req *http.Request) (*http.Response, error) {
		w.mu.Lock()
		if !r.l.Valid() {
			w.violateLocked(invPaused, "a call of %s left %s without a valid lease", p.c.name, r.name)
		}
		if how := r.retired[p.c]; how != "" {
			w.violateLocked(invReplacedCreds, "%s called %s with the %s credentials %s", r.name, p.c.name, how, p.c.app)
		}
		w.mu.Unlock()
		var err error
		if tok, err = p.call(req.Context()); err != nil {
			return nil, err
		}
		return &http.Response{StatusCode: http.StatusOK, Body: http.NoBody, Request: req}, nil
	})).RoundTrip(req)
	return tok, err
}

// proposed is told about every write the bucket takes, as it is proposed
// (it then commits, after the schedule's delay, whatever its writer does): no
// replica proposes a token of a provider it removed. A proposal made before
// the Remove returned may commit after it (slow commits; soak seed 5916):
// JetStream cannot take it back, and the registry keeps such a late token
// from seeding a later provider of the name
// (TestRemovedProvidersLateTokenSeedsNoSuccessor).
func (w *world) proposed(b *bucket, from *replica, p proposal) {
	if b != w.tokens || from == nil || p.op != jetstream.KeyValuePut || strings.HasPrefix(p.key, "_") {
		return
	}
	var tok wire.Token
	if json.Unmarshal(p.data, &tok) != nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if is, ok := w.issued[tok.AccessToken]; ok && from.retired[is.c] == "removed" {
		w.violateLocked(invRemovedKey, "%s published %s of the removed %s after its Remove returned", from.name, tok.AccessToken, is.c.app)
	}
}

// checkRemoved: with faults stopped, no removed provider's key holds a token.
func (w *world) checkRemoved() {
	w.mu.Lock()
	removed := slices.Clone(w.rt.removed)
	w.mu.Unlock()
	for _, name := range removed {
		if e, ok := w.tokens.get(name); ok && e.op == jetstream.KeyValuePut {
			w.violate(invRemovedKey, "the key of the removed provider %s still holds a token (%s)", name, e.data)
		}
	}
}

// reportAfterFaults: with faults stopped and a leader, a standby's report of
// its copy of a token is answered with another token.
func (w *world) reportAfterFaults() {
	time.Sleep(refresh.DefaultRefreshCooldown) // reports made in the chaos are out of their cooldown
	l := w.leader()
	if l == nil {
		return // leader-after-faults says so
	}
	var s *replica
	for _, r := range w.reps {
		if r != l {
			s = r
			break
		}
	}
	w.mu.Lock()
	c := w.creds[0]
	m := s.mgrs[c.name]
	w.mu.Unlock()
	// The standby holds a valid copy once the leader has refreshed (a term
	// record held up by a partition until its 5 s timeout delays that;
	// fresh-after-faults bounds it).
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if _, err := m.Current(); err == nil {
			break
		}
	}
	// A client retries a report that found no leader serving yet (its term
	// record held up): answered within 10 s.
	var (
		reported string
		tok      wire.Token
		err      error
	)
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		if reported, tok, err = w.report(s, c.name, m); err == nil || !time.Now().Before(end) {
			break
		}
	}
	switch {
	case err != nil:
		w.violate(invReportAnswered, "%s's report of %s %q: %v", s.name, c.name, reported, err)
	case tok.AccessToken == "" || tok.AccessToken == reported:
		w.violate(invReportAnswered, "%s's report of %s %q was answered with %q", s.name, c.name, reported, tok.AccessToken)
	default:
		w.logf("report of %s on %s answered", c.name, s.name)
	}
}

// recreate deletes the bucket's stream and creates it again: every key is
// gone and sequences start again from 1.
func (b *bucket) recreate() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seq = 0
	b.last = map[string]rec{}
	b.log = append(b.log, rec{bucket: b.name, key: "(recreated)", at: time.Now()})
}
