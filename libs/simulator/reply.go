package simulator

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// maxBody caps the request bodies the simulator reads.
const maxBody = 1 << 20

// reply is an answer not yet written, so that it can be recorded first.
type reply struct {
	status int
	header http.Header
	body   []byte
	token  string        // the token this reply issues, "" if none
	ttl    time.Duration // the issued token's lifetime
	cred   string        // the credential id asked with, "" if none was given
}

func (rep reply) write(w http.ResponseWriter) {
	h := w.Header()
	for k, v := range rep.header {
		h[k] = v
	}
	h.Set("Content-Length", strconv.Itoa(len(rep.body)))
	w.WriteHeader(rep.status)
	w.Write(rep.body) //nolint:errcheck // the client may have gone; nothing to do
}

func newReply(status int, contentType string, body []byte) reply {
	rep := reply{status: status, header: http.Header{}, body: body}
	if contentType != "" {
		rep.header.Set("Content-Type", contentType)
	}
	return rep
}

func jsonReply(status int, v any) reply {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("simulator: marshal %T: %v", v, err)) // only fixed, marshalable types get here
	}
	return newReply(status, "application/json", b)
}

// issue marks rep as issuing token, valid for ttl.
func issue(rep reply, token string, ttl time.Duration) reply {
	rep.token, rep.ttl = token, ttl
	return rep
}

// tokenEndpoint serves kind k's token requests, which must use method: it
// injects k's faults, lets h answer, then records and writes the answer.
func (s *Server) tokenEndpoint(k Kind, method string, h func(*http.Request) reply) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		if n := s.inFlight.Add(1); n > s.peak.Load() {
			s.raisePeak(n)
		}
		defer func() {
			s.inFlight.Add(-1)
			s.answered.Add(1)
			s.busy.Add(int64(time.Since(start)))
		}()
		rep := s.answerToken(k, method, h, r)
		if rep.status == http.StatusOK {
			rep.header.Set("Cache-Control", "no-store")
		}
		s.record(k, r, rep)
		rep.write(w)
	}
}

func (s *Server) answerToken(k Kind, method string, h func(*http.Request) reply, r *http.Request) reply {
	if r.Method != method {
		rep := newReply(http.StatusMethodNotAllowed, "text/plain; charset=utf-8", []byte("Method Not Allowed\n"))
		rep.header.Set("Allow", method)
		return rep
	}
	f := s.Faults(k)
	if f.Latency > 0 && !sleep(r, f.Latency) ||
		f.Outage ||
		f.ErrorRate > 0 && mrand.Float64() < f.ErrorRate {
		return unavailable(k)
	}
	rep := h(r)
	if rep.token != "" && f.Malformed != "" {
		field := "access_token"
		if k == MPay {
			field = "token"
		}
		rep = malformed(f.Malformed, rep, field)
	}
	return rep
}

// sleep waits d, or until r's context ends; it reports whether it waited d.
func sleep(r *http.Request, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.Context().Done():
		return false
	}
}

// route registers h for method and path, and lists it in Routes.
func (s *Server) route(method, path, doc string, h http.HandlerFunc) {
	s.routes = append(s.routes, Route{Method: method, Path: path, Doc: doc})
	s.mux.Handle(method+" "+pattern(path), h)
}

// tokenRoute registers kind k's token endpoint. It matches every method and
// answers 405 to all but method itself, so that such requests are counted.
func (s *Server) tokenRoute(k Kind, method, path, doc string, h func(*http.Request) reply) {
	s.routes = append(s.routes, Route{Method: method, Path: path, Doc: doc})
	s.mux.Handle(pattern(path), s.tokenEndpoint(k, method, h))
}

// pattern returns the ServeMux pattern matching exactly path.
func pattern(path string) string {
	if strings.HasSuffix(path, "/") {
		return path + "{$}"
	}
	return path
}

// bearer returns the token of r's "Authorization: Bearer" header, or "".
func bearer(r *http.Request) string {
	scheme, token, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(token)
}

// same compares a credential in constant time.
func same(got, want string) bool {
	return subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

// decodeJSON decodes r's body, which must be declared application/json, into v.
func decodeJSON(r *http.Request, v any) error {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/json" {
		return fmt.Errorf("simulator: content type %q is not application/json", r.Header.Get("Content-Type"))
	}
	return json.NewDecoder(io.LimitReader(r.Body, maxBody)).Decode(v)
}

// lifetime returns the expires_in that advertises ttl, in whole seconds
// rounded down but at least 1, and the token's lifetime, never shorter.
func lifetime(ttl time.Duration) (expiresIn int64, life time.Duration) {
	expiresIn = max(int64(ttl/time.Second), 1)
	return expiresIn, max(ttl, time.Duration(expiresIn)*time.Second)
}

// newToken returns an opaque random token.
func newToken() string { return rand.Text() }

// newUUID returns a random (version 4) UUID.
func newUUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// requestID returns an identifier shaped like Daraja's requestId.
func requestID() string {
	return fmt.Sprintf("%05d-%07d-1", mrand.IntN(1e5), mrand.IntN(1e7))
}
