// Package daraja is the Safaricom M-Pesa Daraja token provider: a Basic-auth
// GET of /oauth/v1/generate?grant_type=client_credentials. Daraja invalidates
// the previous token whenever a new one is issued, which is why exactly one
// refresher per cluster may call it.
package daraja

import (
	"context"
	"encoding/base64"
	"net/http"
	"strings"
	"time"

	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/provider/httpx"
)

// Config is what the provider needs from the configuration file.
type Config struct {
	// BaseURL is e.g. https://sandbox.safaricom.co.ke (no trailing path).
	BaseURL        string
	ConsumerKey    string
	ConsumerSecret refresher.Secret
	// Timeout bounds each token request; httpx.DefaultTimeout if zero.
	Timeout time.Duration
	// Transport is the base HTTP transport (http.DefaultTransport if nil);
	// one that httpx.Instrument returned is shared as it is, traced.
	Transport http.RoundTripper
	// Now returns the current time; time.Now if nil.
	Now func() time.Time
}

// Provider fetches Daraja access tokens. It is safe for concurrent use.
type Provider struct {
	url    string
	auth   string
	client httpx.Client
	now    func() time.Time
}

var _ refresher.Provider = (*Provider)(nil)

// New returns a Daraja provider for cfg.
func New(cfg Config) *Provider {
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	cred := base64.StdEncoding.EncodeToString([]byte(cfg.ConsumerKey + ":" + cfg.ConsumerSecret.Reveal()))
	return &Provider{
		url:    strings.TrimRight(cfg.BaseURL, "/") + "/oauth/v1/generate?grant_type=client_credentials",
		auth:   "Basic " + cred,
		client: httpx.NewClient(cfg.Timeout, cfg.Transport),
		now:    now,
	}
}

type success struct {
	AccessToken string            `json:"access_token"`
	ExpiresIn   httpx.FlexSeconds `json:"expires_in"`
}

type errorBody struct {
	RequestID    string `json:"requestId"`
	ErrorCode    string `json:"errorCode"`
	ErrorMessage string `json:"errorMessage"`
}

// Known Daraja error codes and what the operator should do about each.
var hints = map[string]string{
	"400.008.01": "invalid authentication type: the request must use HTTP Basic auth with consumer_key:consumer_secret",
	"400.008.02": "invalid grant type: the request must ask for grant_type=client_credentials",
}

// Token requests a new access token. Every call invalidates the previous
// Daraja token.
func (p *Provider) Token(ctx context.Context) (refresher.Token, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.url, nil)
	if err != nil {
		return refresher.Token{}, &refresher.ProviderError{Kind: refresher.Permanent, Message: "daraja: bad base_url", Err: err}
	}
	req.Header.Set("Authorization", p.auth)
	req.Header.Set("Accept", "application/json")
	sent := p.now() // the lifetime runs from before the request left, not after the answer came
	resp, err := httpx.Do(ctx, p.client, req)
	if err != nil {
		return refresher.Token{}, err
	}
	return parse(resp, sent)
}

// parse reads Daraja's answer to a token request sent at issued.
func parse(resp *httpx.Response, issued time.Time) (refresher.Token, error) {
	if resp.Status != http.StatusOK {
		return refresher.Token{}, failed(resp)
	}
	var s success
	if err := resp.DecodeJSON(&s); err != nil {
		return refresher.Token{}, err
	}
	return resp.Token(s.AccessToken, s.ExpiresIn, "Bearer", issued)
}

// failed maps a non-200 answer to an error an operator can act on.
func failed(resp *httpx.Response) error {
	if resp.Status == http.StatusBadRequest && len(strings.TrimSpace(string(resp.Body))) == 0 {
		e := resp.StatusError("", "bad credentials: Daraja rejected consumer_key/consumer_secret (check them, and that the app is enabled for this environment)")
		return e
	}
	var f errorBody
	if resp.DecodeJSON(&f) != nil || f.ErrorCode == "" {
		return resp.StatusError("", "")
	}
	msg := hints[f.ErrorCode]
	if msg == "" {
		msg = truncate(f.ErrorMessage, 200)
	}
	return resp.StatusError(truncate(f.ErrorCode, 64), msg)
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
