package node_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
)

// TestShardedSplitWhileAway: a member away while a range splits — down,
// or up but cut off from the others — whose logs are compacted past the
// split meanwhile (so it catches up from a snapshot of the range taken
// after the split, and never applies the split itself) runs the new range
// once it is back and serves every key as the others do. The member away
// is the one leading the range as it splits: the split, asked for
// meanwhile, finishes in one call.
func TestShardedSplitWhileAway(t *testing.T) {
	t.Run("down", func(t *testing.T) { splitWhileAway(t, false) })
	t.Run("cut off", func(t *testing.T) { splitWhileAway(t, true) })
}

func splitWhileAway(t *testing.T, cutOff bool) {
	opts := []nodetest.Option{nodetest.Sharded("t"), nodetest.Edit(func(c *node.Config) { c.SnapshotCount = 20 })}
	if cutOff {
		opts = append(opts, nodetest.Partitionable())
	}
	cl := nodetest.Start(t, 3, opts...)
	nodes := cl.Nodes()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	wait := func(what string, cond func() bool) {
		t.Helper()
		nodetest.WaitFor(ctx, t, func() error {
			if !cond() {
				return fmt.Errorf("timed out waiting until %s", what)
			}
			return nil
		})
	}
	away := -1
	wait("range 1 has a leader", func() bool {
		for _, r := range nodes[0].Ranges() {
			for i, n := range nodes {
				if r.ID == 1 && r.Leader == n.MemberID() {
					away = i
				}
			}
		}
		return away >= 0
	})
	up := nodes[(away+1)%3]
	first := cl.Client((away + 1) % 3)
	for _, k := range []string{"a", "n", "u"} {
		if _, err := first.Put(ctx, k, "before"); err != nil {
			t.Fatal(err)
		}
	}
	if cutOff {
		cl.Partition(away)
	} else if err := cl.Stop(away); err != nil {
		t.Fatal(err)
	}
	made, err := up.SplitRange(ctx, []byte("m"))
	if err != nil {
		t.Fatalf("split while a member is away: %v", err)
	}
	child := made[1].Id
	// The other ranges it led elect new leaders first: until then a
	// write may answer "no leader" (as etcd's does) or time out; what is
	// under test is the member's return.
	for i := range 120 {
		nodetest.WaitFor(ctx, t, func() error {
			if _, err := first.Put(ctx, fmt.Sprintf("%c%d", "cpv"[i%3], i), "while-away"); err != nil {
				return fmt.Errorf("put while a member is away: %v", err)
			}
			return nil
		})
	}
	back := nodes[away]
	if cutOff {
		cl.Heal()
	} else {
		back = cl.Restart(away)
	}
	wait(fmt.Sprintf("the member back runs range %d split off at m while it was away", child), func() bool {
		found := false
		for _, r := range back.Ranges() {
			found = found || (r.ID == child && r.Start == "m" && r.End == "t")
		}
		here, err := back.SplitHere(child)
		return found && here && err == nil
	})
	want, err := first.Get(ctx, "", clientv3.WithFromKey())
	if err != nil {
		t.Fatal(err)
	}
	c := cl.Client(away)
	wait(fmt.Sprintf("the member back serves the %d keys the others do", len(want.Kvs)), func() bool {
		got, err := c.Get(ctx, "", clientv3.WithFromKey(), clientv3.WithSerializable())
		return err == nil && fmt.Sprint(got.Kvs) == fmt.Sprint(want.Kvs)
	})
	if _, err := c.Put(ctx, "o", "after"); err != nil {
		t.Fatal(err)
	}
}
