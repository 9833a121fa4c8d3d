package tokenclient

import (
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
)

// How the cache retires tokens without reading a clock on the read path.
//
// A read (get) is a map lookup and one atomic load: it serves an entry until
// the entry is retired, and never reads a clock. One goroutine (run) retires
// entries: it wakes when the earliest live entry reaches its retirement, and
// at least every checkEvery while any entry is live, reading both clocks
// once per wake. An entry retires at its expiry less a margin of
// min(maxMargin, a tenth of its life) — the clock-skew margin SPEC §3 allows
// the refresher too — by whichever clock says so first:
//
//   - the monotonic clock, so that a wall clock stepped back does not
//     lengthen a token's life;
//   - the wall clock (expires_at), because the monotonic clock stops while a
//     host is suspended, and its timers with it. Each wake compares how far
//     each clock moved since the last one; when the wall clock moved further
//     by more than jumpTolerance (a resume, or a clock stepped forward), it
//     re-checks every entry against expires_at at once.
//
// So a token is served only while, at the last check (at most checkEvery of
// running time ago, plus scheduling delay), it had more than the margin left
// by both clocks; the margin absorbs a late timer. After a resume, a token
// that expired during the suspend may be served until the first wake, at
// most checkEvery of running time later (TestCacheRetiresOnResume); a
// caller that reads a clock on every call has the same kind of gap between
// its check and its use of the token.
const (
	// checkEvery bounds the time between two clock checks while any entry
	// is live.
	checkEvery = 100 * time.Millisecond
	// maxMargin is the largest margin before expiry at which an entry
	// retires (SPEC §3: min(1 s, a tenth of the token's life)).
	maxMargin = time.Second
	// jumpTolerance is how much further the wall clock may move than the
	// monotonic clock between two wakes before the cache takes it for a
	// resume or a step forward (NTP slewing moves it 0.05 ms per 100 ms).
	jumpTolerance = 20 * time.Millisecond
)

// entry is one provider's token as the watch last saw it.
type entry struct {
	tok wire.Token
	// rev is the KV revision the token was stored at.
	rev uint64
	// retired is set once the token is within its margin of expiry by
	// either clock; a read checks nothing else. It never goes back.
	retired atomic.Bool
	// retireMono is when to retire, on the cache's monotonic clock.
	retireMono time.Duration
	// retireWall is when to retire by the wall clock: expires_at less the
	// margin.
	retireWall time.Time
}

// cache holds the newest token of each provider. Reads take no lock, read
// no clock and allocate nothing: the map is replaced, never changed, and
// published through an atomic pointer. Writers (the watch, the follower,
// Invalidate) and the retiring goroutine take mu.
type cache struct {
	base time.Time // origin of the monotonic clock
	// clock reads the wall and the monotonic clock (since base) at once;
	// tests replace it.
	clock func() (wall time.Time, mono time.Duration)
	m     atomic.Pointer[map[string]*entry]
	// wake tells run that an entry may retire sooner than it planned.
	wake chan struct{}

	mu sync.Mutex
	// due is the earliest retirement of a live entry on the monotonic
	// clock; live counts the entries not retired at the last sweep or put
	// (entries replaced since are counted until the next sweep).
	due  time.Duration
	live int
	// lastWall and lastMono are the clocks at the last check.
	lastWall time.Time
	lastMono time.Duration
}

// never is a monotonic time no entry reaches.
const never = time.Duration(1<<63 - 1)

// newCache returns an empty cache reading clock (nil: time.Now).
func newCache(clock func() (wall time.Time, mono time.Duration)) *cache {
	c := &cache{base: time.Now(), wake: make(chan struct{}, 1), clock: clock, due: never}
	if c.clock == nil {
		c.clock = func() (time.Time, time.Duration) {
			now := time.Now() // one read of both clocks
			return now, now.Sub(c.base)
		}
	}
	m := map[string]*entry{}
	c.m.Store(&m)
	c.lastWall, c.lastMono = c.clock()
	return c
}

// get returns provider's cached token unless it has been retired.
func (c *cache) get(provider string) (*entry, bool) {
	e := (*c.m.Load())[provider]
	if e == nil || e.retired.Load() {
		return nil, false
	}
	return e, true
}

