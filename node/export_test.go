package node

import (
	"context"

	"github.com/cairn-kv/cairn/shard"
)

// AppliedIndex is the raft index range id's replica here has applied, for
// tests that check what a range writes to its log.
func (n *Node) AppliedIndex(ctx context.Context, id uint64) (uint64, error) {
	for _, rr := range n.rangeSet.all() {
		if rr.desc().Id == id {
			v, err := rr.replica.Read(ctx, shard.StatusQuery{}, false)
			if err != nil {
				return 0, err
			}
			return v.(shard.Status).AppliedIndex, nil
		}
	}
	return 0, nil
}

// PlacementLeader is the member this node knows to lead the placement
// group (0: none known), for tests that stop it.
func (n *Node) PlacementLeader() uint64 {
	leader, _, ok, err := n.nh.GetLeaderID(placementShardID)
	if err != nil || !ok {
		return 0
	}
	return leader
}

// MemberID is this node's member id.
func (n *Node) MemberID() uint64 { return n.memberID }
