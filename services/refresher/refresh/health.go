package refresh

import (
	"errors"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher"
)

// Observer is told about a provider's transitions as its Manager makes them
// on the lease holder: it publishes them as events (token.events.<provider>).
// Calls are made from the manager's goroutines, one provider's in order;
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
// it and the slot; Run reports each attempt to it.
type health struct {
	name  string
	obs   Observer
	now   func() time.Time
	slot  *Slot
	start time.Time

	mu sync.Mutex
	// failures counts the failed attempts since the last success;
	// failingSince is when the first of them failed.
	failures     int
	failingSince time.Time
	last         Failure
	// rejectedSince is when the current run of credential rejections began
	// (zero when the last failure was not one).
	rejectedSince time.Time
	// expired is the token reported expired in this run of failures.
	expired *wire.Token
	timer   *time.Timer
	// reported is the issue time of the last token reported refreshed.
	reported  time.Time
	repairing bool
	running   bool
}

func newHealth(name string, obs Observer, now func() time.Time, slot *Slot) *health {
	return &health{name: name, obs: obs, now: now, slot: slot, start: now()}
}

// run marks the manager's loop as running (it calls the provider) or not.
func (h *health) run(on bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.running = on
	if !on && h.timer != nil {
		h.timer.Stop()
		h.timer = nil
	}
}

// repair notes that a foreign write is being repaired: the next successful
// publish of the same token reports Repaired.
func (h *health) repair() {
	h.mu.Lock()
	h.repairing = true
	h.mu.Unlock()
}

// succeeded records a successful attempt: tok is published at rev; fetched
// reports that it was fetched by this attempt, not only published again (a
// publish retried, a foreign write repaired).
func (h *health) succeeded(tok wire.Token, rev uint64, fetched bool) {
	tok.AccessToken = "" // observers never see a token
	h.mu.Lock()
	failures, since := h.failures, h.failingSince
	attempt := failures + 1
	repaired := h.repairing
	// A token fetched earlier whose publish is retried is reported now,
	// once; one published again to repair a foreign write is not new.
	refreshed := fetched || !repaired && !tok.IssuedAt.Equal(h.reported)
	if refreshed {
		h.reported = tok.IssuedAt
	}
	h.failures, h.failingSince, h.last, h.rejectedSince, h.expired = 0, time.Time{}, Failure{}, time.Time{}, nil
	h.repairing = false
	if h.timer != nil {
		h.timer.Stop()
		h.timer = nil
	}
	now := h.now()
	h.mu.Unlock()
	if h.obs == nil {
		return
	}
	if failures > 0 {
		h.obs.Recovered(h.name, tok, attempt, now.Sub(since))
	}
	if refreshed {
		h.obs.Refreshed(h.name, tok, rev, attempt)
	}
	if repaired {
		h.obs.Repaired(h.name, rev)
	}
}

// failed records a failed attempt whose retry is due in wait.
func (h *health) failed(err error, wait time.Duration) {
	now := h.now()
	f := Failure{Err: err, Kind: refresher.Classify(err), Cause: refresher.Cause(err), RetryIn: wait, At: now}
	h.mu.Lock()
	if h.failures == 0 {
		h.failingSince = now
	}
	h.failures++
	f.Attempt = h.failures
	h.last = f
	entering := false
	if f.Cause == wire.CauseRejectedCredentials {
		entering = h.rejectedSince.IsZero()
		if entering {
			h.rejectedSince = now
		}
	} else {
		h.rejectedSince = time.Time{}
	}
	var expired *wire.Token
	if e := h.slot.Load(); e != nil && h.expired == nil {
		if !servable(e.Token, now) {
			tok := e.Token
			tok.AccessToken = ""
			h.expired, expired = &tok, &tok
		} else if h.timer == nil && h.running {
			// Report the expiry when it happens, not at the next attempt.
			h.timer = time.AfterFunc(servingEnd(e.Token).Sub(now), h.checkExpiry)
		}
	}
	since := h.failingSince
	h.mu.Unlock()
	if h.obs == nil {
		return
	}
	h.obs.RefreshFailed(h.name, f)
	if entering {
		h.obs.CredentialsRejected(h.name, f)
	}
	if expired != nil {
		h.obs.Expired(h.name, *expired, now.Sub(since), f)
	}
}

// checkExpiry reports the token expired if, now that its time is up, it has
// not been replaced and refreshes are still failing.
func (h *health) checkExpiry() {
	now := h.now()
	h.mu.Lock()
	h.timer = nil
	e := h.slot.Load()
	if !h.running || h.failures == 0 || h.expired != nil || e == nil {
		h.mu.Unlock()
		return
	}
	if servable(e.Token, now) {
		// Replaced meanwhile (a token seen in the bucket): check again at
		// its own end.
		h.timer = time.AfterFunc(servingEnd(e.Token).Sub(now), h.checkExpiry)
		h.mu.Unlock()
		return
	}
	tok := e.Token
	tok.AccessToken = ""
	h.expired = &tok
	since, last := h.failingSince, h.last
	h.mu.Unlock()
	if h.obs != nil {
		h.obs.Expired(h.name, tok, now.Sub(since), last)
	}
}

// servingEnd is when tok stops being served: ExpiryMargin before its expiry.
func servingEnd(tok wire.Token) time.Time {
	return tok.ExpiresAt.Add(-ExpiryMargin(tok.ExpiresAt.Sub(tok.IssuedAt)))
}

// condition returns the provider's condition, since when, and the last
// failure's cause (empty after a success).
func (h *health) condition() (cond string, since time.Time, cause string) {
	return h.conditionAt(h.now(), h.slot.Load())
}

// conditionAt is condition at now with e the slot's entry.
func (h *health) conditionAt(now time.Time, e *Entry) (cond string, since time.Time, cause string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.failures > 0 {
		cause = h.last.Cause
	}
	switch {
	case h.failures > 0 && !h.rejectedSince.IsZero():
		return wire.ConditionCredentialsRejected, h.rejectedSince, cause
	case e != nil && !servable(e.Token, now):
		return wire.ConditionExpired, servingEnd(e.Token), cause
	case h.failures > 0:
		return wire.ConditionRetrying, h.failingSince, cause
	case e != nil:
		return wire.ConditionOK, e.Token.IssuedAt, cause
	default:
		return wire.ConditionStarting, h.start, cause
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
