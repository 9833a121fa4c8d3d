// Package mpay is the mPay Africa (Tanzania) token provider: a JSON POST of
// username and password to /v2/auth. mPay's tokens are single-use: each is
// invalidated by the one API session it serves, and expires after two minutes
// if unused. A token from this provider must therefore be handed out exactly
// once, never cached and broadcast; the pool package does that.
package mpay

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

// DefaultLifetime is how long an unused mPay token stays valid.
const DefaultLifetime = 2 * time.Minute

// Config is what the provider needs from the configuration file.
type Config struct {
	// BaseURL is e.g. https://api.mpayafrica.co.tz (no trailing path).
	BaseURL  string
	Username string
	Password refresher.Secret
	// Lifetime is how long an unused token stays valid; DefaultLifetime if
	// zero. mPay does not say it in its answer.
	Lifetime time.Duration
	// Timeout bounds each token request; httpx.DefaultTimeout if zero.
	Timeout time.Duration
	// Transport is the base HTTP transport (http.DefaultTransport if nil);
	// one that httpx.Instrument returned is shared as it is, traced.
	Transport http.RoundTripper
	// Now returns the current time; time.Now if nil.
	Now func() time.Time
}

// Provider fetches mPay single-use tokens. It is safe for concurrent use;
// every call returns a new token and leaves earlier ones valid.
type Provider struct {
	url      string
	username string
	password refresher.Secret
	life     time.Duration
	client   httpx.Client
	now      func() time.Time
}

var _ refresher.Provider = (*Provider)(nil)

// New returns an mPay provider for cfg.
func New(cfg Config) *Provider {
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	life := cfg.Lifetime
	if life <= 0 {
		life = DefaultLifetime
	}
	return &Provider{
		url:      strings.TrimRight(cfg.BaseURL, "/") + "/v2/auth",
		username: cfg.Username,
		password: cfg.Password,
		life:     life,
		client:   httpx.NewClient(cfg.Timeout, cfg.Transport),
		now:      now,
	}
}

// Lifetime returns how long an unused token from p stays valid.
func (p *Provider) Lifetime() time.Duration { return p.life }

// answer is mPay's reply to /v2/auth, success ({"status":1,…,"token":"<uuid>"})
// or failure ({"status":0,"description":"Bad request","token":""}).
type answer struct {
	Status      *int   `json:"status"`
	Description string `json:"description"`
	Token       string `json:"token"`
}

// Token requests one new single-use token.
func (p *Provider) Token(ctx context.Context) (refresher.Token, error) {
	body, err := json.Marshal(struct {
		Username string `json:"username"`
		Password string `json:"password"`
	}{p.username, p.password.Reveal()})
	if err != nil {
		return refresher.Token{}, &refresher.ProviderError{Kind: refresher.Permanent, Message: "mpay: cannot encode the credentials"}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.url, bytes.NewReader(body))
	if err != nil {
		return refresher.Token{}, &refresher.ProviderError{Kind: refresher.Permanent, Message: "mpay: bad base_url"}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	sent := p.now() // the lifetime runs from before the request left, not after the answer came
	resp, err := httpx.Do(ctx, p.client, req)
	if err != nil {
		return refresher.Token{}, err
	}
	return parse(resp, sent, p.life)
}

// badCredentials is what an operator should check when mPay answers 400.
const badCredentials = "bad request: mPay rejected the token request (check username and password, and that the account is enabled for this environment)"

// parse reads mPay's answer to a token request sent at issued.
func parse(resp *httpx.Response, issued time.Time, life time.Duration) (refresher.Token, error) {
	var a answer
	decodeErr := resp.DecodeJSON(&a)
	if resp.Status != http.StatusOK {
		msg := ""
		if resp.Status == http.StatusBadRequest {
			msg = badCredentials
		}
		if decodeErr == nil && a.Description != "" {
			msg = join(msg, truncate(a.Description, 200))
		}
		return refresher.Token{}, resp.StatusError("", msg)
	}
	if decodeErr != nil {
		return refresher.Token{}, decodeErr
	}
	if a.Status == nil || *a.Status != 1 {
		// A 200 that says it failed: mPay refused, and says why.
		e := resp.StatusError("", join("mPay refused the token request", truncate(a.Description, 200)))
		e.Kind = refresher.Permanent
		return refresher.Token{}, e
	}
	if strings.TrimSpace(a.Token) == "" {
		return refresher.Token{}, resp.Malformed("token is missing")
	}
	return refresher.Token{AccessToken: refresher.Secret(a.Token), TokenType: "Bearer", IssuedAt: issued, ExpiresAt: issued.Add(life)}, nil
}

func join(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	}
	return a + ": " + b
}

func truncate(s string, n int) string {
	if len(s) > n {
		return strings.ToValidUTF8(s[:n], "") + "…"
	}
	return s
}
