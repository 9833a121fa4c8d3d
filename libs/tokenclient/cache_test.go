package tokenclient

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
)

// fakeClock is a wall and a monotonic clock that tests move by hand, apart
// when they must (a suspend moves only the wall clock).
type fakeClock struct {
	mu   sync.Mutex
	wall time.Time
	mono time.Duration
}

func newFakeClock() *fakeClock {
	return &fakeClock{wall: time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC), mono: time.Hour}
}

func (f *fakeClock) read() (time.Time, time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.wall, f.mono
}

func (f *fakeClock) advance(wall, mono time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.wall, f.mono = f.wall.Add(wall), f.mono+mono
}

// token returns a token issued now (by f's wall clock) for life.
func (f *fakeClock) token(provider, access string, life time.Duration) wire.Token {
	now, _ := f.read()
	return wire.Token{Provider: provider, AccessToken: access, TokenType: "Bearer", IssuedAt: now, ExpiresAt: now.Add(life)}
}

// withClock gives the client's cache the clock read.
func withClock(read func() (time.Time, time.Duration)) Option {
	return func(o *options) error { o.clock = read; return nil }
}

func served(c *cache, provider string) bool {
	_, ok := c.get(provider)
	return ok
}

// TestCacheRetiresWithinMargin: an entry is served until its expiry less
// min(1 s, a tenth of its life), and not from then on; check sleeps no
// longer than checkEvery, and wakes at the retirement when that is sooner.
func TestCacheRetiresWithinMargin(t *testing.T) {
	for _, tc := range []struct {
		life, margin time.Duration
	}{
		{time.Hour, time.Second},
		{3 * time.Minute, time.Second}, // Airtel
		{2 * time.Second, 200 * time.Millisecond},
	} {
		clk := newFakeClock()
		c := newCache(clk.read)
		c.put("p", clk.token("p", "a", tc.life), 1)
		if sleep, live := c.check(); !live || sleep != min(checkEvery, tc.life-tc.margin) {
			t.Fatalf("life %v: check = %v, %v; want %v, true", tc.life, sleep, live, min(checkEvery, tc.life-tc.margin))
		}
		clk.advance(tc.life-tc.margin-time.Millisecond, tc.life-tc.margin-time.Millisecond)
		if c.check(); !served(c, "p") {
			t.Fatalf("life %v: retired %v before the margin", tc.life, time.Millisecond)
		}
		if sleep, _ := c.check(); sleep != time.Millisecond {
			t.Fatalf("life %v: sleep %v, want 1ms (the retirement)", tc.life, sleep)
		}
		clk.advance(time.Millisecond, time.Millisecond)
		if _, live := c.check(); served(c, "p") || live {
			t.Fatalf("life %v: still served (live %v) at its margin before expiry", tc.life, live)
		}
	}
}

// TestCacheRetiresOnResume: a host suspended for longer than a token's life
// resumes with its monotonic clock where it was (its timers too) and its
// wall clock hours ahead. The first check after the resume sees the jump and
// retires the token by its wall-clock expiry; a shorter suspend moves the
// retirement earlier by the time spent suspended.
func TestCacheRetiresOnResume(t *testing.T) {
	clk := newFakeClock()
	c := newCache(clk.read)
	c.put("long", clk.token("long", "a", time.Hour), 1)
	c.put("longer", clk.token("longer", "b", 3*time.Hour), 2)
	clk.advance(2*time.Hour, 0) // suspended for two hours
	c.check()
	if served(c, "long") {
		t.Fatal("served a token that expired while the host was suspended")
	}
	if !served(c, "longer") {
		t.Fatal("retired a token with an hour left")
	}
	// The remaining hour counts from the wall clock now, not from the
	// monotonic deadline set before the suspend.
	clk.advance(time.Hour-time.Second-time.Millisecond, time.Hour-time.Second-time.Millisecond)
	if c.check(); !served(c, "longer") {
		t.Fatal("retired too soon")
	}
	clk.advance(time.Millisecond, time.Millisecond)
	if c.check(); served(c, "longer") {
		t.Fatal("served past its wall-clock retirement after a resume")
	}
}

// TestCacheWallClockSteppedBack: a wall clock stepped back does not lengthen
// a token's life; the monotonic clock retires it.
func TestCacheWallClockSteppedBack(t *testing.T) {
	clk := newFakeClock()
	c := newCache(clk.read)
	c.put("p", clk.token("p", "a", time.Hour), 1)
	clk.advance(-2*time.Hour, time.Hour-time.Second)
	if c.check(); served(c, "p") {
		t.Fatal("served past its monotonic retirement after the wall clock went back")
	}
}

// TestCacheExpiredOnArrival: a token already within its margin (or past its
// expiry, or without one) is never served, with no check in between.
func TestCacheExpiredOnArrival(t *testing.T) {
	clk := newFakeClock()
	c := newCache(clk.read)
	now, _ := clk.read()
	c.put("past", clk.token("past", "a", -time.Second), 1)
	c.put("margin", wire.Token{Provider: "margin", AccessToken: "b", IssuedAt: now.Add(-time.Hour), ExpiresAt: now.Add(time.Second)}, 1)
	c.put("none", wire.Token{Provider: "none", AccessToken: "c"}, 1)
	for _, p := range []string{"past", "margin", "none"} {
		if served(c, p) {
			t.Errorf("%s served", p)
		}
	}
	if _, live := c.check(); live {
		t.Fatal("an entry that was never served counts as live")
	}
}

// TestTokenRetiredOnTheRealClock: with the real clocks and the client's own
// retiring goroutine, Token serves a cached token until shortly before its
// expiry and never after it.
func TestTokenRetiredOnTheRealClock(t *testing.T) {
	c := newTestClient(t, func(_ context.Context, _ *nats.Msg) (*nats.Msg, error) {
		return nil, errors.New("no refresher in this test")
	})
	now := time.Now()
	// Life 10 s, expiring in 1.5 s: retired 1 s before, 0.5 s from now.
	tok := wire.Token{Provider: "p", AccessToken: "a", IssuedAt: now.Add(-8500 * time.Millisecond), ExpiresAt: now.Add(1500 * time.Millisecond)}
	c.cache.put("p", tok, 1)
	sawServed, sawRetired := false, false
	for time.Now().Before(tok.ExpiresAt.Add(200 * time.Millisecond)) {
		got, err := c.Token(context.Background(), "p")
		after := time.Now()
		if err == nil {
			sawServed = true
			if !after.Before(got.ExpiresAt) {
				t.Fatalf("served at %v a token that expired at %v", after, got.ExpiresAt)
			}
			if sawRetired {
				t.Fatal("served again after it was retired")
			}
		} else {
			sawRetired = true
		}
		time.Sleep(time.Millisecond)
	}
	if !sawServed || !sawRetired {
		t.Fatalf("served %v, retired %v; want both", sawServed, sawRetired)
	}
}
