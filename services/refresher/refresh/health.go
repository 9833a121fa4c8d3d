package refresh

import (
	"errors"
	"math/rand/v2"
	"time"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher"
)

// Observer is told about a provider's transitions as its Manager makes them
// on the lease holder: it publishes them as events (token.events.<provider>).
// Calls are made from the scheduler's goroutines, one provider's in order;
// they must not block.
type Observer interface {
	// Refreshed: a new token was fetched and published (at revision rev)
	// by the attempt-th attempt since the last success.
	Refreshed(provider string, tok wire.Token, rev uint64, attempt int)
	// RefreshFailed: one attempt failed; the next is due in f.RetryIn.
	RefreshFailed(provider string, f Failure)
	// CredentialsRejected: the provider entered the credentials_rejected
	// condition (once per run of failures; each failure is also a
	// RefreshFailed).
	CredentialsRejected(provider string, f Failure)
	// Recovered: the first success after failures that began failingFor
	// ago; tok is the new token.
	Recovered(provider string, tok wire.Token, attempt int, failingFor time.Duration)
	// Expired: tok, the last token, left service (its expiry margin began)
	// with no replacement while refreshes fail; last is the last failure.
	Expired(provider string, tok wire.Token, failingFor time.Duration, last Failure)
	// Repaired: after a foreign write, the manager's own token is stored
	// again at revision rev.
	Repaired(provider string, rev uint64)
}

// Failure describes one failed refresh attempt.
type Failure struct {
	// Err is the failure; its message carries no secret.
	Err error
	// Kind is how it is retried; Cause why it failed (a wire.Cause* value,
	// from refresher.Cause).
	Kind  refresher.Kind
	Cause string
	// Attempt counts the failed attempts since the last success, from 1.
	Attempt int
	// RetryIn is when the next attempt is due.
	RetryIn time.Duration
	// At is when it failed.
	At time.Time
}

// health is what one manager knows of its provider's refreshes beyond the
// current token: the run of failures since the last success, and the
// transitions it has reported. Status derives the provider's condition from
// it and the slot; the scheduler reports each attempt to it. It is guarded
// by the manager's mutex; what describes a run of failures exists only
// while there is one.
type health struct {
	start time.Time
	// reported is the issue time of the last token reported refreshed.
	reported  time.Time
	fail      *failRun // nil unless the last attempt failed
	repairing bool
	running   bool
}

// failRun is the run of failed attempts since the last success.
type failRun struct {
	// failures counts the failed attempts; since is when the first failed.
	failures int
	since    time.Time
	last     Failure
	// rejectedSince is when the current run of credential rejections began
	// (zero when the last failure was not one).
	rejectedSince time.Time
	// expired is the token reported expired in this run of failures.
	expired *wire.Token
}

// setRunning marks the manager as started (it calls the provider) or not.
func (m *Manager) setRunning(on bool) {
	m.mu.Lock()
	m.h.running = on
	m.mu.Unlock()
}

// noteRepair notes that a foreign write is being repaired: the next
// successful publish of the same token reports Repaired.
func (m *Manager) noteRepair() {
	m.mu.Lock()
	m.h.repairing = true
	m.mu.Unlock()
}

// succeeded records a successful attempt: tok is published at rev; fetched
// reports that it was fetched by this attempt, not only published again (a
// publish retried, a foreign write repaired).
func (m *Manager) succeeded(tok wire.Token, rev uint64, fetched bool) {
	tok.AccessToken = "" // observers never see a token
	m.mu.Lock()
	h := &m.h
	var failures int
	var since time.Time
	if h.fail != nil {
		failures, since = h.fail.failures, h.fail.since
	}
	attempt := failures + 1
	repaired := h.repairing
	// A token fetched earlier whose publish is retried is reported now,
	// once; one published again to repair a foreign write is not new.
	refreshed := fetched || !repaired && !tok.IssuedAt.Equal(h.reported)
	if refreshed {
		h.reported = tok.IssuedAt
	}
	h.fail = nil
	h.repairing = false
	now := m.s.now()
	m.mu.Unlock()
	obs := m.s.cfg.Observer
	if obs == nil {
		return
	}
	if failures > 0 {
		obs.Recovered(m.name, tok, attempt, now.Sub(since))
	}
	if refreshed {
		obs.Refreshed(m.name, tok, rev, attempt)
	}
	if repaired {
		obs.Repaired(m.name, rev)
	}
}

