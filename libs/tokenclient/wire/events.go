package wire

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// EventsPrefix is the prefix of the core NATS subject on which the leader
// publishes what happens to each provider (SPEC §9): token.events.<provider>.
const EventsPrefix = "token.events."

// EventsSubject returns token.events.<provider>.
func EventsSubject(provider string) string { return EventsPrefix + provider }

// Event types (Event.Type).
const (
	// EventRefreshed: a new token was fetched and published.
	EventRefreshed = "refreshed"
	// EventRefreshFailed: one refresh attempt failed (Kind, Cause, Code,
	// Status, Attempt and RetryIn say how and what next).
	EventRefreshFailed = "refresh_failed"
	// EventCredentialsRejected: the provider rejected the credentials; sent
	// once as the provider enters that state (each failed attempt is also a
	// refresh_failed).
	EventCredentialsRejected = "credentials_rejected"
	// EventRecovered: the first successful refresh after failures; FailingFor
	// says how long it was failing and Attempts how many attempts failed.
	EventRecovered = "recovered"
	// EventExpired: the last token expired (entered its expiry margin) with
	// no replacement: token.get answers 503 until a refresh succeeds.
	EventExpired = "expired"
	// EventAdded, EventRotated, EventRemoved: a runtime provider was added,
	// put again with new credentials, or deleted (SPEC §8).
	EventAdded   = "added"
	EventRotated = "rotated"
	EventRemoved = "removed"
	// EventForeignWrite: a token the leader did not write was stored under
	// the provider's key; Repaired is false when it is found and true once
	// the leader's own token is stored again.
	EventForeignWrite = "foreign_write"
)

// EventTypes lists every event type.
var EventTypes = []string{EventRefreshed, EventRefreshFailed, EventCredentialsRejected, EventRecovered,
	EventExpired, EventAdded, EventRotated, EventRemoved, EventForeignWrite}

// Failure causes (Event.Cause, ProviderStatus.Cause and the cause label of
// tokenbus_refresh_failures_total). services/refresher's Cause assigns them.
const (
	// CauseTimeout: the provider did not answer in time.
	CauseTimeout = "timeout"
	// Cause5xx: the provider answered with a server error (5xx).
	Cause5xx = "5xx"
	// CauseRejectedCredentials: the provider refused the credentials or the
	// request (a permanent 4xx, or a credentials error such as MoMo's
	// login_failed).
	CauseRejectedCredentials = "rejected_credentials"
	// CauseMalformed: the provider answered something that is not a usable
	// token (an HTML page, bad JSON, no token, a bad expiry).
	CauseMalformed = "malformed"
	// CauseRateLimited: the provider asked to slow down (429, slow_down).
	CauseRateLimited = "rate_limited"
	// CauseUnreachable: no answer at all (connection refused or reset, DNS).
	CauseUnreachable = "unreachable"
	// CauseOther: anything else (a publish that failed, a bad URL).
	CauseOther = "other"
)

// Causes lists every failure cause.
var Causes = []string{CauseTimeout, Cause5xx, CauseRejectedCredentials, CauseMalformed, CauseRateLimited, CauseUnreachable, CauseOther}

// Failure kinds (Event.Kind).
const (
	KindTransient = "transient"
	KindPermanent = "permanent"
)

// Event is one thing that happened to a provider, published by the leader on
// token.events.<provider> (core NATS, one JSON object per message). It never
// carries a secret or a token. Fields other than Provider, Type, At and
// Detail are set only for the types that name them.
type Event struct {
	// Provider is the provider name.
	Provider string `json:"provider"`
	// Type is one of the Event* constants.
	Type string `json:"type"`
	// At is when it happened.
	At time.Time `json:"at"`
	// Detail says what happened in words (an error message, what the
	// leader does about it); never a secret or a token.
	Detail string `json:"detail,omitempty"`

	// Kind is KindTransient or KindPermanent (refresh_failed,
	// credentials_rejected).
	Kind string `json:"kind,omitempty"`
	// Cause is one of the Cause* constants (refresh_failed,
	// credentials_rejected, expired: the last failure's).
	Cause string `json:"cause,omitempty"`
	// Code is the provider's own error code, e.g. Daraja's "400.008.01"
	// or OAuth2's "invalid_client", when it gave one.
	Code string `json:"code,omitempty"`
	// Status is the HTTP status of the provider's answer, when there was one.
	Status int `json:"status,omitempty"`
	// Attempt counts the attempts of the current refresh, from 1
	// (refresh_failed; refreshed and recovered: the attempt that succeeded).
	Attempt int `json:"attempt,omitempty"`
	// RetryIn is when the next attempt is due (refresh_failed).
	RetryIn *Duration `json:"retry_in,omitempty"`
	// FailingFor is how long refreshes had been failing (recovered), or
	// since when the provider has been failing (expired).
	FailingFor *Duration `json:"failing_for,omitempty"`
	// ExpiresAt is the new token's expiry (refreshed, recovered), or the
	// expiry of the token that ran out (expired).
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
	// Revision is the KV revision of the write concerned (foreign_write:
	// the foreign write, then the repairing one; refreshed: the token's).
	Revision uint64 `json:"revision,omitempty"`
	// Repaired reports, for foreign_write, that the leader's own token (or
	// a fresh one) is stored again.
	Repaired bool `json:"repaired,omitempty"`
	// Leader names the refresher replica that published the event.
	Leader string `json:"leader,omitempty"`
}

// Duration is a time.Duration that travels as a Go duration string ("4.5s").
type Duration time.Duration

// MarshalJSON encodes d as a duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON decodes a duration string such as "30s" or "1m30s".
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("wire: a duration must be a string such as \"30s\"")
	}
	v, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		return fmt.Errorf("wire: a duration must be a string such as \"30s\"")
	}
	*d = Duration(v)
	return nil
}

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// DurationOf returns a pointer to d as a Duration (for optional fields).
func DurationOf(d time.Duration) *Duration {
	v := Duration(d)
	return &v
}

// GetRequest is the optional body of a token.get.<provider> request.
type GetRequest struct {
	// MinValidity asks for a token valid for at least that long (SPEC §3),
	// as a duration string such as "30s". If the current token expires
	// sooner, the refresher refreshes early and answers the new token, or
	// 503 if none can be had in time.
	MinValidity string `json:"min_validity,omitempty"`
}

// MaxMinValidity bounds min_validity: no provider issues tokens that live
// longer than a day.
const MaxMinValidity = 24 * time.Hour

// ParseMinValidity parses a token.get min_validity value: a positive Go
// duration string of at most MaxMinValidity. Its error names the field,
// never the value.
func ParseMinValidity(s string) (time.Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	switch {
	case err != nil:
		return 0, fmt.Errorf(`min_validity: must be a duration such as "30s"`)
	case d <= 0:
		return 0, fmt.Errorf("min_validity: must be positive")
	case d > MaxMinValidity:
		return 0, fmt.Errorf("min_validity: must be at most %v", MaxMinValidity)
	}
	return d, nil
}
