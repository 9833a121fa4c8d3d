package refresh

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenbus/tokenbus/services/refresher"
)

// TestTokenLostWithTheLeaseIsCounted: a loop that ends holding a token the
// provider issued and that was never published reports it once, as lost
// with the lease when MayCall says the lease is gone, as stopped otherwise;
// a loop whose token was published reports nothing.
func TestTokenLostWithTheLeaseIsCounted(t *testing.T) {
	for _, tc := range []struct {
		name       string
		failures   int
		leaseGone  bool
		want, lost int64
	}{
		{"lease lost mid-publish", 1000, true, 1, 1},
		{"stopped mid-publish", 1000, false, 1, 0},
		{"published", 0, true, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var calls, discarded, lost atomic.Int64
				var leading atomic.Bool
				leading.Store(true)
				m := NewManager(Config{Name: "p", Provider: counting(time.Hour, &calls), Publisher: &flakyPublisher{n: tc.failures, err: errors.New("nats: timeout")},
					Backoff: refresher.Backoff{Initial: 100 * time.Millisecond, Max: time.Second}, MayCall: leading.Load,
					OnDiscard: func(l bool) {
						discarded.Add(1)
						if l {
							lost.Add(1)
						}
					}})
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan struct{})
				go func() { defer close(done); _ = m.Run(ctx) }()
				time.Sleep(5 * time.Second)
				synctest.Wait()
				if tc.leaseGone {
					leading.Store(false)
				}
				cancel()
				<-done
				if discarded.Load() != tc.want || lost.Load() != tc.lost || calls.Load() != 1 {
					t.Fatalf("discarded %d (lost with the lease %d) after %d calls, want %d (%d) after 1", discarded.Load(), lost.Load(), calls.Load(), tc.want, tc.lost)
				}
			})
		})
	}
}
