// Package oauth2 is the generic OAuth2 client-credentials provider (RFC 6749
// §4.4): MTN MoMo and most other token APIs. The request and its answer are
// handled by golang.org/x/oauth2/clientcredentials; this package adds what
// payment APIs need around it — extra headers (MoMo's
// Ocp-Apim-Subscription-Key), a non-standard token_type kept as sent — and
// turns the library's errors into *refresher.ProviderError carrying the
// provider's own error code.
package oauth2

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/provider/httpx"
)

// Where the client credentials go (Config.AuthStyle).
const (
	// AuthStyleHeader sends them in an HTTP Basic Authorization header.
	AuthStyleHeader = "header"
	// AuthStyleParams sends them as client_id and client_secret in the form.
	AuthStyleParams = "params"
)

// Config is what the provider needs from the configuration file.
type Config struct {
	// TokenURL is the token endpoint, e.g.
	// https://sandbox.momodeveloper.mtn.com/collection/token/.
	TokenURL     string
	ClientID     string
	ClientSecret refresher.Secret
	// AuthStyle is AuthStyleHeader (the default) or AuthStyleParams.
	AuthStyle string
	// Scopes are requested in the scope parameter, space-separated.
	Scopes []string
	// Headers are added to every token request; values may be secrets.
	Headers map[string]refresher.Secret
	// Timeout bounds each token request; httpx.DefaultTimeout if zero.
	Timeout time.Duration
	// Transport is the base HTTP transport (http.DefaultTransport if nil);
	// one that httpx.Instrument returned is shared as it is, traced.
	Transport http.RoundTripper
	// Now returns the current time; time.Now if nil.
	Now func() time.Time
}

// Provider fetches OAuth2 client-credentials tokens. It is safe for
// concurrent use; every call makes one token request.
type Provider struct {
	cc     *clientcredentials.Config
	host   string
	client *http.Client
	now    func() time.Time
}

var _ refresher.Provider = (*Provider)(nil)

// New returns an OAuth2 provider for cfg.
func New(cfg Config) *Provider {
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	style := oauth2.AuthStyleInHeader
	if cfg.AuthStyle == AuthStyleParams {
		style = oauth2.AuthStyleInParams
	}
	// The configured headers are set above the (shared) instrumented
	// transport: one per provider, a few words each.
	client := httpx.NewHTTPClient(cfg.Timeout, cfg.Transport)
	client.Transport = &headers{base: client.Transport, headers: cfg.Headers}
	host := cfg.TokenURL
	if u, err := url.Parse(cfg.TokenURL); err == nil {
		host = u.Host
	}
	return &Provider{
		cc: &clientcredentials.Config{
			ClientID:     cfg.ClientID,
			ClientSecret: cfg.ClientSecret.Reveal(),
			TokenURL:     cfg.TokenURL,
			Scopes:       cfg.Scopes,
			AuthStyle:    style,
		},
		host:   host,
		client: client,
		now:    now,
	}
}

// headers is the RoundTripper that adds the configured headers and the
// User-Agent to the token request, and refuses an answer declared larger than
// httpx.MaxBody.
type headers struct {
	base    http.RoundTripper
	headers map[string]refresher.Secret
}

var errTooLarge = fmt.Errorf("token response is larger than %d bytes", httpx.MaxBody)

// RoundTrip implements http.RoundTripper.
func (h *headers) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	for k, v := range h.headers {
		req.Header.Set(k, v.Reveal())
	}
	if req.Header.Get("User-Agent") == "" {
		req.Header.Set("User-Agent", httpx.DefaultUserAgent)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := h.base.RoundTrip(req)
	if err == nil && resp.ContentLength > httpx.MaxBody {
		resp.Body.Close()
		return nil, errTooLarge
	}
	return resp, err
}

// Token requests a new access token. Earlier tokens stay valid.
func (p *Provider) Token(ctx context.Context) (refresher.Token, error) {
	// The library takes its HTTP client from the context (its API).
	issued := p.now() // the lifetime runs from before the request left, not after the answer came
	tok, err := p.cc.Token(context.WithValue(ctx, oauth2.HTTPClient, p.client))
	if err != nil {
		return refresher.Token{}, p.failed(err)
	}
	return token(tok, issued)
}

// token checks the library's token and turns it into a refresher.Token
// requested at issued. The token type is kept as sent (MoMo's is
// "access_token"); "Bearer" when there is none.
func token(tok *oauth2.Token, issued time.Time) (refresher.Token, error) {
	malformed := func(why string) error {
		return &refresher.ProviderError{Kind: refresher.Permanent, StatusCode: http.StatusOK, Message: "malformed token response: " + why}
	}
	if tok == nil || tok.AccessToken == "" {
		return refresher.Token{}, malformed("access_token is missing")
	}
	secs, present, valid := expiresIn(tok.Extra("expires_in"))
	switch {
	case !present:
		return refresher.Token{}, malformed("expires_in is missing")
	case !valid:
		return refresher.Token{}, malformed("expires_in is not a whole number of seconds")
	case secs < 1 || secs > 365*24*3600:
		return refresher.Token{}, malformed(fmt.Sprintf("expires_in %d is out of range", secs))
	}
	typ := tok.TokenType
	if typ == "" {
		typ = "Bearer"
	}
	return refresher.Token{
		AccessToken: refresher.Secret(tok.AccessToken),
		TokenType:   truncate(typ, 64),
		IssuedAt:    issued,
		ExpiresAt:   issued.Add(time.Duration(secs) * time.Second),
	}, nil
}

