package main

import (
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseProcStat(t *testing.T) {
	// Fields after the command: state ppid pgrp session tty tpgid flags
	// minflt cminflt majflt cmajflt utime stime cutime cstime …
	stat := "4242 (cairn (a) b) S 1 4242 4242 0 -1 4194304 1200 0 3 0 1500 250 7 8 20 0 14 0 100 0 0\n"
	got, err := parseProcStat(stat)
	if err != nil || got != 1750 {
		t.Fatalf("parseProcStat = %d, %v; want 1750 (utime 1500 + stime 250)", got, err)
	}
	for _, bad := range []string{"", "4242 cairn S 1", "4242 (cairn) S 1 2 3", "4242 (cairn) S 1 4242 4242 0 -1 4194304 1200 0 3 0 x 250"} {
		if _, err := parseProcStat(bad); err == nil {
			t.Errorf("parseProcStat(%q) succeeded", bad)
		}
	}
}

func TestParseVmRSS(t *testing.T) {
	status := "Name:\tcairn\nVmHWM:\t  200000 kB\nVmRSS:\t  123456 kB\nThreads:\t14\n"
	got, err := parseVmRSS(status)
	if err != nil || got != 123456*1024 {
		t.Fatalf("parseVmRSS = %v, %v; want %d", got, err, 123456*1024)
	}
	if _, err := parseVmRSS("Name:\tcairn\n"); err == nil {
		t.Error("parseVmRSS without VmRSS succeeded")
	}
}

func TestMetricValue(t *testing.T) {
	text := `# HELP go_goroutines Number of goroutines that currently exist.
# TYPE go_goroutines gauge
go_goroutines 3012
go_memstats_heap_inuse_bytes_extra 1
go_memstats_heap_inuse_bytes 5.24288e+07
grpc_server_handled_total{grpc_code="OK"} 9
`
	for name, want := range map[string]float64{"go_goroutines": 3012, "go_memstats_heap_inuse_bytes": 52428800} {
		got, err := metricValue(text, name)
		if err != nil || got != want {
			t.Errorf("metricValue(%s) = %v, %v; want %v", name, got, err, want)
		}
	}
	if _, err := metricValue(text, "grpc_server_handled_total"); err == nil {
		t.Error("metricValue found an unlabelled sample of a labelled metric")
	}
}

func TestParseRangeCounts(t *testing.T) {
	got, err := parseRangeCounts("1000, 1,100,100")
	if err != nil || !slices.Equal(got, []int{1, 100, 1000}) {
		t.Fatalf("parseRangeCounts = %v, %v; want [1 100 1000]", got, err)
	}
	if got, err := parseRangeCounts("10000"); err != nil || !slices.Equal(got, []int{10000}) {
		t.Errorf("parseRangeCounts(10000) = %v, %v", got, err)
	}
	for _, bad := range []string{"", "0", "-3", "1,x", "10001", "1k"} {
		if _, err := parseRangeCounts(bad); err == nil {
			t.Errorf("parseRangeCounts(%q) succeeded", bad)
		}
	}
}

func TestIdleSplitKeys(t *testing.T) {
	if got := idleSplitKeys(1); got != "" {
		t.Errorf("idleSplitKeys(1) = %q; want none", got)
	}
	if got := idleSplitKeys(3); got != "r00001,r00002" {
		t.Errorf("idleSplitKeys(3) = %q", got)
	}
	for _, n := range []int{100, idleMaxRanges} {
		s := idleSplitKeys(n)
		keys := strings.Split(s, ",")
		if len(keys) != n-1 {
			t.Fatalf("idleSplitKeys(%d): %d keys; want %d", n, len(keys), n-1)
		}
		if !slices.IsSorted(keys) || len(slices.Compact(slices.Clone(keys))) != len(keys) {
			t.Fatalf("idleSplitKeys(%d): keys do not strictly ascend", n)
		}
		// One argument of the command line: Linux caps it at 128 KiB.
		if len(s) >= 128<<10 {
			t.Fatalf("idleSplitKeys(%d) is %d bytes, too long for one argument", n, len(s))
		}
	}
}

func TestPerRange(t *testing.T) {
	base := idleResult{ranges: 1, cpu: 0.02, rss: 40e6, heap: 10e6, goroutines: 100}
	r := idleResult{ranges: 101, cpu: 0.12, rss: 120e6, heap: 60e6, goroutines: 400}
	d, ok := perRange(base, r)
	if !ok {
		t.Fatal("perRange: not ok")
	}
	want := idleDelta{cpu: 0.001, rss: 0.8e6, heap: 0.5e6, goroutines: 3}
	for _, c := range []struct {
		name      string
		got, want float64
	}{{"cpu", d.cpu, want.cpu}, {"rss", d.rss, want.rss}, {"heap", d.heap, want.heap}, {"goroutines", d.goroutines, want.goroutines}} {
		if math.Abs(c.got-c.want) > 1e-9*math.Max(1, c.want) {
			t.Errorf("perRange %s = %v; want %v", c.name, c.got, c.want)
		}
	}
	if _, ok := perRange(base, base); ok {
		t.Error("perRange of the baseline itself is ok")
	}
	if _, ok := perRange(base, idleResult{ranges: 100, err: "x"}); ok {
		t.Error("perRange of a failed run is ok")
	}
}

func TestCPUShare(t *testing.T) {
	// 50 ticks of 100 Hz in 20 s: 0.5 s of CPU, 2.5% of a core.
	if got := cpuShare(50, 100, 20*time.Second); math.Abs(got-0.025) > 1e-12 {
		t.Errorf("cpuShare = %v; want 0.025", got)
	}
	if got := cpuShare(50, 100, 0); !math.IsNaN(got) {
		t.Errorf("cpuShare over no time = %v; want NaN", got)
	}
}

func TestParseRangeSummary(t *testing.T) {
	s, err := parseRangeSummary([]byte(`{"summary":{"ranges":1000,"keys":0,"leaderless":3,"leaders":[]},"ranges":[{"id":1}],"more":999}`))
	if err != nil || s != (idleSummary{Ranges: 1000, Leaderless: 3}) {
		t.Fatalf("parseRangeSummary = %+v, %v", s, err)
	}
	if _, err := parseRangeSummary([]byte(`[{"id":1}]`)); err == nil {
		t.Error("parseRangeSummary of an unpaged answer succeeded")
	}
}

func TestIdleReportAndChart(t *testing.T) {
	results := []idleResult{
		{ranges: 1, ready: time.Second, allLed: time.Second, cpu: 0.02, rss: 40e6, heap: 10e6, goroutines: 100, endRanges: 1},
		{ranges: 100, ready: 2 * time.Second, allLed: 3 * time.Second, cpu: 0.0398, rss: 100e6, heap: 40e6, goroutines: 400, endRanges: 100},
		{ranges: 1000, err: "not every range led 5m0s after exec"},
	}
	dir := t.TempDir()
	chart, err := idleChart(dir, results)
	if err != nil || chart != "idle.png" {
		t.Fatalf("idleChart = %q, %v", chart, err)
	}
	if st, err := os.Stat(filepath.Join(dir, chart)); err != nil || st.Size() == 0 {
		t.Fatalf("idle.png: %v", err)
	}
	cfg := idleConfig{ranges: []int{1, 100, 1000}, window: 20 * time.Second, settle: 10 * time.Second}
	rep := idleReport(cfg, results, chart, machine{cpus: 2}, "abc", time.Unix(0, 0), time.Minute)
	// 100 ranges: (3.98-2)/99 = 0.020% of a core (pass), (100-40)/99 =
	// 0.606 MB RSS (pass).
	for _, want := range []string{"-ranges 1,100,1000 -window 20s", "| 100 | 2.0 s | 3.0 s | 3.98% | 100.0 MB | 40.0 MB | 400 | 100 / 0 |",
		"| 100 | 0.020% | **pass** | 0.606 MB | **pass** | 0.303 MB | 3.0 |", "| 1000 | failed: not every range led", "![idle member"} {
		if !strings.Contains(rep, want) {
			t.Errorf("report lacks %q:\n%s", want, rep)
		}
	}
}
