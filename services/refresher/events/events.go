// Package events owns the provider events of the refresher (SPEC §9): it
// turns what happens to each provider — refreshes, failures and their
// causes, rejected credentials, recoveries, expiries, runtime providers added,
// rotated and removed, foreign writes and their repair — into wire.Event JSON
// on the core NATS subject token.events.<provider>. Only the lease holder
// publishes: its refresh managers call the Publisher (a refresh.Observer),
// and the wiring calls it for runtime providers and foreign writes.
//
// An event never carries a secret or a token: the token it is told about has
// its value cleared before it gets here, and error messages carry none
// (docs/observability.md names the test that checks both).
package events

import (
	"encoding/json"
	"errors"
	"log/slog"
	"time"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/refresh"
)

// Conn publishes a message on a subject (a *nats.Conn). Publishing must not
// block for long: events are published from the refresh loops.
type Conn interface {
	Publish(subject string, data []byte) error
}

// Config configures a Publisher.
type Config struct {
	// Conn carries the events.
	Conn Conn
	// Leader names this replica in every event it publishes.
	Leader string
	// Now returns the current time; time.Now if nil.
	Now func() time.Time
	// Logger logs events that could not be published (at debug: the
	// connection is down, which /readyz reports); discarded if nil.
	Logger *slog.Logger
	// OnPublish, if set, is told every event published (metrics, tests).
	OnPublish func(wire.Event)
}

// Publisher publishes provider events. It is safe for concurrent use.
type Publisher struct {
	cfg Config
	now func() time.Time
	log *slog.Logger
}

var _ refresh.Observer = (*Publisher)(nil)

// New returns a Publisher for cfg.
func New(cfg Config) *Publisher {
	p := &Publisher{cfg: cfg, now: cfg.Now, log: cfg.Logger}
	if p.now == nil {
		p.now = time.Now
	}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	return p
}

// Publish sends ev on token.events.<ev.Provider>, filling At and Leader when
// unset. A nil Publisher publishes nothing.
func (p *Publisher) Publish(ev wire.Event) {
	if p == nil || p.cfg.Conn == nil || !wire.ValidName(ev.Provider) {
		return
	}
	if ev.At.IsZero() {
		ev.At = p.now()
	}
	ev.At = ev.At.UTC()
	if ev.Leader == "" {
		ev.Leader = p.cfg.Leader
	}
	b, err := json.Marshal(ev)
	if err != nil {
		return
	}
	if err := p.cfg.Conn.Publish(wire.EventsSubject(ev.Provider), b); err != nil {
		p.log.Debug("event not published", slog.String("provider", ev.Provider), slog.String("type", ev.Type), slog.String("error", err.Error()))
		return
	}
	if p.cfg.OnPublish != nil {
		p.cfg.OnPublish(ev)
	}
}

// failure fills ev's failure fields from f.
func failure(ev wire.Event, f refresh.Failure) wire.Event {
	ev.Kind, ev.Cause, ev.Attempt, ev.At = f.Kind.String(), f.Cause, f.Attempt, f.At
	if f.Err != nil {
		ev.Detail = f.Err.Error()
	}
	if pe := providerError(f.Err); pe != nil {
		ev.Code, ev.Status = pe.Code, pe.StatusCode
	}
	return ev
}

// Refreshed publishes "refreshed".
func (p *Publisher) Refreshed(provider string, tok wire.Token, rev uint64, attempt int) {
	exp := tok.ExpiresAt.UTC()
	p.Publish(wire.Event{Provider: provider, Type: wire.EventRefreshed, Attempt: attempt, ExpiresAt: &exp, Revision: rev,
		Detail: "a new token was fetched and published"})
}

// RefreshFailed publishes "refresh_failed" with its kind, cause, the
// provider's code, the attempt and when the next one is due.
func (p *Publisher) RefreshFailed(provider string, f refresh.Failure) {
	ev := failure(wire.Event{Provider: provider, Type: wire.EventRefreshFailed}, f)
	ev.RetryIn = wire.DurationOf(f.RetryIn)
	p.Publish(ev)
}

// CredentialsRejected publishes "credentials_rejected".
func (p *Publisher) CredentialsRejected(provider string, f refresh.Failure) {
	ev := failure(wire.Event{Provider: provider, Type: wire.EventCredentialsRejected}, f)
	ev.RetryIn = wire.DurationOf(f.RetryIn)
	ev.Detail = "the provider rejected the credentials; retried slowly until they are fixed: " + ev.Detail
	p.Publish(ev)
}

// Recovered publishes "recovered" with how long refreshes were failing.
func (p *Publisher) Recovered(provider string, tok wire.Token, attempt int, failingFor time.Duration) {
	exp := tok.ExpiresAt.UTC()
	p.Publish(wire.Event{Provider: provider, Type: wire.EventRecovered, Attempt: attempt, ExpiresAt: &exp,
		FailingFor: wire.DurationOf(failingFor), Detail: "refreshes succeed again"})
}

// Expired publishes "expired": the last token is no longer served.
func (p *Publisher) Expired(provider string, tok wire.Token, failingFor time.Duration, last refresh.Failure) {
	exp := tok.ExpiresAt.UTC()
	ev := wire.Event{Provider: provider, Type: wire.EventExpired, ExpiresAt: &exp, FailingFor: wire.DurationOf(failingFor),
		Cause: last.Cause, Detail: "the last token expired with no replacement: token.get answers 503 until a refresh succeeds"}
	if pe := providerError(last.Err); pe != nil {
		ev.Code, ev.Status = pe.Code, pe.StatusCode
	}
	p.Publish(ev)
}

// Repaired publishes "foreign_write" with Repaired set: the leader's token
// is stored again at rev.
func (p *Publisher) Repaired(provider string, rev uint64) {
	p.Publish(wire.Event{Provider: provider, Type: wire.EventForeignWrite, Repaired: true, Revision: rev,
		Detail: "the leader's token is stored again"})
}

// ForeignWrite publishes "foreign_write": a token the leader did not write
// was stored under provider's key at rev; the leader replaces it at once.
func (p *Publisher) ForeignWrite(provider string, rev uint64) {
	p.Publish(wire.Event{Provider: provider, Type: wire.EventForeignWrite, Revision: rev,
		Detail: "a token the leader did not write was stored for this provider; it is being replaced"})
}

// Added publishes "added": a runtime provider of kind was added.
func (p *Publisher) Added(provider, kind string) {
	p.Publish(wire.Event{Provider: provider, Type: wire.EventAdded, Detail: "runtime provider added (kind " + kind + ")"})
}

// Rotated publishes "rotated": a runtime provider was put again with new
// credentials; its next token is fetched with them.
func (p *Publisher) Rotated(provider, kind string) {
	p.Publish(wire.Event{Provider: provider, Type: wire.EventRotated, Detail: "runtime provider put again (kind " + kind + "): the next token is fetched with the new credentials"})
}

// Removed publishes "removed": a runtime provider was deleted; token.get
// answers 404 for it.
func (p *Publisher) Removed(provider string) {
	p.Publish(wire.Event{Provider: provider, Type: wire.EventRemoved, Detail: "runtime provider deleted: its token is deleted and token.get answers 404"})
}

// providerError returns err's *refresher.ProviderError, or nil.
func providerError(err error) *refresher.ProviderError {
	var pe *refresher.ProviderError
	if errors.As(err, &pe) {
		return pe
	}
	return nil
}
