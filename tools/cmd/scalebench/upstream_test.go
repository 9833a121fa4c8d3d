package main

import (
	"strings"
	"testing"
)

// TestUpstreamTotals sums the histogram's _sum and _count over its label
// sets, and nothing else (its buckets, other metrics with the same prefix).
func TestUpstreamTotals(t *testing.T) {
	text := `# HELP tokenbus_upstream_duration_seconds upstream token request latency
# TYPE tokenbus_upstream_duration_seconds histogram
tokenbus_upstream_duration_seconds_bucket{provider="_other",le="0.025"} 90
tokenbus_upstream_duration_seconds_sum{otel_scope_name="tokenbus",provider="_other"} 2.2
tokenbus_upstream_duration_seconds_count{otel_scope_name="tokenbus",provider="_other"} 100
tokenbus_upstream_duration_seconds_sum{otel_scope_name="tokenbus",provider="daraja-a"} 0.2
tokenbus_upstream_duration_seconds_count{otel_scope_name="tokenbus",provider="daraja-a"} 10
tokenbus_upstream_duration_seconds_sum_other 99
tokenbus_request_duration_seconds_sum{endpoint="token.get"} 5
`
	sum, count, err := upstreamTotals(strings.NewReader(text))
	if err != nil || count != 110 || sum < 2.39 || sum > 2.41 {
		t.Fatalf("sum %v, count %v, err %v; want 2.4 s over 110", sum, count, err)
	}
	if _, _, err := upstreamTotals(strings.NewReader("tokenbus_upstream_duration_seconds_sum x\n")); err == nil {
		t.Fatal("a sample that is not a number was taken")
	}
}
