package tokenclient

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
)

// DarajaInvalidTokenCode is the error code Daraja answers a call made with a
// token it no longer accepts: {"errorCode":"404.001.03","errorMessage":"Invalid Access Token"}.
const DarajaInvalidTokenCode = "404.001.03"

// peekLimit bounds how much of a 4xx answer is read to look for
// DarajaInvalidTokenCode; the caller still reads the whole body.
const peekLimit = 4 << 10

// tokenSource is what a transport needs from a Client.
type tokenSource interface {
	Token(ctx context.Context, provider string) (Token, error)
	Invalidate(ctx context.Context, provider, token string) (Token, error)
}

// Transport returns an http.RoundTripper that calls base (http.DefaultTransport
// if nil) with `Authorization: Bearer <token>` carrying provider's current
// token. When the answer says the token was rejected — a 401, or a 4xx whose
// body carries Daraja's 404.001.03 Invalid Access Token — it reports the token
// with Invalidate and retries once with the fresh token, replaying the body
// through Request.GetBody (http.NewRequest sets it for the usual body types).
// A request whose body cannot be replayed is not retried: its rejection is
// returned, and the token is still reported so that the next request gets a
// fresh one. For a provider declared WithSingleUse every request, and the
// retry, takes a token of its own.
//
// An error getting a token is returned from RoundTrip wrapped, so that
// errors.Is(err, ErrUnavailable) and the like hold for the error http.Client
// returns. A rejection reported within the provider's refresh cooldown
// (SPEC §3) is not retried: the error matches ErrCooldown and its *Error
// carries RetryAfter.
func (c *Client) Transport(provider string, base http.RoundTripper) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	return &transport{src: c, provider: provider, base: base, singleUse: c.o.singleUse[provider]}
}

type transport struct {
	src       tokenSource
	provider  string
	base      http.RoundTripper
	singleUse bool
}

// RoundTrip sends req with a Bearer token, and once more with a fresh one if
// the provider rejects it.
func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	tok, err := t.src.Token(ctx, t.provider)
	if err != nil {
		closeBody(req)
		return nil, fmt.Errorf("tokenclient: transport: %w", err)
	}
	resp, err := t.base.RoundTrip(authorized(req, tok.AccessToken, req.Body))
	if err != nil || !rejected(resp) {
		return resp, err
	}
	replayable := req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
	if !replayable {
		if !t.singleUse {
			_, _ = t.src.Invalidate(ctx, t.provider, tok.AccessToken)
		}
		return resp, nil
	}
	discard(resp)
	var fresh Token
	if t.singleUse {
		fresh, err = t.src.Token(ctx, t.provider)
	} else {
		fresh, err = t.src.Invalidate(ctx, t.provider, tok.AccessToken)
	}
	if err != nil {
		return nil, fmt.Errorf("tokenclient: transport: %s rejected the token, and no fresh one: %w", t.provider, err)
	}
	body := req.Body
	if req.GetBody != nil {
		if body, err = req.GetBody(); err != nil {
			return nil, fmt.Errorf("tokenclient: transport: replay request body: %w", err)
		}
	}
	return t.base.RoundTrip(authorized(req, fresh.AccessToken, body))
}

// authorized returns a copy of req carrying token and body: a RoundTripper
// must not change the request it was given.
func authorized(req *http.Request, token string, body io.ReadCloser) *http.Request {
	r := req.Clone(req.Context())
	r.Body = body
	r.Header.Set("Authorization", "Bearer "+token)
	return r
}

// rejected reports whether resp says the token was not accepted: a 401, or
// another 4xx whose body carries Daraja's invalid-token code. It leaves
// resp.Body reading from the start.
func rejected(resp *http.Response) bool {
	if resp.StatusCode == http.StatusUnauthorized {
		return true
	}
	if resp.StatusCode < 400 || resp.StatusCode >= 500 || resp.Body == nil || resp.Body == http.NoBody {
		return false
	}
	head, err := io.ReadAll(io.LimitReader(resp.Body, peekLimit))
	resp.Body = &peekedBody{Reader: io.MultiReader(bytes.NewReader(head), resp.Body), Closer: resp.Body}
	if err != nil {
		return false
	}
	return bytes.Contains(head, []byte(DarajaInvalidTokenCode))
}

// peekedBody puts the peeked bytes back in front of the rest of a body.
type peekedBody struct {
	io.Reader
	io.Closer
}

// discard reads a little of resp's body, so the connection can be reused,
// and closes it.
func discard(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
}
