package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// cgroupCPURoot is where the cgroup v1 cpu controller is mounted on the
// reference machine (and on most v1 hosts).
const cgroupCPURoot = "/sys/fs/cgroup/cpu"

// cfsPeriodUs is the CFS period every capped group gets: quotas are a share
// of it.
const cfsPeriodUs = 100_000

// priorityShares is the cpu.shares of the members' parent group (the
// kernel's largest is 262144).
const priorityShares = 262144

// cpuCap caps each member process of a cluster at the same share of one CPU
// through the cgroup v1 cpu controller: one group per member,
//
//	<root>/cairn-bench-<harness pid>/m<i>   cpu.cfs_period_us = 100000
//	                                        cpu.cfs_quota_us  = share × 100000
//
// and the member's pid written to the group's cgroup.procs right after exec,
// before the member is ready (so all its threads, including those it starts
// later, run under the quota). The client is not capped.
//
// Usage: newCPUCap, add after each member's exec, close after every member
// has exited (a cgroup v1 directory can only be removed once it has no
// tasks). A cpuCap is used by one goroutine.
type cpuCap struct {
	root   string   // the controller's mount point
	dir    string   // root/cairn-bench-<pid>, the parent of the members' groups
	share  float64  // of one CPU, in (0, 1]
	groups []string // made so far, for close
	next   int      // the member add caps next: m<next+1>
}

// cpuCapSkipReason says why the cap cannot be set on this machine: not root
// (euid), no cgroup v1 cpu controller at root, or root not writable (probed
// by making and removing root/cairn-bench-<pid>-probe). It returns "" when
// the cap can be set.
func cpuCapSkipReason(root string, euid, pid int) string {
	if euid != 0 {
		return fmt.Sprintf("the harness is not root (euid %d), so it cannot write the cgroup v1 cpu controller at %s", euid, root)
	}
	for _, f := range []string{"cpu.cfs_period_us", "cpu.cfs_quota_us", "cgroup.procs"} {
		if _, err := os.Stat(filepath.Join(root, f)); err != nil {
			return fmt.Sprintf("no cgroup v1 cpu controller at %s (%s missing; a cgroup v2-only host has none)", root, f)
		}
	}
	probe := filepath.Join(root, fmt.Sprintf("cairn-bench-%d-probe", pid))
	if err := os.Mkdir(probe, 0o755); err != nil {
		return fmt.Sprintf("the cgroup v1 cpu controller at %s is not writable: %v", root, err)
	}
	if err := os.Remove(probe); err != nil {
		return fmt.Sprintf("the cgroup v1 cpu controller at %s: cannot remove the probe group: %v", root, err)
	}
	return ""
}

// removeStaleCPUCaps removes the groups a harness killed with -9 left under
// root: cairn-bench-<pid> of a pid that no longer runs (its members died
// with it, so the groups are empty). It returns the groups it removed.
func removeStaleCPUCaps(root string) []string {
	ents, err := os.ReadDir(root)
	if err != nil {
		return nil
	}
	var removed []string
	for _, e := range ents {
		pid, err := strconv.Atoi(strings.TrimPrefix(e.Name(), "cairn-bench-"))
		if !e.IsDir() || !strings.HasPrefix(e.Name(), "cairn-bench-") || err != nil {
			continue
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			continue // its harness still runs
		}
		dir := filepath.Join(root, e.Name())
		subs, _ := os.ReadDir(dir)
		for _, m := range subs {
			if m.IsDir() {
				_ = os.Remove(filepath.Join(dir, m.Name()))
			}
		}
		if os.Remove(dir) == nil {
			removed = append(removed, dir)
		}
	}
	return removed
}

// newCPUCap makes root/cairn-bench-<pid>, under which add puts one group per
// member capped at share of a CPU.
func newCPUCap(root string, share float64, pid int) (*cpuCap, error) {
	if !(share > 0 && share <= 1) {
		return nil, fmt.Errorf("bench: cpu share %v is not in (0, 1]", share)
	}
	dir := filepath.Join(root, fmt.Sprintf("cairn-bench-%d", pid))
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("bench: cgroup: %w", err)
	}
	// The members' parent outweighs everything else at the root (1024
	// each), so that other work on the machine does not eat into the
	// members' quota: each member gets its share, no more, busy machine or
	// not. Best effort: without it the run is only noisier.
	_ = os.WriteFile(filepath.Join(dir, "cpu.shares"), []byte(strconv.Itoa(priorityShares)), 0o644)
	return &cpuCap{root: root, dir: dir, share: share}, nil
}

