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

// TestShardedAutoCompactionEveryRange: in sharded mode automatic
// compaction compacts every range, as a client's Compact does (DESIGN.md
// "Compaction ... applies cluster-wide"), not range 1 alone: a key's older
// revision, in the first range and in the second, is soon refused as
// compacted. The retention is short (100ms, on the wall clock), so the
// compactor soon compacts past both keys' first writes.
func TestShardedAutoCompactionEveryRange(t *testing.T) {
	cl := nodetest.Start(t, 1, nodetest.Sharded("m"), nodetest.Edit(func(c *node.Config) {
		c.AutoCompactionMode, c.AutoCompactionRetention = "periodic", "100ms"
	}))
	cli := cl.Client(0)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// "a" is in range 1 ([, m)), "z" in range 2 ([m, )); old holds each
	// one's first write's revision.
	old := map[string]int64{}
	for _, k := range []string{"a", "z"} {
		resp, err := cli.Put(ctx, k, "old")
		if err != nil {
			t.Fatal(err)
		}
		old[k] = resp.Header.Revision
	}
	for _, k := range []string{"a", "z"} {
		if _, err := cli.Put(ctx, k, "new"); err != nil {
			t.Fatal(err)
		}
	}
	nodetest.WaitFor(ctx, t, func() error {
		for k, rev := range old {
			if _, err := cli.Get(ctx, k, clientv3.WithRev(rev)); !errors.Is(err, rpctypes.ErrCompacted) {
				return fmt.Errorf("read %s at its first write's revision %d: %v, want %v", k, rev, err, rpctypes.ErrCompacted)
			}
		}
		return nil
	})
}

// TestShardedAutoCompactionPastLeaderlessRange: a range without a leader
// (range 2, stopped on two of three members) does not stop automatic
// compaction of the ranges after it: range 3's older revision is soon
// refused as compacted, as is range 1's. Each round gives range 2 a
// request timeout (shortened to 1s here; etcd's is 7s) before passing over
// it, and a failed round retries at the next sample, the window of 11
// samples moving by one per round: this takes up to about 11 rounds (15s),
// mostly waiting, so it runs in parallel with the package's other waiting
// tests.
func TestShardedAutoCompactionPastLeaderlessRange(t *testing.T) {
	t.Parallel()
	cl := nodetest.Start(t, 3, nodetest.Sharded("m", "t"), nodetest.Edit(func(c *node.Config) {
		c.AutoCompactionMode, c.AutoCompactionRetention = "periodic", "100ms"
		c.RequestTimeout = time.Second
	}))
	var second uint64
	for _, r := range cl.Node(0).Ranges() {
		if r.Start == "m" {
			second = r.ID
		}
	}
	if second == 0 {
		t.Fatalf("no range starts at m: %+v", cl.Node(0).Ranges())
	}
	// Range 2 loses its leader before anything is written, so no
	// compaction covers the writes below while it still had one.
	for i := range 2 {
		if err := cl.Node(i).StopRangeReplica(second); err != nil {
			t.Fatal(err)
		}
	}
	cli := cl.Client(2)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// "a" is in range 1 ([, m)), "z" in range 3 ([t, )).
	old := map[string]int64{}
	for _, k := range []string{"a", "z"} {
		resp, err := cli.Put(ctx, k, "old")
		if err != nil {
			t.Fatal(err)
		}
		old[k] = resp.Header.Revision
	}
	for _, k := range []string{"a", "z"} {
		if _, err := cli.Put(ctx, k, "new"); err != nil {
			t.Fatal(err)
		}
	}
	nodetest.WaitFor(ctx, t, func() error {
		for k, rev := range old {
			if _, err := cli.Get(ctx, k, clientv3.WithRev(rev)); !errors.Is(err, rpctypes.ErrCompacted) {
				return fmt.Errorf("read %s at its first write's revision %d: %v, want %v", k, rev, err, rpctypes.ErrCompacted)
			}
		}
		return nil
	})
}
