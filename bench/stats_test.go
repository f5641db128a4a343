package main

import (
	"math"
	"testing"
)

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
		{[]float64{5}, 5},
		{[]float64{nan, 7, 1, nan}, 4}, // failed rounds are left out
	} {
		if got := median(tc.in); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
	if got := median(nil); !math.IsNaN(got) {
		t.Errorf("median(nil) = %v, want NaN", got)
	}
}

func TestMedianRatio(t *testing.T) {
	// Per-round ratios 2, 1, 4: the median is 2, not median(a)/median(b) = 1.5.
	a := []float64{20, 10, 40}
	b := []float64{10, 10, 10}
	if got := medianRatio(a, b); got != 2 {
		t.Errorf("medianRatio = %v, want 2", got)
	}
	// An unpaired round (either side failed, or a zero baseline) does not count.
	a = []float64{20, nan, 30, 5}
	b = []float64{10, 10, nan, 0}
	if got := medianRatio(a, b); got != 2 {
		t.Errorf("medianRatio with gaps = %v, want 2", got)
	}
	if got := medianRatio([]float64{nan}, []float64{1}); !math.IsNaN(got) {
		t.Errorf("medianRatio with no pair = %v, want NaN", got)
	}
}

func TestTargetMet(t *testing.T) {
	put := target{scenario: "put", sys: "cairn", baseline: "etcd", min: 1.5}
	if put.met(1.49) || !put.met(1.5) {
		t.Errorf("throughput target %v: wrong boundary", put)
	}
	watch := target{scenario: "watch-latency", sys: "cairn", baseline: "etcd", max: 1.0}
	if watch.met(1.01) || !watch.met(1.0) {
		t.Errorf("latency target %v: wrong boundary", watch)
	}
}

func TestFmtNum(t *testing.T) {
	for in, want := range map[float64]string{0: "0", 999: "999", 1000: "1,000", 1234567.4: "1,234,567", -12345: "-12,345"} {
		if got := fmtNum(in, 0); got != want {
			t.Errorf("fmtNum(%v) = %q, want %q", in, got, want)
		}
	}
}

func TestParseCount(t *testing.T) {
	for in, want := range map[string]int{"20000": 20000, "20k": 20000, "1M": 1_000_000, "10M": 10_000_000} {
		if got, err := parseCount(in); err != nil || got != want {
			t.Errorf("parseCount(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "x", "-1", "1G"} {
		if _, err := parseCount(in); err == nil {
			t.Errorf("parseCount(%q): no error", in)
		}
	}
}
