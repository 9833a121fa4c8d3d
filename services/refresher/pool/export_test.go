package pool

import "time"

// WithAckWait returns cfg with the consumer's AckWait set to d.
func WithAckWait(cfg Config, d time.Duration) Config {
	cfg.ackWait = d
	return cfg
}

// WrapSignals replaces p's signals with wrap(p's signals) (a test making the
// filler's subscription fail).
func WrapSignals(p *Pool, wrap func(Signals) Signals) { p.sig = wrap(p.sig) }

// SetListenRetry sets how long f waits before listening again.
func SetListenRetry(f *Filler, d time.Duration) { f.listenRetry = d }
