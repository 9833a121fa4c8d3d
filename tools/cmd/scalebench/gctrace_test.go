package main

import (
	"strings"
	"testing"
)

// TestGCTrace: the cycles of a gctrace are counted with their mark time and
// live heap, and every other line reaches the log.
func TestGCTrace(t *testing.T) {
	in := strings.Join([]string{
		"gc 1 @0.004s 2%: 0.010+1.5+0.002 ms clock, 0.021+0.12/0.40/0+0.005 ms cpu, 3->4->1 MB, 4 MB goal, 0 MB stacks, 0 MB globals, 2 P",
		`time=2026-12-07T06:00:00Z level=INFO msg="token refreshed" provider=m-00001`,
		"gc 2 @1.250s 5%: 0.031+231.4+0.044 ms clock, 0.062+12/115/0.3+0.089 ms cpu, 402->410->205 MB, 410 MB goal, 1 MB stacks, 0 MB globals, 2 P",
		"gc 3 @2.000s 5%: something this does not read ms clock",
	}, "\n") + "\n"
	var g gcTrace
	var log strings.Builder
	g.copy(strings.NewReader(in), &log)
	if n := g.cycles(); n != 2 {
		t.Fatalf("%d cycles, want 2", n)
	}
	cycles, total, longest, live := g.since(1)
	if cycles != 1 || total != 231.4 || longest != 231.4 || live != 205 {
		t.Fatalf("since 1: %d cycles, %v ms, longest %v ms, live %d MB; want 1, 231.4, 231.4, 205", cycles, total, longest, live)
	}
	if got := log.String(); !strings.Contains(got, "token refreshed") || strings.Contains(got, "gc ") {
		t.Fatalf("log got %q", got)
	}
}
