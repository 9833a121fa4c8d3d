package rpc_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenbus/tokenbus/libs/tokenclient/natstrace"
	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
	"github.com/tokenbus/tokenbus/services/refresher/metrics"
	"github.com/tokenbus/tokenbus/services/refresher/refresh"
	"github.com/tokenbus/tokenbus/services/refresher/rpc"
)

// observed runs provider "p1" behind the service with an in-memory span
// exporter and a manual metric reader.
type observed struct {
	nc     *nats.Conn
	spans  *tracetest.InMemoryExporter
	tp     *sdktrace.TracerProvider
	reader *sdkmetric.ManualReader
	svc    *rpc.Service
}

func startObserved(t *testing.T) *observed {
	t.Helper()
	otel.SetTextMapPropagator(propagation.TraceContext{})
	o := &observed{spans: tracetest.NewInMemoryExporter(), reader: sdkmetric.NewManualReader()}
	o.tp = sdktrace.NewTracerProvider(sdktrace.WithSyncer(o.spans))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(o.reader))
	met, err := metrics.New(mp, []string{"p1"})
	if err != nil {
		t.Fatal(err)
	}
	ns := testutil.RunServer(t)
	o.nc = testutil.Connect(t, ns)
	clk := newClock()
	mgr := refresh.NewManager(refresh.Config{Name: "p1", Provider: &countingProvider{life: time.Hour, now: clk.now}, Now: clk.now, Tracer: o.tp.Tracer("refresh"), Recorder: met})
	o.svc, err = rpc.Start(o.nc, rpc.Config{Version: "1.2.3", Sources: map[string]rpc.Source{"p1": mgr}, Tracer: o.tp.Tracer("rpc"), Recorder: met,
		Status: func(q wire.StatusRequest) wire.Status { return wire.Status{Instance: "i1"}.Page(q) }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = mgr.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; _ = o.svc.Stop(); _ = met.Close(); _ = mp.Shutdown(context.Background()) })
	waitToken(t, &fixture{nc: o.nc, mgr: mgr})
	return o
}

