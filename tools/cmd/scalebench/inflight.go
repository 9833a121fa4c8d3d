package main

import (
	"context"
	"sync/atomic"
	"time"
)

// inFlightMeans samples now() — the simulator's token requests in flight —
// every 10 ms until ctx ends, and sends the mean while puts is false and
// the mean after (0 for a phase with no sample). 16 in flight is every
// fetch_concurrency slot calling the provider; fewer while the puts run
// is the fill waiting for a core (issue 20: 4.5 of 16 at 14,000 puts a
// second).
func inFlightMeans(ctx context.Context, now func() int64, putsDone *atomic.Bool) <-chan [2]float64 {
	out := make(chan [2]float64, 1)
	go func() {
		var sum, n [2]float64
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				var means [2]float64
				for i := range means {
					if n[i] > 0 {
						means[i] = sum[i] / n[i]
					}
				}
				out <- means
				return
			case <-tick.C:
				i := 0
				if putsDone.Load() {
					i = 1
				}
				sum[i] += float64(now())
				n[i]++
			}
		}
	}()
	return out
}
