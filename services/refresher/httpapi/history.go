package httpapi

import (
	"sync"
	"time"

	"github.com/tokenbus/tokenbus/services/refresher"
)

// Attempt is one upstream token request, as the status page charts it.
type Attempt struct {
	Provider string    `json:"provider"`
	At       time.Time `json:"at"`
	// Seconds is the upstream request's latency.
	Seconds float64 `json:"seconds"`
	// Outcome is "ok", "transient" or "permanent".
	Outcome string `json:"outcome"`
}

// History keeps the most recent upstream attempts in a ring buffer for the
// status page. It implements refresher.Recorder and is safe for concurrent use.
type History struct {
	mu   sync.Mutex
	buf  []Attempt
	next int
	full bool
	now  func() time.Time
}

// DefaultHistory is the number of attempts a History keeps when NewHistory
// is given no size.
const DefaultHistory = 200

// NewHistory returns a History keeping the last size attempts (DefaultHistory
// if size ≤ 0); now is time.Now if nil.
func NewHistory(size int, now func() time.Time) *History {
	if size <= 0 {
		size = DefaultHistory
	}
	if now == nil {
		now = time.Now
	}
	return &History{buf: make([]Attempt, size), now: now}
}

// RecordAttempt records one attempt of provider that took took and failed
// with err (nil for success). Only the outcome is kept, never the error.
func (h *History) RecordAttempt(provider string, took time.Duration, err error) {
	a := Attempt{Provider: provider, At: h.now().UTC(), Seconds: took.Seconds(), Outcome: "ok"}
	if err != nil {
		a.Outcome = refresher.Classify(err).String()
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.buf[h.next] = a
	h.next = (h.next + 1) % len(h.buf)
	if h.next == 0 {
		h.full = true
	}
}

// Recent returns the kept attempts, oldest first.
func (h *History) Recent() []Attempt {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.full {
		return append([]Attempt(nil), h.buf[:h.next]...)
	}
	out := make([]Attempt, 0, len(h.buf))
	out = append(out, h.buf[h.next:]...)
	return append(out, h.buf[:h.next]...)
}
