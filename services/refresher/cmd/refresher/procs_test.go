package main

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

// TestFloorProcs: GOMAXPROCS goes up to minProcs only when neither the
// environment nor a CPU quota set it; it never goes down.
func TestFloorProcs(t *testing.T) {
	for _, c := range []struct {
		name        string
		cur, cpus   int
		env         bool
		want        int
		wantWhyPart string
	}{
		{"2 CPUs, no quota", 2, 2, false, minProcs, "no CPU quota"},
		{"1 CPU, no quota", 1, 1, false, minProcs, "no CPU quota"},
		{"quota of 2 on 8 CPUs", 2, 8, false, 2, "quota"},
		{"GOMAXPROCS=2 set", 2, 2, true, 2, "GOMAXPROCS is set"},
		{"8 CPUs", 8, 8, false, 8, "enough"},
	} {
		t.Run(c.name, func(t *testing.T) {
			procs, sets := c.cur, 0
			gomaxprocs := func(n int) int {
				prev := procs
				if n > 0 {
					procs, sets = n, sets+1
				}
				return prev
			}
			env := func(k string) (string, bool) {
				if k == "GOMAXPROCS" && c.env {
					return "2", true
				}
				return "", false
			}
			f := floorProcs(env, c.cpus, gomaxprocs)
			if procs != c.want || f.from != c.cur || f.to != c.want || !strings.Contains(f.why, c.wantWhyPart) {
				t.Fatalf("GOMAXPROCS %d → %d (decision %+v), want %d because %q", c.cur, procs, f, c.want, c.wantWhyPart)
			}
			if c.want == c.cur && sets != 0 {
				t.Fatalf("GOMAXPROCS set %d times, want untouched", sets)
			}
			var logs bytes.Buffer
			f.log(slog.New(slog.NewTextHandler(&logs, nil)))
			if !strings.Contains(logs.String(), "GOMAXPROCS") {
				t.Fatalf("decision not logged: %q", logs.String())
			}
		})
	}
}
