package simulator

import (
	"regexp"
	"sync"
	"testing"
	"time"
)

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestMPayTokenRequests(t *testing.T) {
	const badRequest = `{"status":0,"description":"Bad request","token":""}`
	tests := []struct {
		name   string
		req    request
		status int
		body   string // exact body expected, if not empty
	}{
		{"success", tokenRequest(MPay), 200, ""},
		{"content type with charset", request{method: "POST", path: "/v2/auth",
			header: map[string]string{"Content-Type": "application/json; charset=utf-8"},
			body:   `{"username":"sim-user","password":"sim-pass"}`}, 200, ""},
		{"wrong password", request{method: "POST", path: "/v2/auth", header: jsonType,
			body: `{"username":"sim-user","password":"nope"}`}, 400, badRequest},
		{"wrong username", request{method: "POST", path: "/v2/auth", header: jsonType,
			body: `{"username":"nope","password":"sim-pass"}`}, 400, badRequest},
		{"missing password", request{method: "POST", path: "/v2/auth", header: jsonType,
			body: `{"username":"sim-user"}`}, 400, badRequest},
		{"empty object", request{method: "POST", path: "/v2/auth", header: jsonType, body: `{}`}, 400, badRequest},
		{"bad JSON", request{method: "POST", path: "/v2/auth", header: jsonType, body: `{"username":`}, 400, badRequest},
		{"not JSON content type", request{method: "POST", path: "/v2/auth",
			header: map[string]string{"Content-Type": formType}, body: `{"username":"sim-user","password":"sim-pass"}`}, 400, badRequest},
		{"wrong method", request{method: "GET", path: "/v2/auth"}, 405, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, Config{})
			resp := h.do(t, tt.req)
			checkStatus(t, resp, tt.status)
			if tt.body != "" && string(resp.body) != tt.body {
				t.Errorf("body %s, want %s", resp.body, tt.body)
			}
			if tt.status == 200 {
				m := resp.json(t)
				tok, _ := m["token"].(string)
				if m["status"] != 1.0 || m["description"] != "Success" || !uuidV4.MatchString(tok) {
					t.Errorf("body %s", resp.body)
				}
			}
		})
	}
}

func TestMPayTokenIsSingleUse(t *testing.T) {
	h := newHarness(t, Config{})
	first, second := h.token(t, MPay), h.token(t, MPay)

	// Both are outstanding at once; each is accepted once, in any order.
	for _, tok := range []string{second, first} {
		resp := h.protected(t, MPay, tok)
		checkStatus(t, resp, 200)
		if got, want := string(resp.body), `{"status":1,"description":"Success"}`; got != want {
			t.Errorf("body %s, want %s", got, want)
		}
	}
	for _, tok := range []string{first, second, "3fa85f64-5717-4562-b3fc-2c963f66afa6", ""} {
		resp := h.protected(t, MPay, tok)
		checkStatus(t, resp, 401)
		if got, want := string(resp.body), `{"status":0,"description":"Invalid token"}`; got != want {
			t.Errorf("body %s, want %s", got, want)
		}
	}
	want := Stats{TokenRequests: 2, TokensIssued: 2, ProtectedOK: 2, ProtectedRejected: 4}
	if st := h.Stats(MPay); st != want {
		t.Errorf("stats %+v, want %+v", st, want)
	}
}

func TestMPayTokenExpiresUnused(t *testing.T) {
	for _, ttl := range []time.Duration{0, 30 * time.Second} {
		h := newHarness(t, Config{MPayTTL: ttl})
		if ttl == 0 {
			ttl = 2 * time.Minute
		}
		early, late := h.token(t, MPay), h.token(t, MPay)
		h.clock.Advance(ttl - time.Nanosecond)
		checkStatus(t, h.protected(t, MPay, early), 200)
		h.clock.Advance(time.Nanosecond)
		checkStatus(t, h.protected(t, MPay, late), 401)
	}
}

func TestMPayConcurrentAuth(t *testing.T) {
	const n = 200
	h := newHarness(t, Config{})
	tokens := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			var err error
			if tokens[i], err = h.tryToken(MPay); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}

	seen := make(map[string]bool, n)
	for _, tok := range tokens {
		if seen[tok] {
			t.Fatalf("token %s issued twice", tok)
		}
		seen[tok] = true
	}
	for _, tok := range tokens {
		wg.Go(func() {
			if resp, err := h.send(t.Context(), protectedRequest(MPay, tok)); err != nil || resp.status != 200 {
				t.Errorf("token %s: status %d, error %v", tok, resp.status, err)
			}
		})
	}
	wg.Wait()
	want := Stats{TokenRequests: n, TokensIssued: n, ProtectedOK: n}
	if st := h.Stats(MPay); st != want {
		t.Errorf("stats %+v, want %+v", st, want)
	}
}
