package node_test

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node/nodetest"
	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/internalpb"
)

// TestMoveToAddedMember: three members, three replicas per range; a fourth
// member added with etcd's MemberAdd holds no range until one is moved to
// it, and then holds it and serves it from its own replica — what adding
// capacity is. The range is idle during the move: the destination, which
// joins from a snapshot and applies no entry after it, must count as
// caught up from the snapshot alone.
func TestMoveToAddedMember(t *testing.T) {
	cl := nodetest.Start(t, 3, nodetest.Sharded("m"), nodetest.RangeReplicas(3), nodetest.PlacementReplicas(3))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c := cl.Client(0)
	if _, err := c.Put(ctx, "x", "before"); err != nil {
		t.Fatal(err)
	}
	addedID, i := addMember(t, ctx, cl, c)
	n, nc := cl.Node(i), cl.Client(i)
	from := holders(t, cl, 2)[0]
	resp, err := operatorClient(t, cl, 1).MoveRange(ctx, &internalpb.MoveRangeRequest{Range: 2, FromMember: cl.Node(from).MemberID(), ToMember: addedID})
	if err != nil {
		t.Fatalf("move range 2 to the added member: %v", err)
	}
	if _, ok := placement.ReplicaOf(resp.Range, placement.NodeID(addedID)); !ok {
		t.Fatalf("after the move range 2 is %v, without the added member", resp.Range)
	}
	if _, ok := n.LocalReplicas()[2]; !ok {
		t.Fatalf("the added member runs replicas %v, want range 2's among them", n.LocalReplicas())
	}
	r, err := nc.Get(ctx, "x", clientv3.WithSerializable())
	if err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "before" {
		t.Fatalf("serializable read of x on the added member: %v, %v", r, err)
	}
	nodetest.Eventually(t, "the source drops its replica of range 2", func() bool {
		_, ok := cl.Node(from).LocalReplicas()[2]
		return !ok
	})
}
