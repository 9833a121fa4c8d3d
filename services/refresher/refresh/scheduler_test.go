package refresh

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher"
)

// callLog is a provider shared by many managers that records which one it
// was called for, and when.
type callLog struct {
	latency time.Duration
	life    time.Duration
	mu      sync.Mutex
	calls   []string
	at      map[string]time.Time
	n       atomic.Int64
}

// forName returns the provider of name.
func (c *callLog) forName(name string) refresher.Provider {
	return refresher.ProviderFunc(func(ctx context.Context) (refresher.Token, error) {
		if c.latency > 0 {
			t := time.NewTimer(c.latency)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return refresher.Token{}, ctx.Err()
			}
		}
		now := time.Now()
		c.mu.Lock()
		c.calls = append(c.calls, name)
		if c.at == nil {
			c.at = map[string]time.Time{}
		}
		c.at[name] = now
		c.mu.Unlock()
		n := c.n.Add(1)
		return refresher.Token{AccessToken: refresher.Secret(fmt.Sprintf("%s-%d", name, n)), TokenType: "Bearer", IssuedAt: now, ExpiresAt: now.Add(c.life)}, nil
	})
}

func (c *callLog) order() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.calls...)
}

func (c *callLog) calledAt(name string) (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.at[name]
	return t, ok
}

// holding stores tok, issued at issued and expiring at expires, in m's slot
// (a token inherited from the bucket).
func holding(t *testing.T, m *Manager, issued, expires time.Time) {
	t.Helper()
	e, err := NewEntry(wire.Token{Provider: m.name, AccessToken: "inherited-" + m.name, TokenType: "Bearer", IssuedAt: issued, ExpiresAt: expires}, 1)
	if err != nil {
		t.Fatal(err)
	}
	m.slot.Store(e)
}

// TestSchedulerGoroutines: a thousand managers on one scheduler cost no
// goroutine each: while they wait for their next refresh, one dispatching
// goroutine runs; once all are stopped, none.
func TestSchedulerGoroutines(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		prov := &callLog{life: time.Hour}
		s := NewScheduler(SchedulerConfig{Workers: 8})
		ms := make([]*Manager, 1000)
		ctx := context.Background()
		for i := range ms {
			name := fmt.Sprint("p", i)
			ms[i] = s.NewManager(ProviderConfig{Name: name, Provider: prov.forName(name)})
			ms[i].Start(ctx)
		}
		synctest.Wait()
		for _, m := range ms {
			if _, err := m.Current(); err != nil {
				t.Fatalf("%s: %v", m.name, err)
			}
		}
		if n := refreshGoroutines(); n != 1 {
			t.Fatalf("%d goroutines for 1,000 managers waiting for their refresh, want 1", n)
		}
		for _, m := range ms {
			m.Stop()
		}
		synctest.Wait()
		if n := refreshGoroutines(); n != 0 {
			t.Fatalf("%d goroutines left once every manager stopped", n)
		}
	})
}

// refreshGoroutines counts the goroutines running this package's code.
func refreshGoroutines() int {
	buf := make([]byte, 1<<22)
	n := 0
	for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
		if strings.Contains(g, "services/refresher/refresh.(*") {
			n++
		}
	}
	return n
}

