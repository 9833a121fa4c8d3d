package httpx

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// The provider's client span names the host and path but never the query
// string or a request header, while the request on the wire keeps both.
func TestClientSpanHasNoQueryOrHeaders(t *testing.T) {
	const secret = "Basic c2VjcmV0LWtleTpzZWNyZXQtdmFsdWU="
	var gotQuery, gotAuth string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotQuery, gotAuth = r.URL.RawQuery, r.Header.Get("Authorization")
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{}`))
	}))
	defer srv.Close()

	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	prev := otel.GetTracerProvider()
	otel.SetTracerProvider(tp)
	defer otel.SetTracerProvider(prev)

	c := NewClient(0, nil)
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/oauth/v1/generate?grant_type=client_credentials&key=query-secret", nil)
	req.Header.Set("Authorization", secret)
	resp, err := Do(context.Background(), c, req)
	if err != nil || resp.Status != 200 {
		t.Fatal(resp, err)
	}
	if gotQuery != "grant_type=client_credentials&key=query-secret" || gotAuth != secret {
		t.Fatalf("the wire lost the query or header: %q %q", gotQuery, gotAuth)
	}
	if req.URL.RawQuery == "" {
		t.Fatal("the caller's request was modified")
	}
	spans := exp.GetSpans()
	if len(spans) != 1 {
		t.Fatalf("%d spans", len(spans))
	}
	s := spans[0]
	if s.Name != "provider GET /oauth/v1/generate" {
		t.Errorf("span name %q", s.Name)
	}
	for _, kv := range s.Attributes {
		v := kv.Value.String()
		if strings.Contains(v, "query-secret") || strings.Contains(v, "grant_type") || strings.Contains(v, secret) || strings.Contains(v, "c2VjcmV0") {
			t.Errorf("span attribute %s=%q leaks the query or a header", kv.Key, v)
		}
		if kv.Key == "url.full" && v != srv.URL+"/oauth/v1/generate" {
			t.Errorf("url.full = %q", v)
		}
	}
}

// TestSharedTransportBuildsNoInstruments: clients over a transport that
// Instrument returned use it as it is — one otelhttp wrapper, and one set
// of its metric instruments, for every provider — and each call still
// records its client span.
func TestSharedTransportBuildsNoInstruments(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{}`))
	}))
	defer srv.Close()
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	prev := otel.GetTracerProvider()
	otel.SetTracerProvider(tp)
	defer otel.SetTracerProvider(prev)

	shared := Instrument(NewTransport(4))
	if Instrument(shared) != shared {
		t.Fatal("Instrument wrapped an instrumented transport again")
	}
	first := NewClient(time.Second, shared)
	for i := range 3 {
		c := NewClient(time.Duration(i+1)*time.Second, shared)
		if c.http != first.http || c.http.Transport != shared || c.http.Timeout != 0 {
			t.Fatalf("client %d has an http.Client or transport of its own, or a Timeout", i)
		}
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v2/auth", nil)
		if _, err := Do(context.Background(), c, req); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(exp.GetSpans()); n != 3 {
		t.Fatalf("%d spans for 3 calls", n)
	}
}
