// Command traceslices reads a Go execution trace (runtime/trace; from a
// refresher started with --debug-pprof:
// curl -o fill.trace 'http://127.0.0.1:6060/debug/pprof/trace?seconds=4')
// and reports, per goroutine, how long it ran each time it got a P and how
// long it waited, runnable, to get one: the count, total, p99 and longest,
// and how many were over 1 ms and over 3 ms. Goroutines are named by the
// outermost frames of a stack they were seen with (their root function, or
// where they block), and the longest running slices also by the frames
// where they ended.
//
// A running slice over a few milliseconds holds a P that a token.get made
// runnable meanwhile may need; a long runnable wait is that token.get's
// wait (issue 20: docs/benchmarks.md, session 8).
//
// Usage:
//
//	go run ./tools/cmd/traceslices [--top 25] [--long 2ms] fill.trace
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"golang.org/x/exp/trace"
)

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "traceslices:", err)
		os.Exit(2)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("traceslices", flag.ContinueOnError)
	fs.SetOutput(stderr)
	top := fs.Int("top", 25, "rows per table")
	long := fs.Duration("long", 2*time.Millisecond, "running slices at least this long are also grouped by where they ended")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("want one trace file")
	}
	f, err := os.Open(fs.Arg(0))
	if err != nil {
		return err
	}
	defer f.Close()
	s, err := read(f, *long)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "trace of %v\n", s.span.Round(time.Millisecond))
	report(stdout, "running slices, by goroutine", s.running, *top)
	report(stdout, fmt.Sprintf("running slices of %v or more, by where they ended", *long), s.ended, *top)
	report(stdout, "runnable waits, by goroutine", s.waits, *top)
	return nil
}

// slices groups durations by a name.
type groups map[string][]time.Duration

// summary is what read found.
type summary struct {
	span                  time.Duration
	running, ended, waits groups
}

type gstate struct {
	name              string
	running, runnable trace.Time
}

// read walks the trace's goroutine state transitions.
func read(r io.Reader, long time.Duration) (summary, error) {
	tr, err := trace.NewReader(r)
	if err != nil {
		return summary{}, err
	}
	s := summary{running: groups{}, ended: groups{}, waits: groups{}}
	gs := map[trace.GoID]*gstate{}
	var first, last trace.Time
	for {
		ev, err := tr.ReadEvent()
		if err == io.EOF {
			break
		}
		if err != nil {
			return summary{}, err
		}
		if first == 0 {
			first = ev.Time()
		}
		last = ev.Time()
		if ev.Kind() != trace.EventStateTransition {
			continue
		}
		st := ev.StateTransition()
		if st.Resource.Kind != trace.ResourceGoroutine {
			continue
		}
		id := st.Resource.Goroutine()
		g := gs[id]
		if g == nil {
			g = &gstate{}
			gs[id] = g
		}
		if g.name == "" || g.name == "?" {
			if st.Stack != trace.NoStack {
				g.name = outer(st.Stack)
			} else {
				g.name = outer(ev.Stack())
			}
		}
		from, to := st.Goroutine()
		switch {
		case to == trace.GoRunnable:
			g.runnable = ev.Time()
		case to == trace.GoRunning:
			g.running = ev.Time()
			if g.runnable != 0 {
				s.waits[g.name] = append(s.waits[g.name], ev.Time().Sub(g.runnable))
				g.runnable = 0
			}
		}
		if from == trace.GoRunning && g.running != 0 {
			d := ev.Time().Sub(g.running)
			s.running[g.name] = append(s.running[g.name], d)
			if d >= long {
				k := inner(ev.Stack()) + " [" + to.String() + "]"
				s.ended[k] = append(s.ended[k], d)
			}
			g.running = 0
		}
	}
	s.span = last.Sub(first)
	return s, nil
}

// outer names a goroutine by the three outermost frames of st.
func outer(st trace.Stack) string {
	var fs []string
	for f := range st.Frames() {
		fs = append(fs, f.Func)
	}
	if len(fs) == 0 {
		return "?"
	}
	return strings.Join(fs[max(len(fs)-3, 0):], " < ")
}

// inner names where a slice ended: the five innermost frames of st outside
// the runtime.
func inner(st trace.Stack) string {
	var fs []string
	for f := range st.Frames() {
		if strings.HasPrefix(f.Func, "runtime.") || strings.HasPrefix(f.Func, "sync.") || strings.HasPrefix(f.Func, "internal/") {
			continue
		}
		if fs = append(fs, f.Func); len(fs) == 5 {
			break
		}
	}
	if len(fs) == 0 {
		return "(runtime only: a GC worker, the scavenger, …)"
	}
	return strings.Join(fs, " < ")
}

// row is one group's figures.
type row struct {
	name                  string
	n, over1, over3       int
	total, p99, maxOfThem time.Duration
}

// rows sorts g's groups by how many of their durations are over 1 ms.
func rows(g groups) []row {
	var out []row
	for name, ds := range g {
		slices.Sort(ds)
		r := row{name: name, n: len(ds), p99: ds[len(ds)*99/100], maxOfThem: ds[len(ds)-1]}
		for _, d := range ds {
			r.total += d
			if d > time.Millisecond {
				r.over1++
			}
			if d > 3*time.Millisecond {
				r.over3++
			}
		}
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b row) int {
		if a.over1 != b.over1 {
			return b.over1 - a.over1
		}
		return int(b.total - a.total)
	})
	return out
}

func report(w io.Writer, title string, g groups, top int) {
	fmt.Fprintf(w, "\n== %s\n%7s %10s %10s %10s %6s %6s  %s\n", title, "n", "total", "p99", "max", ">1ms", ">3ms", "goroutine")
	for i, r := range rows(g) {
		if i == top {
			break
		}
		fmt.Fprintf(w, "%7d %10v %10v %10v %6d %6d  %s\n", r.n, r.total.Round(time.Microsecond), r.p99.Round(time.Microsecond),
			r.maxOfThem.Round(time.Microsecond), r.over1, r.over3, r.name)
	}
}
