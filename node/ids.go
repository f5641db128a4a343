package node

import (
	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/shard"
)

// Today a range's replica ids are its members' ids: a member starts or
// joins every range with its own id (rangeCfg), and a descriptor's Replicas
// name members. selfReplica and memberOf are the places in the node that
// rely on it, so that allocating replica ids per range (placement, never
// reused) has them to replace; router.memberOf is the router's.

// selfReplica is this member's replica id in its ranges.
func (n *Node) selfReplica() shard.ReplicaID { return shard.ReplicaID(n.memberID) }

// memberOf is the member holding replica id of a range.
func memberOf(id shard.ReplicaID) placement.NodeID { return placement.NodeID(id) }

// replicaIDs is ids as the uint64s messages and descriptors carry.
func replicaIDs(ids []shard.ReplicaID) []uint64 {
	if ids == nil {
		return nil
	}
	out := make([]uint64, len(ids))
	for i, id := range ids {
		out[i] = uint64(id)
	}
	return out
}
