package refresh

import (
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher"
)

// Entry is a token ready to serve: decoded, and pre-encoded as the exact JSON
// a token.get reply carries, so the request path does no encoding.
type Entry struct {
	Token wire.Token
	JSON  []byte
	// Revision is the KV revision the token was stored at (0 if not stored).
	Revision uint64
}

// NewEntry encodes tok.
func NewEntry(tok wire.Token, revision uint64) (*Entry, error) {
	b, err := json.Marshal(tok)
	if err != nil {
		return nil, fmt.Errorf("refresh: encode token: %w", err)
	}
	return &Entry{Token: tok, JSON: b, Revision: revision}, nil
}

// Slot holds one provider's current token and last failure. Reads are
// lock-free; writers wake everyone waiting on Changed. The zero Slot is
// empty and ready to use; it allocates its wake-up channel only when
// somebody waits.
type Slot struct {
	cur     atomic.Pointer[Entry]
	mu      sync.Mutex
	lastErr error
	errAt   time.Time
	changed chan struct{} // nil while nobody waits
}

func newSlot() *Slot { return &Slot{} }

// Load returns the current entry, or nil.
func (s *Slot) Load() *Entry { return s.cur.Load() }

// ExpiryMargin is how long before its expiry a token of lifetime life stops
// being served: a tenth of the lifetime, at most 1 s. The caller still has to
// use the token, and the provider's clock may run a little ahead of ours
// (docs/leadership.md states the assumption).
func ExpiryMargin(life time.Duration) time.Duration { return min(time.Second, life/10) }

// servable reports whether tok may be handed out at now: not within
// ExpiryMargin of its expiry.
func servable(tok wire.Token, now time.Time) bool {
	return !tok.Expired(now.Add(ExpiryMargin(tok.ExpiresAt.Sub(tok.IssuedAt))))
}

// Valid returns the current entry if it is servable at now (not within
// ExpiryMargin of its expiry). Otherwise it returns ErrNoToken, or the last
// failure wrapped in it, so that the edge can say why.
func (s *Slot) Valid(now time.Time) (*Entry, error) {
	if e := s.cur.Load(); e != nil && servable(e.Token, now) {
		return e, nil
	}
	return nil, s.noToken()
}

func (s *Slot) noToken() error {
	s.mu.Lock()
	err := s.lastErr
	s.mu.Unlock()
	if err == nil {
		return refresher.ErrNoToken
	}
	return fmt.Errorf("%w: %w", refresher.ErrNoToken, err)
}

// Store makes e current, clears the last failure and wakes waiters. It
// reports whether e was taken. An entry at a revision not above the current
// one is refused (a replay), unless its token was issued later or is the
// current token itself: a bucket deleted and created again starts its
// revisions from 1, and the copy's revision must follow it there (a write
// below the old revision is news, Manager.Owns).
func (s *Slot) Store(e *Entry) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if old := s.cur.Load(); old != nil && e.Revision != 0 && old.Revision >= e.Revision &&
		!e.Token.IssuedAt.After(old.Token.IssuedAt) && e.Token.AccessToken != old.Token.AccessToken {
		return false
	}
	s.cur.Store(e)
	s.lastErr = nil
	s.wake()
	return true
}

// revision returns the current entry's revision (0 if none).
func (s *Slot) revision() uint64 {
	if e := s.cur.Load(); e != nil {
		return e.Revision
	}
	return 0
}

// Fail records a failed refresh and wakes waiters.
func (s *Slot) Fail(err error, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastErr, s.errAt = err, at
	s.wake()
}

// LastError returns the last failure since the last success, and when it
// happened.
func (s *Slot) LastError() (time.Time, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.errAt, s.lastErr
}

// Changed returns a channel closed at the next Store or Fail.
func (s *Slot) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.changed == nil {
		s.changed = make(chan struct{})
	}
	return s.changed
}

func (s *Slot) wake() {
	if s.changed != nil {
		close(s.changed)
		s.changed = nil
	}
}
