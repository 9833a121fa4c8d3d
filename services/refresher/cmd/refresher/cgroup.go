package main

import (
	"errors"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"
)

// cpuQuota reports whether a cgroup CPU quota (cgroup v1 cpu.cfs_quota_us,
// or v2 cpu.max) applies to this process or any of its cgroup's ancestors,
// reading /proc and /sys from fsys (os.DirFS("/") in the binary). Go's
// default GOMAXPROCS does not tell: it rounds a quota up and never below 2,
// so a quota of half a CPU on a 2-CPU host leaves it at the CPU count.
// When it cannot tell on a system with cgroups it answers true: more Ps
// than a quota are throttled, fewer only cost latency.
func cpuQuota(fsys fs.FS) (bool, string) {
	cg, err := fs.ReadFile(fsys, "proc/self/cgroup")
	if errors.Is(err, fs.ErrNotExist) {
		return false, "no cgroups"
	}
	if err != nil {
		return true, "cannot read /proc/self/cgroup"
	}
	mounts, err := fs.ReadFile(fsys, "proc/self/mountinfo")
	if err != nil {
		return true, "cannot read /proc/self/mountinfo"
	}
	var v1, v2 string // the process's cgroup path under the v1 cpu controller, and under v2
	found1, found2 := false, false
	for line := range strings.Lines(string(cg)) {
		// hierarchy-ID:controller-list:cgroup-path
		parts := strings.SplitN(strings.TrimSpace(line), ":", 3)
		if len(parts) != 3 {
			continue
		}
		switch {
		case parts[0] == "0" && parts[1] == "":
			v2, found2 = parts[2], true
		case slices.Contains(strings.Split(parts[1], ","), "cpu"):
			v1, found1 = parts[2], true
		}
	}
	var m1, r1, m2, r2 string // mount points and the cgroup paths they show
	for line := range strings.Lines(string(mounts)) {
		// id parent major:minor root mount-point options [optional…] - fstype source super-options
		pre, post, ok := strings.Cut(strings.TrimSpace(line), " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 3 {
			continue
		}
		switch {
		case g[0] == "cgroup2":
			m2, r2 = f[4], f[3]
		case g[0] == "cgroup" && slices.Contains(strings.Split(g[2], ","), "cpu"):
			m1, r1 = f[4], f[3]
		}
	}
	// Walk from the process's cgroup up to the mount's root: a quota on
	// any ancestor bounds the process too.
	walk := func(mount, root, cgPath, file string, limited func(string) bool) (bool, string) {
		rel, ok := strings.CutPrefix(cgPath, root)
		if !ok {
			rel = cgPath // the mount shows another namespace's root: take the path as it is
		}
		dir := path.Join(strings.TrimPrefix(mount, "/"), rel)
		base := strings.TrimPrefix(mount, "/")
		for {
			b, err := fs.ReadFile(fsys, path.Join(dir, file))
			switch {
			case err == nil && limited(strings.TrimSpace(string(b))):
				return true, "/" + path.Join(dir, file) + " sets a CPU quota"
			case err != nil && !errors.Is(err, fs.ErrNotExist):
				return true, "cannot read /" + path.Join(dir, file)
			}
			if dir == base || dir == "." || dir == "" {
				return false, "no CPU quota"
			}
			dir = path.Dir(dir)
		}
	}
	switch {
	case found1 && m1 != "":
		return walk(m1, r1, v1, "cpu.cfs_quota_us", func(q string) bool {
			n, err := strconv.ParseInt(q, 10, 64)
			return err != nil || n > 0
		})
	case found1:
		// The cpu controller is on v1 (so not on v2), unmounted here.
	case found2 && m2 != "":
		return walk(m2, r2, v2, "cpu.max", func(q string) bool {
			f := strings.Fields(q)
			return len(f) == 0 || f[0] != "max"
		})
	case !found2:
		return false, "no cgroups"
	}
	return true, "cgroup CPU controller not found"
}
