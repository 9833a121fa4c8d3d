package testutil

import (
	"errors"
	"testing"
	"time"

	"github.com/tokenbus/tokenbus/services/refresher"
)

// MaxErrorLen bounds a provider error's message: a provider's answer may be
// quoted in part, never in full.
const MaxErrorLen = 1024

// CheckParsed asserts what every provider response parser promises, whatever
// the answer: either a usable token issued at issued (not empty, expiring
// after it and within a year) or a *refresher.ProviderError with a bounded
// message, never both and never a panic. Fuzz tests call it.
func CheckParsed(tb testing.TB, tok refresher.Token, err error, issued time.Time) {
	tb.Helper()
	if err != nil {
		var pe *refresher.ProviderError
		if !errors.As(err, &pe) {
			tb.Fatalf("error %T is not a *refresher.ProviderError: %v", err, err)
		}
		if n := len(err.Error()); n > MaxErrorLen {
			tb.Fatalf("error message is %d bytes long", n)
		}
		if tok.AccessToken != "" {
			tb.Fatalf("both a token and an error: %v", err)
		}
		return
	}
	if tok.AccessToken == "" {
		tb.Fatal("no error and no token")
	}
	if !tok.IssuedAt.Equal(issued) || !tok.ExpiresAt.After(tok.IssuedAt) || tok.Lifetime() > 366*24*time.Hour {
		tb.Fatalf("token times: issued %v expires %v (want issued %v)", tok.IssuedAt, tok.ExpiresAt, issued)
	}
	if tok.TokenType == "" {
		tb.Fatal("token type is empty")
	}
}

// FuzzStatus maps any fuzzed integer to an HTTP status from 100 to 599.
func FuzzStatus(n int) int {
	if n < 0 {
		n = -(n + 1)
	}
	return 100 + n%500
}
