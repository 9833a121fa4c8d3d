package simulator

import (
	"testing"
	"time"
)

func TestDarajaTokenRequests(t *testing.T) {
	good := basic("sim-consumer-key", "sim-consumer-secret")
	const path = "/oauth/v1/generate?grant_type=client_credentials"
	tests := []struct {
		name      string
		req       request
		status    int
		errorCode string // the errorCode expected, if any
		message   string
		emptyBody bool
	}{
		{name: "success", req: request{method: "GET", path: path, header: map[string]string{"Authorization": good}},
			status: 200},
		{name: "missing grant type", req: request{method: "GET", path: "/oauth/v1/generate", header: map[string]string{"Authorization": good}},
			status: 400, errorCode: "400.008.02", message: "Invalid grant type passed"},
		{name: "other grant type", req: request{method: "GET", path: "/oauth/v1/generate?grant_type=password", header: map[string]string{"Authorization": good}},
			status: 400, errorCode: "400.008.02", message: "Invalid grant type passed"},
		{name: "no authorization", req: request{method: "GET", path: path},
			status: 400, errorCode: "400.008.01", message: "Invalid Authentication passed"},
		{name: "bearer authorization", req: request{method: "GET", path: path, header: map[string]string{"Authorization": "Bearer abc"}},
			status: 400, errorCode: "400.008.01", message: "Invalid Authentication passed"},
		{name: "basic not base64", req: request{method: "GET", path: path, header: map[string]string{"Authorization": "Basic !!!"}},
			status: 400, errorCode: "400.008.01", message: "Invalid Authentication passed"},
		{name: "wrong key", req: request{method: "GET", path: path, header: map[string]string{"Authorization": basic("nope", "sim-consumer-secret")}},
			status: 400, emptyBody: true},
		{name: "wrong secret", req: request{method: "GET", path: path, header: map[string]string{"Authorization": basic("sim-consumer-key", "nope")}},
			status: 400, emptyBody: true},
		{name: "wrong method", req: request{method: "POST", path: path, header: map[string]string{"Authorization": good}},
			status: 405},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, Config{})
			resp := h.do(t, tt.req)
			checkStatus(t, resp, tt.status)
			switch {
			case tt.status == 200:
				if ct := resp.header.Get("Content-Type"); ct != "application/json" {
					t.Errorf("Content-Type %q", ct)
				}
				m := resp.json(t)
				if tok, _ := m["access_token"].(string); tok == "" || m["expires_in"] != "3599" || len(m) != 2 {
					t.Errorf("body %s", resp.body)
				}
			case tt.errorCode != "":
				m := resp.json(t)
				if m["errorCode"] != tt.errorCode || m["errorMessage"] != tt.message || m["requestId"] == "" {
					t.Errorf("body %s, want errorCode %s, errorMessage %q and a requestId", resp.body, tt.errorCode, tt.message)
				}
			case tt.emptyBody:
				if len(resp.body) != 0 {
					t.Errorf("body %q, want none", resp.body)
				}
			}
			st := h.Stats(Daraja)
			issued := int64(0)
			if tt.status == 200 {
				issued = 1
			}
			if want := (Stats{TokenRequests: 1, TokensIssued: issued, TokenErrors: 1 - issued}); st != want {
				t.Errorf("stats %+v, want %+v", st, want)
			}
		})
	}
}

func TestDarajaExpiresIn(t *testing.T) {
	tests := []struct {
		ttl    time.Duration
		number bool
		want   any
	}{
		{0, false, "3599"},
		{3599 * time.Second, false, "3599"},
		{90*time.Second + 900*time.Millisecond, false, "90"},
		{300 * time.Millisecond, false, "1"},
		{0, true, 3599.0},
		{2 * time.Second, true, 2.0},
	}
	for _, tt := range tests {
		h := newHarness(t, Config{DarajaTTL: tt.ttl, DarajaExpiresInNumber: tt.number})
		resp := h.do(t, tokenRequest(Daraja))
		checkStatus(t, resp, 200)
		if got := resp.json(t)["expires_in"]; got != tt.want {
			t.Errorf("TTL %v, number %v: expires_in %#v, want %#v", tt.ttl, tt.number, got, tt.want)
		}
	}
}

func TestDarajaNewTokenInvalidatesOld(t *testing.T) {
	h := newHarness(t, Config{})
	old := h.token(t, Daraja)
	checkStatus(t, h.protected(t, Daraja, old), 200)
	current := h.token(t, Daraja)
	if old == current {
		t.Fatal("the same token twice")
	}

	resp := h.protected(t, Daraja, old)
	checkStatus(t, resp, 401)
	if m := resp.json(t); m["errorCode"] != "404.001.03" || m["errorMessage"] != "Invalid Access Token" || m["requestId"] == "" {
		t.Errorf("old token: body %s", resp.body)
	}
	resp = h.protected(t, Daraja, current)
	checkStatus(t, resp, 200)
	if got, want := string(resp.body), `{"ResponseCode":"0","ResponseDescription":"Success. Request accepted for processing"}`; got != want {
		t.Errorf("body %s, want %s", got, want)
	}
	// A token is not consumed: it keeps working until replaced or expired.
	checkStatus(t, h.protected(t, Daraja, current), 200)
	if st := h.Stats(Daraja); st.ProtectedOK != 3 || st.ProtectedRejected != 1 {
		t.Errorf("stats %+v", st)
	}
}

func TestDarajaTokenExpires(t *testing.T) {
	h := newHarness(t, Config{DarajaTTL: time.Minute})
	tok := h.token(t, Daraja)
	h.clock.Advance(time.Minute - time.Nanosecond)
	checkStatus(t, h.protected(t, Daraja, tok), 200)
	h.clock.Advance(time.Nanosecond)
	checkStatus(t, h.protected(t, Daraja, tok), 401)
}

func TestDarajaProtectedRejects(t *testing.T) {
	h := newHarness(t, Config{})
	h.token(t, Daraja)
	for _, header := range []map[string]string{
		nil,
		{"Authorization": "Bearer not-a-token"},
		{"Authorization": basic("sim-consumer-key", "sim-consumer-secret")},
	} {
		resp := h.do(t, request{method: "POST", path: "/mpesa/stkpush/v1/processrequest", header: header})
		checkStatus(t, resp, 401)
	}
	checkStatus(t, h.do(t, request{method: "GET", path: "/mpesa/stkpush/v1/processrequest"}), 405)
}
