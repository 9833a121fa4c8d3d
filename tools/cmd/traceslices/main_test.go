package main

import (
	"bytes"
	"runtime/trace"
	"strings"
	"testing"
	"time"
)

// spinner holds its P for d without blocking, then closes done.
func spinner(d time.Duration, done chan<- struct{}) {
	for start := time.Now(); time.Since(start) < d; {
	}
	close(done)
}

// TestReadsRunningSlicesAndWaits: a goroutine that spins for 6 ms shows as
// running slices of that much, named by its function, and among the long
// ones by where they ended; every table prints.
func TestReadsRunningSlicesAndWaits(t *testing.T) {
	var buf bytes.Buffer
	if err := trace.Start(&buf); err != nil {
		t.Skip("tracing unavailable:", err)
	}
	done := make(chan struct{})
	go spinner(6*time.Millisecond, done)
	<-done
	trace.Stop()

	s, err := read(bytes.NewReader(buf.Bytes()), 2*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	// Its 6 ms may be split where the runtime stopped it (a collection,
	// the trace's own bookkeeping), not into many pieces.
	var longest, total time.Duration
	for name, ds := range s.running {
		if strings.Contains(name, "traceslices.spinner") {
			for _, d := range ds {
				longest, total = max(longest, d), total+d
			}
		}
	}
	if total < 6*time.Millisecond || longest < 2*time.Millisecond {
		t.Fatalf("the spinning goroutine ran %v in all, at most %v at a time; want ≥ 6 ms, ≥ 2 ms at a time (goroutines seen: %d)", total, longest, len(s.running))
	}
	if len(s.ended) == 0 {
		t.Fatal("no running slice of 2 ms or more grouped by where it ended")
	}
	var out bytes.Buffer
	report(&out, "running slices, by goroutine", s.running, 5)
	if !strings.Contains(out.String(), ">3ms") || strings.Count(out.String(), "\n") < 3 {
		t.Fatalf("report:\n%s", out.String())
	}
}
