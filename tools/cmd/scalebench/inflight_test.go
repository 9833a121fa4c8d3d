package main

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// TestInFlightMeans: the samples taken while the puts run and after are
// averaged apart.
func TestInFlightMeans(t *testing.T) {
	var done atomic.Bool
	var samples atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	means := inFlightMeans(ctx, func() int64 {
		// The third sample is the puts' last: its phase was read before.
		switch c := samples.Add(1); {
		case c < 3:
			return 4
		case c == 3:
			done.Store(true)
			return 4
		}
		return 16
	}, &done)
	for samples.Load() < 6 {
		time.Sleep(time.Millisecond) // polled: the sampler ticks every 10 ms
	}
	cancel()
	if got := <-means; got[0] != 4 || got[1] != 16 {
		t.Fatalf("means %v, want [4 16]", got)
	}
}
