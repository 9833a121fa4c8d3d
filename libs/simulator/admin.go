package simulator

import (
	"encoding/json"
	"io"
	"net/http"
)

func (s *Server) registerAdmin() {
	s.route(http.MethodGet, "/_sim/stats", "admin: counters of every kind", s.adminStats)
	s.route(http.MethodGet, "/_sim/log", "admin: every token request, oldest first", s.adminLog)
	s.route(http.MethodGet, "/_sim/faults/{kind}", "admin: a kind's faults", s.adminGetFaults)
	s.route(http.MethodPut, "/_sim/faults/{kind}",
		`admin: set a kind's faults, JSON {"error_rate","latency","outage","malformed"}`, s.adminPutFaults)
	s.route(http.MethodPost, "/_sim/rotate/{kind}", "admin: invalidate a kind's valid tokens", s.adminRotate)
	s.route(http.MethodPost, "/_sim/reset", "admin: clear faults, counters and the log", s.adminReset)
	s.route(http.MethodPut, "/_sim/credentials/{kind}/{id}", `admin: accept credential id with JSON {"secret"}`, s.adminPutCredential)
	s.route(http.MethodGet, "/_sim/credentials/{kind}/{id}", "admin: one credential's counters", s.adminCredentialStats)
	s.route(http.MethodGet, "/_sim/inflight", `admin: token requests in flight now and at most, JSON {"in_flight","peak"}`, s.adminInFlight)
}

// adminError is the admin API's error body.
type adminError struct {
	Error string `json:"error"`
}

func (s *Server) adminStats(w http.ResponseWriter, _ *http.Request) {
	all := make(map[Kind]Stats, len(allKinds))
	for _, k := range allKinds {
		all[k] = s.Stats(k)
	}
	jsonReply(http.StatusOK, all).write(w)
}

func (s *Server) adminLog(w http.ResponseWriter, _ *http.Request) {
	jsonReply(http.StatusOK, s.Log()).write(w)
}

// pathKind returns the {kind} of r's path, or answers 404 and returns false.
func pathKind(w http.ResponseWriter, r *http.Request) (Kind, bool) {
	k, err := ParseKind(r.PathValue("kind"))
	if err != nil {
		jsonReply(http.StatusNotFound, adminError{err.Error()}).write(w)
		return "", false
	}
	return k, true
}

func (s *Server) adminGetFaults(w http.ResponseWriter, r *http.Request) {
	if k, ok := pathKind(w, r); ok {
		jsonReply(http.StatusOK, s.Faults(k)).write(w)
	}
}

func (s *Server) adminPutFaults(w http.ResponseWriter, r *http.Request) {
	k, ok := pathKind(w, r)
	if !ok {
		return
	}
	var f Faults
	err := json.NewDecoder(io.LimitReader(r.Body, maxBody)).Decode(&f)
	if err == nil {
		err = f.Validate()
	}
	if err != nil {
		jsonReply(http.StatusBadRequest, adminError{err.Error()}).write(w)
		return
	}
	s.SetFaults(k, f)
	jsonReply(http.StatusOK, f).write(w)
}

func (s *Server) adminRotate(w http.ResponseWriter, r *http.Request) {
	if k, ok := pathKind(w, r); ok {
		s.Rotate(k)
		w.WriteHeader(http.StatusNoContent)
	}
}

func (s *Server) adminReset(w http.ResponseWriter, _ *http.Request) {
	s.Reset()
	w.WriteHeader(http.StatusNoContent)
}