// failed records a failed attempt whose retry is due in wait. It returns
// when the current token leaves service if that is still to be reported
// (zero otherwise): the scheduler checks it then (checkExpiry).
func (m *Manager) failed(err error, wait time.Duration) (checkAt time.Time) {
	now := m.s.now()
	f := Failure{Err: err, Kind: refresher.Classify(err), Cause: refresher.Cause(err), RetryIn: wait, At: now}
	m.mu.Lock()
	h := &m.h
	if h.fail == nil {
		h.fail = &failRun{since: now}
	}
	r := h.fail
	r.failures++
	f.Attempt = r.failures
	r.last = f
	entering := false
	if f.Cause == wire.CauseRejectedCredentials {
		entering = r.rejectedSince.IsZero()
		if entering {
			r.rejectedSince = now
		}
	} else {
		r.rejectedSince = time.Time{}
	}
	var expired *wire.Token
	if e := m.slot.Load(); e != nil && r.expired == nil {
		if !servable(e.Token, now) {
			tok := e.Token
			tok.AccessToken = ""
			r.expired, expired = &tok, &tok
		} else if h.running {
			// Report the expiry when it happens, not at the next attempt.
			checkAt = servingEnd(e.Token)
		}
	}
	since := r.since
	m.mu.Unlock()
	if obs := m.s.cfg.Observer; obs != nil {
		obs.RefreshFailed(m.name, f)
		if entering {
			obs.CredentialsRejected(m.name, f)
		}
		if expired != nil {
			obs.Expired(m.name, *expired, now.Sub(since), f)
		}
	}
	return checkAt
}

// checkExpiry reports the token expired if, now that its time is up, it has
// not been replaced and refreshes are still failing. It returns when to
// check again (a token seen in the bucket replaced it meanwhile), or zero.
func (m *Manager) checkExpiry() (again time.Time) {
	now := m.s.now()
	m.mu.Lock()
	h := &m.h
	e := m.slot.Load()
	if !h.running || h.fail == nil || h.fail.expired != nil || e == nil {
		m.mu.Unlock()
		return time.Time{}
	}
	if servable(e.Token, now) {
		m.mu.Unlock()
		return servingEnd(e.Token)
	}
	tok := e.Token
	tok.AccessToken = ""
	h.fail.expired = &tok
	since, last := h.fail.since, h.fail.last
	m.mu.Unlock()
	if obs := m.s.cfg.Observer; obs != nil {
		obs.Expired(m.name, tok, now.Sub(since), last)
	}
	return time.Time{}
}

// servingEnd is when tok stops being served: ExpiryMargin before its expiry.
func servingEnd(tok wire.Token) time.Time {
	return tok.ExpiresAt.Add(-ExpiryMargin(tok.ExpiresAt.Sub(tok.IssuedAt)))
}

// condition returns the provider's condition, since when, and the last
// failure's cause (empty after a success).
func (m *Manager) condition() (cond string, since time.Time, cause string) {
	return m.conditionAt(m.s.now(), m.slot.Load())
}

// conditionAt is condition at now with e the slot's entry.
func (m *Manager) conditionAt(now time.Time, e *Entry) (cond string, since time.Time, cause string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r := m.h.fail
	if r != nil {
		cause = r.last.Cause
	}
	switch {
	case r != nil && !r.rejectedSince.IsZero():
		return wire.ConditionCredentialsRejected, r.rejectedSince, cause
	case e != nil && !servable(e.Token, now):
		return wire.ConditionExpired, servingEnd(e.Token), cause
	case r != nil:
		return wire.ConditionRetrying, r.since, cause
	case e != nil:
		return wire.ConditionOK, e.Token.IssuedAt, cause
	default:
		return wire.ConditionStarting, m.h.start, cause
	}
}

// retryIn returns when to retry after a failure of kind whose backoff says
// wait (SPEC §3): at most b.Max apart (the backoff's jitter can draw more);
// while a valid token remains, no later than the moment it
// stops being served; while none does, a transient failure is retried within
// b.Urgent (jittered over its second half, so that many providers recovering
// together do not retry in lockstep). A provider's Retry-After is respected
// whatever the wait.
func retryIn(kind refresher.Kind, err error, wait time.Duration, b refresher.Backoff, cur *Entry, now time.Time) time.Duration {
	if kind == refresher.Transient {
		// The backoff's jitter may draw up to half again its maximum; SPEC §3
		// says transient retries are at most Max (30 s) apart.
		wait = min(wait, b.Max)
		if cur != nil && servable(cur.Token, now) {
			wait = min(wait, servingEnd(cur.Token).Sub(now))
		} else if wait > b.Urgent {
			half := b.Urgent / 2
			wait = half + rand.N(half+1)
		}
	}
	var pe *refresher.ProviderError
	if errors.As(err, &pe) && pe.RetryAfter > wait {
		wait = pe.RetryAfter
	}
	return max(wait, 0)
}
