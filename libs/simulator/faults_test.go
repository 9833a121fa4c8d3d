package simulator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"
)

func TestFaultOutage(t *testing.T) {
	tests := []struct {
		kind        Kind
		contentType string
		body        string // a substring of the body
	}{
		{Daraja, "text/html", "503 Service Temporarily Unavailable"},
		{MPay, "application/json", `{"status":0,"description":"Service unavailable","token":""}`},
		{OAuth2, "application/json", `"error":"temporarily_unavailable"`},
		{Airtel, "application/json", `"error":"temporarily_unavailable"`},
	}
	for _, tt := range tests {
		t.Run(string(tt.kind), func(t *testing.T) {
			h := newHarness(t, Config{})
			tok := h.token(t, tt.kind)
			h.SetFaults(tt.kind, Faults{Outage: true})
			for range 3 {
				resp := h.do(t, tokenRequest(tt.kind))
				checkStatus(t, resp, 503)
				if ct := resp.header.Get("Content-Type"); ct != tt.contentType || !strings.Contains(string(resp.body), tt.body) {
					t.Errorf("Content-Type %q, body %s; want %s, %s", ct, resp.body, tt.contentType, tt.body)
				}
			}
			// Faults touch token requests only, and only of their kind.
			checkStatus(t, h.protected(t, tt.kind, tok), 200)
			for _, other := range Kinds() {
				if other != tt.kind {
					h.token(t, other)
				}
			}
			if st, want := h.Stats(tt.kind), (Stats{TokenRequests: 4, TokensIssued: 1, TokenErrors: 3, ProtectedOK: 1}); st != want {
				t.Errorf("stats %+v, want %+v", st, want)
			}
			h.SetFaults(tt.kind, Faults{})
			h.token(t, tt.kind)
		})
	}
}

func TestFaultErrorRate(t *testing.T) {
	const n = 400
	tests := []struct {
		rate     float64
		min, max int // failures expected
	}{
		{0, 0, 0},
		{1, n, n},
		{0.5, n / 4, 3 * n / 4}, // outside: p < 1e-20
	}
	for _, tt := range tests {
		h := newHarness(t, Config{})
		h.SetFaults(Airtel, Faults{ErrorRate: tt.rate})
		failed := 0
		for range n {
			switch resp := h.do(t, tokenRequest(Airtel)); resp.status {
			case 200:
			case 503:
				failed++
			default:
				t.Fatalf("status %d", resp.status)
			}
		}
		if failed < tt.min || failed > tt.max {
			t.Errorf("rate %v: %d of %d failed, want %d to %d", tt.rate, failed, n, tt.min, tt.max)
		}
		if st := h.Stats(Airtel); st.TokenRequests != n || st.TokenErrors != int64(failed) || st.TokensIssued != int64(n-failed) {
			t.Errorf("rate %v: stats %+v with %d failures", tt.rate, st, failed)
		}
	}
}

func TestFaultLatency(t *testing.T) {
	h := newHarness(t, Config{})
	const latency = 50 * time.Millisecond
	h.SetFaults(OAuth2, Faults{Latency: latency})
	start := time.Now()
	h.token(t, OAuth2)
	if d := time.Since(start); d < latency {
		t.Errorf("answered after %v, want at least %v", d, latency)
	}
}

func TestFaultLatencyHonoursCancellation(t *testing.T) {
	h := newHarness(t, Config{})
	h.SetFaults(Daraja, Faults{Latency: time.Hour})
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if _, err := h.send(ctx, tokenRequest(Daraja)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error %v, want a deadline", err)
	}
	// The handler gives up its wait and records the request as failed.
	checkFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if log := h.Log(); len(log) != 1 || log[0].Status != 503 {
			return fmt.Errorf("log %+v", log)
		}
		return nil
	})
	if st := h.Stats(Daraja); st != (Stats{TokenRequests: 1, TokenErrors: 1}) {
		t.Errorf("stats %+v", st)
	}
}

