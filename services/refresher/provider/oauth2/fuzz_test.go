package oauth2

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
)

// answer is a RoundTripper that answers every request with one canned
// response, so the whole parsing path (x/oauth2's and ours) runs without a
// network.
type answer struct {
	status int
	ctype  string
	body   []byte
}

func (a answer) RoundTrip(req *http.Request) (*http.Response, error) {
	return &http.Response{
		StatusCode: a.status, Status: strconv.Itoa(a.status), Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{"Content-Type": {a.ctype}}, Body: io.NopCloser(bytes.NewReader(a.body)),
		ContentLength: int64(len(a.body)), Request: req,
	}, nil
}

// FuzzToken: any answer from the token endpoint gives either a usable token
// or a *refresher.ProviderError with a bounded message, never a panic. Seeds
// are in testdata/fuzz/FuzzToken.
func FuzzToken(f *testing.F) {
	f.Add(200, "application/json", []byte(`{"access_token":"eyJ0eXAiOiJKV1Qi","token_type":"access_token","expires_in":3600}`))
	f.Add(500, "application/json", []byte(`{"error":"login_failed"}`))
	f.Add(400, "application/x-www-form-urlencoded", []byte(`error=invalid_scope&error_description=no`))
	issued := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, status int, ctype string, body []byte) {
		if status < 0 {
			status = -(status + 1)
		}
		p := New(Config{
			TokenURL: "https://token.example/oauth2/token", ClientID: "id", ClientSecret: "secret",
			Transport: answer{100 + status%500, ctype, body}, Now: func() time.Time { return issued },
		})
		tok, err := p.Token(context.Background())
		testutil.CheckParsed(t, tok, err, issued)
	})
}
