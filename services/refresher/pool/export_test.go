package pool

import "time"

// WithAckWait returns cfg with the consumer's AckWait set to d.
func WithAckWait(cfg Config, d time.Duration) Config {
	cfg.ackWait = d
	return cfg
}
