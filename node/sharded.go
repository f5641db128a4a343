package node

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/lni/dragonboat/v4"
	dbconfig "github.com/lni/dragonboat/v4/config"

	"github.com/cairn-kv/cairn/lease"
	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/proto/shardpb"
	"github.com/cairn-kv/cairn/router"
	"github.com/cairn-kv/cairn/shard"
)

// Sharded mode (DESIGN.md): besides the ranges, the NodeHost runs a replica
// of the placement group, which holds the range map and the revision
// oracle. Range r is raft shard r: range 1 always starts at the empty key,
// so it is the shard single-group mode runs as shard 1, and it keeps the
// cluster's own records (members, peer URLs, alarms) in either mode.

// placementShardID names the placement group's raft shard, far above any
// range id.
const placementShardID = 1 << 48

// oracleWindow is how many revisions one persisted oracle bound covers.
const oracleWindow = 10000

// forwardRetry is the oracle client's wait between tries while the
// placement group's leadership is moving.
const forwardRetry = 10 * time.Millisecond

// startPlacement starts this node's replica of the placement group (a
// founder's, or a restart's), bootstraps the range map with the initial
// split keys if no member has yet, and returns the range map.
//
// The first --placement-replicas founders by member id found the group
// (its voters); the others start their replica as joiners, non-voting,
// and wait for the placement leader to add them (fillPlacement: the
// bootstrap registers every founder).
func (n *Node) startPlacement(ctx context.Context, founders map[uint64]dragonboat.Target, election, heartbeat uint64) ([]*placementpb.RangeDescriptor, error) {
	ids := slices.Sorted(maps.Keys(founders))
	voters, join := founders, false
	if len(ids) > n.cfg.PlacementReplicas {
		voters = map[uint64]dragonboat.Target{}
		for _, id := range ids[:n.cfg.PlacementReplicas] {
			voters[id] = founders[id]
		}
		if _, ok := voters[n.memberID]; !ok {
			voters, join = nil, true
			if err := setPlacementNonVoting(n.cfg.DataDir, true); err != nil {
				return nil, err
			}
		}
	}
	if err := n.startPlacementReplica(voters, join, n.memberID, election, heartbeat); err != nil {
		return nil, err
	}
	if join {
		n.log.Info("waiting for the placement group's leader to add this founder as a non-voting member",
			"placement-replicas", n.cfg.PlacementReplicas)
	}
	founderIDs := make([]placement.NodeID, 0, len(ids))
	for _, id := range ids {
		founderIDs = append(founderIDs, placement.NodeID(id))
	}
	// Every founder holds every range (--range-replicas: that many
	// founders each, round robin), under the replica ids the range map
	// allocates (before those were allocated: under its member id).
	rangeReplicas := len(founderIDs)
	if r := n.cfg.RangeReplicas; r > 0 && r < rangeReplicas {
		rangeReplicas = r // round robin over the founders
	}
	if n.cfg.legacyBootstrap {
		rangeReplicas = 0
	}
	ranges, err := n.placement.BootstrapReplicas(ctx, founderIDs, rangeReplicas, n.cfg.InitialSplitKeys, func() (mvcc.Revision, error) {
		// A founder's store is empty but for a restored backup (range
		// 1's store): the oracle starts above its revision.
		first, err := mvcc.Open(n.db, mvcc.Options{ID: singleShardID})
		if err != nil {
			return 0, err
		}
		return first.Rev(), nil
	})
	if errors.Is(err, placement.ErrRestoredSplit) {
		return nil, fmt.Errorf("node: %w: leave out --initial-split-keys and split it online (cairn range split)", err)
	}
	return ranges, err
}

// startPlacementReplica starts this node's replica id of the placement
// group (founding it, joining it — a member added, or a founder past the
// first --placement-replicas —, or restarting it, non-voting as its
// recorded role says), its oracle client and its range map client.
func (n *Node) startPlacementReplica(founders map[uint64]dragonboat.Target, join bool, id, election, heartbeat uint64) error {
	err := n.nh.StartReplica(founders, join, placement.NewStateMachineNotifying(n.mapApplied), dbconfig.Config{
		ReplicaID: id, ShardID: placementShardID,
		HeartbeatRTT: heartbeat, ElectionRTT: election, CheckQuorum: true, PreVote: true,
		IsNonVoting:     placementNonVoting(n.cfg.DataDir),
		SnapshotEntries: n.cfg.SnapshotCount, CompactionOverhead: n.cfg.SnapshotCount / 2,
	})
	if err != nil {
		return fmt.Errorf("node: start the placement group: %w", err)
	}
	n.mapHost.Store(n.nh)
	n.alloc = placement.NewAllocator(n.nh, placementShardID, id, oracleWindow)
	n.oracle = placement.NewOracleClient(placement.OracleClientConfig{
		Self:  id,
		Local: n.alloc,
		Leader: func() (uint64, bool) {
			leader, _, ok, _ := n.nh.GetLeaderID(placementShardID)
			return leader, ok
		},
		Remote: func(ctx context.Context, leader uint64, count int64, above mvcc.Revision) (mvcc.Revision, error) {
			return n.fwd.Revisions(ctx, placement.NodeID(leader), count, above)
		},
		Retry:    forwardRetry,
		Observer: n.metrics,
	})
	n.placement = placement.NewClient(placement.ClientConfig{Raft: n.nh, ShardID: placementShardID,
		Retry: rttMillisecond * time.Millisecond, TryTimeout: 2 * time.Second})
	return nil
}

