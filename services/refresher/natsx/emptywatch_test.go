package natsx

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// emptyWatcher ends its initial values at once, having delivered none: what
// a watch made on a stream just restored into a fresh cluster did.
type emptyWatcher struct{ ch chan jetstream.KeyValueEntry }

func (w emptyWatcher) Updates() <-chan jetstream.KeyValueEntry { return w.ch }
func (w emptyWatcher) Stop() error                             { return nil }

// TestEmptyWatchOfAFullBucketIsNoCopy: a watcher that ends its initial
// values without delivering any of a non-empty bucket's is a stall — drain
// returns its reason and never reports the copy current (the leader would
// start on an empty copy and replace every token) — while the same watcher
// of an empty bucket is current.
func TestEmptyWatchOfAFullBucketIsNoCopy(t *testing.T) {
	st, err := OpenStore(context.Background(), embedded(t), "tokens", 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, msgs := range []uint64{3, 0} {
		w := emptyWatcher{ch: make(chan jetstream.KeyValueEntry, 1)}
		w.ch <- nil
		current := false
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan string, 1)
		go func() {
			done <- st.drain(ctx, w, nil, time.Time{}, msgs, nil, WatchHooks{Current: func() { current = true; cancel() }})
		}()
		select {
		case reason := <-done:
			if msgs > 0 && (current || !strings.Contains(reason, "delivered none of the bucket's 3 values")) {
				t.Fatalf("an empty watch of %d values: current %v, stall %q", msgs, current, reason)
			}
			if msgs == 0 && !current {
				t.Fatalf("an empty watch of an empty bucket: not current (%q)", reason)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%d values: drain did not return", msgs)
		}
		cancel()
	}
}
