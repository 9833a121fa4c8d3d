package tokenclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeSource stands in for a Client: one current token, replaced when it is
// reported; or, single-use, a new token on every call.
type fakeSource struct {
	mu          sync.Mutex
	n           int
	current     string
	singleUse   bool
	tokenErr    error
	refreshErr  error
	gets        int
	invalidated []string
}

func (s *fakeSource) next() string {
	s.n++
	s.current = fmt.Sprint("tok-", s.n)
	return s.current
}

func (s *fakeSource) Token(context.Context, string) (Token, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gets++
	if s.tokenErr != nil {
		return Token{}, s.tokenErr
	}
	if s.current == "" || s.singleUse {
		s.next()
	}
	return Token{AccessToken: s.current, ExpiresAt: time.Now().Add(time.Hour)}, nil
}

func (s *fakeSource) Invalidate(_ context.Context, _, token string) (Token, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.invalidated = append(s.invalidated, token)
	if s.refreshErr != nil {
		return Token{}, s.refreshErr
	}
	if token == s.current {
		s.next()
	}
	return Token{AccessToken: s.current, ExpiresAt: time.Now().Add(time.Hour)}, nil
}

// api is a protected endpoint that accepts only the tokens in valid, and
// rejects others the way reject says.
type api struct {
	mu     sync.Mutex
	valid  map[string]bool
	reject func(w http.ResponseWriter)
	seen   []string // "<token> <body>" of every call
}

func (a *api) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	a.mu.Lock()
	a.seen = append(a.seen, tok+" "+string(body))
	ok := a.valid[tok]
	a.mu.Unlock()
	if !ok {
		a.reject(w)
		return
	}
	_, _ = io.WriteString(w, `{"ResponseCode":"0"}`)
}

func (a *api) calls() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.seen...)
}

func darajaReject(status int) func(w http.ResponseWriter) {
	return func(w http.ResponseWriter) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, `{"requestId":"1","errorCode":"404.001.03","errorMessage":"Invalid Access Token"}`)
	}
}

func newAPI(t *testing.T, reject func(http.ResponseWriter), valid ...string) (*api, *httptest.Server) {
	a := &api{valid: map[string]bool{}, reject: reject}
	for _, v := range valid {
		a.valid[v] = true
	}
	srv := httptest.NewServer(a)
	t.Cleanup(srv.Close)
	return a, srv
}

func doPost(t *testing.T, rt http.RoundTripper, url, body string) (*http.Response, string, error) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Keep", "me")
	resp, err := (&http.Client{Transport: rt}).Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if req.Header.Get("Authorization") != "" {
		t.Error("the caller's request was changed")
	}
	return resp, string(b), nil
}

func TestTransportSetsBearer(t *testing.T) {
	src := &fakeSource{}
	a, srv := newAPI(t, darajaReject(401), "tok-1")
	rt := &transport{src: src, provider: "daraja", base: http.DefaultTransport}
	for range 3 {
		resp, _, err := doPost(t, rt, srv.URL, "pay")
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("resp %v, err %v", resp, err)
		}
	}
	if got := a.calls(); len(got) != 3 || got[0] != "tok-1 pay" || len(src.invalidated) != 0 {
		t.Fatalf("calls %q, invalidated %q", got, src.invalidated)
	}
}

// TestTransportRetriesOnce: a rejected token is reported, and the request is
// sent again, body and all, with the fresh token, exactly once.
func TestTransportRetriesOnce(t *testing.T) {
	tests := []struct {
		name   string
		reject func(http.ResponseWriter)
	}{
		{"401", func(w http.ResponseWriter) { w.WriteHeader(http.StatusUnauthorized) }},
		{"daraja 401 404.001.03", darajaReject(http.StatusUnauthorized)},
		{"daraja 404 404.001.03", darajaReject(http.StatusNotFound)},
		{"daraja 400 404.001.03", darajaReject(http.StatusBadRequest)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := &fakeSource{current: "tok-0", n: 0}
			a, srv := newAPI(t, tt.reject, "tok-1") // tok-0 was rotated away
			rt := &transport{src: src, provider: "daraja", base: http.DefaultTransport}
			resp, body, err := doPost(t, rt, srv.URL, `{"Amount":1}`)
			if err != nil || resp.StatusCode != 200 || body != `{"ResponseCode":"0"}` {
				t.Fatalf("resp %v %q, err %v", resp, body, err)
			}
			want := []string{`tok-0 {"Amount":1}`, `tok-1 {"Amount":1}`}
			if got := a.calls(); strings.Join(got, "|") != strings.Join(want, "|") {
				t.Fatalf("calls %q, want %q", got, want)
			}
			if strings.Join(src.invalidated, ",") != "tok-0" {
				t.Fatalf("invalidated %q, want [tok-0]", src.invalidated)
			}
		})
	}
}

