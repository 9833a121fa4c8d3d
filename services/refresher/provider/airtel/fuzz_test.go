package airtel

import (
	"testing"
	"time"

	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
	"github.com/tokenbus/tokenbus/services/refresher/provider/httpx"
)

// FuzzParse: any answer to /auth/oauth2/token gives either a usable token or
// a *refresher.ProviderError with a bounded message, never a panic. Seeds are
// in testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	f.Add(200, "application/json", []byte(`{"access_token":"eyJhbGciOiJIUzI1NiJ9","expires_in":"180","token_type":"bearer"}`))
	f.Add(400, "application/json", []byte(`{"error":"invalid_client","error_description":"Client authentication failed"}`))
	issued := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, status int, ctype string, body []byte) {
		resp := &httpx.Response{Status: testutil.FuzzStatus(status), ContentType: ctype, Body: body}
		tok, err := parse(resp, issued)
		testutil.CheckParsed(t, tok, err, issued)
	})
}
