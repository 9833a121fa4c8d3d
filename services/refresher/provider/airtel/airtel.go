// Package airtel is the Airtel Money Africa token provider: OAuth2 client
// credentials sent as a JSON body to /auth/oauth2/token, answered with
// expires_in as a string ("180": three-minute tokens).
package airtel

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/provider/httpx"
)

// Config is what the provider needs from the configuration file.
type Config struct {
	// BaseURL is e.g. https://openapiuat.airtel.africa (no trailing path).
	BaseURL      string
	ClientID     string
	ClientSecret refresher.Secret
	// Timeout bounds each token request; httpx.DefaultTimeout if zero.
	Timeout time.Duration
	// Transport is the base HTTP transport (http.DefaultTransport if nil);
	// one that httpx.Instrument returned is shared as it is, traced.
	Transport http.RoundTripper
	// Now returns the current time; time.Now if nil.
	Now func() time.Time
}

// Provider fetches Airtel Money access tokens. It is safe for concurrent use.
type Provider struct {
	url    string
	id     string
	secret refresher.Secret
	client httpx.Client
	now    func() time.Time
}

var _ refresher.Provider = (*Provider)(nil)

// New returns an Airtel provider for cfg.
func New(cfg Config) *Provider {
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	return &Provider{
		url:    strings.TrimRight(cfg.BaseURL, "/") + "/auth/oauth2/token",
		id:     cfg.ClientID,
		secret: cfg.ClientSecret,
		client: httpx.NewClient(cfg.Timeout, cfg.Transport),
		now:    now,
	}
}

type success struct {
	AccessToken string            `json:"access_token"`
	ExpiresIn   httpx.FlexSeconds `json:"expires_in"`
	TokenType   string            `json:"token_type"`
}

// errorBody is Airtel's error answer: RFC 6749 §5.2 fields, and on some
// gateways a message.
type errorBody struct {
	Error       string `json:"error"`
	Description string `json:"error_description"`
	Message     string `json:"message"`
}

// hints say what to fix for the error codes Airtel answers.
var hints = map[string]string{
	"invalid_client":         "bad credentials: Airtel rejected client_id/client_secret (check them, and that the app is enabled for this environment)",
	"invalid_request":        "invalid request: Airtel could not read the token request",
	"unsupported_grant_type": "unsupported grant type: the request must ask for grant_type=client_credentials",
	"unauthorized_client":    "unauthorized client: this application may not use the client_credentials grant",
}

// Token requests a new access token; earlier tokens stay valid.
func (p *Provider) Token(ctx context.Context) (refresher.Token, error) {
	body, err := json.Marshal(struct {
		ClientID     string `json:"client_id"`
		ClientSecret string `json:"client_secret"`
		GrantType    string `json:"grant_type"`
	}{p.id, p.secret.Reveal(), "client_credentials"})
	if err != nil {
		return refresher.Token{}, &refresher.ProviderError{Kind: refresher.Permanent, Message: "airtel: cannot encode the credentials"}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.url, bytes.NewReader(body))
	if err != nil {
		return refresher.Token{}, &refresher.ProviderError{Kind: refresher.Permanent, Message: "airtel: bad base_url"}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "*/*")
	sent := p.now() // the lifetime runs from before the request left, not after the answer came
	resp, err := httpx.Do(ctx, p.client, req)
	if err != nil {
		return refresher.Token{}, err
	}
	return parse(resp, sent)
}

// parse reads Airtel's answer to a token request sent at issued.
func parse(resp *httpx.Response, issued time.Time) (refresher.Token, error) {
	if resp.Status != http.StatusOK {
		return refresher.Token{}, failed(resp)
	}
	var s success
	if err := resp.DecodeJSON(&s); err != nil {
		return refresher.Token{}, err
	}
	return resp.Token(s.AccessToken, s.ExpiresIn, truncate(s.TokenType, 64), issued)
}

// failed maps a non-200 answer to an error an operator can act on.
func failed(resp *httpx.Response) error {
	var e errorBody
	if resp.DecodeJSON(&e) != nil {
		return resp.StatusError("", "")
	}
	code := truncate(e.Error, 64)
	msg := hints[e.Error]
	desc := e.Description
	if desc == "" {
		desc = e.Message
	}
	switch {
	case msg == "":
		msg = truncate(desc, 200)
	case desc != "":
		msg += " (" + truncate(desc, 200) + ")"
	}
	return resp.StatusError(code, msg)
}

func truncate(s string, n int) string {
	if len(s) > n {
		return strings.ToValidUTF8(s[:n], "") + "…"
	}
	return s
}
