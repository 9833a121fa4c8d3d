package daraja_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/tokenbus/tokenbus/libs/simulator"
	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/provider/daraja"
	"github.com/tokenbus/tokenbus/services/refresher/provider/httpx"
)

// BenchmarkCallFloor is the floor under scalebench's fill time: one Daraja
// token call, as the refresher makes it (the shared instrumented transport),
// against the simulator answering after 20 ms, alone and 16 at a time (the
// default fetch_concurrency). It reports ms/call: the time one call takes,
// which is more than the simulator's 20 ms by the timer's own lateness and
// the loopback HTTP round trip (docs/benchmarks.md, issue 20, session 5).
func BenchmarkCallFloor(b *testing.B) {
	sim := simulator.New(simulator.Config{})
	sim.SetFaults(simulator.Daraja, simulator.Faults{Latency: 20 * time.Millisecond})
	srv := httptest.NewServer(sim)
	defer srv.Close()
	tr := httpx.NewTransport(16)
	defer tr.CloseIdleConnections()
	shared := httpx.Instrument(tr)
	for _, conc := range []int{1, 16} {
		b.Run(fmt.Sprintf("in-flight-%d", conc), func(b *testing.B) {
			providers := make([]*daraja.Provider, conc)
			for i := range providers {
				key := fmt.Sprintf("merchant-%05d", i)
				providers[i] = daraja.New(daraja.Config{BaseURL: srv.URL, ConsumerKey: key,
					ConsumerSecret: refresher.Secret(simulator.DerivedSecret(key)), Transport: shared})
			}
			var (
				mu    sync.Mutex
				total time.Duration
				calls int
				wg    sync.WaitGroup
			)
			next := make(chan struct{})
			for _, p := range providers {
				wg.Go(func() {
					for range next {
						start := time.Now()
						if _, err := p.Token(context.Background()); err != nil {
							b.Error(err)
						}
						took := time.Since(start)
						mu.Lock()
						total += took
						calls++
						mu.Unlock()
					}
				})
			}
			for b.Loop() {
				next <- struct{}{}
			}
			close(next)
			wg.Wait()
			b.ReportMetric(float64(total.Microseconds())/float64(calls)/1000, "ms/call")
		})
	}
}