// TestSchedulerNoTokenFirst: of the managers that are due, those with no
// valid token are called before one whose valid token is merely due for its
// refresh, although that one became due first.
func TestSchedulerNoTokenFirst(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		prov := &callLog{life: time.Hour, latency: 20 * time.Millisecond}
		release := make(chan struct{})
		s := NewScheduler(SchedulerConfig{Workers: 1})
		ctx := context.Background()
		// The one worker is busy with this call while the others become due.
		blocker := s.NewManager(ProviderConfig{Name: "blocker", Provider: refresher.ProviderFunc(func(context.Context) (refresher.Token, error) {
			<-release
			now := time.Now()
			return refresher.Token{AccessToken: "b", IssuedAt: now, ExpiresAt: now.Add(time.Hour)}, nil
		})})
		blocker.Start(ctx)
		synctest.Wait()
		now := time.Now()
		due := s.NewManager(ProviderConfig{Name: "due", Provider: prov.forName("due"), RefreshBefore: 20 * time.Minute})
		holding(t, due, now.Add(-50*time.Minute), now.Add(10*time.Minute)) // due for refresh now, in service for 10 min
		due.Start(ctx)
		time.Sleep(time.Second)
		var fresh []*Manager
		for i := range 10 {
			name := fmt.Sprint("new", i)
			m := s.NewManager(ProviderConfig{Name: name, Provider: prov.forName(name)})
			m.Start(ctx)
			fresh = append(fresh, m)
		}
		close(release)
		time.Sleep(time.Second)
		order := prov.order()
		if len(order) != 11 || order[10] != "due" {
			t.Fatalf("call order %v: want the ten providers with no token before the one whose token is merely due", order)
		}
		for _, m := range append(fresh, due, blocker) {
			m.Stop()
		}
	})
}

// TestSchedulerLeavingServiceNotStarved: a fill of 2,000 new providers (40 s
// of calls on one worker) does not starve the refresh of a token in use: it
// is refreshed before it leaves service, while the fill goes on.
func TestSchedulerLeavingServiceNotStarved(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		prov := &callLog{life: time.Hour, latency: 20 * time.Millisecond}
		s := NewScheduler(SchedulerConfig{Workers: 1})
		ctx := context.Background()
		var ms []*Manager
		for i := range 2000 {
			name := fmt.Sprint("new", i)
			m := s.NewManager(ProviderConfig{Name: name, Provider: prov.forName(name)})
			m.Start(ctx)
			ms = append(ms, m)
		}
		time.Sleep(time.Millisecond)
		now := time.Now()
		inUse := s.NewManager(ProviderConfig{Name: "in-use", Provider: prov.forName("in-use"), RefreshBefore: 5 * time.Minute})
		holding(t, inUse, now.Add(-time.Hour+30*time.Second), now.Add(30*time.Second))
		leaves := servingEnd(inUse.slot.Load().Token)
		inUse.Start(ctx)
		ms = append(ms, inUse)
		time.Sleep(time.Until(leaves))
		at, ok := prov.calledAt("in-use")
		if !ok || !at.Before(leaves) {
			t.Fatalf("the token in use was not refreshed before it left service (called %v at %v, leaves at %v)", ok, at, leaves)
		}
		if _, err := inUse.Current(); err != nil {
			t.Fatalf("no token served: %v", err)
		}
		if n := prov.n.Load(); n >= 2001 {
			t.Fatalf("the fill ended first (%d calls): the test shows nothing", n)
		}
		for _, m := range ms {
			m.Stop()
		}
	})
}

// gatedCall is an admitted call of a test gate.
type gatedCall struct {
	done *atomic.Int64
	once sync.Once
}

func (c *gatedCall) Context() context.Context { return context.Background() }
func (c *gatedCall) Called()                  {}
func (c *gatedCall) Done()                    { c.once.Do(func() { c.done.Add(1) }) }
func (c *gatedCall) Held() bool               { return true }

// recordingPublisher stores the tokens published, per provider.
type recordingPublisher struct {
	mu   sync.Mutex
	toks map[string]string
	rev  uint64
}

func (p *recordingPublisher) Publish(_ context.Context, tok wire.Token) (uint64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.toks == nil {
		p.toks = map[string]string{}
	}
	p.rev++
	p.toks[tok.Provider] = tok.AccessToken
	return p.rev, nil
}

func (p *recordingPublisher) get(name string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.toks[name]
}

