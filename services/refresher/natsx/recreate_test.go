package natsx_test

import (
	"context"
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
		st.Watch(ctx, nc, func(tok wire.Token, _ uint64) { got <- tok.AccessToken })
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