// newRange returns this member's replica of range d, not started, its
// watch hub at rev.
func (n *Node) newRange(d *placementpb.RangeDescriptor, rev mvcc.Revision) *shard.Range {
	return shard.NewRange(n.rangeCfg(n.replicaIn(d)), d, rev)
}

// replicaIn is this member's replica id in range d: the one d names (a
// range founded before replica ids were allocated names each replica by
// its member's id, as single-group mode's range does). A member d names
// none of — one removed from the range — has its member id, which no
// allocated replica id equals.
func (n *Node) replicaIn(d *placementpb.RangeDescriptor) shard.ReplicaID {
	if id, ok := placement.ReplicaOf(d, placement.NodeID(n.memberID)); ok {
		return id
	}
	return shard.ReplicaID(n.memberID)
}

// memberOf is the member holding replica id of raft group shardID (a
// range, or the placement group), as the registry finds it: from
// dragonboat's membership, else from this member's range map, else the
// member whose id it is (placement.PeerRegistry).
func (n *Node) memberOf(shardID, id uint64) placement.NodeID { return n.peers.Member(shardID, id) }

// rangeMember is memberOf as the router asks it (router.MemberOf).
func (n *Node) rangeMember(r shard.RangeID, id shard.ReplicaID) (placement.NodeID, bool) {
	return n.memberOf(uint64(r), uint64(id)), true
}

// mapMemberOf is the registry's MemberOf (placement.PeerRegistry): the
// member this member's replica of the range map names as holding replica
// id of range shardID — what a replica joining a range knows of the
// others before raft tells it (a snapshot, or the log's membership
// changes). It reads the local replica without a round trip and never
// blocks for long: dragonboat's transport asks it.
func (n *Node) mapMemberOf(shardID, id uint64) (placement.NodeID, bool) {
	nh := n.mapHost.Load()
	if nh == nil || shardID == placementShardID {
		return 0, false
	}
	v, err := nh.StaleRead(placementShardID, placement.ReplicaMemberQuery{Range: shard.RangeID(shardID), Replica: shard.ReplicaID(id)})
	if err != nil {
		return 0, false
	}
	m, ok := v.(placement.NodeID)
	return m, ok && m != 0
}

// rangeCfg is what every range of this member shares, replicaID its
// replica of them.
func (n *Node) rangeCfg(replicaID shard.ReplicaID) shard.RangeConfig {
	c := shard.RangeConfig{NodeHost: n.nh, ReplicaID: replicaID, ProgressEvery: n.cfg.WatchProgressNotifyInterval, Log: n.log}
	if n.cfg.Sharded {
		c.Stamper, c.CloseEvery, c.Tick = n.oracle, closedEvery, n.closedClock.Next
		c.Publish, c.ForwardKick = n.side.PublishClosed, n.side.ForwardKick
	}
	return c
}

// startRange starts this member's replica r of a range other than range 1
// (shard.Set.Start says how founders and join choose between starting it
// with its founders and joining it), with what range 1 alone carries left
// out of its config.
func (n *Node) startRange(r *shard.Range, founders, join bool) error {
	if err := n.recordReplica(r); err != nil {
		return err
	}
	return n.rangeSet.Start(r, n.rangeShardCfg(r), n.raftCfg, founders, join)
}

// rangeShardCfg is the shard config of r, a range other than range 1.
func (n *Node) rangeShardCfg(r *shard.Range) shard.Config {
	cfg := n.shardCfg
	cfg.OnApply = nil
	cfg.OnSplit = func(child shard.RangeID, span mvcc.Span, rev mvcc.Revision, founders []*shardpb.ReplicaRef) {
		n.splitter.OnSplit(r, child, span, rev, founders)
	}
	cfg.OnMerge = n.onMerge(r)
	cfg.OnPeers, cfg.OnHold = nil, nil
	return cfg
}

// closedEvery is how often the node raises the closed revision of the idle
// ranges it leads (DESIGN.md "Closed revision": at least every 100 ms).
const closedEvery = 50 * time.Millisecond

var (
	_ router.LeaseHome = (*shard.Range)(nil)
	_ router.Replica   = (*shard.Replica)(nil)
)

// absentHome is the leases' home on a member without a replica of range
// 1: it never leads it here.
type absentHome struct{}

func (absentHome) Leads() bool                                    { return false }
func (absentHome) AppliedIndex() uint64                           { return 0 }
func (absentHome) PendingRevokes() (map[lease.ID][]uint64, error) { return nil, nil }

// absentLessor is range 1's lessor on a member without a replica of it:
// never the primary, so that the Lease service answers from range 1's
// leader's member.
type absentLessor struct{}

func (absentLessor) Renew(lease.ID, time.Time) (int64, bool, error) {
	return 0, false, lease.ErrNotPrimary
}
func (absentLessor) TimeToLive(lease.ID, time.Time, bool) (lease.Status, error) {
	return lease.Status{}, lease.ErrNotPrimary
}
func (absentLessor) Leases() []lease.Lease { return nil }
func (absentLessor) IsPrimary() bool       { return false }
