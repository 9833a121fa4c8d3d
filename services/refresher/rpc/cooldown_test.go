package rpc_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher"
)

// TestRefreshFloodIs429 (SPEC §3): a reader that reports whatever token is
// current, a hundred times in a row, costs one provider call per
// refresh_cooldown; the others are answered 429 with the seconds to wait in
// the message and a Retry-After header. Once the cooldown has passed, the
// next report refreshes again.
func TestRefreshFloodIs429(t *testing.T) {
	clk := newClock()
	p := &countingProvider{life: time.Hour, now: clk.now}
	f := start(t, p, clk.now, refresher.Backoff{})
	cur := waitToken(t, f)
	refreshed := 0
	for range 100 {
		body, _ := json.Marshal(wire.RefreshRequest{InvalidToken: cur.AccessToken})
		msg, err := f.nc.Request(wire.RefreshSubject("p1"), body, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		switch code := msg.Header.Get(wire.HeaderErrorCode); code {
		case "":
			if err := json.Unmarshal(msg.Data, &cur); err != nil {
				t.Fatal(err)
			}
			refreshed++
		case "429":
			if ra := msg.Header.Get(wire.HeaderRetryAfter); ra != "5" {
				t.Fatalf("Retry-After %q, want 5", ra)
			}
			if m := msg.Header.Get(wire.HeaderError); !strings.Contains(m, "retry in 5 s") || !strings.HasPrefix(m, "p1: ") {
				t.Fatalf("message %q does not say how long to wait", m)
			}
		default:
			t.Fatalf("code %s: %s", code, msg.Data)
		}
	}
	if refreshed != 1 || p.calls.Load() != 2 {
		t.Fatalf("100 reports of the current token: %d refreshes, %d provider calls; want 1 and 2 (start + one)", refreshed, p.calls.Load())
	}
	// After the cooldown, the first report refreshes.
	clk.set(clk.now().Add(5 * time.Second))
	if tok, code, msg := request(t, f.nc, wire.RefreshSubject("p1"), []byte(`{"invalid_token":"`+cur.AccessToken+`"}`)); code != 0 || tok.AccessToken == cur.AccessToken {
		t.Fatalf("report after the cooldown: %d %s", code, msg)
	}
	if n := p.calls.Load(); n != 3 {
		t.Fatalf("%d provider calls, want 3", n)
	}
}
