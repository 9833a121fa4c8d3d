// Package wire owns tokenbus's public protocol: the JSON a token travels in, the
// NATS subjects, the service name and the error codes of SPEC §3. It has no
// dependencies beyond the standard library, so that the refresher, the Go client
// and tests in any module agree on one definition.
package wire

import (
	"encoding/json"
	"regexp"
	"strings"
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
	// CodeConflict: a runtime provider put names a config-file provider (SPEC §8).
	CodeConflict = 409
	// CodeTooManyRequests: a token.refresh report of the current token
	// within the provider's refresh cooldown (SPEC §3); the reply carries
	// HeaderRetryAfter.
	CodeTooManyRequests = 429
)

// Header names of the NATS micro error convention.
const (
	HeaderErrorCode = "Nats-Service-Error-Code"
	HeaderError     = "Nats-Service-Error"
	// HeaderRetryAfter carries the whole seconds to wait with a 429.
	HeaderRetryAfter = "Retry-After"
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
	// Summary counts every provider this replica serves, by state; it is
	// always present, whatever the filter or page.
	Summary *StatusSummary `json:"summary,omitempty"`
	// Providers lists the providers of the requested page: config-file
	// providers in configuration order, then runtime providers by name. With
	// no request, the first page (at most StatusPageMax).
	Providers []ProviderStatus `json:"providers"`
	// Next, when not empty, is the "after" of the next page.
	Next string `json:"next,omitempty"`
}

// StatusSummary counts providers by state.
type StatusSummary struct {
	// Total is the number of providers the replica serves.
	Total int `json:"total"`
	// States counts them by ProviderStatus.State.
	States map[string]int `json:"states"`
	// Conditions counts those that report one by ProviderStatus.Condition.
	Conditions map[string]int `json:"conditions,omitempty"`
}

// StatusRequest is the optional body of a token.status request: a filter
// and a page. The zero value asks for the first page of every provider.
type StatusRequest struct {
	// Provider, if set, asks for that one provider only.
	Provider string `json:"provider,omitempty"`
	// State, if set, keeps the providers in that state (e.g. "failing").
	State string `json:"state,omitempty"`
	// Condition, if set, keeps the providers in that condition (e.g.
	// "credentials_rejected").
	Condition string `json:"condition,omitempty"`
	// Search, if set, keeps the providers whose name contains it.
	Search string `json:"search,omitempty"`
	// After is the Next of the previous page.
	After string `json:"after,omitempty"`
	// Limit is the page size: default and maximum StatusPageMax.
	Limit int `json:"limit,omitempty"`
}

// StatusPageMax is the default and largest page of token.status and of
// tokenbus.providers.list.
const StatusPageMax = 1000

// Page returns st with its summary computed over every provider and its
// Providers cut to the page q asks for. st.Providers must be in the order
// pages follow (config-file providers, then runtime ones by name); Page
// finds After by name, so a page boundary survives a provider's removal
// only if it is a runtime one (an absent After starts from the beginning).
func (st Status) Page(q StatusRequest) Status {
	sum := &StatusSummary{Total: len(st.Providers), States: map[string]int{}}
	for _, p := range st.Providers {
		sum.States[p.State]++
		if p.Condition != "" {
			if sum.Conditions == nil {
				sum.Conditions = map[string]int{}
			}
			sum.Conditions[p.Condition]++
		}
	}
	all := st.Providers
	st.Summary, st.Providers, st.Next = sum, nil, ""
	limit := q.Limit
	if limit <= 0 || limit > StatusPageMax {
		limit = StatusPageMax
	}
	start := 0
	if q.After != "" {
		for i, p := range all {
			if p.Name == q.After {
				start = i + 1
				break
			}
		}
	}
	st.Providers = []ProviderStatus{}
	for i := start; i < len(all); i++ {
		p := all[i]
		if q.Provider != "" && p.Name != q.Provider || q.State != "" && p.State != q.State || q.Condition != "" && p.Condition != q.Condition || q.Search != "" && !strings.Contains(p.Name, q.Search) {
			continue
		}
		if len(st.Providers) == limit {
			st.Next = st.Providers[limit-1].Name
			break
		}
		st.Providers = append(st.Providers, p)
	}
	return st
}

// Runtime providers (SPEC §8): subjects of the endpoints that add, replace,
// remove and list them.
const (
	ProvidersPutSubject    = "tokenbus.providers.put"
	ProvidersDeleteSubject = "tokenbus.providers.delete"
	ProvidersListSubject   = "tokenbus.providers.list"
	// ProvidersPutManySubject is the bulk form of ProvidersPutSubject: up
	// to ProvidersPutManyMax providers in one request, each validated and
	// stored as a put of its own would be.
	ProvidersPutManySubject = "tokenbus.providers.put_many"
)

