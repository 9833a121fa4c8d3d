package main

import (
	"bufio"
	"io"
	"regexp"
	"strconv"
	"strings"
	"sync"
)

// gcTrace reads the refresher's stderr, run with GODEBUG=gctrace=1: it
// keeps each garbage collection's concurrent mark time and live heap, and
// passes every other line on to log. The fill's tail latency follows the
// mark phases (docs/benchmarks.md, issue 20, session 5), so scalebench
// reports them.
type gcTrace struct {
	mu     sync.Mutex
	marks  []float64 // each cycle's concurrent mark, ms of wall clock
	liveMB int       // the live heap the last cycle marked, MB
}

// gctraceLine matches "gc 12 @3.4s 5%: 0.02+231+0.01 ms clock, … , 410->420->205 MB, …".
var gctraceLine = regexp.MustCompile(`^gc \d+ @[0-9.]+s \d+%: [0-9.]+\+([0-9.]+)\+[0-9.]+ ms clock, .*, \d+->\d+->(\d+) MB`)

// copy reads r to its end.
func (g *gcTrace) copy(r io.Reader, log io.Writer) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if m := gctraceLine.FindStringSubmatch(line); m != nil {
			mark, _ := strconv.ParseFloat(m[1], 64)
			live, _ := strconv.Atoi(m[2])
			g.mu.Lock()
			g.marks, g.liveMB = append(g.marks, mark), live
			g.mu.Unlock()
			continue
		}
		if strings.HasPrefix(line, "gc ") && strings.Contains(line, " ms clock") {
			continue // a cycle in a format this does not read: not worth a line
		}
		_, _ = io.WriteString(log, line+"\n")
	}
}

// cycles returns how many cycles have been seen.
func (g *gcTrace) cycles() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.marks)
}

// since returns the cycles after the first n: how many, their total and
// longest mark, and the live heap the last one marked.
func (g *gcTrace) since(n int) (cycles int, totalMS, maxMS float64, liveMB int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, m := range g.marks[min(n, len(g.marks)):] {
		cycles++
		totalMS += m
		maxMS = max(maxMS, m)
	}
	return cycles, totalMS, maxMS, g.liveMB
}
