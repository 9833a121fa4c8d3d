package simulator

import (
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestRotate(t *testing.T) {
	for _, k := range Kinds() {
		t.Run(string(k), func(t *testing.T) {
			h := newHarness(t, Config{})
			tok := h.token(t, k)
			h.Rotate(k)
			checkStatus(t, h.protected(t, k, tok), 401)
			checkStatus(t, h.protected(t, k, h.token(t, k)), 200)
		})
	}
}

func TestLogAndCounters(t *testing.T) {
	h := newHarness(t, Config{})
	tok := h.token(t, Daraja)
	h.clock.Advance(time.Second)
	h.do(t, request{method: "GET", path: "/oauth/v1/generate"})
	h.clock.Advance(time.Second)
	mpayTok := h.token(t, MPay)
	checkStatus(t, h.protected(t, Daraja, tok), 200)
	checkStatus(t, h.protected(t, Daraja, "nope"), 401)

	start := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	want := []Entry{
		{Time: start, Kind: Daraja, Status: 200, UserAgent: "simulator-test", Token: tok},
		{Time: start.Add(time.Second), Kind: Daraja, Status: 400, UserAgent: "simulator-test"},
		{Time: start.Add(2 * time.Second), Kind: MPay, Status: 200, UserAgent: "simulator-test", Token: mpayTok},
	}
	if log := h.Log(); !slices.Equal(log, want) {
		t.Errorf("log\n%+v\nwant\n%+v", log, want)
	}
	if st, want := h.Stats(Daraja), (Stats{TokenRequests: 2, TokensIssued: 1, TokenErrors: 1, ProtectedOK: 1, ProtectedRejected: 1}); st != want {
		t.Errorf("daraja stats %+v, want %+v", st, want)
	}
	if st := h.Stats(OAuth2); st != (Stats{}) {
		t.Errorf("oauth2 stats %+v", st)
	}
	if st := h.Stats("nope"); st != (Stats{}) {
		t.Errorf("unknown kind's stats %+v", st)
	}
}

func TestLogLimit(t *testing.T) {
	h := newHarness(t, Config{LogLimit: 3})
	var tokens []string
	for range 7 {
		tokens = append(tokens, h.token(t, OAuth2))
	}
	var got []string
	for _, e := range h.Log() {
		got = append(got, e.Token)
	}
	if want := tokens[4:]; !slices.Equal(got, want) {
		t.Errorf("log tokens %v, want the last three %v", got, want)
	}
	if st := h.Stats(OAuth2); st.TokenRequests != 7 {
		t.Errorf("stats %+v", st)
	}
}

func TestReset(t *testing.T) {
	h := newHarness(t, Config{})
	tok := h.token(t, Airtel)
	h.SetFaults(Airtel, Faults{Outage: true})
	checkStatus(t, h.do(t, tokenRequest(Airtel)), 503)
	h.Reset()
	if st, f, log := h.Stats(Airtel), h.Faults(Airtel), h.Log(); st != (Stats{}) || f != (Faults{}) || len(log) != 0 {
		t.Fatalf("after Reset: stats %+v, faults %+v, log %+v", st, f, log)
	}
	checkStatus(t, h.protected(t, Airtel, tok), 200) // tokens survive
	h.token(t, Airtel)
	if st := h.Stats(Airtel); st != (Stats{TokenRequests: 1, TokensIssued: 1, ProtectedOK: 1}) {
		t.Errorf("stats %+v", st)
	}
}

// Expired tokens are dropped as new ones are issued, so that a long run
// does not grow without bound.
func TestExpiredTokensSwept(t *testing.T) {
	h := newHarness(t, Config{OAuth2TTL: time.Second})
	for range 1000 {
		h.token(t, OAuth2)
		h.clock.Advance(time.Second)
	}
	h.mu.Lock()
	n := len(h.kinds[OAuth2].tokens)
	h.mu.Unlock()
	if n > 64 {
		t.Errorf("%d tokens kept, at most one valid", n)
	}
}

func TestParseKind(t *testing.T) {
	for _, k := range Kinds() {
		if got, err := ParseKind(string(k)); got != k || err != nil {
			t.Errorf("ParseKind(%q) = %q, %v", k, got, err)
		}
	}
	if _, err := ParseKind("Daraja"); !errors.Is(err, ErrUnknownKind) {
		t.Errorf("ParseKind(Daraja) error %v", err)
	}
}

// Every listed route is served, with its method.
func TestRoutes(t *testing.T) {
	h := newHarness(t, Config{})
	routes := h.Routes()
	if len(routes) != 18 {
		t.Errorf("%d routes", len(routes))
	}
	for _, r := range routes {
		path := strings.ReplaceAll(strings.ReplaceAll(r.Path, "{kind}", "mpay"), "{id}", "x")
		resp := h.do(t, request{method: r.Method, path: path})
		if resp.status == http.StatusNotFound || resp.status == http.StatusMethodNotAllowed || r.Doc == "" {
			t.Errorf("%s %s: status %d, doc %q", r.Method, path, resp.status, r.Doc)
		}
	}
	checkStatus(t, h.do(t, request{method: "POST", path: "/collection/token/extra"}), 404)
}
