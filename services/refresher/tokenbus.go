// Package refresher is the domain of the tokenbus refresher: the token it
// fetches, the one-method Provider interface every provider kind implements,
// the Secret type that keeps credentials out of logs, and the classification
// of provider failures into transient and permanent. Adapters live in
// sub-packages (provider/…, natsx, rpc, …); only cmd/refresher wires them.
package refresher

import (
	"context"
	"log/slog"
	"time"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
)

// Secret is a credential or token value. Its String, GoString, LogValue,
// MarshalJSON and MarshalText all say [redacted], so it cannot leak through
// fmt, slog, JSON or YAML by accident; Reveal returns the value for the one
// place that must send it.
type Secret string

const redacted = "[redacted]"

// Reveal returns the secret value. Call it only where the value goes on the
// wire to its provider or to a tokenbus client.
func (s Secret) Reveal() string { return string(s) }

// String implements fmt.Stringer and returns [redacted].
func (s Secret) String() string { return redacted }

// GoString implements fmt.GoStringer and returns [redacted].
func (s Secret) GoString() string { return redacted }

// LogValue implements slog.LogValuer and returns [redacted].
func (s Secret) LogValue() slog.Value { return slog.StringValue(redacted) }

// MarshalJSON returns "[redacted]".
func (s Secret) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }

// MarshalText returns [redacted].
func (s Secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// Token is an access token fetched from a provider.
type Token struct {
	// AccessToken is the bearer value.
	AccessToken Secret
	// TokenType is the provider's token type, "Bearer" when it names none.
	TokenType string
	// IssuedAt is when the refresher received the token.
	IssuedAt time.Time
	// ExpiresAt is when the provider stops accepting it.
	ExpiresAt time.Time
}

// Lifetime returns ExpiresAt − IssuedAt.
func (t Token) Lifetime() time.Duration { return t.ExpiresAt.Sub(t.IssuedAt) }

// Wire returns the token as it travels on the wire for provider.
func (t Token) Wire(provider string) wire.Token {
	return wire.Token{
		Provider:    provider,
		AccessToken: t.AccessToken.Reveal(),
		TokenType:   t.TokenType,
		IssuedAt:    t.IssuedAt.UTC(),
		ExpiresAt:   t.ExpiresAt.UTC(),
	}
}

// Provider fetches a fresh access token from a payment provider's token
// endpoint. Each call makes one upstream request: retries, caching and
// scheduling belong to the caller. Implementations are safe for concurrent use
// and return a *ProviderError for every failure the provider reports, so that
// Classify can decide whether to retry.
type Provider interface {
	Token(ctx context.Context) (Token, error)
}

// ProviderFunc adapts a function to the Provider interface.
type ProviderFunc func(ctx context.Context) (Token, error)

// Token calls f(ctx).
func (f ProviderFunc) Token(ctx context.Context) (Token, error) { return f(ctx) }
