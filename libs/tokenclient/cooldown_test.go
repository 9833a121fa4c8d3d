package tokenclient

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
)

// TestInvalidateHonoursCooldown: a 429 from token.refresh comes back as an
// *Error matching ErrCooldown with its Retry-After, and the client sends no
// report of that provider until the cooldown is over (a buggy caller's
// retry loop costs the bus nothing); other providers are not held back.
func TestInvalidateHonoursCooldown(t *testing.T) {
	var asked atomic.Int32
	c := newTestClient(t, func(_ context.Context, msg *nats.Msg) (*nats.Msg, error) {
		asked.Add(1)
		if msg.Subject == wire.RefreshSubject("other") {
			return tokenReply(testToken("other", "fresh", time.Hour))(context.Background(), msg)
		}
		h := nats.Header{}
		h.Set(wire.HeaderErrorCode, "429")
		h.Set(wire.HeaderError, "daraja: the token was refreshed on request less than 5s ago (refresh_cooldown); retry in 1 s")
		h.Set(wire.HeaderRetryAfter, "1")
		return &nats.Msg{Header: h, Data: []byte(`{"error":{"code":429,"message":"…"}}`)}, nil
	})
	_, err := c.Invalidate(context.Background(), "daraja", "current")
	var e *Error
	if !errors.Is(err, ErrCooldown) || !errors.As(err, &e) || e.RetryAfter != time.Second || e.Code != 429 {
		t.Fatalf("Invalidate = %v, want ErrCooldown with RetryAfter 1s", err)
	}
	for range 50 {
		if _, err := c.Invalidate(context.Background(), "daraja", "current"); !errors.Is(err, ErrCooldown) || !errors.As(err, &e) || e.RetryAfter <= 0 {
			t.Fatalf("Invalidate within the cooldown = %v", err)
		}
	}
	if n := asked.Load(); n != 1 {
		t.Fatalf("%d reports sent within the cooldown, want 1", n)
	}
	if _, err := c.Invalidate(context.Background(), "other", "x"); err != nil {
		t.Fatalf("another provider was held back: %v", err)
	}
	time.Sleep(1100 * time.Millisecond)
	_, _ = c.Invalidate(context.Background(), "daraja", "current")
	if n := asked.Load(); n != 3 {
		t.Fatalf("%d requests, want a report once the cooldown was over", n)
	}
}
