// Package httpx is the HTTP plumbing every provider kind shares: one
// *http.Client over one shared transport with otelhttp tracing, each
// provider's timeout a deadline on its requests, a body capped at MaxBody, and
// decoding that turns HTML, garbage or a missing field into a
// *refresher.ProviderError instead of a stored token. Nothing here logs, and no
// error carries a request header, a credential or a response body that could
// hold a token.
package httpx

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenbus/tokenbus/services/refresher"
)

// MaxBody is the most a token endpoint's answer may be: larger answers are
// rejected as malformed.
const MaxBody = 1 << 20

// DefaultTimeout bounds each token request when the configuration sets none.
const DefaultTimeout = 10 * time.Second

// DefaultUserAgent is sent on token requests whose transport sets none.
const DefaultUserAgent = "tokenbus-refresher"

// NewTransport returns the transport the refresher calls token endpoints
// through: http.DefaultTransport's settings, but keeping up to inFlight idle
// connections per host instead of 2. Many providers share one host (every
// Daraja merchant calls api.safaricom.co.ke) and up to fetch_concurrency
// token requests run at once; with 2 idle connections kept, all but 2 of
// them would dial — and in production, handshake TLS — again for every
// fetch (TestTransportReusesConnections).
func NewTransport(inFlight int) *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = max(inFlight, 2)
	t.MaxIdleConns = max(t.MaxIdleConns, t.MaxIdleConnsPerHost)
	return t
}

// WithUserAgent returns a transport that sends ua as the User-Agent of every
// request through base (http.DefaultTransport if nil). The refresher names
// itself and its replica there, so a provider's logs tell replicas apart.
func WithUserAgent(base http.RoundTripper, ua string) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	return userAgent{base: base, ua: ua}
}

type userAgent struct {
	base http.RoundTripper
	ua   string
}

// RoundTrip sets the User-Agent on a copy of req's headers and sends it
// (a RoundTripper does not modify its request; the rest is shared).
func (u userAgent) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Header.Get("User-Agent") == u.ua {
		return u.base.RoundTrip(req) // Do set it already: nothing to copy
	}
	r2 := req.WithContext(req.Context())
	r2.Header = req.Header.Clone()
	if r2.Header == nil {
		r2.Header = http.Header{}
	}
	r2.Header.Set("User-Agent", u.ua)
	return u.base.RoundTrip(r2)
}

// Instrument returns base (http.DefaultTransport if nil) recording a client
// span per request made in a recording span, named by method and path,
// without URL query strings or headers. base is returned as it is if it is
// already instrumented. otelhttp.NewTransport creates its metric
// instruments on every call (about 4.5 KiB), so the refresher instruments
// one transport that every provider shares
// (TestSharedTransportBuildsNoInstruments), not one per provider.
//
// A request whose context holds no recording span (tracing off, or the
// trace sampled out) goes to base directly: otelhttp would build its span's
// and its metrics' attributes — about 4.8 KB a request, a tenth of what a
// 100,000-provider fill allocated (issue 20) — for a span no one keeps and
// metrics recorded on the global meter provider, which the refresher does
// not set (its metrics are package metrics').
func Instrument(base http.RoundTripper) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	if _, ok := base.(hideQuery); ok {
		return base
	}
	h := hideQuery{
		next: otelhttp.NewTransport(restoreQuery{base},
			otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string {
				return "provider " + r.Method + " " + r.URL.Path
			}),
		),
		base:   base,
		client: &http.Client{CheckRedirect: noRedirects},
	}
	if u, ok := base.(userAgent); ok {
		h.ua = u.ua
	}
	h.client.Transport = h
	return h
}

// Client is one provider's way to its token endpoint: an *http.Client that
// every provider on the same instrumented transport shares, and the
// provider's own timeout, which Do sets as each request's deadline. An
// http.Client per provider with its Timeout cost an allocation a provider
// and, on every request, a goroutine and a timer of net/http's to enforce
// it (issue 20: a tenth of the scheduling delay of a 100,000-provider fill).
type Client struct {
	http    *http.Client
	timeout time.Duration
}

// NewClient returns the client for one provider's token endpoint: requests
// time out after timeout (DefaultTimeout if zero), do not follow redirects
// (a redirected token request would resend credentials elsewhere), and
// record a client span per call without URL query strings or headers
// (Instrument). A base that Instrument returned is shared with its
// *http.Client: a Client is then two words.
func NewClient(timeout time.Duration, base http.RoundTripper) Client {
	return Client{http: Instrument(base).(hideQuery).client, timeout: orDefault(timeout)}
}