// A trace started in a client continues in the refresher: the server span of
// token.get and token.refresh has the client's trace id and the client span
// as its parent, whatever the casing of the traceparent header.
func TestTraceContinuesFromClient(t *testing.T) {
	o := startObserved(t)
	client := o.tp.Tracer("client")
	for _, tc := range []struct {
		subject, body, header string
	}{
		{wire.GetSubject("p1"), "", "traceparent"},
		{wire.GetSubject("p1"), "{}", "Traceparent"}, // a carrier that canonicalises keys
		{wire.RefreshSubject("p1"), `{"invalid_token":"tok-0"}`, "traceparent"},
		{wire.GetSubject("nope"), "", "TRACEPARENT"},
	} {
		ctx, span := client.Start(context.Background(), "client "+tc.subject, trace.WithSpanKind(trace.SpanKindClient))
		msg := nats.NewMsg(tc.subject)
		msg.Data = []byte(tc.body)
		natstrace.Inject(ctx, msg)
		if tc.header != "traceparent" {
			msg.Header[tc.header] = msg.Header["traceparent"]
			delete(msg.Header, "traceparent")
		}
		if _, err := o.nc.RequestMsg(msg, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		span.End()
		want := span.SpanContext()
		endpoint := strings.Join(strings.Split(tc.subject, ".")[:2], ".")
		var server tracetest.SpanStub
		testutil.CheckFor(t, 2*time.Second, 5*time.Millisecond, func() error {
			for _, s := range o.spans.GetSpans() {
				if s.Name == endpoint && s.SpanContext.TraceID() == want.TraceID() {
					server = s
					return nil
				}
			}
			return fmt.Errorf("no %s server span in trace %s", endpoint, want.TraceID())
		})
		if server.Parent.SpanID() != want.SpanID() || !server.Parent.IsRemote() {
			t.Errorf("%s (%s): parent %v, want the client span %v", tc.subject, tc.header, server.Parent.SpanID(), want.SpanID())
		}
		if server.SpanKind != trace.SpanKindServer {
			t.Errorf("%s: kind %v", tc.subject, server.SpanKind)
		}
		attrs := attribute.NewSet(server.Attributes...)
		for k, v := range map[attribute.Key]string{
			"messaging.system":               "nats",
			"messaging.operation.type":       "process",
			"messaging.operation.name":       endpoint,
			"messaging.destination.name":     tc.subject,
			"messaging.destination.template": endpoint + ".*",
			"messaging.consumer.group.name":  "tokenbus",
		} {
			if got, _ := attrs.Value(k); got.AsString() != v {
				t.Errorf("%s: %s = %q, want %q", tc.subject, k, got.AsString(), v)
			}
		}
		o.spans.Reset()
	}
}

// Every request is counted by endpoint, provider and wire code; a provider
// that is not configured is labelled _unknown, never by the name asked for.
func TestRequestMetrics(t *testing.T) {
	o := startObserved(t)
	for _, r := range []struct{ subject, body string }{
		{wire.GetSubject("p1"), ""}, {wire.GetSubject("p1"), ""},
		{wire.GetSubject("p1"), "[1]"},
		{wire.GetSubject("made-up-name"), ""},
		{wire.RefreshSubject("p1"), `{"invalid_token":"not-current"}`},
	} {
		if _, err := o.nc.Request(r.subject, []byte(r.body), 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	var rm metricdata.ResourceMetrics
	testutil.CheckFor(t, 2*time.Second, 5*time.Millisecond, func() error {
		if err := o.reader.Collect(context.Background(), &rm); err != nil {
			return err
		}
		got := counts(rm, "tokenbus.requests")
		// waitToken's polling may add 200s for token.get; the rest are exact.
		if got["token.get p1 200"] < 2 || got["token.get p1 400"] != 1 || got["token.get _unknown 404"] != 1 || got["token.refresh p1 200"] != 1 {
			return fmt.Errorf("requests: %v", got)
		}
		for k := range got {
			if strings.Contains(k, "made-up-name") {
				t.Fatalf("an unconfigured provider became a label: %v", got)
			}
		}
		if h := histCount(rm, "tokenbus.request.duration"); h < 5 {
			return fmt.Errorf("request.duration count %d", h)
		}
		if r := counts(rm, "tokenbus.refreshes"); r["p1 ok"] != 1 {
			return fmt.Errorf("refreshes: %v", r)
		}
		return nil
	})
}

// The service answers $SRV.PING, $SRV.INFO and $SRV.STATS, with its version,
// providers and each endpoint's subject in the metadata.
func TestDiscoverablePingInfoStats(t *testing.T) {
	o := startObserved(t)
	ask := func(subject string, v any) {
		t.Helper()
		msg, err := o.nc.Request(subject, nil, 2*time.Second)
		if err != nil {
			t.Fatalf("%s: %v", subject, err)
		}
		if err := json.Unmarshal(msg.Data, v); err != nil {
			t.Fatalf("%s: %v", subject, err)
		}
	}
	var ping micro.Ping
	ask("$SRV.PING.tokenbus", &ping)
	if ping.Name != "tokenbus" || ping.Version != "1.2.3" || ping.ID == "" {
		t.Fatalf("ping: %+v", ping)
	}
	var info micro.Info
	ask("$SRV.INFO.tokenbus", &info)
	if info.Version != "1.2.3" || info.Metadata["version"] != "1.2.3" || info.Metadata["providers"] != "p1" {
		t.Fatalf("info: %+v", info)
	}
	subjects := map[string]string{}
	for _, e := range info.Endpoints {
		subjects[e.Name] = e.Subject
		if e.Metadata["subject"] != e.Subject {
			t.Errorf("endpoint %s: metadata subject %q, subject %q", e.Name, e.Metadata["subject"], e.Subject)
		}
	}
	if subjects["get"] != "token.get.*" || subjects["refresh"] != "token.refresh.*" || subjects["status"] != wire.StatusSubject {
		t.Fatalf("endpoints: %v", subjects)
	}
	// micro counts a request after its handler has replied, so the count
	// may trail the reply the client already has: poll for it.
	testutil.CheckFor(t, 2*time.Second, 5*time.Millisecond, func() error {
		var stats micro.Stats
		ask("$SRV.STATS.tokenbus", &stats)
		i := slices.IndexFunc(stats.Endpoints, func(e *micro.EndpointStats) bool { return e.Name == "get" })
		if stats.Version != "1.2.3" || i < 0 || stats.Endpoints[i].NumRequests < 1 {
			return fmt.Errorf("stats: %+v", stats)
		}
		return nil
	})
}

// counts sums an Int64 counter's points by labelKey.
func counts(rm metricdata.ResourceMetrics, name string) map[string]int64 {
	out := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if s, ok := m.Data.(metricdata.Sum[int64]); ok && m.Name == name {
				for _, dp := range s.DataPoints {
					out[labelKey(dp.Attributes)] += dp.Value
				}
			}
		}
	}
	return out
}

// labelKey joins a point's endpoint, provider, code and outcome labels
// (those it has) with spaces.
func labelKey(s attribute.Set) string {
	var parts []string
	for _, k := range []attribute.Key{metrics.KeyEndpoint, metrics.KeyProvider, metrics.KeyCode, metrics.KeyOutcome} {
		if v, ok := s.Value(k); ok {
			parts = append(parts, v.String())
		}
	}
	return strings.Join(parts, " ")
}

func histCount(rm metricdata.ResourceMetrics, name string) uint64 {
	var n uint64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if h, ok := m.Data.(metricdata.Histogram[float64]); ok && m.Name == name {
				for _, dp := range h.DataPoints {
					n += dp.Count
				}
			}
		}
	}
	return n
}

// A refresh asked for by token.refresh is linked to that request's span, so
// the caller's trace leads to the upstream call it caused.
func TestRefreshLinksToTheReportingRequest(t *testing.T) {
	o := startObserved(t)
	cur, code, msg := request(t, o.nc, wire.GetSubject("p1"), nil)
	if code != 0 {
		t.Fatal(code, msg)
	}
	ctx, span := o.tp.Tracer("client").Start(context.Background(), "pay")
	req := nats.NewMsg(wire.RefreshSubject("p1"))
	req.Data = []byte(fmt.Sprintf(`{"invalid_token":%q}`, cur.AccessToken))
	natstrace.Inject(ctx, req)
	if _, err := o.nc.RequestMsg(req, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	span.End()
	testutil.CheckFor(t, 2*time.Second, 5*time.Millisecond, func() error {
		var server, refresh *tracetest.SpanStub
		for _, s := range o.spans.GetSpans() {
			switch {
			case s.Name == "token.refresh" && s.SpanContext.TraceID() == span.SpanContext().TraceID():
				server = &s
			case s.Name == "tokenbus.refresh" && len(s.Links) == 1:
				refresh = &s
			}
		}
		if server == nil || refresh == nil {
			return fmt.Errorf("spans: token.refresh %v, linked tokenbus.refresh %v", server != nil, refresh != nil)
		}
		if refresh.Links[0].SpanContext.SpanID() != server.SpanContext.SpanID() {
			return fmt.Errorf("refresh links to %v, want the token.refresh span %v", refresh.Links[0].SpanContext.SpanID(), server.SpanContext.SpanID())
		}
		return nil
	})
}
