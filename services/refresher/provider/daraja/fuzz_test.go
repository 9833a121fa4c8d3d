package daraja

import (
	"testing"
	"time"

	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
	"github.com/tokenbus/tokenbus/services/refresher/provider/httpx"
)

// FuzzParse: any answer to /oauth/v1/generate gives either a usable token or
// a *refresher.ProviderError with a bounded message, never a panic. Seeds are
// in testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	f.Add(200, "application/json", []byte(`{"access_token":"c9SQxWWhmdVRlyh0zh8gZDTkubVF","expires_in":"3599"}`))
	f.Add(400, "application/json", []byte(`{"requestId":"1","errorCode":"400.008.01","errorMessage":"Invalid Authentication passed"}`))
	issued := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, status int, ctype string, body []byte) {
		resp := &httpx.Response{Status: testutil.FuzzStatus(status), ContentType: ctype, Body: body}
		tok, err := parse(resp, issued)
		testutil.CheckParsed(t, tok, err, issued)
	})
}
