package tokenclient

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
)

// Sentinel errors. Errors returned by a Client match them with errors.Is; an
// error answered by the refresher is also an *Error carrying its code and
// message.
var (
	// ErrBadRequest: the request was malformed (code 400), or a provider
	// name is not valid ([a-z0-9][a-z0-9-]*).
	ErrBadRequest = errors.New("tokenclient: bad request")
	// ErrUnknownProvider: the refresher has no provider of that name (404).
	ErrUnknownProvider = errors.New("tokenclient: unknown provider")
	// ErrProviderFailed: the provider refused or failed, for example bad
	// credentials (502); the message carries the provider's own error code.
	ErrProviderFailed = errors.New("tokenclient: provider failed")
	// ErrUnavailable: no valid token is available yet or any more (503), or
	// no refresher answered.
	ErrUnavailable = errors.New("tokenclient: no valid token available")
	// ErrClosed: the Client has been closed.
	ErrClosed = errors.New("tokenclient: client closed")
	// ErrNotFollowing: the server refused the subscription to
	// token.updates.<provider> (the connection may not subscribe to it), so
	// that provider is served over request-reply only. Passed to the error
	// handler (WithErrorHandler); Token still answers.
	ErrNotFollowing = errors.New("tokenclient: cannot follow token updates")
	// ErrInvalidOption: an option was given a value it cannot take.
	ErrInvalidOption = errors.New("tokenclient: invalid option")
	// ErrCooldown: Invalidate reported the current token within the
	// provider's refresh cooldown of the last refresh reports forced (429,
	// SPEC §3); the *Error's RetryAfter says how long to wait. The client
	// sends no report of that provider until then.
	ErrCooldown = errors.New("tokenclient: refresh cooldown")
)

// Error is an error answered by the refresher, following the NATS micro
// convention (headers Nats-Service-Error-Code and Nats-Service-Error). It
// matches ErrBadRequest, ErrUnknownProvider, ErrProviderFailed or
// ErrUnavailable with errors.Is, according to its code.
type Error struct {
	// Op is the request: "token.get", "token.refresh" or "token.status".
	Op string
	// Provider is the provider asked about, if any.
	Provider string
	// Code is the wire code: 400, 404, 502 or 503 (SPEC §3).
	Code int
	// Message is the refresher's description, e.g. the provider's own code.
	Message string
	// RetryAfter is how long to wait before reporting again (429), 0 if
	// the reply gave no Retry-After.
	RetryAfter time.Duration
}

// Error returns "tokenclient: <op> <provider>: <code> <message>".
func (e *Error) Error() string {
	return fmt.Sprintf("tokenclient: %s %s: %d %s", e.Op, e.Provider, e.Code, e.Message)
}

// Is reports whether target is the sentinel for e's code.
func (e *Error) Is(target error) bool {
	switch e.Code {
	case wire.CodeBadRequest:
		return target == ErrBadRequest
	case wire.CodeUnknownProvider:
		return target == ErrUnknownProvider
	case wire.CodeProviderFailed:
		return target == ErrProviderFailed
	case wire.CodeUnavailable:
		return target == ErrUnavailable
	case wire.CodeTooManyRequests:
		return target == ErrCooldown
	}
	return false
}

// replyError maps an error reply to an *Error, or returns nil when the reply
// carries no error code. An unknown or unparsable code becomes a 503.
func replyError(op, provider string, h nats.Header) error {
	code := h.Get(wire.HeaderErrorCode)
	if code == "" {
		return nil
	}
	n, err := strconv.Atoi(code)
	if err != nil {
		n = wire.CodeUnavailable
	}
	e := &Error{Op: op, Provider: provider, Code: n, Message: h.Get(wire.HeaderError)}
	if s, err := strconv.Atoi(h.Get(wire.HeaderRetryAfter)); err == nil && s > 0 {
		e.RetryAfter = time.Duration(s) * time.Second
	}
	return e
}
