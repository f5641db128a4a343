package node

import (
	"context"
	"errors"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/router"
	"github.com/cairn-kv/cairn/shard"
)

// Leader transfer (MoveLeader): etcd's checks and errors here, the
// mechanics (hold proposals until the target has applied everything, then
// hand leadership over) in shard.Range.TransferLeader.

// TransferLeader implements router.Operator and waits until the target
// leads (or ctx ends).
func (n *Node) TransferLeader(ctx context.Context, target uint64) error {
	if _, learner, ok, err := n.findMember(ctx, target); err != nil {
		return err
	} else if !ok {
		return rpctypes.ErrBadLeaderTransferee
	} else if learner {
		return rpctypes.ErrBadLeaderTransferee
	}
	id, ok, err := n.replicaOfMember(ctx, placement.NodeID(target))
	if err != nil {
		return err
	} else if !ok {
		return rpctypes.ErrBadLeaderTransferee
	}
	first := n.first.Load()
	if first == nil {
		return router.Refuse(router.ErrPrecondition, "cairn: range 1 has no replica on this member")
	}
	err = first.TransferLeader(ctx, id, shard.TransferConfig{
		Replicas:          n.replicas,
		AppliedOf:         n.appliedOf,
		ElectionTimeout:   n.cfg.ElectionTimeout,
		HeartbeatInterval: n.cfg.HeartbeatInterval,
		Log:               n.log,
	})
	if errors.Is(err, shard.ErrTimeout) {
		return rpctypes.ErrTimeoutDueToLeaderFail
	}
	return err
}

// replicaOfMember is member's replica of range 1, as its raft membership
// has it.
func (n *Node) replicaOfMember(ctx context.Context, member placement.NodeID) (shard.ReplicaID, bool, error) {
	ids, err := n.replicas(ctx)
	if err != nil {
		return 0, false, err
	}
	for _, id := range ids {
		if n.memberOf(singleShardID, uint64(id)) == member {
			return id, true, nil
		}
	}
	return 0, false, nil
}

// replicas lists range 1's replicas, voters and learners, as its raft
// membership has them.
func (n *Node) replicas(ctx context.Context) ([]shard.ReplicaID, error) {
	ms, err := n.groupMembership(ctx, singleShardID)
	if err != nil {
		return nil, err
	}
	var ids []shard.ReplicaID
	for id := range ms.Nodes {
		ids = append(ids, shard.ReplicaID(id))
	}
	for id := range ms.NonVotings {
		ids = append(ids, shard.ReplicaID(id))
	}
	return ids, nil
}

// appliedOf asks the member holding replica id of range 1 for the raft
// index it has applied (its Maintenance Status).
func (n *Node) appliedOf(ctx context.Context, id shard.ReplicaID) (uint64, error) {
	c, err := n.conns.Conn(n.memberOf(singleShardID, uint64(id)))
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	st, err := pb.NewMaintenanceClient(c).Status(ctx, &pb.StatusRequest{})
	if err != nil {
		return 0, err
	}
	return st.RaftAppliedIndex, nil
}