// ProvidersPutManyMax is the most providers one tokenbus.providers.put_many
// request may carry (the request must also fit the server's max_payload).
const ProvidersPutManyMax = 1000

// ProviderPutManyRequest is the body of tokenbus.providers.put_many: each
// element one provider, as the body of tokenbus.providers.put.
type ProviderPutManyRequest struct {
	Providers []json.RawMessage `json:"providers"`
}

// ProviderPutManyReply answers tokenbus.providers.put_many once every
// provider it reports stored is stored durably: one result per provider of
// the request, in its order.
type ProviderPutManyReply struct {
	// Stored and Refused count the results without and with an error.
	Stored  int                 `json:"stored"`
	Refused int                 `json:"refused"`
	Results []ProviderPutResult `json:"results"`
}

// ProviderPutResult is the outcome of one provider of a
// tokenbus.providers.put_many request: its revision once stored, or the
// error a tokenbus.providers.put of it alone would have answered (the same
// code; the message names the field and the index, never a value).
type ProviderPutResult struct {
	// Index is the provider's position in the request, from 0.
	Index int `json:"index"`
	// Name is the provider's name when the request gave a valid one.
	Name     string       `json:"name,omitempty"`
	Kind     string       `json:"kind,omitempty"`
	Revision uint64       `json:"revision,omitempty"`
	Error    *ErrorDetail `json:"error,omitempty"`
}

// ProviderPutReply answers tokenbus.providers.put once the provider is
// stored durably.
type ProviderPutReply struct {
	Name     string `json:"name"`
	Kind     string `json:"kind"`
	Revision uint64 `json:"revision"`
}

// ProviderDeleteRequest is the body of tokenbus.providers.delete.
type ProviderDeleteRequest struct {
	Name string `json:"name"`
}

// ProviderDeleteReply answers tokenbus.providers.delete.
type ProviderDeleteReply struct {
	Name    string `json:"name"`
	Deleted bool   `json:"deleted"`
}

// ProviderListRequest is the optional body of tokenbus.providers.list.
type ProviderListRequest struct {
	// After is the Next of the previous page.
	After string `json:"after,omitempty"`
	// Limit is the page size: default and maximum StatusPageMax.
	Limit int `json:"limit,omitempty"`
}

// ProviderListReply answers tokenbus.providers.list: providers sorted by
// name, no secret and no token.
type ProviderListReply struct {
	Providers []ProviderInfo `json:"providers"`
	// Next is the After of the next page, empty on the last.
	Next string `json:"next"`
}

// ProviderInfo is one provider in a ProviderListReply.
type ProviderInfo struct {
	Name string `json:"name"`
	Kind string `json:"kind"`
	// Source is SourceConfig or SourceRuntime.
	Source string `json:"source"`
	// State is the provider's state as in ProviderStatus.
	State string `json:"state"`
}

// Provider sources in ProviderInfo.Source.
const (
	SourceConfig  = "config"
	SourceRuntime = "runtime"
)

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
	// Condition is what the refresh loop knows of the provider: one of the
	// Condition* constants (shared-token providers; on a standby, only
	// what its copy of the token shows: starting, ok or expired).
	Condition string `json:"condition,omitempty"`
	// ConditionSince is when the provider entered Condition.
	ConditionSince *time.Time `json:"condition_since,omitempty"`
	// Cause is the cause of the last failure since the last success (one of
	// the Cause* constants).
	Cause string `json:"cause,omitempty"`
}

// Provider conditions reported in ProviderStatus.Condition: what is wrong, if
// anything, with a shared-token provider's refreshes.
const (
	// ConditionStarting: no token yet and no failure yet.
	ConditionStarting = "starting"
	// ConditionOK: the last refresh succeeded and its token is valid.
	ConditionOK = "ok"
	// ConditionRetrying: refreshes are failing and being retried (a valid
	// token may still be served: State says).
	ConditionRetrying = "retrying"
	// ConditionCredentialsRejected: the provider rejects the credentials;
	// retried slowly until they are fixed.
	ConditionCredentialsRejected = "credentials_rejected"
	// ConditionExpired: the last token expired with no replacement.
	ConditionExpired = "expired"
)

// Conditions lists every condition.
var Conditions = []string{ConditionStarting, ConditionOK, ConditionRetrying, ConditionCredentialsRejected, ConditionExpired}
