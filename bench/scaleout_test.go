package main

import (
	"encoding/binary"
	"math/rand"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

func TestScaleOutSystem(t *testing.T) {
	for _, c := range []struct {
		name    string
		sharded bool
		members int
		ok      bool
	}{
		{"cairn-3", false, 3, true},
		{"cairn-9", false, 9, true},
		{"cairn-sharded-6", true, 6, true},
		{"cairn", false, 0, false},
		{"cairn-sharded", false, 0, false},
		{"etcd-3", false, 0, false},
	} {
		sharded, n, ok := scaleOutSystem(c.name)
		if sharded != c.sharded || n != c.members || ok != c.ok {
			t.Errorf("scaleOutSystem(%q) = %v, %d, %v; want %v, %d, %v", c.name, sharded, n, ok, c.sharded, c.members, c.ok)
		}
	}
	// Every scale-out system exists and runs the scenario.
	for _, name := range scaleOutSystems {
		i := slices.IndexFunc(systems(), func(s system) bool { return s.name == name })
		if i < 0 {
			t.Errorf("no system %s", name)
			continue
		}
		s := systems()[i]
		if _, n, _ := scaleOutSystem(name); s.nodes != n {
			t.Errorf("%s has %d nodes", name, s.nodes)
		}
		if s.scenarios != nil && !slices.Contains(s.scenarios, "scale-out") {
			t.Errorf("%s does not run scale-out", name)
		}
	}
}

// benchKeys makes n keys as etcd's benchmark tool does for put (8 bytes, the
// varint of a random number below space), from a fixed seed.
func benchKeys(n, space int) []string {
	rng := rand.New(rand.NewSource(1))
	keys := make([]string, n)
	for i := range keys {
		k := make([]byte, 8)
		binary.PutVarint(k, int64(rng.Intn(space)))
		keys[i] = string(k)
	}
	return keys
}

// rangeOf returns the index of the range holding key among ranges cut by
// sorted split keys.
func rangeOf(splits []string, key string) int {
	return sort.SearchStrings(splits, key+"\x00")
}

// TestScaleOutSplits: the split keys cut the benchmark's keys into ranges of
// about equal load, at every cluster size.
func TestScaleOutSplits(t *testing.T) {
	keys := benchKeys(200_000, 100_000)
	for _, members := range []int{3, 6, 9} {
		ranges := scaleOutRangesPerMember * members
		splits := strings.Split(scaleOutSplits(ranges), ",")
		if len(splits) != ranges-1 || !slices.IsSorted(splits) || len(slices.Compact(slices.Clone(splits))) != len(splits) {
			t.Fatalf("%d ranges: splits %q are not %d increasing keys", ranges, splits, ranges-1)
		}
		counts := make([]int, ranges)
		for _, k := range keys {
			counts[rangeOf(splits, k)]++
		}
		mean := float64(len(keys)) / float64(ranges)
		for i, c := range counts {
			if d := float64(c)/mean - 1; d > 0.1 || d < -0.1 {
				t.Errorf("%d ranges: range %d holds %d keys, %.0f%% off the mean %.0f", ranges, i, c, d*100, mean)
			}
		}
	}
}

// TestScaleOutReadKeys: the readers' keys fall one per range at 9 members
// and three per range at 3, and carry no NUL (they go on a command line).
func TestScaleOutReadKeys(t *testing.T) {
	keys := scaleOutReadKeys(scaleOutReaders)
	for _, members := range []int{3, 9} {
		ranges := scaleOutRangesPerMember * members
		splits := strings.Split(scaleOutSplits(ranges), ",")
		counts := make([]int, ranges)
		for _, k := range keys {
			counts[rangeOf(splits, k)]++
		}
		for i, c := range counts {
			if c != scaleOutReaders/ranges {
				t.Errorf("%d ranges: range %d holds %d read keys, want %d", ranges, i, c, scaleOutReaders/ranges)
			}
		}
	}
	for _, k := range keys {
		if strings.Contains(k, "\x00") {
			t.Errorf("read key %q has a NUL", k)
		}
	}
}

func TestMergeReaders(t *testing.T) {
	ms := []measurement{
		{rps: 50, pct: map[float64]float64{50: 0.001, 99: 0.004}},
		{rps: 40, pct: map[float64]float64{50: 0.003, 99: 0.008, 99.9: 0.01}, errors: 10, firstErr: "timeout"},
	}
	m := mergeReaders(ms, 100, 2*time.Second)
	if m.rps != 95 { // (100 + 90) requests in 2 s
		t.Errorf("rps = %v, want 95", m.rps)
	}
	if m.p(50) != 0.002 || m.p(99) != 0.006 {
		t.Errorf("p50 %v p99 %v, want the means 0.002 and 0.006", m.p(50), m.p(99))
	}
	if v := m.p(99.9); v == v {
		t.Errorf("p99.9 = %v, want NaN (one reader did not report it)", v)
	}
	if m.errors != 10 || m.firstErr != "timeout" {
		t.Errorf("errors %d %q", m.errors, m.firstErr)
	}
}

func fakeScaleOut() *results {
	r := fakeResults()
	var sc scenario
	for _, s := range scenarios(smokeSizes) {
		if s.scaleOut {
			sc = s
		}
	}
	r.scenarios = []scenario{sc}
	r.systems = nil
	for _, name := range []string{"cairn-3", "cairn-6", "cairn-sharded-3", "cairn-sharded-6", "cairn-sharded-9"} {
		r.systems = append(r.systems, systems()[slices.IndexFunc(systems(), func(s system) bool { return s.name == name })])
	}
	r.runs, r.skipped = map[string]map[string][]run{}, map[string]map[string]string{}
	r.cpuCap = describeCPUCap("/sys/fs/cgroup/cpu", 0.15)
	r.rangeReplicas = 3
	so := func(put, rng float64, members int) run {
		x := &scaleOutRun{rng: measurement{rps: rng, pct: map[float64]float64{99: 0.02}}}
		for i := 0; i < members; i++ {
			x.disk = append(x.disk, int64(30-members)<<20)
			x.apparent = append(x.apparent, int64(20-members)<<20)
			x.rss = append(x.rss, 100<<20)
			x.throttle = append(x.throttle, 0.5)
		}
		return run{m: measurement{rps: put, pct: map[float64]float64{99: 0.01}}, rss: 100 << 20, scale: x}
	}
	for i := 0; i < 3; i++ {
		r.add("scale-out", "cairn-3", so(1200, 3000, 3))
		r.add("scale-out", "cairn-6", so([]float64{1100, 1300, 1000}[i], 3000, 6))
		r.add("scale-out", "cairn-sharded-3", so(250, 2000, 3))
		r.add("scale-out", "cairn-sharded-6", so([]float64{500, 450, 400}[i], 3000, 6))
		r.add("scale-out", "cairn-sharded-9", so(600, 4000, 9))
	}
	return r
}

func TestWriteReportScaleOut(t *testing.T) {
	var b strings.Builder
	if err := writeReport(&b, fakeScaleOut(), []string{"scale-out.png"}); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"## Scale-out (issue 21)",
		"`cpu.cfs_quota_us=15000` (0.15 of one core)",
		"`--range-replicas 3`, `--placement-replicas 3`, 4 ranges per member",
		"36 `benchmark range <key> --consistency l` processes at once",
		// Sharded first, each mode by size.
		"| cairn-sharded-3 | 3 | 250 | 10.0 | 2,000 | 20.0 |\n| cairn-sharded-6 | 6 | 450 | 10.0 | 3,000 | 20.0 |\n| cairn-sharded-9 | 9 | 600 | 10.0 | 4,000 | 20.0 |\n| cairn-3 | 3 | 1,200 |",
		// Per-round ratios 2.0, 1.8, 1.6 → 1.8: pass; single-group 1100/1200, 1300/1200, 1000/1200 → 0.92: pass.
		"| sharded | 1.80× | 2.40× | 1.50× | 2.00× | ≥ 1.8×: **pass** |",
		"| single-group | 0.92× | n/a | 1.00× | n/a | ≤ 1.0×: **pass** |",
		"| cairn-sharded-6 | 24.0, 24.0, 24.0, 24.0, 24.0, 24.0 | 144.0 | 14.0, 14.0, 14.0, 14.0, 14.0, 14.0 | 84.0 | 100, 100, 100, 100, 100, 100 | 50%, 50%, 50%, 50%, 50%, 50% |",
		"![scale-out](scale-out.png)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q; report:\n%s", want, out)
		}
	}
	// Only scale-out ran: no empty main or percentile table.
	for _, unwanted := range []string{"| scenario |", "Latency percentiles", "Targets (issue 7)"} {
		if strings.Contains(out, unwanted) {
			t.Errorf("report has %q; report:\n%s", unwanted, out)
		}
	}
}

func TestWriteReportScaleOutSkipped(t *testing.T) {
	r := fakeScaleOut()
	r.runs = map[string]map[string][]run{}
	r.cpuCap = "not set: the harness is not root (euid 1000)"
	for _, s := range r.systems {
		r.skip("scale-out", s.name, "the harness is not root (euid 1000)")
	}
	var b strings.Builder
	if err := writeReport(&b, r, nil); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"- CPU cap: not set: the harness is not root (euid 1000).", "No scale-out system ran", "- scale-out on cairn-6: skipped, the harness is not root (euid 1000)."} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("report lacks %q; report:\n%s", want, b.String())
		}
	}
}

func TestChartsScaleOut(t *testing.T) {
	names, err := writeCharts(t.TempDir(), fakeScaleOut())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(names, []string{"scale-out.png"}) {
		t.Errorf("charts = %v, want scale-out.png only", names)
	}
}