// NewHTTPClient returns an *http.Client that behaves as NewClient's Client
// does, with the timeout as its Timeout, for a library that takes an
// *http.Client (the oauth2 provider's x/oauth2). It is the caller's own:
// set its Transport at will.
func NewHTTPClient(timeout time.Duration, base http.RoundTripper) *http.Client {
	return &http.Client{Timeout: orDefault(timeout), Transport: Instrument(base), CheckRedirect: noRedirects}
}

// orDefault is timeout, or DefaultTimeout if it is not positive.
func orDefault(timeout time.Duration) time.Duration {
	if timeout <= 0 {
		return DefaultTimeout
	}
	return timeout
}

// noRedirects answers a redirect with the redirect itself (TestNoRedirects).
func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// queryKey carries a request's URL query past otelhttp, which records the
// full URL (url.full) on its client span: hideQuery takes the query off the
// request otelhttp sees and restoreQuery puts it back for the wire, so no
// span ever holds a query string. otelhttp records no request headers.
type queryKey struct{}

type hideQuery struct {
	next http.RoundTripper // otelhttp, then restoreQuery, then base
	base http.RoundTripper
	// client is the one *http.Client of every provider on this
	// transport (NewClient): no Timeout, no redirects.
	client *http.Client
	// ua is the User-Agent base sets (WithUserAgent), if any: Do sets it
	// on the request it sends, so that base has no headers to copy.
	ua string
}

// RoundTrip passes r on without its query, so that spans never record it;
// outside a recording span, straight to base (Instrument).
func (t hideQuery) RoundTrip(r *http.Request) (*http.Response, error) {
	if !trace.SpanFromContext(r.Context()).IsRecording() {
		return t.base.RoundTrip(r)
	}
	if r.URL.RawQuery == "" {
		return t.next.RoundTrip(r)
	}
	return t.next.RoundTrip(withQuery(r.WithContext(context.WithValue(r.Context(), queryKey{}, r.URL.RawQuery)), ""))
}

// withQuery gives r, a shallow copy of the caller's request, its own URL
// with the query q (the copy's other fields stay shared, unmodified).
func withQuery(r *http.Request, q string) *http.Request {
	u := *r.URL
	u.RawQuery = q
	r.URL = &u
	return r
}

type restoreQuery struct{ next http.RoundTripper }

// RoundTrip puts the query back on r before it goes out.
func (t restoreQuery) RoundTrip(r *http.Request) (*http.Response, error) {
	q, ok := r.Context().Value(queryKey{}).(string)
	if !ok {
		return t.next.RoundTrip(r)
	}
	return t.next.RoundTrip(withQuery(r.WithContext(r.Context()), q))
}

// Response is a token endpoint's answer, read in full (up to MaxBody).
type Response struct {
	Status      int
	ContentType string
	Header      http.Header
	Body        []byte
}

// Do sends req with the client, under ctx and the client's timeout, and
// reads the answer. Transport failures and timeouts come back as a
// transient *refresher.ProviderError (a timeout's Err is
// refresher.ErrTimeout); a body over MaxBody as a permanent one. The
// request's URL query and headers never appear in the error.
func Do(ctx context.Context, c Client, req *http.Request) (*Response, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req = req.WithContext(ctx)
	if req.Header.Get("User-Agent") == "" {
		ua := DefaultUserAgent
		if h, ok := c.http.Transport.(hideQuery); ok && h.ua != "" {
			ua = h.ua
		}
		req.Header.Set("User-Agent", ua)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, &refresher.ProviderError{Kind: refresher.Transient, Message: "token request to " + req.URL.Host + " failed", Err: scrubURL(err)}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxBody+1))
	if err != nil {
		return nil, &refresher.ProviderError{Kind: refresher.Transient, StatusCode: resp.StatusCode, Message: "reading the token response failed", Err: scrubURL(err)}
	}
	if len(body) > MaxBody {
		return nil, &refresher.ProviderError{Kind: refresher.Permanent, StatusCode: resp.StatusCode, Message: fmt.Sprintf("token response is larger than %d bytes", MaxBody)}
	}
	ct, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	return &Response{Status: resp.StatusCode, ContentType: ct, Header: resp.Header, Body: body}, nil
}

// scrubURL drops the URL from a *url.Error so query parameters never reach an
// error message; the host is named by the caller.
func scrubURL(err error) error {
	type urlError interface{ Unwrap() error }
	var ue interface {
		error
		Timeout() bool
	}
	if errors.As(err, &ue) && ue.Timeout() {
		return refresher.ErrTimeout
	}
	if u, ok := err.(urlError); ok && u.Unwrap() != nil {
		return u.Unwrap()
	}
	return err
}

