// Package natstrace carries OpenTelemetry trace context (W3C traceparent and
// tracestate) in NATS message headers. nats.Header keys are case-sensitive, so
// the carrier looks a key up as given, then in canonical MIME form, then in
// lower case, then in any casing, and writes it as given (lower case, as W3C spells it).
package natstrace

import (
	"context"
	"net/textproto"
	"strings"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
)

// HeaderCarrier adapts nats.Header to propagation.TextMapCarrier.
type HeaderCarrier nats.Header

var _ propagation.TextMapCarrier = HeaderCarrier(nil)

// Get returns the first value of key, matching it as given, canonicalised,
// lower-cased, or in any other casing.
func (c HeaderCarrier) Get(key string) string {
	for _, k := range [...]string{key, textproto.CanonicalMIMEHeaderKey(key), strings.ToLower(key)} {
		if v := c[k]; len(v) > 0 {
			return v[0]
		}
	}
	for k, v := range c {
		if len(v) > 0 && strings.EqualFold(k, key) {
			return v[0]
		}
	}
	return ""
}

// Set sets key to value, replacing any value under another casing of key.
func (c HeaderCarrier) Set(key, value string) {
	for k := range c {
		if strings.EqualFold(k, key) {
			delete(c, k)
		}
	}
	c[key] = []string{value}
}

// Keys lists the header names.
func (c HeaderCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// Inject writes ctx's trace context into msg's headers using the global
// propagator, creating the headers if needed.
func Inject(ctx context.Context, msg *nats.Msg) {
	if msg.Header == nil {
		msg.Header = nats.Header{}
	}
	otel.GetTextMapPropagator().Inject(ctx, HeaderCarrier(msg.Header))
}

// Extract returns ctx carrying the trace context found in h, if any.
func Extract(ctx context.Context, h nats.Header) context.Context {
	if len(h) == 0 {
		return ctx
	}
	return otel.GetTextMapPropagator().Extract(ctx, HeaderCarrier(h))
}
