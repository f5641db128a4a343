package node_test

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/router"
	"github.com/cairn-kv/cairn/shard"
)

// heldTxn starts a txn writing v to keys through member i's coordinator,
// held after its prepares (Node.HoldTxnsAt) until release; done answers
// the client's result once it ends.
func heldTxn(ctx context.Context, t *testing.T, cl *nodetest.Cluster, i int, keys []string, v string) (release func(), done <-chan error) {
	t.Helper()
	reached, release := cl.Node(i).HoldTxnsAt(router.TxnStepPrepared)
	t.Cleanup(release)
	out := make(chan error, 1)
	cli := cl.Client(i)
	go func() {
		_, err := putAcross(ctx, cli, keys, v)
		out <- err
	}()
	select {
	case <-reached:
	case err := <-out:
		t.Fatalf("the transaction ended before its hold: %v", err)
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	}
	return release, out
}

// rangeAt is the id of the range holding key in member i's map.
func rangeAt(ctx context.Context, t *testing.T, n *node.Node, key string) uint64 {
	t.Helper()
	m, err := n.RangeMap(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range m {
		if bytes.Compare([]byte(key), d.Start) >= 0 && (len(d.End) == 0 || bytes.Compare([]byte(key), d.End) < 0) {
			return d.Id
		}
	}
	t.Fatalf("no range holds %q", key)
	return 0
}

// TestCrossRangeTxnPreparedSplit: a split of a range holding a prepared
// transaction's lock waits (its proposal is refused and tried again)
// until the lock is resolved, then splits; the transaction commits whole
// and the split's caller sees no error.
func TestCrossRangeTxnPreparedSplit(t *testing.T) {
	cl := nodetest.Start(t, 1, nodetest.Sharded("k", "t"))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	n := cl.Node(0)
	keys := []string{"a-s", "m-s", "r-s", "x-s"}
	if _, err := putAcross(ctx, cl.Client(0), keys, "old"); err != nil {
		t.Fatal(err)
	}
	middle := rangeAt(ctx, t, n, "m-s")
	release, txnDone := heldTxn(ctx, t, cl, 0, keys, "new")

	splitDone := make(chan error, 1)
	go func() {
		_, err := n.SplitRange(ctx, []byte("p"))
		splitDone <- err
	}()
	// The map names the new range; the range cannot split while the lock
	// stands.
	nodetest.WaitFor(ctx, t, func() error {
		if rangeAt(ctx, t, n, "p") == middle {
			return fmt.Errorf("the map has not split range %d yet", middle)
		}
		return nil
	})
	select {
	case err := <-splitDone:
		t.Fatalf("the split of a range holding a lock ended while the lock stands: %v", err)
	default:
	}
	if ids, err := n.RangeLocks(ctx, middle); err != nil || len(ids) != 1 {
		t.Fatalf("range %d's locks while the transaction is held: %x, %v", middle, ids, err)
	}
	release()
	if err := <-txnDone; err != nil {
		t.Fatalf("the held transaction: %v", err)
	}
	if err := <-splitDone; err != nil {
		t.Fatalf("the split that waited for the lock: %v", err)
	}
	committed, _ := settled(ctx, t, cl, cl.Client(0), keys, "old", "new")
	if !committed {
		t.Fatal("the transaction answered success but is not visible")
	}
	if rangeAt(ctx, t, n, "r-s") == rangeAt(ctx, t, n, "m-s") {
		t.Fatal("the split did not split")
	}
	if _, err := putAcross(ctx, cl.Client(0), keys, "later"); err != nil {
		t.Fatalf("a write across the split ranges: %v", err)
	}
}

// TestCrossRangeTxnPreparedMove: a participant's replica moves to another
// member while the transaction is prepared (the destination's snapshot
// carries the lock); released, the transaction ends whole, committed or
// aborted, with no lock left anywhere.
func TestCrossRangeTxnPreparedMove(t *testing.T) {
	cl := nodetest.Start(t, 3, nodetest.Sharded("k", "t"), nodetest.RangeReplicas(1), nodetest.PlacementReplicas(3))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	keys := []string{"a-v", "m-v", "x-v"}
	if _, err := putAcross(ctx, cl.Client(0), keys, "old"); err != nil {
		t.Fatal(err)
	}
	middle := rangeAt(ctx, t, cl.Node(0), "m-v")
	from := holders(t, cl, middle)[0]
	to := (from + 1) % 3
	coord := (from + 2) % 3 // neither end of the move
	release, txnDone := heldTxn(ctx, t, cl, coord, keys, "new")

	if _, err := cl.Node(coord).MoveRange(ctx, shard.RangeID(middle), placement.NodeID(cl.Node(from).MemberID()),
		placement.NodeID(cl.Node(to).MemberID()), true); err != nil {
		t.Fatalf("move range %d from member %d to %d while prepared: %v", middle, from, to, err)
	}
	if got := holders(t, cl, middle); !slices.Equal(got, []int{to}) {
		t.Fatalf("range %d held by %v after the move, want [%d]", middle, got, to)
	}
	nodetest.WaitFor(ctx, t, func() error {
		ids, err := cl.Node(to).RangeLocks(ctx, middle)
		if err == nil && len(ids) != 1 {
			err = fmt.Errorf("range %d's locks at the destination: %x, want the transaction's", middle, ids)
		}
		return err
	})
	release()
	err := <-txnDone
	committed, _ := settled(ctx, t, cl, cl.Client(to), keys, "old", "new")
	if (err == nil) != committed {
		t.Fatalf("the transaction answered %v, committed %v", err, committed)
	}
	t.Logf("after the move the transaction answered %v", err)
	if _, err := putAcross(ctx, cl.Client(from), keys, "later"); err != nil {
		t.Fatalf("a write across the ranges after the move: %v", err)
	}
}

// TestCrossRangeTxnPreparedMerge: a merge of two ranges one of which
// holds a prepared transaction's lock is refused cleanly (the right
// range's freeze is refused; the merge aborts, both ranges serve) or
// waits until the lock is resolved; the transaction ends whole either
// way, and the merge goes through afterwards.
func TestCrossRangeTxnPreparedMerge(t *testing.T) {
	cl := nodetest.Start(t, 1, nodetest.Sharded())
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	n := cl.Node(0)
	for _, k := range []string{"k", "t"} {
		if _, err := n.SplitRange(ctx, []byte(k)); err != nil {
			t.Fatalf("split at %s: %v", k, err)
		}
	}
	keys := []string{"a-g", "m-g", "x-g"}
	if _, err := putAcross(ctx, cl.Client(0), keys, "old"); err != nil {
		t.Fatal(err)
	}
	left := rangeAt(ctx, t, n, "a-g")
	release, txnDone := heldTxn(ctx, t, cl, 0, keys, "new")

	_, merr := n.MergeLeft(ctx, left)
	t.Logf("merge while prepared: %v", merr)
	if merr != nil {
		open, err := n.OpenMerges(ctx)
		if err != nil || len(open) > 0 {
			t.Fatalf("a refused merge left merges open: %v, %v", open, err)
		}
		if rangeAt(ctx, t, n, "a-g") == rangeAt(ctx, t, n, "m-g") {
			t.Fatal("a refused merge merged")
		}
	}
	release()
	err := <-txnDone
	committed, _ := settled(ctx, t, cl, cl.Client(0), keys, "old", "new")
	if (err == nil) != committed {
		t.Fatalf("the transaction answered %v, committed %v", err, committed)
	}
	if merr != nil {
		if _, err := n.MergeLeft(ctx, left); err != nil {
			t.Fatalf("the merge once the lock is resolved: %v", err)
		}
	}
	if rangeAt(ctx, t, n, "a-g") != rangeAt(ctx, t, n, "m-g") {
		t.Fatal("not merged")
	}
	if _, err := putAcross(ctx, cl.Client(0), keys, "later"); err != nil {
		t.Fatalf("a write across the ranges after the merge: %v", err)
	}
	for _, k := range keys {
		g, err := cl.Client(0).Get(ctx, k)
		if err != nil || len(g.Kvs) != 1 || string(g.Kvs[0].Value) != "later" {
			t.Fatalf("%s after the merge: %v, %v", k, g, err)
		}
	}
}
