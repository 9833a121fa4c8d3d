package refresher

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
)

// Sentinel errors of the refresher domain. Edges map them to wire codes once:
// ErrUnknownProvider → 404, ErrNoToken → 503, *ProviderError (permanent) → 502.
var (
	// ErrUnknownProvider is returned for a provider name that is not configured.
	ErrUnknownProvider = errors.New("refresher: unknown provider")
	// ErrNoToken is returned when no valid token is available yet or any more.
	ErrNoToken = errors.New("refresher: no valid token available")
	// ErrBadRequest is returned for a request that cannot be understood.
	ErrBadRequest = errors.New("refresher: bad request")
	// ErrConflict is returned for a runtime provider put whose name belongs
	// to a config-file provider (409).
	ErrConflict = errors.New("refresher: conflict")
	// ErrRuntimeOff is returned by the runtime provider endpoints when no
	// sealing key is configured (503).
	ErrRuntimeOff = errors.New("refresher: runtime providers are off")
	// ErrMinValidity is returned for a token.get with min_validity when no
	// token valid for that long can be had in time (503, SPEC §3).
	ErrMinValidity = errors.New("refresher: no token valid for min_validity")
	// ErrTimeout is wrapped in the *ProviderError of a token request that
	// did not complete in time. Its text is a phrase ("timed out") because
	// it ends the message of the error that wraps it.
	ErrTimeout = errors.New("timed out")
)

// Kind says what to do about a failed token request.
type Kind int

const (
	// Transient failures (5xx, timeouts, connection errors, rate limits) are
	// retried with exponential backoff and jitter.
	Transient Kind = iota
	// Permanent failures (bad credentials, bad grant, malformed answers) will
	// not heal by retrying at once: they are retried slowly and reported.
	Permanent
)

// String returns "transient" or "permanent".
func (k Kind) String() string {
	if k == Permanent {
		return "permanent"
	}
	return "transient"
}

// ProviderError is a failure reported by, or read from, a provider's token
// endpoint. It carries the provider's own fields so an operator can act on it,
// and never a credential or a token.
type ProviderError struct {
	// Kind classifies the failure.
	Kind Kind
	// StatusCode is the HTTP status of the answer, 0 when there was none.
	StatusCode int
	// Code is the provider's own error code, e.g. Daraja's "400.008.01" or an
	// OAuth2 "invalid_client"; empty when the provider gave none.
	Code string
	// Message says what went wrong and, where known, what to fix.
	Message string
	// RetryAfter is the provider's Retry-After, 0 when absent.
	RetryAfter time.Duration
	// Err is the underlying error, if any.
	Err error
}