func TestFaultMalformed(t *testing.T) {
	for _, k := range Kinds() {
		field := "access_token"
		if k == MPay {
			field = "token"
		}
		tests := []struct {
			mode        string
			contentType string
			check       func(body []byte) error
		}{
			{MalformedHTML, "text/html; charset=utf-8", func(b []byte) error {
				if !strings.HasPrefix(string(b), "<!DOCTYPE html>") {
					return errors.New("not an HTML page")
				}
				return nil
			}},
			{MalformedGarbage, "application/json", func(b []byte) error {
				if json.Valid(b) {
					return errors.New("valid JSON")
				}
				return nil
			}},
			{MalformedNoToken, "application/json", func(b []byte) error {
				return jsonWithout(b, field)
			}},
			{MalformedBadExpires, "application/json", func(b []byte) error {
				if k == MPay {
					return jsonWithout(b, field)
				}
				var m map[string]any
				if err := json.Unmarshal(b, &m); err != nil || m["expires_in"] != "abc" || m[field] == "" {
					return fmt.Errorf("want expires_in abc and a token (%v)", err)
				}
				return nil
			}},
			{MalformedHuge, "application/json", func(b []byte) error {
				var m map[string]any
				if len(b) != HugeSize || json.Unmarshal(b, &m) != nil || len(m[field].(string)) < HugeSize-100 {
					return fmt.Errorf("%d bytes, want %d of JSON with a huge %s", len(b), HugeSize, field)
				}
				return nil
			}},
		}
		for _, tt := range tests {
			t.Run(fmt.Sprintf("%s/%s", k, tt.mode), func(t *testing.T) {
				h := newHarness(t, Config{})
				tok := h.token(t, k)
				h.SetFaults(k, Faults{Malformed: tt.mode})
				resp := h.do(t, tokenRequest(k))
				checkStatus(t, resp, 200)
				if ct := resp.header.Get("Content-Type"); ct != tt.contentType {
					t.Errorf("Content-Type %q, want %q", ct, tt.contentType)
				}
				if err := tt.check(resp.body); err != nil {
					t.Errorf("body %.200q: %v", resp.body, err)
				}
				// Malformed answers issue no token and leave the last one valid
				// (for Daraja too).
				if log := h.Log(); log[1].Token != "" {
					t.Errorf("log %+v", log[1])
				}
				checkStatus(t, h.protected(t, k, tok), 200)
				// An error answer stays an error answer.
				h.SetFaults(k, Faults{Malformed: tt.mode, Outage: true})
				checkStatus(t, h.do(t, tokenRequest(k)), 503)
				if st, want := h.Stats(k), (Stats{TokenRequests: 3, TokensIssued: 1, TokenErrors: 2, ProtectedOK: 1}); st != want {
					t.Errorf("stats %+v, want %+v", st, want)
				}
			})
		}
	}
}

// jsonWithout checks that b is a JSON object without field.
func jsonWithout(b []byte, field string) error {
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	if _, ok := m[field]; ok || len(m) == 0 {
		return fmt.Errorf("want a JSON object without %s", field)
	}
	return nil
}

func TestFaultsValidate(t *testing.T) {
	tests := []struct {
		f  Faults
		ok bool
	}{
		{Faults{}, true},
		{Faults{ErrorRate: 1, Latency: time.Second, Outage: true, Malformed: MalformedHuge}, true},
		{Faults{ErrorRate: -0.1}, false},
		{Faults{ErrorRate: 1.5}, false},
		{Faults{ErrorRate: math.NaN()}, false},
		{Faults{Latency: -time.Second}, false},
		{Faults{Malformed: "xml"}, false},
	}
	for _, tt := range tests {
		if err := tt.f.Validate(); (err == nil) != tt.ok {
			t.Errorf("%+v: Validate() = %v", tt.f, err)
		}
	}
}

func TestFaultsJSON(t *testing.T) {
	f := Faults{ErrorRate: 0.25, Latency: 200 * time.Millisecond, Outage: true, Malformed: MalformedNoToken}
	b, err := json.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"error_rate":0.25,"latency":"200ms","outage":true,"malformed":"no_token"}`; string(b) != want {
		t.Errorf("Marshal = %s, want %s", b, want)
	}
	var got Faults
	if err := json.Unmarshal(b, &got); err != nil || got != f {
		t.Errorf("Unmarshal = %+v, %v", got, err)
	}
	for _, bad := range []string{`{"latency":"soon"}`, `{"errorRate":1}`, `{"outage":"yes"}`, `[]`} {
		if err := json.Unmarshal([]byte(bad), &got); err == nil {
			t.Errorf("Unmarshal(%s) succeeded", bad)
		}
	}
	if err := json.Unmarshal([]byte(`{"latency":"1s"}`), &got); err != nil || got != (Faults{Latency: time.Second}) {
		t.Errorf("a partial object: %+v, %v", got, err)
	}
}
