package tokenclient

import (
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
)

// entry is one provider's token as the watch last saw it.
type entry struct {
	tok wire.Token
	// rev is the KV revision the token was stored at.
	rev uint64
	// deadline is when the token expires, on the cache's monotonic clock, so
	// a wall clock stepped back after the token arrived does not lengthen
	// how long it is served. get checks the wall-clock expires_at too: the
	// monotonic clock stops while a host is suspended, the wall clock does
	// not. A token is served only while both say it is valid.
	deadline time.Duration
}

// cache holds the newest token of each provider. Reads take no lock and
// allocate nothing: the map is replaced, never changed, and published through
// an atomic pointer. Writers (the watch, Invalidate) take mu.
type cache struct {
	base time.Time // origin of the monotonic clock
	m    atomic.Pointer[map[string]*entry]
	mu   sync.Mutex
}

func newCache() *cache {
	c := &cache{base: time.Now()}
	m := map[string]*entry{}
	c.m.Store(&m)
	return c
}

// now reads the cache's monotonic clock.
func (c *cache) now() time.Duration { return time.Since(c.base) }

// get returns provider's cached token if it has not expired by either clock.
func (c *cache) get(provider string) (*entry, bool) {
	e := (*c.m.Load())[provider]
	if e == nil {
		return nil, false
	}
	now := time.Now() // one read: the monotonic and the wall clock
	if now.Sub(c.base) >= e.deadline || !now.Before(e.tok.ExpiresAt) {
		return nil, false
	}
	return e, true
}

// newEntry computes tok's deadline from its wall-clock expiry. A token
// without an expiry is never served.
func (c *cache) newEntry(tok wire.Token, rev uint64) *entry {
	e := &entry{tok: tok, rev: rev, deadline: -1 << 62}
	if !tok.ExpiresAt.IsZero() {
		e.deadline = c.now() + time.Until(tok.ExpiresAt)
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
