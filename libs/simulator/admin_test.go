package simulator

import (
	"encoding/json"
	"testing"
	"time"
)

func TestAdminRoundTrip(t *testing.T) {
	h := newHarness(t, Config{})
	tok := h.token(t, Daraja)

	resp := h.do(t, request{method: "PUT", path: "/_sim/faults/mpay", header: jsonType,
		body: `{"error_rate":1,"latency":"1ms","malformed":"html"}`})
	checkStatus(t, resp, 200)
	want := Faults{ErrorRate: 1, Latency: time.Millisecond, Malformed: MalformedHTML}
	if f := h.Faults(MPay); f != want {
		t.Errorf("faults %+v, want %+v", f, want)
	}
	var got Faults
	resp = h.do(t, request{method: "GET", path: "/_sim/faults/mpay"})
	checkStatus(t, resp, 200)
	if err := json.Unmarshal(resp.body, &got); err != nil || got != want {
		t.Errorf("GET faults: %s, %v", resp.body, err)
	}
	checkStatus(t, h.do(t, tokenRequest(MPay)), 503)

	var stats map[Kind]Stats
	resp = h.do(t, request{method: "GET", path: "/_sim/stats"})
	checkStatus(t, resp, 200)
	if err := json.Unmarshal(resp.body, &stats); err != nil {
		t.Fatal(err)
	}
	wantStats := map[Kind]Stats{
		Daraja: {TokenRequests: 1, TokensIssued: 1},
		MPay:   {TokenRequests: 1, TokenErrors: 1},
		OAuth2: {}, Airtel: {},
	}
	if len(stats) != len(wantStats) {
		t.Errorf("stats %s", resp.body)
	}
	for k, st := range wantStats {
		if stats[k] != st {
			t.Errorf("%s stats %+v, want %+v", k, stats[k], st)
		}
	}

	var log []Entry
	resp = h.do(t, request{method: "GET", path: "/_sim/log"})
	checkStatus(t, resp, 200)
	if err := json.Unmarshal(resp.body, &log); err != nil {
		t.Fatal(err)
	}
	if len(log) != 2 || log[0].Kind != Daraja || log[0].Token != tok || log[1].Kind != MPay || log[1].Status != 503 ||
		!log[0].Time.Equal(h.clock.Now()) {
		t.Errorf("log %s", resp.body)
	}

	checkStatus(t, h.do(t, request{method: "POST", path: "/_sim/rotate/daraja"}), 204)
	checkStatus(t, h.protected(t, Daraja, tok), 401)

	checkStatus(t, h.do(t, request{method: "POST", path: "/_sim/reset"}), 204)
	if f, st, log := h.Faults(MPay), h.Stats(Daraja), h.Log(); f != (Faults{}) || st != (Stats{}) || len(log) != 0 {
		t.Errorf("after reset: faults %+v, stats %+v, log %+v", f, st, log)
	}
}

func TestAdminErrors(t *testing.T) {
	tests := []struct {
		name   string
		req    request
		status int
	}{
		{"unknown kind", request{method: "PUT", path: "/_sim/faults/paypal", body: `{}`}, 404},
		{"rotate unknown kind", request{method: "POST", path: "/_sim/rotate/paypal"}, 404},
		{"bad JSON", request{method: "PUT", path: "/_sim/faults/mpay", body: `{`}, 400},
		{"bad latency", request{method: "PUT", path: "/_sim/faults/mpay", body: `{"latency":"200"}`}, 400},
		{"error rate out of range", request{method: "PUT", path: "/_sim/faults/mpay", body: `{"error_rate":2}`}, 400},
		{"unknown field", request{method: "PUT", path: "/_sim/faults/mpay", body: `{"outtage":true}`}, 400},
		{"unknown malformed mode", request{method: "PUT", path: "/_sim/faults/mpay", body: `{"malformed":"xml"}`}, 400},
		{"wrong method", request{method: "POST", path: "/_sim/stats"}, 405},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, Config{})
			resp := h.do(t, tt.req)
			checkStatus(t, resp, tt.status)
			if tt.status != 405 {
				if m := resp.json(t); m["error"] == "" || m["error"] == nil {
					t.Errorf("body %s", resp.body)
				}
			}
			if f := h.Faults(MPay); f != (Faults{}) {
				t.Errorf("faults changed to %+v", f)
			}
		})
	}
}
