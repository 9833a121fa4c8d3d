package mpay

import (
	"testing"
	"time"

	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
	"github.com/tokenbus/tokenbus/services/refresher/provider/httpx"
)

// FuzzParse: any answer to /v2/auth gives either a usable token or a
// *refresher.ProviderError with a bounded message, never a panic. Seeds are
// in testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	f.Add(200, "application/json", []byte(`{"status":1,"description":"Success","token":"3fa85f64-5717-4562-b3fc-2c963f66afa6"}`))
	f.Add(400, "application/json", []byte(`{"status":0,"description":"Bad request","token":""}`))
	issued := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, status int, ctype string, body []byte) {
		resp := &httpx.Response{Status: testutil.FuzzStatus(status), ContentType: ctype, Body: body}
		tok, err := parse(resp, issued, DefaultLifetime)
		testutil.CheckParsed(t, tok, err, issued)
	})
}
