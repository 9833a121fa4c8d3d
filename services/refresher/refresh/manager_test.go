package refresh

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tokenbus/tokenbus/services/refresher"
)

func TestDefaultRefreshBefore(t *testing.T) {
	for life, want := range map[time.Duration]time.Duration{
		3599 * time.Second: 5 * time.Minute,
		180 * time.Second:  36 * time.Second,
		10 * time.Second:   2 * time.Second,
	} {
		if got := DefaultRefreshBefore(life); got != want {
			t.Errorf("DefaultRefreshBefore(%v) = %v, want %v", life, got, want)
		}
	}
}

func TestRefreshAtIsAheadOfExpiryWithBoundedJitter(t *testing.T) {
	now := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	tok := refresher.Token{IssuedAt: now, ExpiresAt: now.Add(time.Hour)}
	for _, tc := range []struct {
		before           time.Duration
		earliest, latest time.Duration // offsets from expiry
	}{
		{0, -5*time.Minute - 75*time.Second, -5 * time.Minute},
		{10 * time.Minute, -12*time.Minute - 30*time.Second, -10 * time.Minute},
		{2 * time.Hour, -45 * time.Minute, -30 * time.Minute}, // margin ≥ lifetime: half the lifetime
	} {
		m := NewManager(Config{Name: "p", RefreshBefore: tc.before})
		seen := map[time.Time]bool{}
		for range 200 {
			at := m.refreshAt(tok)
			off := at.Sub(tok.ExpiresAt)
			if off < tc.earliest || off > tc.latest {
				t.Fatalf("refresh_before %v: refresh at expiry%+v, want within [%v, %v]", tc.before, off, tc.earliest, tc.latest)
			}
			seen[at] = true
		}
		if len(seen) < 2 {
			t.Errorf("refresh_before %v: no jitter", tc.before)
		}
	}
}

func TestRefreshWaitsForRunAndReportsFailure(t *testing.T) {
	fail := &refresher.ProviderError{Kind: refresher.Permanent, StatusCode: 400, Message: "bad credentials"}
	m := NewManager(Config{Name: "p", Provider: refresher.ProviderFunc(func(context.Context) (refresher.Token, error) {
		return refresher.Token{}, fail
	}), Backoff: refresher.Backoff{PermanentInitial: time.Hour, PermanentMax: time.Hour}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = m.Run(ctx) }()
	defer func() { cancel(); <-done }()

	rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer rcancel()
	_, err := m.Refresh(rctx, "whatever")
	var pe *refresher.ProviderError
	if !errors.Is(err, refresher.ErrNoToken) || !errors.As(err, &pe) {
		t.Fatalf("Refresh = %v, want ErrNoToken wrapping the provider error", err)
	}
}

func TestSlotKeepsNewestRevision(t *testing.T) {
	s := newSlot()
	now := time.Now()
	e5, _ := NewEntry(tokenAt("a", now), 5)
	e3, _ := NewEntry(tokenAt("b", now), 3)
	if !s.Store(e5) || s.Store(e3) || s.Load().Token.AccessToken != "a" {
		t.Fatal("an older revision replaced a newer one")
	}
}
