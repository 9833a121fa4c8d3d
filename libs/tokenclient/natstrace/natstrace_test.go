package natstrace

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

func TestCarrierRoundTripAnyCase(t *testing.T) {
	prop := propagation.TraceContext{}
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled})
	ctx := trace.ContextWithSpanContext(context.Background(), sc)

	h := nats.Header{}
	prop.Inject(ctx, HeaderCarrier(h))
	if got := h["traceparent"]; len(got) != 1 {
		t.Fatalf("traceparent not set as lower case: %v", h)
	}
	for _, key := range []string{"traceparent", "Traceparent", "TRACEPARENT"} {
		h2 := nats.Header{key: h["traceparent"]}
		got := trace.SpanContextFromContext(prop.Extract(context.Background(), HeaderCarrier(h2)))
		if got.TraceID() != tid || got.SpanID() != sid {
			t.Errorf("%s: extracted %v", key, got)
		}
	}
	c := HeaderCarrier(nats.Header{"Traceparent": {"old"}})
	c.Set("traceparent", "new")
	if len(c) != 1 || c.Get("traceparent") != "new" {
		t.Fatalf("Set kept a stale casing: %v", c)
	}
}
