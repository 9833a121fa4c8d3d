package refresh

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher"
)

// lastsFor reports whether tok may still be served at now+d.
func lastsFor(tok wire.Token, now time.Time, d time.Duration) bool { return servable(tok, now.Add(d)) }

// GetFresh answers a token.get with min_validity d (SPEC §3): the current
// token if it may be served for at least d more; otherwise it asks refresh
// for a token to replace the current one — early, as token.refresh does for a
// rejected token, so that many callers cause one provider call (and the
// refresh cooldown applies) — and answers the new token if it lives long
// enough. refresh is the provider's token.refresh path on this replica: the
// manager's own Refresh on the lease holder, forwarded to it from a standby.
//
// It returns the token JSON and its KV revision (0 if not stored yet), or an
// error wrapping refresher.ErrMinValidity (503) when no token valid for d can
// be had: d exceeds what the provider's tokens live, there is no token at
// all (the usual 503 of token.get, which says why), or the refresh failed or
// gave a token that expires sooner.
func (m *Manager) GetFresh(ctx context.Context, d time.Duration, refresh func(ctx context.Context, invalid string) ([]byte, error)) ([]byte, uint64, error) {
	now := m.s.now()
	e := m.slot.Load()
	if e != nil && lastsFor(e.Token, now, d) {
		return e.JSON, e.Revision, nil
	}
	if _, err := m.Current(); err != nil {
		return nil, 0, err // no valid token at all: token.get's own 503
	}
	if life := e.Token.ExpiresAt.Sub(e.Token.IssuedAt); d >= life-ExpiryMargin(life) {
		// A refresh would throw away a good token for one that does not
		// live long enough either (for Daraja, killing the first).
		return nil, 0, fmt.Errorf("%w: its tokens live %v", refresher.ErrMinValidity, life.Round(time.Second))
	}
	// Refresh early. The token.refresh path lets one caller through per
	// token (and, with the cooldown, per cooldown period); every other
	// caller waits for the same refresh.
	body, err := refresh(ctx, e.Token.AccessToken)
	var (
		ce *refresher.CooldownError
		re *refresher.RemoteError
	)
	switch {
	case errors.As(err, &ce) || errors.As(err, &re) && re.Code == wire.CodeTooManyRequests:
		// Within the refresh cooldown no early refresh is made: 503, not
		// the cooldown's 429 (SPEC §3).
		return nil, 0, fmt.Errorf("%w: an early refresh waits for the refresh cooldown (%v)", refresher.ErrMinValidity, err)
	case err != nil:
		return nil, 0, fmt.Errorf("%w: the early refresh failed: %w", refresher.ErrMinValidity, err)
	}
	var tok wire.Token
	if err := json.Unmarshal(body, &tok); err != nil {
		return nil, 0, fmt.Errorf("refresh: decode the refreshed token: %w", err)
	}
	if !lastsFor(tok, m.s.now(), d) {
		return nil, 0, fmt.Errorf("%w: the refreshed token expires sooner", refresher.ErrMinValidity)
	}
	var rev uint64
	if cur := m.slot.Load(); cur != nil && cur.Token.AccessToken == tok.AccessToken {
		rev = cur.Revision
	}
	return body, rev, nil
}