// margin is how long before its expiry a token stops being served:
// min(maxMargin, a tenth of its life), its life counted from issued_at (or
// from wall when it has none).
func margin(tok wire.Token, wall time.Time) time.Duration {
	life := tok.ExpiresAt.Sub(tok.IssuedAt)
	if tok.IssuedAt.IsZero() || life <= 0 {
		life = tok.ExpiresAt.Sub(wall)
	}
	return min(maxMargin, max(life/10, 0))
}

// newEntry computes tok's retirement from its wall-clock expiry, retired at
// once if that has come. A token without an expiry is never served. mu is
// held.
func (c *cache) newEntry(tok wire.Token, rev uint64) *entry {
	e := &entry{tok: tok, rev: rev}
	if tok.ExpiresAt.IsZero() {
		e.retired.Store(true)
		return e
	}
	wall, mono := c.clock()
	e.retireWall = tok.ExpiresAt.Add(-margin(tok, wall))
	e.retireMono = mono + e.retireWall.Sub(wall)
	if e.retireMono <= mono {
		e.retired.Store(true)
		return e
	}
	c.live++
	if e.retireMono < c.due {
		c.due = e.retireMono
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
	return e
}

// update applies fn to a copy of the map and publishes the copy.
func (c *cache) update(fn func(m map[string]*entry)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := maps.Clone(*c.m.Load())
	fn(m)
	c.m.Store(&m)
}

// check reads the clocks and retires what is due: every entry whose
// retirement has come once the earliest has, and every entry past its
// wall-clock retirement when the wall clock jumped ahead of the monotonic
// one. It returns how long run may sleep and whether any entry is live.
func (c *cache) check() (sleep time.Duration, live bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	wall, mono := c.clock()
	jumped := wall.Sub(c.lastWall)-(mono-c.lastMono) > jumpTolerance
	c.lastWall, c.lastMono = wall, mono
	if jumped || mono >= c.due {
		c.sweep(wall, mono)
	}
	if c.live == 0 {
		return 0, false
	}
	return min(c.due-mono, checkEvery), true
}

// sweep retires every entry due by either clock and recomputes due and
// live. mu is held.
func (c *cache) sweep(wall time.Time, mono time.Duration) {
	c.due, c.live = never, 0
	for _, e := range *c.m.Load() {
		if e.retired.Load() {
			continue
		}
		if mono >= e.retireMono || !wall.Before(e.retireWall) {
			e.retired.Store(true)
			continue
		}
		c.live++
		c.due = min(c.due, e.retireMono, mono+e.retireWall.Sub(wall))
	}
}

// run retires entries until done is closed. It sleeps without a timer
// while no entry is live.
func (c *cache) run(done <-chan struct{}) {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		sleep, live := c.check()
		if !live {
			select {
			case <-c.wake:
				continue
			case <-done:
				return
			}
		}
		t.Reset(sleep)
		select {
		case <-t.C:
		case <-c.wake:
		case <-done:
			return
		}
	}
}

// put stores tok under provider unless a newer revision is already there,
// and reports whether it did.
func (c *cache) put(provider string, tok wire.Token, rev uint64) bool {
	stored := false
	c.update(func(m map[string]*entry) {
		if old := m[provider]; old != nil && old.rev >= rev {
			return
		}
		m[provider] = c.newEntry(tok, rev)
		stored = true
	})
	return stored
}

// set stores tok under provider at rev, whatever is there (the follower
// decides the order itself).
func (c *cache) set(provider string, tok wire.Token, rev uint64) {
	c.update(func(m map[string]*entry) { m[provider] = c.newEntry(tok, rev) })
}

// drop removes provider's token, whatever its revision.
func (c *cache) drop(provider string) {
	c.update(func(m map[string]*entry) { delete(m, provider) })
}

// remove drops provider's token unless a newer revision is there.
func (c *cache) remove(provider string, rev uint64) {
	c.update(func(m map[string]*entry) {
		if old := m[provider]; old != nil && old.rev < rev {
			delete(m, provider)
		}
	})
}

// replace puts tok in place of provider's token if that is still invalid,
// keeping its revision, so that the watch's next revision supersedes it.
func (c *cache) replace(provider, invalid string, tok wire.Token) {
	c.update(func(m map[string]*entry) {
		if old := m[provider]; old != nil && old.tok.AccessToken == invalid && tok.AccessToken != invalid {
			m[provider] = c.newEntry(tok, old.rev)
		}
	})
}

// clear drops every token (the bucket was replaced).
func (c *cache) clear() {
	c.update(func(m map[string]*entry) { clear(m) })
}
