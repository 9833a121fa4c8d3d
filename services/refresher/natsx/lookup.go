package natsx

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
)

// Outcomes of a bucket lookup (span attribute tokenbus.lookup.outcome).
const (
	// LookupTaken: a token was found and made the replica's copy valid.
	LookupTaken = "taken"
	// LookupUnusable: a token was found but is not servable (expired, or
	// older than the copy), so the replica still has nothing to serve.
	LookupUnusable = "unusable"
	// LookupMissing: the key does not exist or was deleted.
	LookupMissing = "missing"
	// LookupFailed: the bucket did not answer in time, or with an error.
	LookupFailed = "failed"
	// LookupRecentMiss: a lookup of this key missed less than
	// LookupConfig.Negative ago; the bucket was not asked again.
	LookupRecentMiss = "recent_miss"
	// LookupBusy: LookupConfig.MaxInFlight reads of other keys were in
	// flight; the bucket was not asked.
	LookupBusy = "busy"
)

// ErrLookupMiss is wrapped by every error of Lookup.Find: the bucket holds
// no token this replica can serve now (or did not answer).
var ErrLookupMiss = errors.New("natsx: no servable token in the bucket")

// LookupConfig configures a Lookup.
type LookupConfig struct {
	// Timeout bounds one read of the bucket; 500 ms if zero.
	Timeout time.Duration
	// Negative is how long a miss is remembered: Find answers at once,
	// without asking the bucket, for this long after one; 250 ms if zero.
	Negative time.Duration
	// MaxInFlight bounds the reads in flight across keys (many providers
	// with no token at once, e.g. JetStream down); 64 if zero.
	MaxInFlight int
	// Take is handed the token found (and its revision); it stores it in
	// the replica's copy and reports whether the copy now holds a servable
	// token. Required.
	Take func(tok wire.Token, rev uint64) bool
	// Tracer records a span per Find; the global provider's if nil.
	Tracer trace.Tracer
}

// Lookup reads single keys of the tokens bucket directly, for a replica
// whose in-memory copy has nothing valid to serve (its watch lags: a
// partition, a stream leader election). It is bounded so that a provider
// that truly has no token does not turn every token.get into a JetStream
// request: one read in flight per key, shared by every caller that asks
// meanwhile, a miss remembered for LookupConfig.Negative, and at most
// LookupConfig.MaxInFlight reads in flight in all.
type Lookup struct {
	kv  jetstream.KeyValue
	cfg LookupConfig

	mu       sync.Mutex
	inflight map[string]*lookupCall
	missed   map[string]time.Time
	now      func() time.Time
}

// lookupCall is one read of a key, shared by its waiters.
type lookupCall struct {
	done    chan struct{}
	outcome string
	err     error
}

// NewLookup returns a Lookup on the store's tokens bucket.
func (s *Store) NewLookup(cfg LookupConfig) *Lookup { return NewLookup(s.kv, cfg) }

// NewLookup returns a Lookup reading kv.
func NewLookup(kv jetstream.KeyValue, cfg LookupConfig) *Lookup {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 500 * time.Millisecond
	}
	if cfg.Negative <= 0 {
		cfg.Negative = 250 * time.Millisecond
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 64
	}
	if cfg.Tracer == nil {
		cfg.Tracer = otel.Tracer("github.com/tokenbus/tokenbus/services/refresher/natsx")
	}
	return &Lookup{kv: kv, cfg: cfg, inflight: map[string]*lookupCall{}, missed: map[string]time.Time{}, now: time.Now}
}

// Find reads key from the bucket and hands a token found to
// LookupConfig.Take. It returns nil when the replica's copy now holds a
// servable token, else an error wrapping ErrLookupMiss that says why. A
// caller that arrives while a read of key is in flight waits for that read
// (or its own ctx) instead of starting another.
func (l *Lookup) Find(ctx context.Context, key string) error {
	ctx, span := l.cfg.Tracer.Start(ctx, "tokenbus.kv.lookup", trace.WithAttributes(
		attribute.String("tokenbus.provider", key),
		attribute.String("messaging.system", "nats"),
	))
	defer span.End()
	l.mu.Lock()
	if at, ok := l.missed[key]; ok && l.now().Sub(at) < l.cfg.Negative {
		l.mu.Unlock()
		span.SetAttributes(attribute.String("tokenbus.lookup.outcome", LookupRecentMiss))
		return fmt.Errorf("%w: %s (checked %v ago)", ErrLookupMiss, LookupRecentMiss, l.now().Sub(at).Round(time.Millisecond))
	}
	c, shared := l.inflight[key]
	if !shared && len(l.inflight) >= l.cfg.MaxInFlight {
		l.mu.Unlock()
		span.SetAttributes(attribute.String("tokenbus.lookup.outcome", LookupBusy))
		return fmt.Errorf("%w: %s (%d reads in flight)", ErrLookupMiss, LookupBusy, l.cfg.MaxInFlight)
	}
	if !shared {
		c = &lookupCall{done: make(chan struct{})}
		l.inflight[key] = c
		// The read is not bound to this caller's ctx: others may wait on it.
		go l.read(key, c)
	}
	l.mu.Unlock()
	span.SetAttributes(attribute.Bool("tokenbus.lookup.shared", shared))
	select {
	case <-c.done:
	case <-ctx.Done():
		span.SetStatus(codes.Error, "caller gave up")
		return fmt.Errorf("%w: %w", ErrLookupMiss, ctx.Err())
	}
	span.SetAttributes(attribute.String("tokenbus.lookup.outcome", c.outcome))
	if c.err != nil && c.outcome == LookupFailed {
		span.SetStatus(codes.Error, c.err.Error())
	}
	return c.err
}

// Forget drops a remembered miss of key: a write of key was seen (on its
// republished subject, which reaches a replica even while its watch lags),
// so the next Find reads the bucket again at once.
func (l *Lookup) Forget(key string) {
	l.mu.Lock()
	delete(l.missed, key)
	l.mu.Unlock()
}

// read carries out one lookup of key and records its result in c.
func (l *Lookup) read(key string, c *lookupCall) {
	c.outcome, c.err = l.get(key)
	l.mu.Lock()
	delete(l.inflight, key)
	if c.err != nil {
		l.missed[key] = l.now()
	} else {
		delete(l.missed, key)
	}
	l.mu.Unlock()
	close(c.done)
}

func (l *Lookup) get(key string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), l.cfg.Timeout)
	defer cancel()
	e, err := l.kv.Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound), errors.Is(err, jetstream.ErrKeyDeleted):
		return LookupMissing, fmt.Errorf("%w: %s", ErrLookupMiss, LookupMissing)
	case err != nil:
		return LookupFailed, fmt.Errorf("%w: %s: %w", ErrLookupMiss, LookupFailed, err)
	}
	var tok wire.Token
	if json.Unmarshal(e.Value(), &tok) != nil || tok.Provider != key {
		return LookupUnusable, fmt.Errorf("%w: %s: not a token of %s", ErrLookupMiss, LookupUnusable, key)
	}
	if !l.cfg.Take(tok, e.Revision()) {
		return LookupUnusable, fmt.Errorf("%w: %s: the stored token is not servable", ErrLookupMiss, LookupUnusable)
	}
	return LookupTaken, nil
}
