package natsx_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
	"github.com/tokenbus/tokenbus/services/refresher/natsx"
)

// TestWatchFollowsARecreatedBucket: after the bucket is deleted and created
// again, the watch delivers the new bucket's tokens.
func TestWatchFollowsARecreatedBucket(t *testing.T) {
	ns := testutil.RunServer(t)
	nc := testutil.Connect(t, ns)
	ctx, cancel := context.WithCancel(context.Background())
	st, err := natsx.OpenStore(ctx, nc, "tokens", 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 16)
	done := make(chan struct{})
	go func() {
		defer close(done)
		st.Watch(ctx, nc, func(tok wire.Token, _ uint64) { got <- tok.AccessToken }, natsx.WatchHooks{})
	}()
	defer func() { cancel(); <-done }()
	expect := func(want string) {
		t.Helper()
		timeout := time.After(10 * time.Second)
		for {
			select {
			case v := <-got:
				if v == want {
					return
				}
			case <-timeout:
				t.Fatalf("the watch never delivered %s", want)
			}
		}
	}
	put := func(st *natsx.Store, v string) {
		t.Helper()
		if _, err := st.Publish(context.Background(), wire.Token{Provider: "p", AccessToken: v, ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
	}
	put(st, "a")
	expect("a")
	if err := st.JetStream().DeleteKeyValue(context.Background(), "tokens"); err != nil {
		t.Fatal(err)
	}
	st2, err := natsx.OpenStore(context.Background(), nc, "tokens", 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	put(st2, "b")
	expect("b")
}

// TestWatchRecoversFromAStall: a watch whose consumer stops delivering (its
// consumer removed on the server, as a stream leader election can leave it)
// notices within about two checks that the bucket has a revision it never
// delivered, says so (WatchStalled, one Stalled call), recreates itself and
// delivers the token; a stock watcher would stay silent until its missed
// heartbeats are noticed (10 s).
func TestWatchRecoversFromAStall(t *testing.T) {
	ns := testutil.RunServer(t)
	nc := testutil.Connect(t, ns)
	ctx, cancel := context.WithCancel(context.Background())
	st, err := natsx.OpenStore(ctx, nc, "tokens", 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 16)
	var stalls, recoveries atomic.Int64
	reasons := make(chan string, 4)
	done := make(chan struct{})
	go func() {
		defer close(done)
		st.Watch(ctx, nc, func(tok wire.Token, _ uint64) { got <- tok.AccessToken }, natsx.WatchHooks{
			Stalled:   func(r string) { stalls.Add(1); reasons <- r },
			Recovered: func(time.Duration) { recoveries.Add(1) },
		})
	}()
	defer func() { cancel(); <-done }()
	put := func(v string) {
		t.Helper()
		if _, err := st.Publish(context.Background(), wire.Token{Provider: "p", AccessToken: v, ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
	}
	put("a")
	if v := <-got; v != "a" {
		t.Fatalf("got %s", v)
	}
	if err := st.WatchStalled(); err != nil {
		t.Fatalf("a current watch reported stalled: %v", err)
	}

	release := testutil.StallWatches(t, st.JetStream(), "KV_tokens")
	stalledAt := time.Now()
	put("b")
	// Noticed within two checks; reported while a new watch cannot be made.
	testutil.CheckFor(t, 2*time.Second+500*time.Millisecond, 10*time.Millisecond, func() error {
		if st.WatchStalled() == nil {
			return errors.New("the stall was not noticed")
		}
		return nil
	})
	t.Logf("stall noticed %v after it began: %v", time.Since(stalledAt).Round(10*time.Millisecond), st.WatchStalled())
	release()
	select {
	case v := <-got:
		if v != "b" {
			t.Fatalf("got %s", v)
		}
	case <-time.After(2 * time.Second):
		t.Fatalf("the recreated watch did not deliver the new token")
	}
	testutil.CheckFor(t, 2*time.Second, 10*time.Millisecond, func() error {
		if recoveries.Load() != 1 {
			return errors.New("no recovery reported")
		}
		return st.WatchStalled()
	})
	if stalls.Load() != 1 {
		t.Fatalf("%d stalls reported, want 1", stalls.Load())
	}
	if r := <-reasons; !strings.Contains(r, "revision") {
		t.Errorf("stall reason %q", r)
	}
	// Current again: later writes flow, and no further stall is reported.
	put("c")
	if v := <-got; v != "c" {
		t.Fatalf("got %s", v)
	}
	time.Sleep(2500 * time.Millisecond)
	if stalls.Load() != 1 || recoveries.Load() != 1 {
		t.Fatalf("%d stalls, %d recoveries on a current watch", stalls.Load(), recoveries.Load())
	}
}