// expiresIn reads expires_in from the answer as the library decoded it: a
// JSON number, a string holding one (as some servers send), or a form value.
// The library rounds the lifetime into its Expiry with its own clock; the
// refresher keeps the provider's number and its own clock instead.
func expiresIn(v any) (secs int64, present, valid bool) {
	var s string
	switch v := v.(type) {
	case float64:
		if v != math.Trunc(v) || math.Abs(v) > 1<<53 {
			return 0, true, false
		}
		return int64(v), true, true
	case string:
		s = strings.TrimSpace(v)
	case json.Number:
		s = v.String()
	default:
		return 0, false, false
	}
	if s == "" {
		return 0, false, false
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return n, true, true
	}
	if f, err := strconv.ParseFloat(s, 64); err == nil && f == math.Trunc(f) && math.Abs(f) <= 1<<53 {
		return int64(f), true, true
	}
	return 0, true, false
}

// hints say what to fix for RFC 6749 §5.2 error codes and MoMo's.
var hints = map[string]string{
	"invalid_client":         "bad credentials: the server rejected client_id/client_secret (check them, and auth_style: header or params)",
	"login_failed":           "bad credentials: the server rejected client_id/client_secret (for MTN MoMo: the API user and API key of this environment)",
	"invalid_grant":          "invalid grant: the server refused the client_credentials grant for this client",
	"unauthorized_client":    "unauthorized client: this client may not use the client_credentials grant",
	"unsupported_grant_type": "unsupported grant type: the server does not support grant_type=client_credentials",
	"invalid_scope":          "invalid scope: a requested scope is unknown or not granted to this client (check scopes)",
	"invalid_request":        "invalid request: the server could not read the token request",
	"access_denied":          "access denied: the server refused this client",
}

// failed maps an error from the library to a *refresher.ProviderError.
func (p *Provider) failed(err error) error {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		return retrieveError(re)
	}
	var ue *url.Error
	switch {
	case errors.Is(err, errTooLarge):
		return &refresher.ProviderError{Kind: refresher.Permanent, Message: errTooLarge.Error()}
	case errors.As(err, &ue):
		// The request did not complete: refused, reset or timed out.
		why := ue.Err
		var ne interface{ Timeout() bool }
		if errors.As(err, &ne) && ne.Timeout() {
			why = refresher.ErrTimeout
		}
		return &refresher.ProviderError{Kind: refresher.Transient, Message: "token request to " + p.host + " failed", Err: why}
	case strings.Contains(err.Error(), "cannot fetch token"):
		// The answer's body could not be read.
		return &refresher.ProviderError{Kind: refresher.Transient, Message: "reading the token response from " + p.host + " failed"}
	case strings.Contains(err.Error(), "missing access_token"):
		return &refresher.ProviderError{Kind: refresher.Permanent, StatusCode: http.StatusOK, Message: "malformed token response: access_token is missing"}
	default:
		// A 2xx the library could not parse: HTML, garbage, a bad
		// expires_in. Its message may quote the body, so it is not kept.
		return &refresher.ProviderError{Kind: refresher.Permanent, StatusCode: http.StatusOK, Message: "malformed token response: answer is not a valid OAuth2 token response"}
	}
}

// retrieveError maps an error answer: the RFC 6749 code when there is one,
// else a gateway's {"message":…} (Azure API Management in front of MoMo), else
// the status alone. It is classified by refresher.KindFor.
func retrieveError(re *oauth2.RetrieveError) *refresher.ProviderError {
	status := 0
	var retryAfter time.Duration
	if re.Response != nil {
		status = re.Response.StatusCode
		retryAfter = (&httpx.Response{Header: re.Response.Header}).RetryAfter()
	}
	code := truncate(re.ErrorCode, 64)
	msg := hints[re.ErrorCode]
	desc := truncate(re.ErrorDescription, 200)
	if desc == "" {
		desc = gatewayMessage(re.Body)
	}
	switch {
	case msg == "":
		msg = desc
	case desc != "":
		msg += " (" + desc + ")"
	}
	if msg == "" {
		msg = http.StatusText(status)
	}
	return &refresher.ProviderError{Kind: refresher.KindFor(status, re.ErrorCode), StatusCode: status, Code: code, Message: msg, RetryAfter: retryAfter}
}

// gatewayMessage returns the message of a {"message":"…"} or
// {"statusCode":401,"message":"…"} body, truncated, or "".
func gatewayMessage(body []byte) string {
	var g struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(body, &g) != nil {
		return ""
	}
	return truncate(g.Message, 200)
}

func truncate(s string, n int) string {
	if len(s) > n {
		return strings.ToValidUTF8(s[:n], "") + "…"
	}
	return s
}