var (
	errNotSeconds = errors.New("expires_in is not a whole number of seconds")
)

// DecodeJSON decodes r's body into v. An answer that is not JSON (an HTML
// gateway page, say) or that does not decode is a permanent
// *refresher.ProviderError that says what came back, never the body itself.
func (r *Response) DecodeJSON(v any) error {
	if r.ContentType != "" && r.ContentType != "application/json" && !strings.HasSuffix(r.ContentType, "+json") {
		if !json.Valid(bytes.TrimSpace(r.Body)) {
			ct := r.ContentType
			if len(ct) > 64 { // the header is the provider's: quoted in part, never in full
				ct = ct[:64] + "…"
			}
			return r.Malformed(fmt.Sprintf("expected JSON, got %s", ct))
		}
	}
	if err := json.Unmarshal(r.Body, v); err != nil {
		return r.Malformed("answer is not valid JSON")
	}
	return nil
}

// Malformed returns a permanent error for an answer that cannot be used.
func (r *Response) Malformed(why string) error {
	return &refresher.ProviderError{Kind: refresher.Permanent, StatusCode: r.Status, Message: "malformed token response: " + why}
}

// RetryAfter returns the Retry-After header as a duration (seconds form only).
func (r *Response) RetryAfter() time.Duration {
	if s, err := strconv.Atoi(r.Header.Get("Retry-After")); err == nil && s > 0 {
		return time.Duration(s) * time.Second
	}
	return 0
}

// StatusError returns the error for a non-2xx answer with no more specific
// meaning: classified by refresher.KindFor (the status and the provider's own
// code), carrying code and message when the provider gave them.
func (r *Response) StatusError(code, message string) *refresher.ProviderError {
	if message == "" {
		message = http.StatusText(r.Status)
	}
	return &refresher.ProviderError{Kind: refresher.KindFor(r.Status, code), StatusCode: r.Status, Code: code, Message: message, RetryAfter: r.RetryAfter()}
}

// FlexSeconds decodes a lifetime in seconds sent as a JSON number or a string
// ("3599"), as Daraja and Airtel do.
type FlexSeconds struct {
	Set   bool
	Value int64
}

// UnmarshalJSON accepts 3599, "3599" and null.
func (f *FlexSeconds) UnmarshalJSON(b []byte) error {
	s := strings.TrimSpace(string(b))
	if s == "null" {
		return nil
	}
	switch {
	case len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' && !strings.ContainsRune(s, '\\'):
		// A JSON string without escapes is its bytes between the quotes
		// (the decoder has checked it is a string): no decoder for a
		// value every Daraja answer has (BenchmarkFlexSeconds).
		s = strings.TrimSpace(s[1 : len(s)-1])
	case strings.HasPrefix(s, `"`):
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		s = strings.TrimSpace(s)
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		// A float like 3599.0 is accepted; anything else is not a lifetime.
		fl, ferr := strconv.ParseFloat(s, 64)
		if ferr != nil || fl != float64(int64(fl)) {
			return errNotSeconds
		}
		n = int64(fl)
	}
	f.Set, f.Value = true, n
	return nil
}

// Lifetime checks an expires_in value: it must be present and between 1
// second and 1 year.
func (r *Response) Lifetime(f FlexSeconds) (time.Duration, error) {
	if !f.Set {
		return 0, r.Malformed("expires_in is missing")
	}
	if f.Value < 1 || f.Value > 365*24*3600 {
		return 0, r.Malformed(fmt.Sprintf("expires_in %d is out of range", f.Value))
	}
	return time.Duration(f.Value) * time.Second, nil
}

// Token checks the fields of a decoded success answer and returns the token,
// issued at issued: the access token must be there and expires_in valid
// (see Lifetime). An empty tokenType means "Bearer".
func (r *Response) Token(accessToken string, expiresIn FlexSeconds, tokenType string, issued time.Time) (refresher.Token, error) {
	if accessToken == "" {
		return refresher.Token{}, r.Malformed("access_token is missing")
	}
	life, err := r.Lifetime(expiresIn)
	if err != nil {
		return refresher.Token{}, err
	}
	if tokenType == "" {
		tokenType = "Bearer"
	}
	return refresher.Token{AccessToken: refresher.Secret(accessToken), TokenType: tokenType, IssuedAt: issued, ExpiresAt: issued.Add(life)}, nil
}
