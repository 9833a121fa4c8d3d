package leader_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
)

// TestLoopsChangeWhileLeading: a loop set before leading starts when the
// replica leads; Set replaces a running loop; Remove stops it and deletes its
// token key; the keys of providers with no loop are deleted on taking over.
func TestLoopsChangeWhileLeading(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	stale, _ := jsonToken("gone")
	if _, err := e.st.KV().Put(ctx, "gone", stale); err != nil {
		t.Fatal(err)
	}
	var concurrent atomic.Int64
	var overlap atomic.Bool
	l := newLeader(t, e, "a")
	first := &probe{concurrent: &concurrent, overlap: &overlap}
	l.Set("p", first) // before leading: remembered
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = l.Run(rctx) }()
	defer func() { cancel(); <-done }()
	testutil.CheckFor(t, 3*time.Second, 5*time.Millisecond, func() error {
		if first.runs.Load() != 1 {
			return errors.New("loop not started on leading")
		}
		if _, err := e.st.KV().Get(ctx, "gone"); !errors.Is(err, jetstream.ErrKeyNotFound) {
			return errors.New("the key of a provider with no loop is still there")
		}
		return nil
	})
	var c2 atomic.Int64
	second := &probe{concurrent: &c2, overlap: &overlap}
	l.Set("p", second)
	if concurrent.Load() != 0 {
		t.Fatal("Set returned with the replaced loop still running")
	}
	testutil.CheckFor(t, 2*time.Second, 5*time.Millisecond, func() error {
		if c2.Load() != 1 {
			return errors.New("the new loop is not running")
		}
		return nil
	})
	if _, err := l.Publish(ctx, wire.Token{Provider: "p", AccessToken: "x", ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if err := l.Remove(ctx, "p"); err != nil {
		t.Fatal(err)
	}
	if c2.Load() != 0 {
		t.Fatal("Remove left the loop running")
	}
	if _, err := e.st.KV().Get(ctx, "p"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("Remove left the token key: %v", err)
	}
}
