package main

import (
	"bufio"
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
	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenbus/tokenbus/libs/simulator"
	"github.com/tokenbus/tokenbus/libs/tokenclient/natstrace"
	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
)

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// One refresher, observed from outside: a client's trace continues into
// token.get; a refresh is a trace of refresh → attempt → provider HTTP call
// whose log line carries its trace id; /metrics shows every tokenbus metric.
func TestTracesLogsAndMetricsEndToEnd(t *testing.T) {
	spans := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
	prev := otel.GetTracerProvider()
	otel.SetTracerProvider(tp)
	t.Cleanup(func() { otel.SetTracerProvider(prev); _ = tp.Shutdown(context.Background()) })

	sim := simulator.New(simulator.Config{DarajaSecret: consumerSecret})
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	m, logs := runMain(t, fmt.Sprintf("  - {name: daraja-obs, kind: daraja, base_url: %q, consumer_key: sim-consumer-key, consumer_secret: \"${S}\"}\n", srv.URL+"/"),
		map[string]string{"S": consumerSecret})
	nc := testutil.Connect(t, m.ns)

	// The client's trace continues in the refresher.
	client := tp.Tracer("client")
	var clientSpan trace.SpanContext
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		ctx, span := client.Start(context.Background(), "pay", trace.WithSpanKind(trace.SpanKindClient))
		defer span.End()
		clientSpan = span.SpanContext()
		msg := nats.NewMsg(wire.GetSubject("daraja-obs"))
		natstrace.Inject(ctx, msg)
		reply, err := nc.RequestMsg(msg, 2*time.Second)
		if err != nil {
			return err
		}
		if c := reply.Header.Get(wire.HeaderErrorCode); c != "" {
			return fmt.Errorf("token.get: %s", c)
		}
		return nil
	})
	// A token is served as soon as it is published, a moment before the
	// refresh's spans end (and are exported): wait for the whole chain.
	var (
		server, httpSpan     *tracetest.SpanStub
		attempt, refreshSpan tracetest.SpanStub
	)
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		byID := map[trace.SpanID]tracetest.SpanStub{}
		server, httpSpan = nil, nil
		for _, s := range spans.GetSpans() {
			byID[s.SpanContext.SpanID()] = s
			switch {
			case s.Name == "token.get" && s.SpanContext.TraceID() == clientSpan.TraceID():
				server = &s
			case strings.HasPrefix(s.Name, "provider GET"):
				httpSpan = &s
			}
		}
		if server == nil || httpSpan == nil {
			return fmt.Errorf("spans so far: token.get %v, provider HTTP %v", server != nil, httpSpan != nil)
		}
		var ok bool
		if attempt, ok = byID[httpSpan.Parent.SpanID()]; !ok {
			return errors.New("the provider span's parent has not ended yet")
		}
		if refreshSpan, ok = byID[attempt.Parent.SpanID()]; !ok {
			return errors.New("the attempt span's parent has not ended yet")
		}
		return nil
	})
	if server.Parent.SpanID() != clientSpan.SpanID() {
		t.Fatalf("token.get did not continue the client's trace: %+v", server)
	}
	// refresh → attempt → provider HTTP, one trace.
	if attempt.Name != "tokenbus.refresh.attempt" {
		t.Fatalf("provider span's parent: %+v", attempt.Name)
	}
	if refreshSpan.Name != "tokenbus.refresh" || refreshSpan.SpanContext.TraceID() != httpSpan.SpanContext.TraceID() {
		t.Fatalf("attempt span's parent: %+v", refreshSpan.Name)
	}
	if httpSpan.SpanKind != trace.SpanKindClient {
		t.Errorf("provider span kind %v", httpSpan.SpanKind)
	}
	// The refresh's log line leads to its trace.
	var found bool
	sc := bufio.NewScanner(strings.NewReader(logs.String()))
	for sc.Scan() {
		var rec map[string]any
		if json.Unmarshal(sc.Bytes(), &rec) != nil || rec["msg"] != "token refreshed" {
			continue
		}
		found = true
		if rec["trace_id"] != refreshSpan.SpanContext.TraceID().String() || rec["span_id"] == "" || rec["provider"] != "daraja-obs" {
			t.Errorf("token refreshed log: %s", sc.Text())
		}
	}
	if !found {
		t.Fatalf("no refresh logged:\n%s", logs)
	}

	// /metrics shows every tokenbus metric with its labels.
	code, body := httpGet(t, "http://"+m.httpAddr+"/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	for _, want := range []string{
		`tokenbus_refreshes_total{outcome="ok",provider="daraja-obs"} 1`,
		`tokenbus_upstream_duration_seconds_count{provider="daraja-obs"} 1`,
		`tokenbus_token_expires_in_seconds{provider="daraja-obs"} 35`, // 3599 s, minus the test's few seconds
		`tokenbus_requests_total{code="200",endpoint="token.get",provider="daraja-obs"}`,
		`tokenbus_request_duration_seconds_bucket{code="200",endpoint="token.get",provider="daraja-obs",le="0.001"}`,
		"tokenbus_leader 1",
		"tokenbus_lease_renewal_failures_total 0",
		`target_info{service_instance_id="` + m.instance + `",service_name="tokenbus-refresher",service_version="` + Version + `"`,
		"go_goroutines",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", body)
	}
}

// /readyz follows the NATS connection: 503 as soon as the server is gone,
// while /healthz stays 200.
func TestReadyzFollowsNATS(t *testing.T) {
	sim := simulator.New(simulator.Config{DarajaSecret: consumerSecret})
	m, _ := startMain(t, sim, "")
	base := "http://" + m.httpAddr
	if code, body := httpGet(t, base+"/readyz"); code != 200 || body != "ok\n" {
		t.Fatalf("readyz: %d %q", code, body)
	}
	m.ns.Shutdown()
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if code, body := httpGet(t, base+"/readyz"); code != 503 || !strings.Contains(body, "not connected to NATS") {
			return fmt.Errorf("readyz with NATS down: %d %q", code, body)
		}
		return nil
	})
	if code, _ := httpGet(t, base+"/healthz"); code != 200 {
		t.Fatalf("healthz with NATS down: %d", code)
	}
}
