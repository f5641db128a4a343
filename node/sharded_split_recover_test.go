package node_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
)

// TestShardedSplitCutShort: a split stopped where a crash may stop it is
// finished when the member starts again — after the range map named the
// new range but before the range split (the map is ahead: the split is
// proposed again), or after the range split but before the new range
// started here (it starts as the split would have started it). Either
// way the member starts, the range map and the member's ranges agree, and
// every key written before reads as written and takes writes after.
func TestShardedSplitCutShort(t *testing.T) {
	for _, stage := range []string{"map", "start"} {
		t.Run(stage, func(t *testing.T) {
			cl := nodetest.Start(t, 1, nodetest.Sharded("t"))
			n := cl.Node(0)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cli := cl.Client(0)
			keys := []string{"a", "f", "m", "p", "s", "t", "z"}
			for _, k := range keys {
				if _, err := cli.Put(ctx, k, "before"); err != nil {
					t.Fatal(err)
				}
			}
			restore := n.CutSplitsShort(stage)
			made, err := n.SplitRange(ctx, []byte("m"))
			restore()
			if err != nil {
				t.Fatalf("split at m, cut short at %s: %v", stage, err)
			}
			child := made[1].Id
			if err := cl.Stop(0); err != nil {
				t.Fatal(err)
			}

			n = cl.RestartWith(0, func(c *node.Config) { c.InitialSplitKeys = nil })
			cli = cl.Client(0)
			want := fmt.Sprint([]string{"", "m", "t"})
			nodetest.WaitFor(ctx, t, func() error {
				var starts []string
				found := false
				for _, r := range n.Ranges() {
					starts = append(starts, r.Start)
					found = found || (r.ID == child && r.Start == "m" && r.End == "t")
				}
				if got := fmt.Sprint(starts); !found || got != want {
					return fmt.Errorf("after the restart the member's ranges start at %s, want %s with range %d at m", got, want, child)
				}
				return nil
			})
			// The range split in the store too, not only in the map.
			if here, err := n.SplitHere(child); err != nil || !here {
				t.Fatalf("range %d is in the map and runs, but its split applied to the store: %v (%v)", child, here, err)
			}
			for _, k := range keys {
				if _, err := cli.Put(ctx, k+"2", "after"); err != nil {
					t.Fatalf("put %s2 after the restart: %v", k, err)
				}
			}
			resp, err := cli.Get(ctx, "", clientv3.WithPrefix())
			if err != nil {
				t.Fatal(err)
			}
			values := map[string]string{}
			for _, kv := range resp.Kvs {
				values[string(kv.Key)] = string(kv.Value)
			}
			for _, k := range keys {
				if values[k] != "before" || values[k+"2"] != "after" {
					t.Fatalf("after the restart: %s=%q, %s2=%q; want before and after (all: %v)", k, values[k], k, values[k+"2"], values)
				}
			}
			if len(values) != 2*len(keys) {
				t.Fatalf("after the restart %d keys, want %d: %v", len(values), 2*len(keys), values)
			}
			// The finished split's range splits again as any range.
			if _, err := n.SplitRange(ctx, []byte("p")); err != nil {
				t.Fatalf("split the finished split's range at p: %v", err)
			}
		})
	}
}

// TestShardedSplitCutShortCluster: in a three-member cluster, the member
// that was splitting stops after the range map named the new range and
// before the range split; the others go on serving (the range whole) and
// the split is finished, on every member, when it starts again.
func TestShardedSplitCutShortCluster(t *testing.T) {
	cl := nodetest.Start(t, 3, nodetest.Sharded("t"))
	nodes := cl.Nodes()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	first := cl.Client(0)
	if _, err := first.Put(ctx, "p", "before"); err != nil {
		t.Fatal(err)
	}
	restore := nodes[0].CutSplitsShort("map")
	made, err := nodes[0].SplitRange(ctx, []byte("m"))
	restore()
	if err != nil {
		t.Fatal(err)
	}
	child := made[1].Id
	if err := cl.Stop(0); err != nil {
		t.Fatal(err)
	}
	// The ranges it led elect new leaders first: until then a put may
	// answer "no leader", as etcd's does.
	other := cl.Client(1)
	nodetest.WaitFor(ctx, t, func() error {
		_, err := other.Put(ctx, "q", "while-down")
		if err != nil && (!errors.Is(err, rpctypes.ErrNoLeader) || ctx.Err() != nil) {
			t.Fatalf("put while the splitting member is down: %v", err)
		}
		return err
	})
	cl.Restart(0)
	for i, n := range cl.Nodes() {
		nodetest.WaitFor(ctx, t, func() error {
			found := false
			for _, r := range n.Ranges() {
				found = found || (r.ID == child && r.Start == "m" && r.End == "t")
			}
			if here, err := n.SplitHere(child); found && here && err == nil {
				return nil
			}
			return fmt.Errorf("member %d does not run range %d split off at m: %+v", i, child, n.Ranges())
		})
		resp, err := cl.Client(i).Get(ctx, "", clientv3.WithPrefix())
		if err != nil || len(resp.Kvs) != 2 || string(resp.Kvs[0].Value) != "before" || string(resp.Kvs[1].Value) != "while-down" {
			t.Fatalf("member %d after the split finished: %v, %v", i, resp, err)
		}
	}
}
