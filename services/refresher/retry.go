package refresher

import (
	"context"
	"errors"
	"time"
)

// Backoff bounds the retries of a loop that calls a provider (a refresh
// manager, a single-use pool filler). The zero value means the defaults.
type Backoff struct {
	// Initial and Max bound the exponential backoff after transient failures
	// (defaults 500ms and 30s).
	Initial, Max time.Duration
	// PermanentInitial and PermanentMax bound the slow retries after permanent
	// failures such as bad credentials (defaults 30s and 10m).
	PermanentInitial, PermanentMax time.Duration
	// Urgent bounds the wait between retries of transient failures while
	// the provider has no valid token (SPEC §3: default 5s), so that
	// tokens come back within it of the provider's recovery.
	Urgent time.Duration
}

// WithDefaults returns b with its zero durations set to the defaults.
func (b Backoff) WithDefaults() Backoff {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&b.Initial, 500*time.Millisecond)
	def(&b.Max, 30*time.Second)
	def(&b.PermanentInitial, 30*time.Second)
	def(&b.PermanentMax, 10*time.Minute)
	def(&b.Urgent, 5*time.Second)
	return b
}

// Recorder is told the duration and outcome of every upstream token request
// (err nil for success). Implementations must not block.
type Recorder interface {
	RecordAttempt(provider string, took time.Duration, err error)
}

// ErrNotAllowed is returned for a provider call skipped because this replica
// may not call providers now (it does not hold the lease), and wrapped around
// a token write the lease fence rejected.
var ErrNotAllowed = errors.New("refresher: this replica may not call the provider now (not the lease holder)")

// UntilReady calls fn until it succeeds or ctx ends, giving each attempt 5 s
// and waiting 500 ms between attempts, and calls wait (if set) with each
// failure. It is how the adapters create their JetStream streams and buckets
// while JetStream is not yet available (a cluster still electing its meta
// leader, a server starting). It returns the last error when ctx ends.
func UntilReady(ctx context.Context, wait func(error), fn func(context.Context) error) error {
	for {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := fn(actx)
		cancel()
		if err == nil {
			return nil
		}
		if wait != nil {
			wait(err)
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(500 * time.Millisecond):
		}
	}
}
