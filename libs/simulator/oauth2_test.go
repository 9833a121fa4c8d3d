package simulator

import (
	"testing"
	"time"
)

func TestOAuth2TokenRequests(t *testing.T) {
	good := basic("sim-client", "sim-client-secret")
	form := map[string]string{"Content-Type": formType}
	basicForm := map[string]string{"Content-Type": formType, "Authorization": good}
	tests := []struct {
		name   string
		cfg    Config
		req    request
		status int
		body   string         // exact body expected, if not empty
		fields map[string]any // fields expected in a JSON body
	}{
		{name: "basic auth", req: tokenRequest(OAuth2), status: 200,
			fields: map[string]any{"token_type": "access_token", "expires_in": 3600.0}},
		{name: "form auth", req: request{method: "POST", path: "/oauth2/token", header: form,
			body: "grant_type=client_credentials&client_id=sim-client&client_secret=sim-client-secret"}, status: 200},
		{name: "scope echoed", req: request{method: "POST", path: "/oauth2/token", header: basicForm,
			body: "grant_type=client_credentials&scope=read+write"}, status: 200,
			fields: map[string]any{"scope": "read write"}},
		{name: "MoMo path", req: request{method: "POST", path: "/collection/token/", header: basicForm,
			body: "grant_type=client_credentials"}, status: 200},
		{name: "token type and lifetime", cfg: Config{OAuth2TokenType: "Bearer", OAuth2TTL: 90 * time.Second},
			req: tokenRequest(OAuth2), status: 200, fields: map[string]any{"token_type": "Bearer", "expires_in": 90.0}},
		{name: "subscription key", cfg: Config{OAuth2SubscriptionKey: "sub-key"},
			req: request{method: "POST", path: "/collection/token/", body: "grant_type=client_credentials",
				header: map[string]string{"Content-Type": formType, "Authorization": good, "Ocp-Apim-Subscription-Key": "sub-key"}},
			status: 200},
		{name: "subscription key missing", cfg: Config{OAuth2SubscriptionKey: "sub-key"},
			req: tokenRequest(OAuth2), status: 401, fields: map[string]any{"statusCode": 401.0}},
		{name: "subscription key wrong", cfg: Config{OAuth2SubscriptionKey: "sub-key"},
			req: request{method: "POST", path: "/oauth2/token", body: "grant_type=client_credentials",
				header: map[string]string{"Content-Type": formType, "Authorization": good, "Ocp-Apim-Subscription-Key": "nope"}},
			status: 401, fields: map[string]any{"statusCode": 401.0}},
		{name: "unsupported grant", req: request{method: "POST", path: "/oauth2/token", header: basicForm,
			body: "grant_type=password"}, status: 400, fields: map[string]any{"error": "unsupported_grant_type"}},
		{name: "missing grant", req: request{method: "POST", path: "/oauth2/token", header: basicForm},
			status: 400, fields: map[string]any{"error": "invalid_request"}},
		{name: "grant in query only", req: request{method: "POST", path: "/oauth2/token?grant_type=client_credentials",
			header: basicForm}, status: 400, fields: map[string]any{"error": "invalid_request"}},
		{name: "missing client auth", req: request{method: "POST", path: "/oauth2/token", header: form,
			body: "grant_type=client_credentials"}, status: 401, fields: map[string]any{"error": "invalid_client"}},
		{name: "wrong secret in header", req: request{method: "POST", path: "/oauth2/token", body: "grant_type=client_credentials",
			header: map[string]string{"Content-Type": formType, "Authorization": basic("sim-client", "nope")}},
			status: 500, body: `{"error":"login_failed"}`},
		{name: "wrong client in form", req: request{method: "POST", path: "/collection/token/", header: form,
			body: "grant_type=client_credentials&client_id=nope&client_secret=sim-client-secret"},
			status: 500, body: `{"error":"login_failed"}`},
		{name: "wrong method", req: request{method: "GET", path: "/oauth2/token"}, status: 405},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, tt.cfg)
			resp := h.do(t, tt.req)
			checkStatus(t, resp, tt.status)
			if tt.body != "" && string(resp.body) != tt.body {
				t.Errorf("body %s, want %s", resp.body, tt.body)
			}
			if tt.status == 405 {
				return
			}
			m := resp.json(t)
			for k, v := range tt.fields {
				if m[k] != v {
					t.Errorf("%s = %#v, want %#v; body %s", k, m[k], v, resp.body)
				}
			}
			if tok, _ := m["access_token"].(string); (tok != "") != (tt.status == 200) {
				t.Errorf("body %s", resp.body)
			}
			if tt.status == 401 && m["error"] == "invalid_client" && resp.header.Get("WWW-Authenticate") == "" {
				t.Error("401 invalid_client without WWW-Authenticate")
			}
		})
	}
}

// OAuth2 and Airtel tokens are independent: a new one leaves the others valid
// until they expire.
func TestBearerTokensCoexist(t *testing.T) {
	for _, k := range []Kind{OAuth2, Airtel} {
		t.Run(string(k), func(t *testing.T) {
			h := newHarness(t, Config{OAuth2TTL: time.Hour, AirtelTTL: time.Hour})
			first := h.token(t, k)
			h.clock.Advance(time.Minute)
			second := h.token(t, k)
			for _, tok := range []string{first, second, first} {
				resp := h.protected(t, k, tok)
				checkStatus(t, resp, 200)
			}
			for _, tok := range []string{"", "not-a-token"} {
				resp := h.protected(t, k, tok)
				checkStatus(t, resp, 401)
				if m := resp.json(t); m["error"] != "invalid_token" || resp.header.Get("WWW-Authenticate") == "" {
					t.Errorf("body %s, WWW-Authenticate %q", resp.body, resp.header.Get("WWW-Authenticate"))
				}
			}
			h.clock.Advance(time.Hour - time.Minute)
			checkStatus(t, h.protected(t, k, first), 401)
			checkStatus(t, h.protected(t, k, second), 200)
			h.clock.Advance(time.Minute)
			checkStatus(t, h.protected(t, k, second), 401)
			if st := h.Stats(k); st.ProtectedOK != 4 || st.ProtectedRejected != 4 {
				t.Errorf("stats %+v", st)
			}
		})
	}
}
