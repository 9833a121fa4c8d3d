package leader

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"

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

// countingBatches is AtomicBatches that records the size of every batch.
type countingBatches struct {
	BatchPublisher
	mu    sync.Mutex
	sizes []int
}

func (c *countingBatches) PublishBatch(ctx context.Context, msgs []*nats.Msg) (uint64, error) {
	c.mu.Lock()
	c.sizes = append(c.sizes, len(msgs))
	c.mu.Unlock()
	return c.BatchPublisher.PublishBatch(ctx, msgs)
}

func (c *countingBatches) batches() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.sizes)
}

// batchingFence is a fence of writer "a" on st's tokens bucket that batches
// (counted), armed for term 3.
func batchingFence(t *testing.T, st *natsx.Store) (*fence, *countingBatches) {
	t.Helper()
	cb := &countingBatches{BatchPublisher: AtomicBatches(st.JetStream())}
	f := &fence{js: st.JetStream(), kv: st.KV(), writer: "a", batches: cb, turn: make(chan struct{}, 1)}
	if err := f.begin(context.Background(), 3, time.Now(), nil); err != nil {
		t.Fatal(err)
	}
	return f, cb
}

// queued starts n writes to keys p0..p<n-1> while the test holds f's turn,
// waits until all are queued, and returns their outcomes once the turn is
// released by release.
func queued(t *testing.T, f *fence, ctxs []context.Context) (release func() ([]uint64, []error)) {
	t.Helper()
	if err := f.lock(context.Background()); err != nil {
		t.Fatal(err)
	}
	n := len(ctxs)
	revs, errs := make([]uint64, n), make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			revs[i], errs[i] = f.write(ctxs[i], fmt.Sprint("p", i), []byte(fmt.Sprintf(`{"n":%d}`, i)), false)
		})
	}
	testutil.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		f.qmu.Lock()
		defer f.qmu.Unlock()
		if len(f.queue) != n {
			return fmt.Errorf("%d of %d writes queued", len(f.queue), n)
		}
		return nil
	})
	return func() ([]uint64, []error) {
		f.unlock()
		wg.Wait()
		return revs, errs
	}
}

func background(n int) []context.Context {
	ctxs := make([]context.Context, n)
	for i := range ctxs {
		ctxs[i] = context.Background()
	}
	return ctxs
}

// TestFenceCommitsQueuedWritesTogether: the writes that queue while the
// turn is held are committed as one atomic batch, each settled with its own
// revision (consecutive, in queue order) and stored under its own key with
// the term's headers; without Batches each is committed on its own.
func TestFenceCommitsQueuedWritesTogether(t *testing.T) {
	st := openTokens(t)
	ctx := context.Background()
	if !natsx.AllowAtomic(ctx, st.JetStream(), "KV_tokens") {
		t.Fatal("the tokens bucket takes no atomic batches")
	}
	f, cb := batchingFence(t, st)
	str, err := st.JetStream().Stream(ctx, "KV_tokens")
	if err != nil {
		t.Fatal(err)
	}
	const n = 12
	revs, errs := queued(t, f, background(n))()
	if got := cb.batches(); !slices.Equal(got, []int{n}) {
		t.Fatalf("batches %v, want one of %d", got, n)
	}
	// Queue order is the goroutines' arrival order: the revisions are a
	// permutation of n consecutive ones, each that of its own key.
	sorted := slices.Sorted(slices.Values(revs))
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("write %d: %v", i, errs[i])
		}
		if i > 0 && sorted[i] != sorted[i-1]+1 {
			t.Fatalf("revisions %v are not consecutive", sorted)
		}
		e, err := st.KV().Get(ctx, fmt.Sprint("p", i))
		if err != nil {
			t.Fatal(err)
		}
		if e.Revision() != revs[i] || string(e.Value()) != fmt.Sprintf(`{"n":%d}`, i) {
			t.Fatalf("p%d: stored %s at %d, write settled at %d", i, e.Value(), e.Revision(), revs[i])
		}
		msg, err := str.GetMsg(ctx, revs[i])
		if err != nil {
			t.Fatal(err)
		}
		if msg.Header.Get("Nats-Batch-Id") == "" || msg.Header.Get(HeaderTerm) != "3" || msg.Header.Get(HeaderWriter) != "a" {
			t.Fatalf("p%d headers %v: want a batch id, term 3, writer a", i, msg.Header)
		}
	}

	// Without Batches: one commit each.
	single := &fence{js: st.JetStream(), kv: st.KV(), writer: "a", turn: make(chan struct{}, 1)}
	single.term, single.seq = f.term, f.seq
	_, errs = queued(t, single, background(4))()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("write %d without batches: %v", i, err)
		}
	}
}

