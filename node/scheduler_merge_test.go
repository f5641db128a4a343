package node_test

import (
	"context"
	"fmt"
	"math/rand"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
)

// TestSchedulerMerges: three members, one range split at "m" while both
// halves hold more than RangeMinBytes together: the scheduler leaves them
// apart. Every key deleted, the revisions compacted and pebble's tables
// compacted, the two are smaller together than RangeMinBytes and merge
// on their own; the merged range serves both halves' keys, and the merge
// is counted in cairn_range_merges_total{outcome="merged"}.
func TestSchedulerMerges(t *testing.T) {
	cl := nodetest.Start(t, 3, nodetest.Sharded(), nodetest.RangeReplicas(3), nodetest.PlacementReplicas(3),
		nodetest.Edit(func(c *node.Config) {
			c.PlacementScheduler = true
			c.SchedulerWindow = 200 * time.Millisecond
			c.RangeMaxBytes = 1 << 30 // no split of its own
			c.RangeMinBytes = 64 << 10
		}))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := cl.Client(0)
	var keys []string
	for i := range 60 {
		keys = append(keys, fmt.Sprintf("a%02d", i), fmt.Sprintf("n%02d", i))
	}
	for _, k := range keys {
		b := make([]byte, 1<<10) // random: pebble compresses its tables
		_, _ = rand.Read(b)
		if _, err := c.Put(ctx, k, string(b)); err != nil {
			t.Fatal(err)
		}
	}
	// The sizes are pebble's estimates of its tables: flush the writes
	// before the split, or the halves would look empty.
	defrag := func() {
		t.Helper()
		for _, u := range cl.URLs() {
			if _, err := c.Defragment(ctx, u); err != nil {
				t.Fatal(err)
			}
		}
	}
	defrag()
	split, err := cl.Node(0).SplitRange(ctx, []byte("m"))
	if err != nil {
		t.Fatalf("split at m: %v", err)
	}
	if len(split) != 2 {
		t.Fatalf("the split made %d ranges, want 2", len(split))
	}
	left := split[0].Id
	// The halves hold about 60 KiB each: no merge while they do. Give the
	// scheduler rounds to get it wrong, counted by its reports.
	reportsBefore := schedulerReports(cl)
	nodetest.WaitFor(ctx, t, func() error {
		if n := schedulerReports(cl) - reportsBefore; n < 5 {
			return fmt.Errorf("%d scheduler rounds since the split", n)
		}
		return nil
	})
	if n := len(rangeMapOf(t, cl)); n != 2 {
		t.Fatalf("%d ranges while the halves held 120 KiB together, want 2", n)
	}

	// Empty both halves, compact the revisions away, then the tables.
	del, err := c.Delete(ctx, "", clientv3.WithFromKey())
	if err != nil {
		t.Fatal(err)
	}
	if del.Deleted != int64(len(keys)) {
		t.Fatalf("deleted %d keys, want %d", del.Deleted, len(keys))
	}
	if _, err := c.Compact(ctx, del.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	defrag()
	nodetest.WaitFor(ctx, t, func() error {
		ds := rangeMapOf(t, cl)
		if len(ds) != 1 {
			return fmt.Errorf("%d ranges: no merge yet", len(ds))
		}
		if ds[0].Id != left || len(ds[0].Start) != 0 || len(ds[0].End) != 0 {
			return fmt.Errorf("range %d [%q, %q): want range %d over the key space", ds[0].Id, ds[0].Start, ds[0].End, left)
		}
		return nil
	})
	nodetest.WaitFor(ctx, t, func() error {
		for i := range 3 {
			if n := len(cl.Node(i).LocalReplicas()); n != 1 {
				return fmt.Errorf("member %d runs %d replicas, want 1", i, n)
			}
		}
		return nil
	})
	for _, k := range []string{"b", "z"} {
		if _, err := c.Put(ctx, k, "after"); err != nil {
			t.Fatalf("put %s after the merge: %v", k, err)
		}
	}
	r, err := cl.Client(1).Get(ctx, "", clientv3.WithFromKey())
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Kvs) != 2 {
		t.Fatalf("%d keys after the merge, want b and z", len(r.Kvs))
	}
	// Counted once the driver returns: after the map's end_merge, a step
	// after the map drops the right range.
	nodetest.WaitFor(ctx, t, func() error {
		merged := 0.0
		for _, u := range cl.URLs() {
			for _, m := range scrape(t, u+"/metrics")["cairn_range_merges_total"].GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "outcome" && l.GetValue() == "merged" {
						merged += m.GetCounter().GetValue()
					}
				}
			}
		}
		if merged < 1 {
			return fmt.Errorf("cairn_range_merges_total{outcome=merged} = %v over the members, want at least 1", merged)
		}
		return nil
	})
}

// schedulerReports is the scheduler rounds every member ran (while it led
// the placement group).
func schedulerReports(cl *nodetest.Cluster) int64 {
	var sum int64
	for i := range 3 {
		_, _, r := cl.Node(i).SchedulerAsks()
		sum += r
	}
	return sum
}
