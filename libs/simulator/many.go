package simulator

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"time"
)

// DerivedSecret is the secret the ManyPrefix rule accepts for credential id:
// "sim-secret-" + id. Tools and tests that run thousands of credentials use
// it instead of registering each one.
func DerivedSecret(id string) string { return "sim-secret-" + id }

// AddCredential makes kind p accept credential id (a Daraja consumer key, an
// mPay username, an OAuth2 or Airtel client ID) with secret, besides the
// configured one. Each credential has its own counters (CredentialStats) and,
// for Daraja, its own one valid token.
func (s *Server) AddCredential(p Kind, id, secret string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.kinds[p]; st != nil {
		st.creds[id] = secret
	}
}

// CredentialStats returns the token requests made with credential id of
// kind p: TokenRequests and TokensIssued are set.
func (s *Server) CredentialStats(p Kind, id string) Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.kinds[p]; st != nil {
		if cs := st.byCred[id]; cs != nil {
			return Stats{TokenRequests: cs.requests, TokensIssued: cs.issued, TokenErrors: cs.requests - cs.issued}
		}
	}
	return Stats{}
}

// InFlight returns how many token requests are being answered now (injected
// latency included), and the most at once since New or Reset.
func (s *Server) InFlight() (now, peak int64) { return s.inFlight.Load(), s.peak.Load() }

// Answered returns how many token requests have been answered since New,
// and the time they spent being answered in all (injected latency
// included, and whatever the timer and the scheduler add to it): the mean
// is the latency a client's bound should use (tools/cmd/scalebench).
func (s *Server) Answered() (n int64, busy time.Duration) {
	return s.answered.Load(), time.Duration(s.busy.Load())
}

func (s *Server) raisePeak(n int64) {
	for {
		p := s.peak.Load()
		if n <= p || s.peak.CompareAndSwap(p, n) {
			return
		}
	}
}

// accept reports whether id and secret are a credential of kind p: the
// configured one (wantID, wantSecret), a registered one, or one that the
// ManyPrefix rule derives.
func (s *Server) accept(p Kind, id, secret, wantID, wantSecret string) bool {
	if same(id, wantID) && same(secret, wantSecret) {
		return true
	}
	if s.cfg.ManyPrefix != "" && strings.HasPrefix(id, s.cfg.ManyPrefix) && same(secret, DerivedSecret(id)) {
		return true
	}
	s.mu.Lock()
	want, ok := s.kinds[p].creds[id]
	s.mu.Unlock()
	return ok && same(secret, want)
}

// withCred records which credential rep answered.
func withCred(rep reply, id string) reply {
	rep.cred = id
	return rep
}

func (s *Server) adminPutCredential(w http.ResponseWriter, r *http.Request) {
	k, ok := pathKind(w, r)
	if !ok {
		return
	}
	var body struct {
		Secret string `json:"secret"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, maxBody)).Decode(&body); err != nil || body.Secret == "" || r.PathValue("id") == "" {
		jsonReply(http.StatusBadRequest, adminError{`want JSON {"secret":"…"}`}).write(w)
		return
	}
	s.AddCredential(k, r.PathValue("id"), body.Secret)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) adminCredentialStats(w http.ResponseWriter, r *http.Request) {
	if k, ok := pathKind(w, r); ok {
		jsonReply(http.StatusOK, s.CredentialStats(k, r.PathValue("id"))).write(w)
	}
}

func (s *Server) adminInFlight(w http.ResponseWriter, _ *http.Request) {
	now, peak := s.InFlight()
	jsonReply(http.StatusOK, struct {
		InFlight int64 `json:"in_flight"`
		Peak     int64 `json:"peak"`
	}{now, peak}).write(w)
}
