package simulator

import "testing"

func TestAirtelTokenRequests(t *testing.T) {
	const path = "/auth/oauth2/token"
	tests := []struct {
		name   string
		req    request
		status int
		body   string // exact body expected, if not empty
		error  string // the error expected, if any
	}{
		{name: "success", req: tokenRequest(Airtel), status: 200},
		{name: "wrong secret", req: request{method: "POST", path: path, header: jsonType,
			body: `{"client_id":"sim-airtel-id","client_secret":"nope","grant_type":"client_credentials"}`},
			status: 401, body: `{"error":"invalid_client","error_description":"Client authentication failed"}`},
		{name: "missing client", req: request{method: "POST", path: path, header: jsonType,
			body: `{"grant_type":"client_credentials"}`}, status: 401, error: "invalid_client"},
		{name: "wrong grant", req: request{method: "POST", path: path, header: jsonType,
			body: `{"client_id":"sim-airtel-id","client_secret":"sim-airtel-secret","grant_type":"password"}`},
			status: 400, error: "unsupported_grant_type"},
		{name: "missing grant", req: request{method: "POST", path: path, header: jsonType,
			body: `{"client_id":"sim-airtel-id","client_secret":"sim-airtel-secret"}`}, status: 400, error: "invalid_request"},
		{name: "bad JSON", req: request{method: "POST", path: path, header: jsonType, body: `client_id=x`},
			status: 400, error: "invalid_request"},
		{name: "form content type", req: request{method: "POST", path: path, header: map[string]string{"Content-Type": formType},
			body: tokenRequest(Airtel).body}, status: 400, error: "invalid_request"},
		{name: "wrong method", req: request{method: "GET", path: path}, status: 405},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, Config{})
			resp := h.do(t, tt.req)
			checkStatus(t, resp, tt.status)
			if tt.body != "" && string(resp.body) != tt.body {
				t.Errorf("body %s, want %s", resp.body, tt.body)
			}
			if tt.error != "" {
				if m := resp.json(t); m["error"] != tt.error || m["error_description"] == "" {
					t.Errorf("body %s, want error %s", resp.body, tt.error)
				}
			}
			if tt.status == 200 {
				m := resp.json(t)
				if tok, _ := m["access_token"].(string); tok == "" || m["expires_in"] != "180" || m["token_type"] != "bearer" {
					t.Errorf("body %s", resp.body)
				}
			}
		})
	}
}
