package tokenclient

import (
	"fmt"
	"regexp"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
)

// Option configures a Client. Each option checks its input; New returns an
// error wrapping ErrInvalidOption for a bad one.
type Option func(*options) error

type options struct {
	timeout    time.Duration
	bucket     string
	watch      bool
	follow     FollowMode
	providers  []string
	singleUse  map[string]bool
	watchRetry time.Duration
	statusWait time.Duration
	onError    func(error)
	onUpdate   func(Event)
	tp         trace.TracerProvider
	// clock replaces the cache's clocks (tests only; nil: time.Now).
	clock func() (wall time.Time, mono time.Duration)
}

func defaultOptions() options {
	return options{
		timeout:    DefaultTimeout,
		bucket:     wire.DefaultBucket,
		watch:      true,
		singleUse:  map[string]bool{},
		watchRetry: time.Second,
		statusWait: statusWaitDefault,
	}
}

// DefaultTimeout is how long a request to the refresher (Token's fallback,
// Invalidate, Status) may take when its context has no deadline.
const DefaultTimeout = 5 * time.Second

// WithTimeout sets how long a request to the refresher may take when its
// context has no deadline (default DefaultTimeout). d must be positive.
func WithTimeout(d time.Duration) Option {
	return func(o *options) error {
		if d <= 0 {
			return fmt.Errorf("%w: WithTimeout(%v): must be positive", ErrInvalidOption, d)
		}
		o.timeout = d
		return nil
	}
}

var bucketRE = regexp.MustCompile(`^[a-zA-Z0-9_-]+$`)

// WithBucket names the KV bucket the refresher publishes tokens to (default
// "tokens", as the refresher's `bucket` setting). Only FollowKVWatch uses it:
// token.updates subjects do not name the bucket.
func WithBucket(name string) Option {
	return func(o *options) error {
		if !bucketRE.MatchString(name) {
			return fmt.Errorf("%w: WithBucket(%q): not a valid bucket name", ErrInvalidOption, name)
		}
		o.bucket = name
		return nil
	}
}

// WithoutWatch turns following off (in either FollowMode): every Token call
// is then a request-reply to token.get.<provider>. For short-lived programs
// such as a command-line tool.
func WithoutWatch() Option {
	return func(o *options) error {
		o.watch = false
		return nil
	}
}

// WithFollowMode sets how the in-memory copy is kept current: FollowUpdates
// (the default: a subscription to token.updates.<provider> per provider, no
// JetStream consumer) or FollowKVWatch (a watch of the whole bucket: one
// JetStream consumer per Client).
func WithFollowMode(m FollowMode) Option {
	return func(o *options) error {
		if m != FollowUpdates && m != FollowKVWatch {
			return fmt.Errorf("%w: WithFollowMode(%d): unknown mode", ErrInvalidOption, int(m))
		}
		o.follow = m
		return nil
	}
}

// WithProviders names providers to follow from the start (FollowUpdates):
// New subscribes to their updates and reads each current token in the
// background, and WaitReady waits until the refresher has answered for each.
// Without it a provider is followed from the first Token call that names
// it. Do not list single-use providers (a read claims a token): declare them
// WithSingleUse. The KV-watch mode loads every provider and ignores this.
func WithProviders(providers ...string) Option {
	return func(o *options) error {
		for _, p := range providers {
			if !wire.ValidName(p) {
				return fmt.Errorf("%w: WithProviders(%q): not a valid provider name", ErrInvalidOption, p)
			}
		}
		o.providers = append(o.providers, providers...)
		return nil
	}
}

// WithSingleUse declares providers whose tokens are single-use (mPay): Token
// always asks the refresher for a token never handed out before, and
// Transport answers a rejection with a fresh token rather than an
// invalidation. Undeclared single-use providers work too, since the refresher
// publishes no value for them to watch, but declaring them skips the cache.
func WithSingleUse(providers ...string) Option {
	return func(o *options) error {
		for _, p := range providers {
			if !wire.ValidName(p) {
				return fmt.Errorf("%w: WithSingleUse(%q): not a valid provider name", ErrInvalidOption, p)
			}
			o.singleUse[p] = true
		}
		return nil
	}
}

// WithWatchRetry sets how often following is retried while it fails
// (default 1s): in FollowUpdates, a read of a current value that got no
// answer; in FollowKVWatch, a watch that cannot be set up, e.g. because the
// bucket does not exist yet (after a reconnect the watch is rebuilt at once
// and retried faster, from 50ms doubling up to this interval). d must be
// positive.
func WithWatchRetry(d time.Duration) Option {
	return func(o *options) error {
		if d <= 0 {
			return fmt.Errorf("%w: WithWatchRetry(%v): must be positive", ErrInvalidOption, d)
		}
		o.watchRetry = d
		return nil
	}
}

// WithStatusWait sets how long Status gathers replies from refresher
// replicas (default 300ms). d must be positive.
func WithStatusWait(d time.Duration) Option {
	return func(o *options) error {
		if d <= 0 {
			return fmt.Errorf("%w: WithStatusWait(%v): must be positive", ErrInvalidOption, d)
		}
		o.statusWait = d
		return nil
	}
}

// WithErrorHandler sets a function called with every error of following in
// the background (a read no refresher answered, a failed subscription; in
// FollowKVWatch a bucket that does not exist yet, a failed rebuild), once for
// a run of equal errors. Following keeps retrying regardless; the Client
// never logs. fn must not block.
func WithErrorHandler(fn func(error)) Option {
	return func(o *options) error {
		if fn == nil {
			return fmt.Errorf("%w: WithErrorHandler(nil)", ErrInvalidOption)
		}
		o.onError = fn
		return nil
	}
}

// WithOnUpdate sets a function called with every change applied to the
// in-memory copy: a current value read (FollowUpdates) or loaded
// (FollowKVWatch), then each new token as it is published, and deletions,
// one call at a time in the order the changes were applied. An update older
// than the token held is never passed on (a revision lower than the last
// one means the bucket was recreated). fn must not block and must not call
// the Client.
func WithOnUpdate(fn func(Event)) Option {
	return func(o *options) error {
		if fn == nil {
			return fmt.Errorf("%w: WithOnUpdate(nil)", ErrInvalidOption)
		}
		o.onUpdate = fn
		return nil
	}
}

// WithTracerProvider sets the OpenTelemetry tracer provider for the client
// spans of requests to the refresher (default: the global one). Trace
// context travels in the request's NATS headers through the global
// propagator either way.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(o *options) error {
		if tp == nil {
			return fmt.Errorf("%w: WithTracerProvider(nil)", ErrInvalidOption)
		}
		o.tp = tp
		return nil
	}
}
