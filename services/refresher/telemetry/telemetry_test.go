package telemetry_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/trace"

	"github.com/tokenbus/tokenbus/services/refresher/telemetry"
)

func spanContext(t *testing.T) (context.Context, trace.SpanContext) {
	t.Helper()
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled})
	return trace.ContextWithSpanContext(context.Background(), sc), sc
}

func TestLogsCarryTraceIDsInsideSpans(t *testing.T) {
	var buf bytes.Buffer
	log := telemetry.NewLogger(&buf, "info", "json").With(slog.String("provider", "p1"))
	ctx, sc := spanContext(t)
	log.InfoContext(ctx, "inside")
	log.Info("outside")
	log.DebugContext(ctx, "filtered")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("want 2 lines at info, got:\n%s", buf.String())
	}
	var in, out map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &in); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(lines[1]), &out); err != nil {
		t.Fatal(err)
	}
	if in[telemetry.KeyTraceID] != sc.TraceID().String() || in[telemetry.KeySpanID] != sc.SpanID().String() || in["provider"] != "p1" {
		t.Errorf("inside a span: %s", lines[0])
	}
	if _, ok := out[telemetry.KeyTraceID]; ok {
		t.Errorf("outside a span: %s", lines[1])
	}
}

func TestLoggerFormatAndLevel(t *testing.T) {
	var buf bytes.Buffer
	ctx, _ := spanContext(t)
	telemetry.NewLogger(&buf, "debug", "text").DebugContext(ctx, "hello", slog.Int("n", 1))
	if s := buf.String(); !strings.Contains(s, "level=DEBUG msg=hello n=1 trace_id=4bf92f3577b34da6a3ce929d0e0e4736 span_id=00f067aa0ba902b7") {
		t.Errorf("text: %q", s)
	}
	buf.Reset()
	telemetry.NewLogger(&buf, "warn", "json").Info("quiet")
	telemetry.NewLogger(&buf, "nonsense", "json").Debug("quiet too")
	if buf.Len() != 0 {
		t.Errorf("level not applied: %q", buf.String())
	}
}

func TestPrometheusInstancesAreIndependent(t *testing.T) {
	for _, inst := range []string{"a", "b"} {
		p, err := telemetry.NewPrometheus("svc", "1.0", inst)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := p.MeterProvider().Meter("test").Int64Counter("tokenbus.things")
		c.Add(context.Background(), 2)
		rec := httptest.NewRecorder()
		p.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		body, _ := io.ReadAll(rec.Body)
		for _, want := range []string{"tokenbus_things_total 2", `service_instance_id="` + inst + `"`, "go_goroutines", "process_"} {
			if !strings.Contains(string(body), want) {
				t.Errorf("%s: /metrics lacks %q", inst, want)
			}
		}
		if strings.Contains(string(body), "otel_scope_name") {
			t.Errorf("scope labels on every metric")
		}
		if err := p.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}

func TestSetupWithoutEnvironmentExportsNothing(t *testing.T) {
	for _, k := range []string{"OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"} {
		t.Setenv(k, "")
	}
	stop, err := telemetry.Setup(context.Background(), "svc", "1.0", "i")
	if err != nil {
		t.Fatal(err)
	}
	if err := stop(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestSetupConsoleExporter(t *testing.T) {
	t.Setenv("OTEL_TRACES_EXPORTER", "console")
	stop, err := telemetry.Setup(context.Background(), "svc", "1.0", "i")
	if err != nil {
		t.Fatal(err)
	}
	if err := stop(context.Background()); err != nil {
		t.Fatal(err)
	}
}
