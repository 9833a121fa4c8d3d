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
	srv := jsonServer(t, func(r *http.Request) { gotQuery, gotAuth = r.URL.RawQuery, r.Header.Get("Authorization") })
	exp, tp := recordSpans(t)

	c := NewClient(0, nil)
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/oauth/v1/generate?grant_type=client_credentials&key=query-secret", nil)
	req.Header.Set("Authorization", secret)
	ctx, attempt := tp.Tracer("test").Start(context.Background(), "tokenbus.refresh.attempt")
	defer attempt.End()
	resp, err := Do(ctx, c, req)
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
	if s.Name != "provider GET /oauth/v1/generate" || s.Parent.SpanID() != attempt.SpanContext().SpanID() {
		t.Errorf("span %q, parent %v; want a child of the attempt", s.Name, s.Parent.SpanID())
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
	srv := jsonServer(t, func(*http.Request) {})
	exp, tp := recordSpans(t)

	ctx, attempt := tp.Tracer("test").Start(context.Background(), "tokenbus.refresh.attempt")
	defer attempt.End()
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
		if _, err := Do(ctx, c, req); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(exp.GetSpans()); n != 3 {
		t.Fatalf("%d spans for 3 calls", n)
	}
}

// TestUnrecordedRequestsBypassOtelhttp: a request made outside a recording
// span — tracing off, or its trace sampled out — records no span and goes
// out whole (query, headers, the transport's User-Agent); in a recording
// span the same client records one. Either way the caller's request keeps
// its query.
func TestUnrecordedRequestsBypassOtelhttp(t *testing.T) {
	var gotQuery, gotUA, gotAuth string
	srv := jsonServer(t, func(r *http.Request) {
		gotQuery, gotUA, gotAuth = r.URL.RawQuery, r.Header.Get("User-Agent"), r.Header.Get("Authorization")
	})
	exp, tp := recordSpans(t)
	sampledOut, _ := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.NeverSample())).Tracer("test").Start(context.Background(), "attempt")
	recording, attempt := tp.Tracer("test").Start(context.Background(), "attempt")
	defer attempt.End()

	c := NewClient(time.Second, Instrument(WithUserAgent(NewTransport(2), "tokenbus-refresher/test (r1)")))
	for _, call := range []struct {
		name  string
		ctx   context.Context
		spans int
	}{
		{"no span", context.Background(), 0},
		{"sampled out", sampledOut, 0},
		{"recording", recording, 1},
	} {
		exp.Reset()
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/oauth/v1/generate?grant_type=client_credentials", nil)
		req.Header.Set("Authorization", "Basic x")
		if _, err := Do(call.ctx, c, req); err != nil {
			t.Fatalf("%s: %v", call.name, err)
		}
		if n := len(exp.GetSpans()); n != call.spans {
			t.Errorf("%s: %d client spans, want %d", call.name, n, call.spans)
		}
		if gotQuery != "grant_type=client_credentials" || gotUA != "tokenbus-refresher/test (r1)" || gotAuth != "Basic x" {
			t.Errorf("%s: the wire had query %q, User-Agent %q, Authorization %q", call.name, gotQuery, gotUA, gotAuth)
		}
		if req.URL.RawQuery != "grant_type=client_credentials" {
			t.Errorf("%s: the caller's request lost its query", call.name)
		}
	}
}

// recordSpans makes a tracer provider recording every span in memory the
// global one for the test.
func recordSpans(t *testing.T) (*tracetest.InMemoryExporter, *sdktrace.TracerProvider) {
	t.Helper()
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	prev := otel.GetTracerProvider()
	otel.SetTracerProvider(tp)
	t.Cleanup(func() { otel.SetTracerProvider(prev) })
	return exp, tp
}

// jsonServer answers every request {} as JSON, after seen.
func jsonServer(t *testing.T, seen func(*http.Request)) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen(r)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{}`))
	}))
	t.Cleanup(srv.Close)
	return srv
}
