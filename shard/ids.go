package shard

// RangeID names a range: it is also the raft shard id of the range's group
// (dragonboat's shardID). Range ids are allocated by placement and never
// reused; placement.RangeID is this type.
type RangeID uint64

// ReplicaID names one replica of a range: its raft replica id within the
// range's group (dragonboat's replicaID). It is not a member id: replica
// ids are allocated per range by placement and never reused, so the same
// member may hold replicas of different ids in different ranges.
type ReplicaID uint64

// rangeIDs types the range ids of a message or record (nil stays nil).
func rangeIDs(ids []uint64) []RangeID {
	if ids == nil {
		return nil
	}
	out := make([]RangeID, len(ids))
	for i, id := range ids {
		out[i] = RangeID(id)
	}
	return out
}
