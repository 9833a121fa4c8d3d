package main

import (
	"fmt"
	"log/slog"
	"os"
	"runtime"
)

// minProcs is the fewest Ps (GOMAXPROCS) the refresher runs with when no
// CPU quota bounds it.
//
// With 2 or 3 Ps, Go's garbage collector marks on a fractional worker that
// holds a whole P for up to 15 ms at a time, and a token.get waits behind
// it for one of the few Ps left (issue 20: a 100,000-provider fill on 2
// cores, traced, had 30 such slices over 3 ms in 4 s; token.get p99 during
// the fill 7.6–8.8 ms with 2 Ps, 6.6 with 3, 5.4–6.6 with 4). With 4 the
// collector takes one dedicated P and the kernel shares the cores among
// the threads at a finer grain than Go's 10 ms preemption. It costs about
// 7 % more CPU during such a fill (docs/benchmarks.md).
const minProcs = 4

// procsFloor is what floorProcs decided: GOMAXPROCS before and after
// (equal when it left it alone) and why.
type procsFloor struct {
	from, to int
	why      string
}

// floorProcs raises GOMAXPROCS to minProcs unless the GOMAXPROCS
// environment variable sets it or a CPU quota applies (more Ps than the
// quota would have the kernel throttle the process): one that lowered Go's
// default below the CPU count, or any that quota finds (cpuQuota: Go's
// default never goes below 2, so a quota of half a CPU on a 2-CPU host
// leaves it at the CPU count).
func floorProcs(env func(string) (string, bool), numCPU int, gomaxprocs func(int) int, quota func() (bool, string)) procsFloor {
	cur := gomaxprocs(0)
	f := procsFloor{from: cur, to: cur}
	if cur >= minProcs {
		f.why = "enough"
		return f
	}
	if _, set := env("GOMAXPROCS"); set {
		f.why = "GOMAXPROCS is set"
		return f
	}
	if cur < numCPU {
		f.why = fmt.Sprintf("a CPU quota sets it (%d of %d CPUs)", cur, numCPU)
		return f
	}
	if limited, why := quota(); limited {
		f.why = why
		return f
	}
	gomaxprocs(minProcs)
	f.to = minProcs
	f.why = fmt.Sprintf("fewer than %d CPUs and no CPU quota: the garbage collector's mark worker takes one P at a time", minProcs)
	return f
}

// log records the decision once the process logger exists.
func (f procsFloor) log(l *slog.Logger) {
	if f.from == 0 {
		return // not decided (tests)
	}
	l.Info("GOMAXPROCS", slog.Int("from", f.from), slog.Int("to", f.to), slog.String("why", f.why))
}

// defaultFloorProcs applies floorProcs to this process.
func defaultFloorProcs(env func(string) (string, bool)) procsFloor {
	return floorProcs(env, runtime.NumCPU(), runtime.GOMAXPROCS, func() (bool, string) { return cpuQuota(os.DirFS("/")) })
}
