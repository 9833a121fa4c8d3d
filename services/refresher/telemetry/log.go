package telemetry

import (
	"context"
	"io"
	"log/slog"

	"go.opentelemetry.io/otel/trace"
)

// Log attribute keys added to every record made inside a span.
const (
	// KeyTraceID holds the W3C trace id (32 hex digits).
	KeyTraceID = "trace_id"
	// KeySpanID holds the span id (16 hex digits).
	KeySpanID = "span_id"
)

// NewLogger returns the process logger writing to w: format "json" or
// "text" (anything else), level "debug", "info", "warn" or "error" (info if
// unrecognised). Records logged with a context that carries a span get
// trace_id and span_id, so a log line leads to its trace.
func NewLogger(w io.Writer, level, format string) *slog.Logger {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		lv = slog.LevelInfo
	}
	o := &slog.HandlerOptions{Level: lv}
	var h slog.Handler
	if format == "json" {
		h = slog.NewJSONHandler(w, o)
	} else {
		h = slog.NewTextHandler(w, o)
	}
	return slog.New(TraceHandler{h})
}

// TraceHandler wraps a slog.Handler and adds KeyTraceID and KeySpanID to
// records whose context carries a valid span context. Log with the Context
// variants (InfoContext, …) for it to see the span. Like any attribute added
// to a record, the ids land inside the logger's open group, if it has one:
// the refresher's loggers use none.
type TraceHandler struct {
	slog.Handler
}

// Handle adds the trace attributes, then passes r on.
func (h TraceHandler) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r = r.Clone()
		r.AddAttrs(slog.String(KeyTraceID, sc.TraceID().String()), slog.String(KeySpanID, sc.SpanID().String()))
	}
	return h.Handler.Handle(ctx, r)
}

// WithAttrs returns a TraceHandler around the wrapped handler's WithAttrs.
func (h TraceHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return TraceHandler{h.Handler.WithAttrs(attrs)}
}

// WithGroup returns a TraceHandler around the wrapped handler's WithGroup.
func (h TraceHandler) WithGroup(name string) slog.Handler {
	return TraceHandler{h.Handler.WithGroup(name)}
}
