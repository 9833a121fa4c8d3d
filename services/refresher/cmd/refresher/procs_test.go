package main

import (
	"bytes"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"testing"
	"testing/fstest"
)

// TestFloorProcs: GOMAXPROCS goes up to minProcs only when neither the
// environment nor a CPU quota set it; it never goes down.
func TestFloorProcs(t *testing.T) {
	for _, c := range []struct {
		name        string
		cur, cpus   int
		env         bool
		quota       bool
		want        int
		wantWhyPart string
	}{
		{"2 CPUs, no quota", 2, 2, false, false, minProcs, "no CPU quota"},
		{"1 CPU, no quota", 1, 1, false, false, minProcs, "no CPU quota"},
		{"quota of 2 on 8 CPUs", 2, 8, false, true, 2, "quota"},
		{"quota of half a CPU on 2 (Go's default stays 2)", 2, 2, false, true, 2, "cpu.max sets a CPU quota"},
		{"GOMAXPROCS=2 set", 2, 2, true, false, 2, "GOMAXPROCS is set"},
		{"8 CPUs", 8, 8, false, false, 8, "enough"},
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
			quota := func() (bool, string) {
				if c.quota {
					return true, "/sys/fs/cgroup/cpu.max sets a CPU quota"
				}
				return false, "no CPU quota"
			}
			f := floorProcs(env, c.cpus, gomaxprocs, quota)
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

// TestCPUQuota reads cgroup v1 and v2 quotas, on the process's cgroup or an
// ancestor, through the mounts /proc/self/mountinfo names, and answers
// "limited" when it cannot tell.
func TestCPUQuota(t *testing.T) {
	const (
		v2Mount     = "30 22 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n"
		hybridMount = "30 22 0:27 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n31 30 0:28 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n35 30 0:40 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
	)
	file := func(s string) *fstest.MapFile { return &fstest.MapFile{Data: []byte(s)} }
	for _, c := range []struct {
		name    string
		fs      fstest.MapFS
		limited bool
		why     string
	}{
		{"no /proc (not Linux)", fstest.MapFS{}, false, "no cgroups"},
		{"v2, no quota anywhere", fstest.MapFS{
			"proc/self/cgroup":                       file("0::/kubepods/pod1/c1\n"),
			"proc/self/mountinfo":                    file(v2Mount),
			"sys/fs/cgroup/kubepods/pod1/c1/cpu.max": file("max 100000\n"),
			"sys/fs/cgroup/kubepods/pod1/cpu.max":    file("max 100000\n"),
		}, false, "no CPU quota"},
		{"v2, half a CPU on the pod", fstest.MapFS{
			"proc/self/cgroup":                       file("0::/kubepods/pod1/c1\n"),
			"proc/self/mountinfo":                    file(v2Mount),
			"sys/fs/cgroup/kubepods/pod1/c1/cpu.max": file("max 100000\n"),
			"sys/fs/cgroup/kubepods/pod1/cpu.max":    file("50000 100000\n"),
		}, true, "/sys/fs/cgroup/kubepods/pod1/cpu.max sets a CPU quota"},
		{"v2 in a cgroup namespace", fstest.MapFS{
			"proc/self/cgroup":      file("0::/\n"),
			"proc/self/mountinfo":   file(v2Mount),
			"sys/fs/cgroup/cpu.max": file("150000 100000\n"),
		}, true, "/sys/fs/cgroup/cpu.max sets a CPU quota"},
		{"v1 (hybrid), no quota", fstest.MapFS{
			"proc/self/cgroup":    file("2:cpu,cpuacct:/system.slice/r.service\n0::/system.slice/r.service\n"),
			"proc/self/mountinfo": file(hybridMount),
			"sys/fs/cgroup/cpu,cpuacct/system.slice/r.service/cpu.cfs_quota_us": file("-1\n"),
			"sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us":                        file("-1\n"),
		}, false, "no CPU quota"},
		{"v1, systemd CPUQuota=50%", fstest.MapFS{
			"proc/self/cgroup":    file("2:cpu,cpuacct:/system.slice/r.service\n"),
			"proc/self/mountinfo": file(hybridMount),
			"sys/fs/cgroup/cpu,cpuacct/system.slice/r.service/cpu.cfs_quota_us": file("50000\n"),
		}, true, "/sys/fs/cgroup/cpu,cpuacct/system.slice/r.service/cpu.cfs_quota_us sets a CPU quota"},
		{"cgroups but no cpu controller mounted", fstest.MapFS{
			"proc/self/cgroup":    file("0::/\n"),
			"proc/self/mountinfo": file("30 22 0:27 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"),
		}, true, "cgroup CPU controller not found"},
		{"cpu on v1, unmounted, v2 mounted (v2 has no cpu controller then)", fstest.MapFS{
			"proc/self/cgroup":                        file("2:cpu,cpuacct:/r.service\n0::/r.service\n"),
			"proc/self/mountinfo":                     file("35 30 0:40 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"),
			"sys/fs/cgroup/unified/r.service/cpu.max": file("max 100000\n"),
		}, true, "cgroup CPU controller not found"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if limited, why := cpuQuota(c.fs); limited != c.limited || why != c.why {
				t.Fatalf("cpuQuota = %v, %q; want %v, %q", limited, why, c.limited, c.why)
			}
		})
	}
}

// TestDefaultFloorProcsSetsWhatItSays: on this machine, with the real
// runtime and /proc and /sys, GOMAXPROCS ends as the decision says.
func TestDefaultFloorProcsSetsWhatItSays(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	f := defaultFloorProcs(func(string) (string, bool) { return "", false })
	if got := runtime.GOMAXPROCS(0); got != f.to || f.from == 0 || f.to < f.from || f.why == "" {
		t.Fatalf("decision %+v, GOMAXPROCS now %d", f, got)
	}
	limited, _ := cpuQuota(os.DirFS("/"))
	raised := f.to > f.from
	if raised && (limited || f.to != minProcs) {
		t.Fatalf("raised %+v although a CPU quota is %v on this machine", f, limited)
	}
	if !raised && f.from < minProcs && f.from == runtime.NumCPU() && !limited {
		t.Fatalf("left %+v on a machine of %d CPUs with no CPU quota", f, runtime.NumCPU())
	}
}
