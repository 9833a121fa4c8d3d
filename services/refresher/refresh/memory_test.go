package refresh

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"testing"
	"time"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher"
)

// BenchmarkManagersMemory reports what 10,000 started managers cost while
// they wait for their next refresh, beyond their providers and their token
// entries: heap and goroutine stacks per provider (bytes/provider), and the
// goroutines they run. "scheduler" is how cmd/refresher runs them (one
// Scheduler); "run-each" runs each with Run on a goroutine of its own, as
// every manager ran before the scheduler.
//
//	go test -run '^$' -bench BenchmarkManagersMemory -benchtime 3x ./services/refresher/refresh
func BenchmarkManagersMemory(b *testing.B) {
	const n = 10000
	prov := refresher.ProviderFunc(func(context.Context) (refresher.Token, error) {
		return refresher.Token{}, fmt.Errorf("not called")
	})
	b.Run("scheduler", func(b *testing.B) {
		measureManagers(b, n, func(ctx context.Context, entries []*Entry) (stop func()) {
			s := NewScheduler(SchedulerConfig{Logger: slog.New(slog.DiscardHandler), Workers: 32, Gate: func(context.Context, string) (Call, error) {
				return nil, fmt.Errorf("not called")
			}})
			ms := make([]*Manager, len(entries))
			for i, e := range entries {
				ms[i] = s.NewManager(ProviderConfig{Name: e.Token.Provider, Kind: "daraja", Provider: prov, Credential: "cred-" + e.Token.Provider})
				ms[i].Slot().Store(e)
				ms[i].Start(ctx)
			}
			return func() {
				for _, m := range ms {
					m.Stop()
				}
			}
		})
	})
	b.Run("run-each", func(b *testing.B) {
		measureManagers(b, n, func(ctx context.Context, entries []*Entry) (stop func()) {
			ctx, cancel := context.WithCancel(ctx)
			done := make(chan struct{}, len(entries))
			for _, e := range entries {
				m := NewManager(Config{Name: e.Token.Provider, Kind: "daraja", Provider: prov, Logger: slog.New(slog.DiscardHandler),
					Gate: func(context.Context) (Call, error) { return nil, fmt.Errorf("not called") }})
				m.Slot().Store(e)
				go func() { _ = m.Run(ctx); done <- struct{}{} }()
			}
			return func() {
				cancel()
				for range entries {
					<-done
				}
			}
		})
	})
}

// measureManagers starts n managers holding valid tokens with start and
// reports the heap and stacks they take, per provider, and the goroutines
// they add.
func measureManagers(b *testing.B, n int, start func(ctx context.Context, entries []*Entry) (stop func())) {
	var perProvider, goroutines float64
	for range b.N {
		now := time.Now()
		entries := make([]*Entry, n)
		for i := range entries {
			e, err := NewEntry(wire.Token{Provider: fmt.Sprint("merchant-", i), AccessToken: fmt.Sprint("token-", i), TokenType: "Bearer", IssuedAt: now, ExpiresAt: now.Add(time.Hour)}, uint64(i+1))
			if err != nil {
				b.Fatal(err)
			}
			entries[i] = e
		}
		g0 := runtime.NumGoroutine()
		before := heapAndStacks()
		stop := start(context.Background(), entries)
		// Let the goroutines (if any) settle in their wait.
		for range 50 {
			time.Sleep(20 * time.Millisecond)
			if runtime.NumGoroutine()-g0 >= n || runtime.NumGoroutine()-g0 <= 40 {
				break
			}
		}
		time.Sleep(100 * time.Millisecond)
		after := heapAndStacks()
		perProvider += float64(after-before) / float64(n)
		goroutines += float64(runtime.NumGoroutine() - g0)
		stop()
		runtime.KeepAlive(entries)
	}
	b.ReportMetric(perProvider/float64(b.N), "bytes/provider")
	b.ReportMetric(goroutines/float64(b.N), "goroutines")
	b.ReportMetric(0, "ns/op")
}

// heapAndStacks returns the live heap and the goroutine stacks in use,
// after a collection.
func heapAndStacks() int64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc + ms.StackInuse)
}
