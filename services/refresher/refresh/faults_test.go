package refresh

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher"
)

// flakyPublisher fails its first n publishes with err.
type flakyPublisher struct {
	mu    sync.Mutex
	n     int
	err   error
	calls int
	got   []wire.Token
}

func (p *flakyPublisher) Publish(_ context.Context, tok wire.Token) (uint64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls++
	if p.calls <= p.n {
		return 0, p.err
	}
	p.got = append(p.got, tok)
	return uint64(p.calls), nil
}

func counting(life time.Duration, calls *atomic.Int64) refresher.Provider {
	return refresher.ProviderFunc(func(context.Context) (refresher.Token, error) {
		n := calls.Add(1)
		now := time.Now()
		return refresher.Token{AccessToken: refresher.Secret(fmt.Sprint("tok-", n)), TokenType: "Bearer", IssuedAt: now, ExpiresAt: now.Add(life)}, nil
	})
}

// TestPublishFailureKeepsTheToken: a token the provider issued is kept and
// served when its publish fails, and only the publish is retried: exactly one
// provider call (a second Daraja call would kill the first token fleet-wide).
// A publish refused as not allowed (a fence moved by a lost renewal reply)
// does not turn into fetches either.
func TestPublishFailureKeepsTheToken(t *testing.T) {
	for _, fail := range []error{errors.New("nats: timeout"), fmt.Errorf("fenced: %w", refresher.ErrNotAllowed)} {
		t.Run(fail.Error(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var calls atomic.Int64
				pub := &flakyPublisher{n: 5, err: fail}
				m := NewManager(Config{Name: "p", Provider: counting(time.Hour, &calls), Publisher: pub,
					Backoff: refresher.Backoff{Initial: 100 * time.Millisecond, Max: time.Second}})
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan struct{})
				go func() { defer close(done); _ = m.Run(ctx) }()
				synctest.Wait()
				// Served while its publish is failing.
				if e, err := m.Current(); err != nil || e.Token.AccessToken != "tok-1" {
					t.Fatalf("during publish failures: %v %v", e, err)
				}
				time.Sleep(time.Minute)
				synctest.Wait()
				cancel()
				<-done
				pub.mu.Lock()
				defer pub.mu.Unlock()
				if n := calls.Load(); n != 1 {
					t.Fatalf("%d provider calls, want 1", n)
				}
				if len(pub.got) != 1 || pub.got[0].AccessToken != "tok-1" || pub.calls != 6 {
					t.Fatalf("published %+v after %d attempts, want tok-1 after 6", pub.got, pub.calls)
				}
			})
		})
	}
}

// TestRefreshNeverAnswersTheRejectedToken: while refreshes fail, a report
// that the current token was rejected gets an error, never that token back.
func TestRefreshNeverAnswersTheRejectedToken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls atomic.Int64
		down := &refresher.ProviderError{Kind: refresher.Transient, StatusCode: 503, Message: "down"}
		prov := refresher.ProviderFunc(func(ctx context.Context) (refresher.Token, error) {
			if calls.Load() >= 1 {
				calls.Add(1)
				return refresher.Token{}, down
			}
			return counting(time.Hour, &calls).Token(ctx)
		})
		m := NewManager(Config{Name: "p", Provider: prov, Backoff: refresher.Backoff{Initial: time.Minute, Max: time.Minute}})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = m.Run(ctx) }()
		defer func() { cancel(); <-done }()
		synctest.Wait()
		for i := range 3 { // the first report triggers the failing refresh; the others find it failing
			rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
			b, err := m.Refresh(rctx, "tok-1")
			rcancel()
			if err == nil || !errors.Is(err, refresher.ErrNoToken) {
				t.Fatalf("report %d: got %s, %v; want an error wrapping ErrNoToken", i, b, err)
			}
		}
		if n := calls.Load(); n != 2 {
			t.Fatalf("%d provider calls, want 2 (the first token, one refresh)", n)
		}
	})
}

func TestSlotNeverServesATokenAboutToExpire(t *testing.T) {
	s := newSlot()
	now := time.Now()
	tok := wire.Token{Provider: "p", AccessToken: "a", IssuedAt: now.Add(-59500 * time.Millisecond), ExpiresAt: now.Add(500 * time.Millisecond)}
	e, _ := NewEntry(tok, 1)
	s.Store(e)
	if got, err := s.Valid(now); err == nil {
		t.Fatalf("served a token 500 ms before its expiry (margin %v): %+v", ExpiryMargin(time.Minute), got.Token)
	}
	if _, err := s.Valid(now.Add(-time.Second)); err != nil {
		t.Fatalf("a token 1.5 s from expiry refused: %v", err)
	}
}

// TestSlotTakesTokensOfARecreatedBucket: after the bucket is deleted and
// created again its revisions start from 1; a token issued later is taken
// although its revision is lower.
func TestSlotTakesTokensOfARecreatedBucket(t *testing.T) {
	s := newSlot()
	now := time.Now()
	old, _ := NewEntry(tokenAt("old", now), 40)
	replay, _ := NewEntry(tokenAt("replay", now.Add(-time.Minute)), 39)
	fresh, _ := NewEntry(tokenAt("fresh", now.Add(time.Minute)), 2)
	if !s.Store(old) || s.Store(replay) {
		t.Fatal("an older token at a lower revision was taken")
	}
	if !s.Store(fresh) || s.Load().Token.AccessToken != "fresh" {
		t.Fatal("a token issued later at a lower revision (recreated bucket) was refused")
	}
}

// encodedPub is a Publisher that takes tokens encoded (as leader.Leader
// does) and records the bytes it was given.
type encodedPub struct {
	mu    sync.Mutex
	bytes [][]byte
}

func (p *encodedPub) Publish(context.Context, wire.Token) (uint64, error) {
	return 0, errors.New("Publish called: the manager should hand over its encoded token")
}

func (p *encodedPub) PublishEncoded(_ context.Context, provider string, b []byte) (uint64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if provider != "p" {
		return 0, fmt.Errorf("provider %q", provider)
	}
	p.bytes = append(p.bytes, b)
	return uint64(len(p.bytes)), nil
}

// TestPublishesTheBytesItServes: a token is encoded once; a Publisher that
// takes it encoded stores exactly the bytes token.get serves, which are the
// token's wire JSON, at the revision the manager then reports.
func TestPublishesTheBytesItServes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls atomic.Int64
		pub := &encodedPub{}
		m := NewManager(Config{Name: "p", Provider: counting(time.Hour, &calls), Publisher: pub})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = m.Run(ctx) }()
		synctest.Wait()
		e, err := m.Current()
		cancel()
		<-done
		if err != nil {
			t.Fatal(err)
		}
		pub.mu.Lock()
		defer pub.mu.Unlock()
		want, _ := json.Marshal(e.Token)
		if len(pub.bytes) != 1 || !bytes.Equal(pub.bytes[0], e.JSON) || !bytes.Equal(e.JSON, want) || e.Revision != 1 {
			t.Fatalf("stored %q, serving %q at revision %d; want the token's JSON %q at 1", pub.bytes, e.JSON, e.Revision, want)
		}
	})
}
