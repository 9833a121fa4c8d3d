package tokenclient

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
)

// ProviderEvent is one thing that happened to a provider, as the leader
// publishes it on token.events.<provider> (SPEC §9): refreshed,
// refresh_failed, credentials_rejected, recovered, expired, added, rotated,
// removed, foreign_write. It never carries a secret or a token.
type ProviderEvent = wire.Event

// EventSubscription follows provider events until Stop.
type EventSubscription struct {
	sub *nats.Subscription
}

// Stop ends the subscription; fn is not called after Stop returns, except
// for a call already under way. It is safe to call more than once.
func (s *EventSubscription) Stop() error {
	if !s.sub.IsValid() {
		return nil
	}
	if err := s.sub.Unsubscribe(); err != nil {
		return fmt.Errorf("tokenclient: stop following events: %w", err)
	}
	return nil
}

// Events calls fn with every event the refresher publishes for provider, in
// order, on one goroutine — or for every provider when provider is "" (which
// needs permission to subscribe to token.events.*; a reader of one provider
// has token.events.<provider> only, SPEC §10). Events are core NATS
// messages: those published while the connection is down are not replayed
// (token.status and Token say the current state). An event that cannot be
// decoded is passed to the error handler (WithErrorHandler) and skipped.
// Events returns once the server has the subscription (a round trip, within
// the client's timeout): every event published after that is delivered.
//
// Errors: ErrClosed after Close; ErrBadRequest for an invalid provider name;
// the subscription's error (a permission violation arrives later, through
// the connection's error handler, as for any NATS subscription).
func (c *Client) Events(provider string, fn func(ProviderEvent)) (*EventSubscription, error) {
	if c.closed.Load() {
		return nil, ErrClosed
	}
	subject := wire.EventsPrefix + "*"
	if provider != "" {
		if !wire.ValidName(provider) {
			return nil, fmt.Errorf("%w: events: provider name %q is not valid", ErrBadRequest, provider)
		}
		subject = wire.EventsSubject(provider)
	}
	if c.nc == nil || fn == nil {
		return nil, fmt.Errorf("%w: events need a connection and a handler", ErrInvalidOption)
	}
	sub, err := c.nc.Subscribe(subject, func(m *nats.Msg) {
		var ev ProviderEvent
		if err := json.Unmarshal(m.Data, &ev); err != nil || ev.Type == "" {
			c.report(fmt.Errorf("tokenclient: events: malformed event on %s", m.Subject))
			return
		}
		fn(ev)
	})
	if err != nil {
		return nil, fmt.Errorf("tokenclient: follow %s: %w", subject, err)
	}
	// Wait until the server has the subscription, so that an event
	// published after Events returns is delivered. Not connected: the
	// subscription is sent at the reconnect, and followed from then on.
	ctx, cancel := c.withTimeout(context.Background())
	_ = c.nc.FlushWithContext(ctx)
	cancel()
	return &EventSubscription{sub: sub}, nil
}

// TokenFor returns provider's token valid for at least minValidity (SPEC
// §3's min_validity): from the in-memory copy when it lives long enough,
// else from the refresher, which refreshes early if its current token
// expires sooner. Use it before work that must not outlive its token (a
// long batch, a slow payment flow). minValidity ≤ 0 is Token.
//
// Errors are those of Token; ErrUnavailable (503) also when no token valid
// that long can be had in time (more than the provider's tokens live, or the
// provider down); ErrBadRequest for a minValidity over wire.MaxMinValidity.
func (c *Client) TokenFor(ctx context.Context, provider string, minValidity time.Duration) (Token, error) {
	if minValidity <= 0 {
		return c.Token(ctx, provider)
	}
	if err := ctx.Err(); err != nil {
		return Token{}, err
	}
	if c.closed.Load() {
		return Token{}, ErrClosed
	}
	if minValidity > wire.MaxMinValidity {
		return Token{}, fmt.Errorf("%w: min_validity: must be at most %v", ErrBadRequest, wire.MaxMinValidity)
	}
	if e, ok := c.cache.get(provider); ok && lastsFor(e.tok, time.Now(), minValidity) {
		return e.tok, nil
	}
	body, err := json.Marshal(wire.GetRequest{MinValidity: minValidity.String()})
	if err != nil {
		return Token{}, fmt.Errorf("tokenclient: encode token.get: %w", err)
	}
	return c.request(ctx, "token.get", provider, wire.GetSubject(provider), body)
}

// lastsFor reports whether tok stays valid until now+d, keeping the
// refresher's expiry margin (min(1 s, a tenth of its life)).
func lastsFor(tok Token, now time.Time, d time.Duration) bool {
	margin := min(time.Second, tok.ExpiresAt.Sub(tok.IssuedAt)/10)
	return !tok.Expired(now.Add(d + margin))
}
