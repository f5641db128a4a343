package node

import (
	"context"
	"fmt"

	"google.golang.org/protobuf/proto"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/shardpb"
	"github.com/cairn-kv/cairn/shard"
)

// Membership changes in sharded mode are placement.Membership's
// (placement/membership.go): it adds a member to, removes it from, or
// promotes it in the placement group and every range, each range sent to
// a new member as a snapshot. The node gives it raft (the NodeHost), the
// range map's client, the other members (the Forwarder's CompactLog) and
// its own replicas (localRanges).

// localRanges is this node's replicas of the ranges as a
// placement.Membership uses them.
type localRanges struct{ n *Node }

// Runs reports whether this node's replica of range r is started.
func (l localRanges) Runs(r placement.RangeID) bool {
	return l.n.rangeSet.Get(shard.RangeID(r), true) != nil
}

// Touch commits an empty lease checkpoint to range r.
func (l localRanges) Touch(ctx context.Context, r placement.RangeID) error {
	rc := l.n.routes.Client(shard.RangeID(r))
	if l.n.rangeSet.Get(shard.RangeID(r), true) == nil || rc == nil {
		return fmt.Errorf("node: range %d does not run here", r)
	}
	empty, _ := proto.Marshal(&pb.LeaseCheckpointRequest{})
	_, err := rc.Write(ctx, &shardpb.Request{Op: &shardpb.Request_LeaseCheckpoint{LeaseCheckpoint: empty}})
	return err
}