func TestTransportGivesUpAfterOneRetry(t *testing.T) {
	src := &fakeSource{}
	a, srv := newAPI(t, darajaReject(401)) // accepts nothing
	rt := &transport{src: src, provider: "daraja", base: http.DefaultTransport}
	resp, body, err := doPost(t, rt, srv.URL, "pay")
	if err != nil || resp.StatusCode != 401 || !strings.Contains(body, "404.001.03") {
		t.Fatalf("resp %v %q, err %v", resp, body, err)
	}
	if n := len(a.calls()); n != 2 {
		t.Fatalf("%d calls, want 2", n)
	}
}

func TestTransportLeavesOtherErrorsAlone(t *testing.T) {
	src := &fakeSource{}
	other := `{"requestId":"1","errorCode":"400.002.02","errorMessage":"Bad Request - Invalid Amount"}` + strings.Repeat(" ", 3*peekLimit)
	a, srv := newAPI(t, func(w http.ResponseWriter) {
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, other)
	})
	rt := &transport{src: src, provider: "daraja", base: http.DefaultTransport}
	resp, body, err := doPost(t, rt, srv.URL, "pay")
	if err != nil || resp.StatusCode != 400 || body != other {
		t.Fatalf("resp %v, body intact %v, err %v", resp, body == other, err)
	}
	if len(a.calls()) != 1 || len(src.invalidated) != 0 {
		t.Fatalf("calls %d, invalidated %q", len(a.calls()), src.invalidated)
	}
}

func TestTransportBodyNotReplayable(t *testing.T) {
	src := &fakeSource{current: "tok-0"}
	a, srv := newAPI(t, darajaReject(401), "tok-1")
	rt := &transport{src: src, provider: "daraja", base: http.DefaultTransport}
	req, _ := http.NewRequest(http.MethodPost, srv.URL, io.NopCloser(strings.NewReader("once")))
	if req.GetBody != nil {
		t.Fatal("expected a request without GetBody")
	}
	resp, err := (&http.Client{Transport: rt}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 || len(a.calls()) != 1 || strings.Join(src.invalidated, ",") != "tok-0" {
		t.Fatalf("status %d, calls %d, invalidated %q", resp.StatusCode, len(a.calls()), src.invalidated)
	}
	// The next request goes out with the fresh token.
	if resp, _, err := doPost(t, rt, srv.URL, "again"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("next request: %v %v", resp, err)
	}
}

func TestTransportSingleUse(t *testing.T) {
	src := &fakeSource{singleUse: true}
	a, srv := newAPI(t, darajaReject(401), "tok-2", "tok-3")
	rt := &transport{src: src, provider: "mpay", base: http.DefaultTransport, singleUse: true}
	resp, _, err := doPost(t, rt, srv.URL, "pay") // tok-1 rejected, tok-2 accepted
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("resp %v, err %v", resp, err)
	}
	resp, _, err = doPost(t, rt, srv.URL, "pay") // a token of its own: tok-3
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("resp %v, err %v", resp, err)
	}
	want := []string{"tok-1 pay", "tok-2 pay", "tok-3 pay"}
	if got := a.calls(); strings.Join(got, "|") != strings.Join(want, "|") || len(src.invalidated) != 0 {
		t.Fatalf("calls %q, invalidated %q", got, src.invalidated)
	}
}

func TestTransportTokenErrors(t *testing.T) {
	_, srv := newAPI(t, darajaReject(401))
	rt := &transport{src: &fakeSource{tokenErr: &Error{Op: "token.get", Provider: "daraja", Code: 503, Message: "no valid token"}},
		provider: "daraja", base: http.DefaultTransport}
	if _, _, err := doPost(t, rt, srv.URL, "pay"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnavailable", err)
	}
	rt = &transport{src: &fakeSource{refreshErr: &Error{Op: "token.refresh", Provider: "daraja", Code: 502, Message: "400.008.01"}},
		provider: "daraja", base: http.DefaultTransport}
	if _, _, err := doPost(t, rt, srv.URL, "pay"); !errors.Is(err, ErrProviderFailed) {
		t.Fatalf("err = %v, want ErrProviderFailed", err)
	}
}

func TestClientTransport(t *testing.T) {
	c := newTestClient(t, nil, WithSingleUse("mpay"))
	if tr := c.Transport("mpay", nil).(*transport); !tr.singleUse || tr.base != http.DefaultTransport || tr.src != c {
		t.Fatalf("transport = %+v", tr)
	}
	if tr := c.Transport("daraja", http.DefaultTransport).(*transport); tr.singleUse {
		t.Fatal("daraja taken for single-use")
	}
}
