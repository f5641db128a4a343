package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// fakeCPURoot makes a directory that looks like the cgroup v1 cpu
// controller's root to cpuCapSkipReason.
func fakeCPURoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	for _, f := range []string{"cpu.cfs_period_us", "cpu.cfs_quota_us", "cgroup.procs"} {
		if err := os.WriteFile(filepath.Join(root, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestCPUCapSkipReason(t *testing.T) {
	const pid = 4242
	usable := fakeCPURoot(t)
	blocked := fakeCPURoot(t)
	// A file where the probe group goes: mkdir fails, as on a read-only
	// mount (the test may run as root, which ignores permission bits).
	if err := os.WriteFile(filepath.Join(blocked, "cairn-bench-4242-probe"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		root string
		euid int
		want string // substring of the reason; "" for none
	}{
		{"not root", usable, 1000, "not root (euid 1000)"},
		{"no controller", t.TempDir(), 0, "no cgroup v1 cpu controller"},
		{"missing root", filepath.Join(t.TempDir(), "cpu"), 0, "no cgroup v1 cpu controller"},
		{"not writable", blocked, 0, "not writable"},
		{"usable", usable, 0, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := cpuCapSkipReason(c.root, c.euid, pid)
			if c.want == "" && got != "" || !strings.Contains(got, c.want) {
				t.Errorf("cpuCapSkipReason = %q, want one containing %q", got, c.want)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(usable, "cairn-bench-4242-probe")); !os.IsNotExist(err) {
		t.Errorf("the probe group is left behind: %v", err)
	}
}

// TestCPUCapGroups: each added member gets its own group with the period,
// the quota for the share and its pid; a restart reuses the groups.
func TestCPUCapGroups(t *testing.T) {
	root := t.TempDir()
	c, err := newCPUCap(root, 0.15, 77)
	if err != nil {
		t.Fatal(err)
	}
	for _, pid := range []int{1001, 1002} {
		if err := c.add(pid); err != nil {
			t.Fatal(err)
		}
	}
	c.reset()
	if err := c.add(1003); err != nil {
		t.Fatal(err)
	}
	for g, want := range map[string]map[string]string{
		"m1": {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "15000", "cgroup.procs": "1003"},
		"m2": {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "15000", "cgroup.procs": "1002"},
	} {
		for f, v := range want {
			b, err := os.ReadFile(filepath.Join(root, "cairn-bench-77", g, f))
			if err != nil || string(b) != v {
				t.Errorf("%s/%s = %q, %v; want %q", g, f, b, err, v)
			}
		}
	}
	if len(c.groups) != 2 {
		t.Errorf("groups = %v, want m1 and m2 once each", c.groups)
	}
	for _, share := range []float64{0, -1, 1.5} {
		if _, err := newCPUCap(root, share, 78); err == nil {
			t.Errorf("newCPUCap(share %v): no error", share)
		}
	}
}

func TestDescribeCPUCap(t *testing.T) {
	got := describeCPUCap("/sys/fs/cgroup/cpu", 0.15)
	for _, want := range []string{"`cpu.cfs_period_us=100000`", "`cpu.cfs_quota_us=15000` (0.15 of one core)", "/sys/fs/cgroup/cpu/cairn-bench-<harness pid>/m<i>", "client is not capped"} {
		if !strings.Contains(got, want) {
			t.Errorf("describeCPUCap = %q, lacks %q", got, want)
		}
	}
}

func TestThrottledFraction(t *testing.T) {
	if v := throttledFraction("nr_periods 200\nnr_throttled 50\nthrottled_time 123\n"); v != 0.25 {
		t.Errorf("throttledFraction = %v, want 0.25", v)
	}
	if v := throttledFraction("nr_periods 0\nnr_throttled 0\n"); v == v {
		t.Errorf("no periods: %v, want NaN", v)
	}
}

// TestRemoveStaleCPUCaps: the groups of a harness that no longer runs go,
// those of a running one (this test's) stay.
func TestRemoveStaleCPUCaps(t *testing.T) {
	root := t.TempDir()
	stale := filepath.Join(root, "cairn-bench-2147483646")
	live := filepath.Join(root, fmt.Sprintf("cairn-bench-%d", os.Getpid()))
	for _, d := range []string{filepath.Join(stale, "m1"), filepath.Join(stale, "m2"), filepath.Join(live, "m1"), filepath.Join(root, "other")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if got := removeStaleCPUCaps(root); !slices.Equal(got, []string{stale}) {
		t.Errorf("removed %v, want %v", got, []string{stale})
	}
	for d, want := range map[string]bool{stale: false, filepath.Join(live, "m1"): true, filepath.Join(root, "other"): true} {
		if _, err := os.Stat(d); (err == nil) != want {
			t.Errorf("%s exists: %v, want %v", d, err == nil, want)
		}
	}
}
