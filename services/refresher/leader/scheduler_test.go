package leader_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
	"github.com/tokenbus/tokenbus/services/refresher/leader"
	"github.com/tokenbus/tokenbus/services/refresher/refresh"
)

// TestScheduledLoopsReplacedOneAmongMany: 60 refresh managers on one
// scheduler, as cmd/refresher runs them, cost no goroutine each; replacing
// one whose call is in flight (Set) lets that call finish and publishes its
// token, and the successor's call follows, without waiting for another
// provider's call in flight.
func TestScheduledLoopsReplacedOneAmongMany(t *testing.T) {
	e := setup(t)
	l := newLeader(t, e, "a")
	gate := l.Gate()
	s := refresh.NewScheduler(refresh.SchedulerConfig{Publisher: l, Workers: 8,
		Gate: func(ctx context.Context, cred string) (refresh.Call, error) {
			c, err := gate.Enter(ctx, cred)
			if err != nil {
				return nil, err
			}
			return c, nil
		}})
	release := make(chan struct{})
	var stuckCalls atomic.Int64
	stuck := s.NewManager(refresh.ProviderConfig{Name: "stuck", Provider: refresher.ProviderFunc(func(ctx context.Context) (refresher.Token, error) {
		stuckCalls.Add(1)
		select {
		case <-release:
		case <-ctx.Done():
			return refresher.Token{}, ctx.Err()
		}
		now := time.Now()
		return refresher.Token{AccessToken: "stuck-1", TokenType: "Bearer", IssuedAt: now, ExpiresAt: now.Add(time.Hour)}, nil
	})})
	slow := &slowProvider{delay: 400 * time.Millisecond}
	old := s.NewManager(refresh.ProviderConfig{Name: "slow", Provider: slow, Credential: "slow-cred"})
	fast := &slowProvider{delay: time.Millisecond}
	l.Set("stuck", stuck)
	l.Set("slow", old)
	for i := range 58 {
		l.Set(fmt.Sprint("p", i), s.NewManager(refresh.ProviderConfig{Name: fmt.Sprint("p", i), Provider: fast}))
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = l.Run(ctx) }()
	defer func() { cancel(); <-done }()
	defer close(release)
	testutil.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if slow.inFlight.Load() != 1 || stuckCalls.Load() != 1 {
			return errors.New("the slow and stuck calls are not in flight yet")
		}
		for i := range 58 {
			if storedToken(t, e, fmt.Sprint("p", i)) == "" {
				return fmt.Errorf("p%d has no token", i)
			}
		}
		return nil
	})
	if n := refreshGoroutines(); n > 3 {
		t.Fatalf("%d goroutines run refresh code for 60 managers (2 calls in flight), want at most 3", n)
	}
	repl := s.NewManager(refresh.ProviderConfig{Name: "slow", Provider: slow, Credential: "slow-cred", StaleBefore: time.Now().Add(time.Hour)})
	l.Set("slow", repl) // waits for the old call, not for stuck's
	if got := slow.tokens(); len(got) != 1 || slow.cancelled.Load() != 0 {
		t.Fatalf("after Set: issued %v, %d cancelled; want the old call finished", got, slow.cancelled.Load())
	}
	if stuckCalls.Load() != 1 || storedToken(t, e, "stuck") != "" {
		t.Fatal("stuck's call ended")
	}
	testutil.CheckFor(t, 3*time.Second, 10*time.Millisecond, func() error {
		if got := storedToken(t, e, "slow"); got != "tok-2" {
			return fmt.Errorf("stored %q, want the successor's tok-2", got)
		}
		return nil
	})
	if slow.overlap.Load() {
		t.Fatal("two calls for one credential overlapped")
	}
}

// refreshGoroutines counts the goroutines running the refresh package's
// code.
func refreshGoroutines() int {
	buf := make([]byte, 1<<22)
	n := 0
	for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
		if strings.Contains(g, "services/refresher/refresh.") {
			n++
		}
	}
	return n
}

var _ leader.Scheduled = (*refresh.Manager)(nil)
