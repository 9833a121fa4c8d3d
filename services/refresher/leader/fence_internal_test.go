package leader

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
	"github.com/tokenbus/tokenbus/services/refresher/natsx"
)

func openTokens(t *testing.T) *natsx.Store {
	t.Helper()
	ns := testutil.RunServer(t)
	nc := testutil.Connect(t, ns)
	st, err := natsx.OpenStore(context.Background(), nc, "tokens", 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestLateBeginOfADeposedHolderDoesNotTakeTheFence (issue 17, fix 9): the
// fence follows the highest term, not the last writer of _term. A deposed
// holder (term 3) whose begin comes after the new holder's (term 5) is
// refused, and the new holder's writes go on. Before the fix the late begin
// took the fence back and fenced the new holder off.
func TestLateBeginOfADeposedHolderDoesNotTakeTheFence(t *testing.T) {
	st := openTokens(t)
	ctx := context.Background()
	newer := &fence{js: st.JetStream(), kv: st.KV(), writer: "b", turn: make(chan struct{}, 1)}
	older := &fence{js: st.JetStream(), kv: st.KV(), writer: "a", turn: make(chan struct{}, 1)}
	if err := newer.begin(ctx, 5, time.Now(), nil); err != nil {
		t.Fatal(err)
	}
	notHeld := func(context.Context) bool { return false }
	if err := older.begin(ctx, 3, time.Now(), notHeld); !errors.Is(err, refresher.ErrNotAllowed) {
		t.Fatalf("late begin of term 3 after term 5: %v, want ErrNotAllowed", err)
	}
	if _, err := newer.write(ctx, "p", []byte(`{}`), false); err != nil {
		t.Fatalf("the newer holder's write after a late begin: %v", err)
	}
	// A holder the lease confirms does write over a higher term (the lease
	// bucket was recreated and terms started again).
	held := func(context.Context) bool { return true }
	if err := older.begin(ctx, 3, time.Now(), held); err != nil {
		t.Fatalf("begin confirmed by the lease: %v", err)
	}
}

// failingUpdates fails Update of TermKey while fail is set.
type failingUpdates struct {
	jetstream.KeyValue
	fail atomic.Bool
}

func (f *failingUpdates) Update(ctx context.Context, key string, value []byte, rev uint64) (uint64, error) {
	if key == TermKey && f.fail.Load() {
		return 0, errors.New("nats: timeout")
	}
	return f.KeyValue.Update(ctx, key, value, rev)
}

// TestFailedTermRewriteDoesNotStopWrites (issue 17, fix 1): a rewrite of
// the term record that fails (after someone else wrote _term) leaves the
// fence armed, so the next write tries again and goes through once the
// rewrite can. Before the fix the failed rewrite zeroed the fence and every
// later write of the term was refused before it reached the server.
func TestFailedTermRewriteDoesNotStopWrites(t *testing.T) {
	st := openTokens(t)
	ctx := context.Background()
	kv := &failingUpdates{KeyValue: st.KV()}
	f := &fence{js: st.JetStream(), kv: kv, writer: "a", turn: make(chan struct{}, 1)}
	held := func(context.Context) bool { return true }
	if err := f.begin(ctx, 7, time.Now(), held); err != nil {
		t.Fatal(err)
	}
	if _, err := st.KV().Put(ctx, TermKey, []byte(`{"holder":"evil"}`)); err != nil {
		t.Fatal(err)
	}
	seq := f.armed()
	if _, err := f.write(ctx, "p", []byte(`{}`), false); !errors.Is(err, errFenceMoved) {
		t.Fatalf("write after a forged term record: %v, want errFenceMoved", err)
	}
	kv.fail.Store(true)
	if err := f.rearm(ctx, seq, 7, time.Now(), held); err == nil {
		t.Fatal("rearm succeeded with failing updates")
	}
	kv.fail.Store(false)
	// The next write reaches the server (fenced off again, not refused
	// locally), and the rewrite then succeeds.
	if _, err := f.write(ctx, "p", []byte(`{}`), false); !errors.Is(err, errFenceMoved) {
		t.Fatalf("write after a failed rewrite: %v, want it to reach the server and find the fence moved", err)
	}
	if err := f.rearm(ctx, seq, 7, time.Now(), held); err != nil {
		t.Fatal(err)
	}
	if _, err := f.write(ctx, "p", []byte(`{}`), false); err != nil {
		t.Fatalf("write after the rewrite: %v", err)
	}
}
