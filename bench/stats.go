package main

import (
	"math"
	"slices"
)

// median returns the median of xs, NaN for none. NaN inputs (a failed run)
// are ignored.
func median(xs []float64) float64 {
	var v []float64
	for _, x := range xs {
		if !math.IsNaN(x) {
			v = append(v, x)
		}
	}
	if len(v) == 0 {
		return math.NaN()
	}
	slices.Sort(v)
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

// medianRatio returns the median of the per-round ratios a[i]/b[i]. Rounds
// where either side failed (NaN) or b is zero are left out: pairing runs of the
// same round is the point of alternating systems, so an unpaired run does not
// count.
func medianRatio(a, b []float64) float64 {
	var r []float64
	for i := 0; i < len(a) && i < len(b); i++ {
		if math.IsNaN(a[i]) || math.IsNaN(b[i]) || b[i] == 0 {
			continue
		}
		r = append(r, a[i]/b[i])
	}
	return median(r)
}