// TestSchedulerStopOneAmongMany: stopping one manager whose call is in
// flight lets the call finish and publishes its token before Stop returns;
// it waits for no other manager (another's call stays in flight), and the
// others are served meanwhile.
func TestSchedulerStopOneAmongMany(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var admitted, done atomic.Int64
		pub := &recordingPublisher{}
		s := NewScheduler(SchedulerConfig{Workers: 4, Publisher: pub, Gate: func(context.Context, string) (Call, error) {
			admitted.Add(1)
			return &gatedCall{done: &done}, nil
		}})
		ctx := context.Background()
		slow := &callLog{life: time.Hour, latency: 5 * time.Second}
		stuckRelease := make(chan struct{})
		stuck := s.NewManager(ProviderConfig{Name: "stuck", Provider: refresher.ProviderFunc(func(context.Context) (refresher.Token, error) {
			<-stuckRelease
			now := time.Now()
			return refresher.Token{AccessToken: "stuck-1", IssuedAt: now, ExpiresAt: now.Add(time.Hour)}, nil
		})})
		stopped := s.NewManager(ProviderConfig{Name: "stopped", Provider: slow.forName("stopped")})
		others := &callLog{life: time.Hour}
		var ms []*Manager
		for i := range 100 {
			name := fmt.Sprint("p", i)
			m := s.NewManager(ProviderConfig{Name: name, Provider: others.forName(name)})
			ms = append(ms, m)
		}
		stuck.Start(ctx)
		stopped.Start(ctx)
		synctest.Wait() // both calls in flight
		for _, m := range ms {
			m.Start(ctx)
		}
		stopDone := make(chan struct{})
		go func() { defer close(stopDone); stopped.Stop() }()
		time.Sleep(time.Second)
		select {
		case <-stopDone:
			t.Fatal("Stop returned with its call in flight")
		default:
		}
		// The others are served while Stop waits.
		for _, m := range ms {
			if pub.get(m.name) == "" {
				t.Fatalf("%s not served while another manager stops", m.name)
			}
		}
		<-stopDone
		if got := pub.get("stopped"); got != "stopped-1" {
			t.Fatalf("stopped manager's token %q not published by Stop", got)
		}
		if pub.get("stuck") != "" {
			t.Fatal("stuck's call ended")
		}
		// Stopped: no more calls, its admission given back.
		if n := admitted.Load() - done.Load(); n != 1 {
			t.Fatalf("%d admissions not given back, want 1 (stuck's)", n)
		}
		close(stuckRelease)
		synctest.Wait()
		if pub.get("stuck") != "stuck-1" {
			t.Fatal("stuck's token not published")
		}
		stuck.Stop()
		for _, m := range ms {
			m.Stop()
		}
		if n := admitted.Load() - done.Load(); n != 0 {
			t.Fatalf("%d admissions not given back", n)
		}
	})
}

// TestSchedulerKickWhileQueued: Replace of a manager waiting for its
// next turn makes the turn due now; a Refresh from many callers at once
// causes one call, even with other managers due.
func TestSchedulerKickWhileQueued(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		prov := &callLog{life: time.Hour, latency: 10 * time.Millisecond}
		s := NewScheduler(SchedulerConfig{Workers: 2})
		ctx := context.Background()
		var ms []*Manager
		for i := range 50 {
			name := fmt.Sprint("p", i)
			m := s.NewManager(ProviderConfig{Name: name, Provider: prov.forName(name), RefreshCooldown: time.Millisecond})
			m.Start(ctx)
			ms = append(ms, m)
		}
		time.Sleep(time.Second)
		m := ms[7]
		cur, _ := m.Current()
		m.Replace(cur.Token.AccessToken)
		time.Sleep(time.Second)
		if next, _ := m.Current(); next.Token.AccessToken == cur.Token.AccessToken {
			t.Fatal("Replace did not refresh")
		}
		base := prov.n.Load()
		cur, _ = m.Current()
		var wg sync.WaitGroup
		for range 20 {
			wg.Go(func() {
				if _, err := m.Refresh(ctx, cur.Token.AccessToken); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		if n := prov.n.Load() - base; n != 1 {
			t.Fatalf("%d calls for 20 concurrent reports, want 1", n)
		}
		for _, m := range ms {
			m.Stop()
		}
	})
}