// quotaUs is the cpu.cfs_quota_us of every member's group: 0.15 → 15000.
func (c *cpuCap) quotaUs() int {
	return int(c.share*cfsPeriodUs + 0.5)
}

// add makes the next member's group (m1, m2, …), sets its period and quota
// and moves pid, with all its threads, into it.
func (c *cpuCap) add(pid int) error {
	c.next++
	g := filepath.Join(c.dir, fmt.Sprintf("m%d", c.next))
	if c.next > len(c.groups) {
		if err := os.Mkdir(g, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("bench: cgroup: %w", err)
		}
		c.groups = append(c.groups, g)
	}
	for _, w := range []struct{ file, val string }{
		// The period first: the kernel checks the quota against it.
		{"cpu.cfs_period_us", strconv.Itoa(cfsPeriodUs)},
		{"cpu.cfs_quota_us", strconv.Itoa(c.quotaUs())},
		{"cgroup.procs", strconv.Itoa(pid)},
	} {
		if err := os.WriteFile(filepath.Join(g, w.file), []byte(w.val), 0o644); err != nil {
			return fmt.Errorf("bench: cgroup: write %s to %s: %w", w.val, filepath.Join(g, w.file), err)
		}
	}
	return nil
}

// throttled returns, for each member's group, the fraction of CFS periods
// in which the member used up its quota and was held back (cpu.stat's
// nr_throttled / nr_periods); NaN where unknown. A cap that bites shows
// throttled periods under load.
func (c *cpuCap) throttled() []float64 {
	out := make([]float64, c.next)
	for i := range out {
		out[i] = nan
		b, err := os.ReadFile(filepath.Join(c.groups[i], "cpu.stat"))
		if err != nil {
			continue
		}
		out[i] = throttledFraction(string(b))
	}
	return out
}

// throttledFraction reads nr_throttled / nr_periods from a cpu.stat file,
// NaN if it has no periods.
func throttledFraction(stat string) float64 {
	var periods, throttled float64
	for _, line := range strings.Split(stat, "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		v, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "nr_periods":
			periods = v
		case "nr_throttled":
			throttled = v
		}
	}
	if periods == 0 {
		return nan
	}
	return throttled / periods
}

// reset makes the next add start again at m1, for a cluster started anew
// once the previous attempt's members have exited.
func (c *cpuCap) reset() { c.next = 0 }

// close removes the members' groups and their parent; call it once every
// member has exited. It tries every group and returns the first error.
func (c *cpuCap) close() error {
	var first error
	for i := len(c.groups) - 1; i >= 0; i-- {
		if err := os.Remove(c.groups[i]); err != nil && !errors.Is(err, os.ErrNotExist) && first == nil {
			first = fmt.Errorf("bench: cgroup: %w", err)
		}
	}
	c.groups, c.next = nil, 0
	if err := os.Remove(c.dir); err != nil && !errors.Is(err, os.ErrNotExist) && first == nil {
		first = fmt.Errorf("bench: cgroup: %w", err)
	}
	return first
}

// describeCPUCap says in the report how the members are capped.
func describeCPUCap(root string, share float64) string {
	return fmt.Sprintf("each member process in its own cgroup v1 cpu group `%s/cairn-bench-<harness pid>/m<i>` with "+
		"`cpu.cfs_period_us=%d` and `cpu.cfs_quota_us=%d` (%s of one core), its pid written to `cgroup.procs` right after exec, "+
		"before it is ready; the parent group has `cpu.shares=%d`, so other work on the machine does not take the members' quota; "+
		"the client is not capped", root, cfsPeriodUs, int(share*cfsPeriodUs+0.5), strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.3f", share), "0"), "."), priorityShares)
}
