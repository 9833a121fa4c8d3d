// Package telemetry owns the refresher's OpenTelemetry SDK: the tracer
// provider and its exporter, chosen by the standard OTEL_* environment
// variables through the contrib autoexport package; the W3C trace-context
// propagator; the meter provider and its Prometheus exporter; and the slog
// handler that stamps trace and span ids on log records. Libraries use only
// the OTel API; this is the one place the SDK is configured.
package telemetry

import (
	"context"
	"fmt"
	"os"

	"go.opentelemetry.io/contrib/exporters/autoexport"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// Setup installs the global propagator (W3C traceparent and baggage) and, when
// the environment asks for one, a tracer provider exporting spans:
// OTEL_TRACES_EXPORTER=otlp|console|none, or an OTLP endpoint in
// OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT. With none of
// these set nothing is exported. The returned function flushes and stops the
// provider.
func Setup(ctx context.Context, service, version, instance string) (func(context.Context) error, error) {
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	noop := func(context.Context) error { return nil }
	if !configured() {
		return noop, nil
	}
	exp, err := autoexport.NewSpanExporter(ctx)
	if err != nil {
		return nil, fmt.Errorf("telemetry: traces exporter: %w", err)
	}
	if autoexport.IsNoneSpanExporter(exp) {
		return noop, nil
	}
	res, err := newResource(service, version, instance)
	if err != nil {
		return nil, err
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	otel.SetTracerProvider(tp)
	return tp.Shutdown, nil
}

// configured reports whether the environment asks for trace export at all.
func configured() bool {
	for _, k := range []string{"OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"} {
		if os.Getenv(k) != "" {
			return true
		}
	}
	return false
}
