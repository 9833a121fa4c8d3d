// Package wire owns tokenbus's public protocol: the JSON a token travels in, the
// NATS subjects, the service name and the error codes of SPEC §3. It has no
// dependencies beyond the standard library, so that the refresher, the Go client
// and tests in any module agree on one definition.
package wire

import (
	"regexp"
	"time"
)

// ServiceName is the NATS micro service name every refresher registers.
const ServiceName = "tokenbus"

// QueueGroup is the queue group all refresher replicas answer requests in, so a
// request is answered once.
const QueueGroup = "tokenbus"

// Subject prefixes; the provider name is the last token of the subject.
const (
	// GetPrefix is the prefix of the request-reply subject that returns the
	// current token of a provider: token.get.<provider>.
	GetPrefix = "token.get."
	// RefreshPrefix is the prefix of the subject that reports a rejected token
	// and asks for a fresh one: token.refresh.<provider>.
	RefreshPrefix = "token.refresh."
	// UpdatesPrefix is the prefix of the core NATS subject on which the
	// server republishes every write to the tokens bucket (SPEC §9):
	// token.updates.<key>.
	UpdatesPrefix = "token.updates."
)

// Headers of a token update on token.updates.<key> (SPEC §9). The server sets
// the Nats-* ones on every republished message; KV-Operation is set on a
// delete (DEL) or purge (PURGE), whose body is empty.
const (
	// HeaderSequence is the stream sequence (the KV revision) of the write.
	HeaderSequence = "Nats-Sequence"
	// HeaderLastSequence is the sequence of the previous write of the same
	// key (0 if none): an update whose last sequence is not the one a
	// client holds means it missed one.
	HeaderLastSequence = "Nats-Last-Sequence"
	// HeaderTimeStamp is when the write was stored (RFC 3339).
	HeaderTimeStamp = "Nats-Time-Stamp"
	// HeaderKVOperation is "DEL" or "PURGE" on a deleted key.
	HeaderKVOperation = "KV-Operation"
	// HeaderRevision is set by the refresher on a token.get reply of a
	// shared-token provider: the KV revision the token was stored at, the
	// same number as the Nats-Sequence of its update, so that a client can
	// order a read against updates. Absent for single-use tokens (never
	// stored, never to be cached) and for a token not stored yet.
	HeaderRevision = "Tokenbus-Revision"
)

// DefaultBucket is the JetStream KV bucket tokens are published to unless the
// configuration names another.
const DefaultBucket = "tokens"

// GetSubject returns token.get.<provider>.
func GetSubject(provider string) string { return GetPrefix + provider }

// RefreshSubject returns token.refresh.<provider>.
func RefreshSubject(provider string) string { return RefreshPrefix + provider }

// UpdatesSubject returns token.updates.<provider>.
func UpdatesSubject(provider string) string { return UpdatesPrefix + provider }

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)

// ValidName reports whether name is a valid provider name: [a-z0-9][a-z0-9-]*,
// usable both as a NATS subject token and as a KV key.
func ValidName(name string) bool { return len(name) <= 64 && nameRE.MatchString(name) }

// Token is a provider access token as stored in KV under key <provider> and as
// returned by token.get.<provider>.
type Token struct {
	Provider    string    `json:"provider"`
	AccessToken string    `json:"access_token"`
	TokenType   string    `json:"token_type"`
	IssuedAt    time.Time `json:"issued_at"`
	ExpiresAt   time.Time `json:"expires_at"`
}

// Expired reports whether the token is no longer valid at now. A token with a
// zero expiry is treated as expired.
func (t Token) Expired(now time.Time) bool {
	return t.ExpiresAt.IsZero() || !now.Before(t.ExpiresAt)
}

// RefreshRequest is the body of a token.refresh.<provider> request.
type RefreshRequest struct {
	// InvalidToken is the access token the provider rejected. The refresher
	// fetches a new token only if this is still the current one.
	InvalidToken string `json:"invalid_token"`
}

// Error codes carried in the Nats-Service-Error-Code header and the JSON error
// body of a failed request (SPEC §3).
const (
	// CodeBadRequest: the request body could not be understood.
	CodeBadRequest = 400
	// CodeUnknownProvider: no provider of that name is configured.
	CodeUnknownProvider = 404
	// CodeProviderFailed: the provider refused or failed; the message carries
	// the provider's own error code where it gave one.
	CodeProviderFailed = 502
	// CodeUnavailable: no valid token is available yet, or any more.
	CodeUnavailable = 503
)

// Header names of the NATS micro error convention.
const (
	HeaderErrorCode = "Nats-Service-Error-Code"
	HeaderError     = "Nats-Service-Error"
)

// ErrorBody is the JSON body of an error reply: {"error":{"code":N,"message":"…"}}.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is the inner object of ErrorBody.
type ErrorDetail struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// StatusSubject is answered by every refresher replica (no queue group) with
// its Status, so a requester that gathers replies sees the whole cluster.
// It extends SPEC §3.
const StatusSubject = "token.status"

// Status is one refresher replica's view, the reply to StatusSubject.
type Status struct {
	// Instance names the replica (host-pid).
	Instance string `json:"instance"`
	// Version is the refresher version.
	Version string `json:"version"`
	// Leader reports whether this replica holds the lease and calls providers.
	Leader bool `json:"leader"`
	// LeaderInstance names the lease holder as this replica last saw it.
	LeaderInstance string `json:"leader_instance,omitempty"`
	// Term is the lease term this replica last saw.
	Term uint64 `json:"term,omitempty"`
	// Providers lists every configured provider, in configuration order.
	Providers []ProviderStatus `json:"providers"`
}

// Provider states reported in ProviderStatus.State.
const (
	// StateOK: a valid token is being served.
	StateOK = "ok"
	// StateFailing: a valid token is served but the last refresh failed.
	StateFailing = "failing"
	// StateNoToken: no valid token (none yet, or the last one expired).
	StateNoToken = "no_token"
)

// ProviderStatus is one provider's state in a Status.
type ProviderStatus struct {
	Name string `json:"name"`
	Kind string `json:"kind"`
	// State is StateOK, StateFailing or StateNoToken.
	State string `json:"state"`
	// ExpiresAt is the current token's expiry (shared-token providers).
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
	// LastRefresh is when the current token was fetched.
	LastRefresh *time.Time `json:"last_refresh,omitempty"`
	// LastError is the last refresh failure since the last success.
	LastError string `json:"last_error,omitempty"`
	// LastErrorAt is when LastError happened.
	LastErrorAt *time.Time `json:"last_error_at,omitempty"`
	// Pool is the number of ready single-use tokens (single-use providers).
	Pool *int `json:"pool,omitempty"`
}
