package refresh

import (
	"math/rand/v2"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// jitter is a manager's source of randomness: ProviderConfig.Rand if set (the
// simulation: a seed then fixes every refresh time and backoff), else
// math/rand/v2's global source.
type jitter struct {
	mu sync.Mutex
	r  *rand.Rand
}

// int64N returns a random number in [0, n).
func (m *Manager) int64N(n int64) int64 {
	if m.rnd == nil {
		return rand.Int64N(n)
	}
	m.rnd.mu.Lock()
	defer m.rnd.mu.Unlock()
	return m.rnd.r.Int64N(n)
}

// backOff is an exponential backoff schedule.
type backOff interface {
	NextBackOff() time.Duration
	Reset()
}

// exponential is the package's exponential backoff (factor 2, ± 50 %
// jitter, no end), drawing its jitter from the manager's source.
func (m *Manager) exponential(initial, max time.Duration) backOff {
	if m.rnd == nil {
		return exponential(initial, max)
	}
	return jittered{m: m, b: backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(initial),
		backoff.WithMaxInterval(max),
		backoff.WithMultiplier(2),
		backoff.WithRandomizationFactor(0),
		backoff.WithMaxElapsedTime(0),
	)}
}

// jittered adds exponential's ± 50 % to a backoff without jitter of its own.
type jittered struct {
	m *Manager
	b *backoff.ExponentialBackOff
}

func (j jittered) NextBackOff() time.Duration {
	d := j.b.NextBackOff()
	return d/2 + time.Duration(j.m.int64N(int64(d)+1))
}

func (j jittered) Reset() { j.b.Reset() }