// Error formats the failure as "provider error: HTTP 400 400.008.01: message".
func (e *ProviderError) Error() string {
	s := "provider error:"
	if e.StatusCode != 0 {
		s += fmt.Sprintf(" HTTP %d", e.StatusCode)
	}
	if e.Code != "" {
		s += " " + e.Code
	}
	if e.StatusCode != 0 || e.Code != "" {
		s += ":"
	}
	s += " " + e.Message
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns the underlying error.
func (e *ProviderError) Unwrap() error { return e.Err }

// KindForStatus is the default classification of an HTTP status from a token
// endpoint: 408, 425, 429 and 5xx are transient, every other non-2xx status is
// permanent. Providers override it only where a provider documents otherwise
// (MTN MoMo's 500 login_failed is a credentials error).
func KindForStatus(status int) Kind {
	switch {
	case status == 408, status == 425, status == 429, status >= 500:
		return Transient
	default:
		return Permanent
	}
}

// KindFor classifies a token endpoint's failed answer by its HTTP status and
// the provider's own error code, when it gave one. Codes that say the request
// or the credentials are wrong are permanent whatever the status (MTN MoMo
// answers bad credentials with 500 {"error":"login_failed"}); codes that say
// the server is briefly unable are transient; any other code, or none, falls
// back to KindForStatus.
func KindFor(status int, code string) Kind {
	switch code {
	case "invalid_request", "invalid_client", "invalid_grant", "unauthorized_client",
		"unsupported_grant_type", "invalid_scope", "access_denied", "login_failed":
		return Permanent
	case "temporarily_unavailable", "server_error", "slow_down":
		return Transient
	}
	return KindForStatus(status)
}

// Classify returns the Kind of err: a *ProviderError's own Kind; context
// cancellation, timeouts and network errors are transient; anything else
// unknown is transient too, so that it is retried with backoff rather than
// given up on.
func Classify(err error) Kind {
	var pe *ProviderError
	if errors.As(err, &pe) {
		return pe.Kind
	}
	var ne net.Error
	if errors.As(err, &ne) || errors.Is(err, context.DeadlineExceeded) {
		return Transient
	}
	return Transient
}

// Cause says why a refresh attempt failed, for the refresh_failed event, the
// provider's status and the cause label of tokenbus_refresh_failures_total:
// one of the wire.Cause* values. It is the one place that turns a failure
// into a cause:
//
//   - rate_limited: HTTP 429, or the provider's own slow_down code;
//   - timeout: the request did not complete in time (ErrTimeout, a network
//     timeout, a context deadline);
//   - malformed: the provider answered, but not with a usable token (a 2xx
//     that could not be read, an answer that says "malformed", one too large);
//   - rejected_credentials: a permanent refusal with an HTTP status (a 4xx,
//     or a credentials code such as MoMo's 500 login_failed);
//   - 5xx: a transient server error;
//   - unreachable: a transient failure with no answer (refused, reset, DNS);
//   - other: anything else (a publish that failed, a bad URL).
func Cause(err error) string {
	var pe *ProviderError
	if !errors.As(err, &pe) {
		var ne net.Error
		if errors.Is(err, ErrTimeout) || errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout() {
			return wire.CauseTimeout
		}
		return wire.CauseOther
	}
	var ne net.Error
	switch {
	case pe.StatusCode == 429 || pe.Code == "slow_down":
		return wire.CauseRateLimited
	case errors.Is(pe, ErrTimeout) || errors.Is(pe, context.DeadlineExceeded) || errors.As(pe, &ne) && ne.Timeout():
		return wire.CauseTimeout
	case pe.StatusCode >= 200 && pe.StatusCode < 300, strings.HasPrefix(pe.Message, "malformed"), strings.Contains(pe.Message, "is larger than"):
		return wire.CauseMalformed
	case pe.Kind == Permanent && pe.StatusCode != 0:
		return wire.CauseRejectedCredentials
	case pe.StatusCode >= 500:
		return wire.Cause5xx
	case pe.Kind == Transient && pe.StatusCode == 0:
		return wire.CauseUnreachable
	}
	return wire.CauseOther
}

// RemoteError is an error reply from another replica (a refresh forwarded to
// the leader), kept with its wire code so that it is passed on unchanged.
type RemoteError struct {
	Code    int
	Message string
	// RetryAfter is the reply's Retry-After (a refresh cooldown), 0 if none.
	RetryAfter time.Duration
}

// ErrCooldown is matched by a CooldownError.
var ErrCooldown = errors.New("refresher: refresh cooldown")

// CooldownError is returned for a report of the current token within the
// provider's refresh cooldown of its last forced refresh (SPEC §3): no
// caller may make the provider issue tokens faster than that (for Daraja
// each new token kills the last). Edges answer it 429 with Retry-After.
type CooldownError struct {
	// Cooldown is the provider's refresh_cooldown.
	Cooldown time.Duration
	// RetryAfter is how long until a report may refresh again.
	RetryAfter time.Duration
}

// Error says how long to wait, in whole seconds (rounded up).
func (e *CooldownError) Error() string {
	return fmt.Sprintf("refresher: the token was refreshed on request less than %s ago (refresh_cooldown); retry in %d s", e.Cooldown, RetryAfterSeconds(e.RetryAfter))
}

// Is matches ErrCooldown.
func (e *CooldownError) Is(target error) bool { return target == ErrCooldown }

// RetryAfterSeconds rounds d up to whole seconds, at least 1: the value of a
// Retry-After header.
func RetryAfterSeconds(d time.Duration) int {
	return max(int((d+time.Second-1)/time.Second), 1)
}

// Error returns the message with its code.
func (e *RemoteError) Error() string { return fmt.Sprintf("refresher: %d %s", e.Code, e.Message) }