// TestFenceBatchFencedOffAsAWhole: a batch written after someone else moved
// the term record is refused whole — every write in it answers
// errFenceMoved and none is stored.
func TestFenceBatchFencedOffAsAWhole(t *testing.T) {
	st := openTokens(t)
	ctx := context.Background()
	f, cb := batchingFence(t, st)
	if _, err := st.KV().Put(ctx, TermKey, []byte(`{"holder":"b","term":4}`)); err != nil {
		t.Fatal(err)
	}
	_, errs := queued(t, f, background(5))()
	for i, err := range errs {
		if !errors.Is(err, errFenceMoved) {
			t.Fatalf("write %d after the term moved: %v, want errFenceMoved", i, err)
		}
		if _, err := st.KV().Get(ctx, fmt.Sprint("p", i)); !errors.Is(err, jetstream.ErrKeyNotFound) {
			t.Fatalf("p%d stored by a fenced-off batch (%v)", i, err)
		}
	}
	if got := cb.batches(); !slices.Equal(got, []int{5}) {
		t.Fatalf("batches %v, want one of 5", got)
	}
}

// TestFenceWritesOneByOneWhenBatchesAreRefused: a bucket whose stream takes
// no atomic batches (allow_atomic turned off, as an older replica's open
// does) refuses the batch; its writes are then committed one by one and
// succeed, and batches are not tried again for noBatchFor.
func TestFenceWritesOneByOneWhenBatchesAreRefused(t *testing.T) {
	st := openTokens(t)
	ctx := context.Background()
	str, err := st.JetStream().Stream(ctx, "KV_tokens")
	if err != nil {
		t.Fatal(err)
	}
	cfg := str.CachedInfo().Config
	cfg.AllowAtomicPublish = false
	if _, err := st.JetStream().UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	f, cb := batchingFence(t, st)
	var logs testutil.LogBuffer
	f.log = slog.New(slog.NewTextHandler(&logs, nil))
	revs, errs := queued(t, f, background(4))()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		e, err := st.KV().Get(ctx, fmt.Sprint("p", i))
		if err != nil || e.Revision() != revs[i] {
			t.Fatalf("p%d: %v at %d, settled at %d", i, err, e.Revision(), revs[i])
		}
	}
	_, errs = queued(t, f, background(4))()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("second round, write %d: %v", i, err)
		}
	}
	if got := cb.batches(); !slices.Equal(got, []int{4}) {
		t.Fatalf("batches tried %v, want the first only", got)
	}
	// The operator is told, once.
	if n := strings.Count(logs.String(), "did not take token writes as an atomic batch"); n != 1 {
		t.Fatalf("%d warnings about the refused batch, want 1:\n%s", n, logs.String())
	}
}

// TestFenceQueueLongerThanABatch: more writes queued than one batch takes
// are all committed, in batches of at most maxBatch, and a writer that gives
// up while queued is withdrawn (not written) without failing the others.
func TestFenceQueueLongerThanABatch(t *testing.T) {
	st := openTokens(t)
	ctx := context.Background()
	f, cb := batchingFence(t, st)
	n := maxBatch + 10
	ctxs := background(n)
	gone, cancel := context.WithCancel(ctx)
	ctxs[n-1] = gone
	release := queued(t, f, ctxs)
	cancel()
	testutil.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		f.qmu.Lock()
		defer f.qmu.Unlock()
		if len(f.queue) != n-1 {
			return fmt.Errorf("%d queued, want the cancelled write withdrawn", len(f.queue))
		}
		return nil
	})
	_, errs := release()
	for i, err := range errs[:n-1] {
		if err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	if !errors.Is(errs[n-1], context.Canceled) {
		t.Fatalf("the cancelled write: %v", errs[n-1])
	}
	if _, err := st.KV().Get(ctx, fmt.Sprint("p", n-1)); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("the withdrawn write was stored (%v)", err)
	}
	if got := cb.batches(); !slices.Equal(got, []int{maxBatch, 9}) {
		t.Fatalf("batches %v, want %d then 9", got, maxBatch)
	}
}

// unbatched answers every batch as a server that knows no batches does:
// with an acknowledgement that is no batch's.
type unbatched struct{ calls atomic.Int32 }

func (u *unbatched) PublishBatch(context.Context, []*nats.Msg) (uint64, error) {
	u.calls.Add(1)
	return 0, jetstreamext.ErrInvalidBatchAck
}

// TestFenceWritesOneByOneOnAServerWithoutBatches: a batch acknowledged as
// no batch (a server older than 2.12 stores its messages as single
// publishes) is written again one message at a time, and batches are
// paused.
func TestFenceWritesOneByOneOnAServerWithoutBatches(t *testing.T) {
	st := openTokens(t)
	u := &unbatched{}
	f := &fence{js: st.JetStream(), kv: st.KV(), writer: "a", batches: u, turn: make(chan struct{}, 1)}
	if err := f.begin(context.Background(), 3, time.Now(), nil); err != nil {
		t.Fatal(err)
	}
	for round := range 2 {
		_, errs := queued(t, f, background(3))()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d, write %d: %v", round, i, err)
			}
		}
	}
	if n := u.calls.Load(); n != 1 {
		t.Fatalf("%d batches tried, want 1 (then paused)", n)
	}
}
