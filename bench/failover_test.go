package main

import (
	"errors"
	"math"
	"testing"
	"time"
)

// TestSummarizeFailover: a load of one put and one get every 10 ms that
// stops 1.5 s after the kill and resumes, with one failed put at the kill,
// flows again 1.5 s after it, with one write error and the rate before.
func TestSummarizeFailover(t *testing.T) {
	before, after := 3*time.Second, 5*time.Second
	var ops []failoverOp
	for at := -before; at < after; at += 10 * time.Millisecond {
		if at >= 0 && at < 1500*time.Millisecond {
			continue
		}
		ops = append(ops, failoverOp{put: true, at: at}, failoverOp{at: at})
	}
	ops = append(ops, failoverOp{put: true, at: 5 * time.Millisecond, err: errors.New("etcdserver: request timed out")})
	r := summarizeFailover(ops, before, after)
	if math.Abs(r.rate-200) > 2 {
		t.Errorf("rate before the kill = %v, want 200", r.rate)
	}
	if r.writesBack != 1.5 || r.readsBack != 1.5 {
		t.Errorf("flowing again after %v s (writes), %v s (reads), want 1.5", r.writesBack, r.readsBack)
	}
	if r.writeErrs != 1 || r.readErrs != 0 || r.errsBefore != 0 || r.firstErr != "etcdserver: request timed out" {
		t.Errorf("errors: %d write, %d read, %d before (first %q), want 1 write", r.writeErrs, r.readErrs, r.errsBefore, r.firstErr)
	}
	if len(r.series) != int((before+after)/failoverChartBucket) {
		t.Errorf("%d points in the chart's series, want one per %v", len(r.series), failoverChartBucket)
	}
}

// TestFlowingAgain: the first bucket at the share that begins a steady
// second counts, a later dip does not undo it, and a load that never comes
// back is NaN.
func TestFlowingAgain(t *testing.T) {
	for _, tc := range []struct {
		buckets []float64
		want    float64
	}{
		{[]float64{5, 5, 0, 0, 0, 5, 5}, math.NaN()},
		{[]float64{0, 0, 4, 5, 5, 1, 5, 5, 5, 5, 5, 5, 0, 0}, 0.2},
		{[]float64{0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4}, 1.0},
	} {
		got := flowingAgain(tc.buckets, 3)
		if got != tc.want && !(math.IsNaN(got) && math.IsNaN(tc.want)) {
			t.Errorf("flowingAgain(%v, 3) = %v, want %v", tc.buckets, got, tc.want)
		}
	}
}
