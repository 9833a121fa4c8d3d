package httpapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/httpapi"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func get(t *testing.T, url string) (int, string, http.Header) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

// /readyz is 200 while NATS is connected and the bucket readable, and 503
// with the reason as soon as the server goes away; /healthz stays 200.
func TestHealthAndReadinessAgainstNATS(t *testing.T) {
	ns := testutil.RunServer(t)
	nc, err := nats.Connect(ns.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(10*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	kv, err := js.CreateKeyValue(context.Background(), jetstream.KeyValueConfig{Bucket: "tokens"})
	if err != nil {
		t.Fatal(err)
	}
	ready := httpapi.CheckFunc(func(ctx context.Context) error {
		if !nc.IsConnected() {
			return errors.New("not connected to NATS")
		}
		_, err := kv.Status(ctx)
		return err
	})
	srv := httptest.NewServer(httpapi.New(httpapi.Config{Ready: ready}))
	defer srv.Close()

	if code, body, _ := get(t, srv.URL+"/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("healthz: %d %q", code, body)
	}
	if code, body, _ := get(t, srv.URL+"/readyz"); code != 200 || body != "ok\n" {
		t.Fatalf("readyz: %d %q", code, body)
	}
	ns.Shutdown()
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if code, body, _ := get(t, srv.URL+"/readyz"); code != 503 || !strings.HasPrefix(body, "not ready: ") {
			return fmt.Errorf("readyz with NATS down: %d %q", code, body)
		}
		return nil
	})
	if code, _, _ := get(t, srv.URL+"/healthz"); code != 200 {
		t.Fatalf("healthz with NATS down: %d", code)
	}
	// Without a status source there is no page and no metrics.
	for _, p := range []string{"/", "/status.json", "/metrics"} {
		if code, _, _ := get(t, srv.URL+p); code != 404 {
			t.Errorf("%s without config: %d", p, code)
		}
	}
}

func TestStatusJSONAndPage(t *testing.T) {
	at := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	exp := at.Add(time.Hour)
	hist := httpapi.NewHistory(3, func() time.Time { return at })
	hist.RecordAttempt("a", 10*time.Millisecond, nil)
	hist.RecordAttempt("a", 20*time.Millisecond, &refresher.ProviderError{Kind: refresher.Transient, StatusCode: 503})
	hist.RecordAttempt("b", 30*time.Millisecond, &refresher.ProviderError{Kind: refresher.Permanent, StatusCode: 400, Message: "secret-in-message"})
	hist.RecordAttempt("b", 40*time.Millisecond, nil) // pushes out the first
	srv := httptest.NewServer(httpapi.New(httpapi.Config{
		Ready:   httpapi.CheckFunc(func(context.Context) error { return nil }),
		Metrics: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "tokenbus_leader 1\n") }),
		Status: func(q wire.StatusRequest) wire.Status {
			return wire.Status{Instance: "r1", Version: "v", Leader: true, LeaderInstance: "r1", Providers: []wire.ProviderStatus{{Name: "a", Kind: "daraja", State: wire.StateOK, ExpiresAt: &exp}}}.Page(q)
		},
		History: hist,
		Now:     func() time.Time { return at },
	}))
	defer srv.Close()

	code, body, hdr := get(t, srv.URL+"/status.json")
	if code != 200 || hdr.Get("Content-Type") != "application/json" || hdr.Get("Cache-Control") != "no-store" {
		t.Fatalf("status.json: %d %v", code, hdr)
	}
	var sj httpapi.StatusJSON
	if err := json.Unmarshal([]byte(body), &sj); err != nil {
		t.Fatal(err)
	}
	if !sj.Now.Equal(at) || sj.Status.Instance != "r1" || len(sj.Status.Providers) != 1 || !sj.Status.Providers[0].ExpiresAt.Equal(exp) {
		t.Fatalf("status.json: %s", body)
	}
	var outcomes []string
	for _, a := range sj.History {
		outcomes = append(outcomes, fmt.Sprintf("%s:%s:%.0fms", a.Provider, a.Outcome, a.Seconds*1000))
	}
	if got := strings.Join(outcomes, " "); got != "a:transient:20ms b:permanent:30ms b:ok:40ms" {
		t.Fatalf("history (oldest first, 3 kept): %s", got)
	}
	if strings.Contains(body, "secret-in-message") {
		t.Fatal("history carries error text")
	}
	code, page, hdr := get(t, srv.URL+"/")
	if code != 200 || !strings.HasPrefix(hdr.Get("Content-Type"), "text/html") || !strings.Contains(page, "<title>tokenbus status</title>") {
		t.Fatalf("page: %d %v", code, hdr)
	}
	for _, p := range []string{"/static/status.js", "/static/status.css"} {
		if code, _, _ := get(t, srv.URL+p); code != 200 {
			t.Errorf("%s: %d", p, code)
		}
	}
	if code, body, _ := get(t, srv.URL+"/metrics"); code != 200 || body != "tokenbus_leader 1\n" {
		t.Errorf("metrics: %d %q", code, body)
	}
	if code, _, _ := get(t, srv.URL+"/nope"); code != 404 {
		t.Errorf("/nope: %d", code)
	}
}

func TestHistoryStartsEmpty(t *testing.T) {
	h := httpapi.NewHistory(0, nil)
	if r := h.Recent(); len(r) != 0 {
		t.Fatal(r)
	}
	for range httpapi.DefaultHistory + 5 {
		h.RecordAttempt("a", time.Millisecond, nil)
	}
	if r := h.Recent(); len(r) != httpapi.DefaultHistory {
		t.Fatal(len(r))
	}
}

// status.json summarises every provider and pages, searches and filters
// them, so the page stays fast with thousands.
func TestStatusJSONPagesAndFilters(t *testing.T) {
	var all []wire.ProviderStatus
	for i := range 250 {
		state := wire.StateOK
		if i%50 == 7 {
			state = wire.StateFailing
		}
		all = append(all, wire.ProviderStatus{Name: fmt.Sprintf("m-%04d", i), Kind: "daraja", State: state})
	}
	srv := httptest.NewServer(httpapi.New(httpapi.Config{Ready: httpapi.CheckFunc(func(context.Context) error { return nil }),
		Status: func(q wire.StatusRequest) wire.Status { return wire.Status{Instance: "i", Providers: all}.Page(q) }}))
	defer srv.Close()
	read := func(query string) wire.Status {
		t.Helper()
		_, body, _ := get(t, srv.URL+"/status.json"+query)
		var js httpapi.StatusJSON
		if err := json.Unmarshal([]byte(body), &js); err != nil {
			t.Fatal(err)
		}
		return js.Status
	}
	st := read("")
	if st.Summary.Total != 250 || st.Summary.States["failing"] != 5 || len(st.Providers) != httpapi.DefaultPage || st.Next != "m-0099" {
		t.Fatalf("first page: %+v, %d providers, next %q", st.Summary, len(st.Providers), st.Next)
	}
	if st = read("?after=m-0199"); len(st.Providers) != 50 || st.Next != "" || st.Providers[0].Name != "m-0200" {
		t.Fatalf("last page: %d providers, next %q", len(st.Providers), st.Next)
	}
	if st = read("?state=failing"); len(st.Providers) != 5 || st.Providers[0].Name != "m-0007" {
		t.Fatalf("failing: %+v", st.Providers)
	}
	if st = read("?search=m-012"); len(st.Providers) != 10 {
		t.Fatalf("search: %d", len(st.Providers))
	}
	if st = read("?provider=m-0042"); len(st.Providers) != 1 || st.Summary.Total != 250 {
		t.Fatalf("one provider: %+v", st)
	}
}
