package node

import (
	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/shard"
)

// Today a range's replica ids are its members' ids: a member starts or
// joins every range with its own id (rangeCfg), and a descriptor's Replicas
// name members. selfReplica, memberOf and replicaOf are the places in the
// node that rely on it, so that allocating replica ids per range
// (placement, never reused) has them to replace; router.memberOf is the
// router's.

// selfReplica is this member's replica id in its ranges.
func (n *Node) selfReplica() shard.ReplicaID { return shard.ReplicaID(n.memberID) }

// memberOf is the member holding replica id of a range.
func memberOf(id shard.ReplicaID) placement.NodeID { return placement.NodeID(id) }

// replicaOf is the replica of a range that member id holds.
func replicaOf(id placement.NodeID) shard.ReplicaID { return shard.ReplicaID(id) }
