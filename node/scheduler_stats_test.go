package node_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
)

// TestSchedulerOneStatsCallPerMember: three members hold six ranges. The
// placement scheduler gathers its report with one RangeStats call per
// member per round, whatever the number of ranges, and no ChangeRange
// STATS at all (counted where they are answered). A member that answers
// RangeStats Unimplemented (one that predates it) is asked by ChangeRange
// STATS instead, its disk use and the figures of the ranges it leads, and
// the others stay at one call a round; with every member so, the scheduler asks each range's
// figures range by range, as before the batched call.
func TestSchedulerOneStatsCallPerMember(t *testing.T) {
	cl := nodetest.Start(t, 3, nodetest.Sharded("c", "f", "i", "m", "p"), nodetest.RangeReplicas(3), nodetest.PlacementReplicas(3),
		nodetest.Edit(func(c *node.Config) {
			c.PlacementScheduler = true
			c.SchedulerWindow = 200 * time.Millisecond
		}))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const members, ranges = 3, 6
	if n := len(rangeMapOf(t, cl)); n != ranges {
		t.Fatalf("%d ranges, want %d", n, ranges)
	}
	type counts struct {
		reports         int64 // Σ over the members: whichever leads the placement group
		batched, single [members]int64
	}
	read := func() (c counts) {
		for i := range members {
			b, s, r := cl.Node(i).SchedulerAsks()
			c.reports += r
			c.batched[i], c.single[i] = b, s
		}
		return c
	}
	// rounds waits for at least n more rounds and returns the counts'
	// growth meanwhile. A round may be under way at either read: a
	// member's calls are within one of the rounds.
	rounds := func(n int64) (d counts) {
		before := read()
		nodetest.WaitFor(ctx, t, func() error {
			if got := read().reports - before.reports; got < n+1 {
				return fmt.Errorf("%d rounds of %d", got, n+1)
			}
			return nil
		})
		after := read()
		d.reports = after.reports - before.reports
		for i := range members {
			d.batched[i], d.single[i] = after.batched[i]-before.batched[i], after.single[i]-before.single[i]
		}
		return d
	}
	near := func(got, want int64) bool { return got >= want-1 && got <= want+1 }

	rounds(1) // the scheduler is running
	d := rounds(5)
	for i := range members {
		if !near(d.batched[i], d.reports) || d.single[i] != 0 {
			t.Errorf("member %d: %d RangeStats and %d ChangeRange STATS calls in %d rounds; want one RangeStats a round and no STATS",
				i, d.batched[i], d.single[i], d.reports)
		}
	}
	t.Logf("%d rounds: RangeStats calls by member %v, STATS calls %v", d.reports, d.batched, d.single)

	// Member 1 predates RangeStats: its disk use by STATS of range 0.
	cl.Node(1).PredateRangeStats(true)
	rounds(1)
	d = rounds(5)
	for _, i := range []int{0, 2} {
		if !near(d.batched[i], d.reports) || d.single[i] != 0 {
			t.Errorf("member %d: %d RangeStats and %d ChangeRange STATS calls in %d rounds; want one RangeStats a round and no STATS",
				i, d.batched[i], d.single[i], d.reports)
		}
	}
	// Its disk use, and the figures of the ranges it leads (no other
	// holder's are its leader's).
	if lo, hi := d.reports-1, (d.reports+1)*(1+ranges); d.batched[1] > 1 || d.single[1] < lo || d.single[1] > hi {
		t.Errorf("member 1, predating RangeStats: %d RangeStats and %d ChangeRange STATS calls in %d rounds; want none and %d..%d",
			d.batched[1], d.single[1], d.reports, lo, hi)
	}
	t.Logf("member 1 predates RangeStats; %d rounds: RangeStats calls by member %v, STATS calls %v", d.reports, d.batched, d.single)

	// Every member predates it: each range's figures by STATS, from one
	// of its holders, and each member's disk use.
	for i := range members {
		cl.Node(i).PredateRangeStats(true)
	}
	rounds(1)
	d = rounds(5)
	var single int64
	for i := range members {
		single += d.single[i]
		if d.batched[i] != 0 {
			t.Errorf("member %d answered %d RangeStats calls while it predates them", i, d.batched[i])
		}
	}
	if lo := (d.reports - 1) * (members + ranges); single < lo {
		t.Errorf("%d ChangeRange STATS calls in %d rounds with every member predating RangeStats; want at least %d", single, d.reports, lo)
	}
	t.Logf("every member predates RangeStats; %d rounds: STATS calls by member %v", d.reports, d.single)
}
