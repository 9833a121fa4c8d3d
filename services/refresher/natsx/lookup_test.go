package natsx_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
	"github.com/tokenbus/tokenbus/services/refresher/natsx"
)

// countingKV is the real bucket, counting the reads that reach the server.
type countingKV struct {
	jetstream.KeyValue
	gets atomic.Int64
	gate chan struct{} // if set, each Get waits for it
}

func (c *countingKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	c.gets.Add(1)
	if c.gate != nil {
		<-c.gate
	}
	return c.KeyValue.Get(ctx, key)
}

func outcomes(exp *tracetest.InMemoryExporter) map[string]int {
	n := map[string]int{}
	for _, s := range exp.GetSpans() {
		for _, a := range s.Attributes {
			if a.Key == attribute.Key("tokenbus.lookup.outcome") {
				n[a.Value.AsString()]++
			}
		}
	}
	return n
}

// TestLookupReadsTheBucketBounded: a token in the bucket is found and handed
// to Take; while a read of a key is in flight, every other caller waits for
// it (one read for 50 callers); a miss is remembered briefly, so a provider
// with no token does not turn each token.get into a JetStream request; each
// Find is traced with its outcome.
func TestLookupReadsTheBucketBounded(t *testing.T) {
	ns := testutil.RunServer(t)
	nc := testutil.Connect(t, ns)
	ctx := context.Background()
	st, err := natsx.OpenStore(ctx, nc, "tokens", 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	rev, err := st.Publish(ctx, wire.Token{Provider: "p", AccessToken: "a", ExpiresAt: time.Now().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	kv := &countingKV{KeyValue: st.KV(), gate: make(chan struct{})}
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	var (
		mu    sync.Mutex
		taken []uint64
		serve atomic.Bool
	)
	serve.Store(true)
	lk := natsx.NewLookup(kv, natsx.LookupConfig{
		Negative: 300 * time.Millisecond,
		Tracer:   tp.Tracer("test"),
		Take: func(tok wire.Token, r uint64) bool {
			mu.Lock()
			taken = append(taken, r)
			mu.Unlock()
			return tok.AccessToken == "a" && serve.Load()
		},
	})

	// 50 callers at once: one read, shared.
	var wg sync.WaitGroup
	var failed atomic.Int64
	for range 50 {
		wg.Go(func() {
			if err := lk.Find(ctx, "p"); err != nil {
				failed.Add(1)
			}
		})
	}
	testutil.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if kv.gets.Load() == 0 {
			return errors.New("no read yet")
		}
		return nil
	})
	time.Sleep(50 * time.Millisecond) // let the other callers join
	close(kv.gate)
	wg.Wait()
	if n := kv.gets.Load(); n != 1 || failed.Load() != 0 || len(taken) != 1 || taken[0] != rev {
		t.Fatalf("50 concurrent lookups: %d reads, %d failed, taken %v (want 1 read at revision %d)", n, failed.Load(), taken, rev)
	}
	if o := outcomes(exp); o[natsx.LookupTaken] != 50 {
		t.Fatalf("span outcomes %v, want 50 %q", o, natsx.LookupTaken)
	}

	// A key with no token: a miss, then remembered (no read) for a while.
	before := kv.gets.Load()
	for range 20 {
		if err := lk.Find(ctx, "none"); !errors.Is(err, natsx.ErrLookupMiss) {
			t.Fatalf("lookup of a missing key: %v", err)
		}
	}
	if n := kv.gets.Load() - before; n != 1 {
		t.Fatalf("20 lookups of a missing key within the negative cache made %d reads, want 1", n)
	}
	o := outcomes(exp)
	if o[natsx.LookupMissing] != 1 || o[natsx.LookupRecentMiss] != 19 {
		t.Fatalf("span outcomes %v", o)
	}
	time.Sleep(350 * time.Millisecond)
	if err := lk.Find(ctx, "none"); !errors.Is(err, natsx.ErrLookupMiss) || kv.gets.Load()-before != 2 {
		t.Fatalf("after the negative cache: %v, %d reads", err, kv.gets.Load()-before)
	}

	// A token found but not servable is a miss too (and remembered).
	serve.Store(false)
	time.Sleep(350 * time.Millisecond) // "p" was a hit: no miss to forget, but be safe
	if err := lk.Find(ctx, "p"); !errors.Is(err, natsx.ErrLookupMiss) {
		t.Fatalf("unusable token: %v", err)
	}
	if o := outcomes(exp); o[natsx.LookupUnusable] != 1 {
		t.Fatalf("span outcomes %v", o)
	}

	// Reads of many keys at once are bounded: beyond MaxInFlight, a lookup
	// answers "busy" at once.
	held := &countingKV{KeyValue: st.KV(), gate: make(chan struct{})}
	few := natsx.NewLookup(held, natsx.LookupConfig{MaxInFlight: 2, Take: func(wire.Token, uint64) bool { return true }})
	var busy sync.WaitGroup
	for _, k := range []string{"k1", "k2"} {
		busy.Go(func() { _ = few.Find(ctx, k) })
	}
	testutil.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if held.gets.Load() != 2 {
			return errors.New("reads not in flight yet")
		}
		return nil
	})
	if err := few.Find(ctx, "k3"); !errors.Is(err, natsx.ErrLookupMiss) || !strings.Contains(err.Error(), natsx.LookupBusy) || held.gets.Load() != 2 {
		t.Fatalf("a third key with two reads in flight: %v, %d reads", err, held.gets.Load())
	}
	close(held.gate)
	busy.Wait()

	// A server that does not answer: the read gives up within its timeout.
	short := natsx.NewLookup(st.KV(), natsx.LookupConfig{Timeout: 200 * time.Millisecond, Take: func(wire.Token, uint64) bool { return true }})
	ns.Shutdown()
	ns.WaitForShutdown()
	start := time.Now()
	if err := short.Find(ctx, "p"); !errors.Is(err, natsx.ErrLookupMiss) {
		t.Fatalf("lookup with the server down: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("lookup with the server down took %v", d)
	}
}
