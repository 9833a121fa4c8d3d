package refresh

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenbus/tokenbus/services/refresher"
)

// TestRefreshCooldown (SPEC §3): reports of the current token cause at most
// one provider call per refresh_cooldown. The first report after a quiet
// period refreshes; concurrent reports of the same token join that one
// refresh; a report of the token it produced, within the cooldown, is
// answered with a CooldownError saying how long to wait; after the cooldown
// a report refreshes again. A flood of reports over 20 s costs one call per
// cooldown.
func TestRefreshCooldown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls atomic.Int64
		m := NewManager(Config{Name: "p", Provider: counting(time.Hour, &calls), RefreshCooldown: 5 * time.Second})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = m.Run(ctx) }()
		defer func() { cancel(); <-done }()
		synctest.Wait()
		first, err := m.Current()
		if err != nil || calls.Load() != 1 {
			t.Fatalf("start: %v, %d calls", err, calls.Load())
		}
		if m.CooldownLeft() != 0 {
			t.Fatal("a cooldown before any forced refresh")
		}

		// Ten concurrent reports of the current token: one call.
		var wg sync.WaitGroup
		for range 10 {
			wg.Go(func() {
				e, err := m.refresh(ctx, first.Token.AccessToken)
				if err != nil || e.Token.AccessToken == first.Token.AccessToken {
					t.Errorf("report of the current token: %v", err)
				}
			})
		}
		wg.Wait()
		if n := calls.Load(); n != 2 {
			t.Fatalf("%d provider calls after ten concurrent reports, want 2", n)
		}
		second, _ := m.Current()

		// The token it produced, reported at once: 429, no call.
		time.Sleep(2 * time.Second)
		_, err = m.refresh(ctx, second.Token.AccessToken)
		var ce *refresher.CooldownError
		if !errors.As(err, &ce) || !errors.Is(err, refresher.ErrCooldown) || ce.RetryAfter != 3*time.Second || calls.Load() != 2 {
			t.Fatalf("report within the cooldown: %v (%d calls), want a CooldownError of 3s", err, calls.Load())
		}
		if refresher.RetryAfterSeconds(ce.RetryAfter) != 3 || m.CooldownLeft() != 3*time.Second {
			t.Fatalf("retry after %v, cooldown left %v", ce.RetryAfter, m.CooldownLeft())
		}
		// The old token, reported late: the current one, no call.
		if e, err := m.refresh(ctx, first.Token.AccessToken); err != nil || e.Token.AccessToken != second.Token.AccessToken {
			t.Fatalf("report of an old token: %v", err)
		}

		// A flood: a report of whatever is current every 100 ms for 20 s
		// costs one call per cooldown (the first at the cooldown's end).
		base := calls.Load()
		start := time.Now()
		for time.Since(start) < 20*time.Second {
			cur, _ := m.Current()
			_, _ = m.refresh(ctx, cur.Token.AccessToken)
			time.Sleep(100 * time.Millisecond)
		}
		if n := calls.Load() - base; n > 4 || n < 3 {
			t.Fatalf("%d provider calls in a 20 s flood with a 5 s cooldown, want 3 or 4", n)
		}
	})
}
