package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// upstreamMetric is the refresher's histogram of its provider calls, each
// timed from building the request to the answer parsed.
const upstreamMetric = "tokenbus_upstream_duration_seconds"

// upstreamTotals sums the _sum and _count series of upstreamMetric over
// every label set in a Prometheus text exposition.
func upstreamTotals(r io.Reader) (sum, count float64, err error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		var into *float64
		switch {
		case isSeries(line, upstreamMetric+"_sum"):
			into = &sum
		case isSeries(line, upstreamMetric+"_count"):
			into = &count
		default:
			continue
		}
		f := strings.Fields(line)
		v, perr := strconv.ParseFloat(f[len(f)-1], 64)
		if perr != nil {
			return 0, 0, fmt.Errorf("%s: %w", line, perr)
		}
		*into += v
	}
	return sum, count, sc.Err()
}

// isSeries reports whether line is a sample of the series name (with or
// without labels).
func isSeries(line, name string) bool {
	rest, ok := strings.CutPrefix(line, name)
	return ok && (strings.HasPrefix(rest, "{") || strings.HasPrefix(rest, " "))
}

// upstreamMeanMS scrapes the refresher's /metrics at base and returns the
// mean time of its provider calls so far, in milliseconds, and how many.
func upstreamMeanMS(ctx context.Context, base string) (float64, int64, error) {
	body, err := get(ctx, base+"/metrics")
	if err != nil {
		return 0, 0, err
	}
	defer body.Close()
	sum, count, err := upstreamTotals(body)
	if err != nil || count == 0 {
		return 0, 0, err
	}
	return sum / count * 1e3, int64(count), nil
}
