package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/lni/dragonboat/v4"
	dbconfig "github.com/lni/dragonboat/v4/config"

	"github.com/cairn-kv/cairn/lease"
	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/internalpb"
	"github.com/cairn-kv/cairn/proto/placementpb"
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

// rangeReplica is this member's replica of one range (shard.Range: its
// raft replica, proposer, watch hub and closer) and the range as the router
// uses it here (client: through its leader).
type rangeReplica struct {
	*shard.Range
	client *router.RangeClient
}

// desc returns the range's descriptor.
func (rr *rangeReplica) desc() *placementpb.RangeDescriptor { return rr.Descriptor() }

// proposer is the range's proposer and reader (nil before it starts).
func (rr *rangeReplica) proposer() *shard.Replica { return rr.Range.Replica() }

// rangeSet is the node's replicas of the ranges, in key order; the router
// routes by its range cache (Node.routes), which the node keeps up to date
// with them (router.RangeCache.Put).
type rangeSet struct {
	mu     sync.RWMutex
	ranges []*rangeReplica // by start key
}

// all returns every range whose replica is started, in key order.
func (s *rangeSet) all() []*rangeReplica {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*rangeReplica, 0, len(s.ranges))
	for _, rr := range s.ranges {
		if rr.Started() {
			out = append(out, rr)
		}
	}
	return out
}

// routing returns every range in key order, those still starting (a
// split's new range) included: requests for them wait until it is.
func (s *rangeSet) routing() []*rangeReplica {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return slices.Clone(s.ranges)
}

// get returns range id's replica here, nil if there is none (or, with
// started, none started yet).
func (s *rangeSet) get(id uint64, started bool) *rangeReplica {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, rr := range s.ranges {
		if uint64(rr.ID()) == id && (!started || rr.Started()) {
			return rr
		}
	}
	return nil
}

// spanOf is a descriptor's span in mvcc's form (nil end: ∞).
func spanOf(d *placementpb.RangeDescriptor) mvcc.Span {
	sp := mvcc.Span{Start: d.Start, End: d.End}
	if sp.Start == nil {
		sp.Start = []byte{}
	}
	if len(sp.End) == 0 {
		sp.End = nil
	}
	return sp
}

// startPlacement starts this node's replica of the placement group (a
// founder's, or a restart's), bootstraps the range map with the initial
// split keys if no member has yet, and returns the range map.
func (n *Node) startPlacement(ctx context.Context, founders map[uint64]dragonboat.Target, election, heartbeat uint64) ([]*placementpb.RangeDescriptor, error) {
	if err := n.startPlacementReplica(founders, false, n.memberID, election, heartbeat); err != nil {
		return nil, err
	}
	ids := make([]placement.NodeID, 0, len(founders))
	for id := range founders {
		ids = append(ids, placement.NodeID(id))
	}
	ranges, err := n.placement.Bootstrap(ctx, ids, n.cfg.InitialSplitKeys, func() (mvcc.Revision, error) {
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
// group (founding it, joining it — a member added —, or restarting it),
// its oracle client and its range map client.
func (n *Node) startPlacementReplica(founders map[uint64]dragonboat.Target, join bool, id, election, heartbeat uint64) error {
	err := n.nh.StartReplica(founders, join, placement.NewStateMachine, dbconfig.Config{
		ReplicaID: id, ShardID: placementShardID,
		HeartbeatRTT: heartbeat, ElectionRTT: election, CheckQuorum: true, PreVote: true,
		IsNonVoting:     isLearner(n.cfg.DataDir),
		SnapshotEntries: n.cfg.SnapshotCount, CompactionOverhead: n.cfg.SnapshotCount / 2,
	})
	if err != nil {
		return fmt.Errorf("node: start the placement group: %w", err)
	}
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
		Retry: forwardRetry,
	})
	n.placement = placement.NewClient(placement.ClientConfig{Raft: n.nh, ShardID: placementShardID,
		Retry: rttMillisecond * time.Millisecond, TryTimeout: 2 * time.Second})
	return nil
}

// startRange starts this node's replica of a range other than range 1
// (see startRangeInto for founders).
func (n *Node) startRange(d *placementpb.RangeDescriptor, shardCfg shard.Config, raftCfg dbconfig.Config, founders bool) (*rangeReplica, error) {
	rr := n.newRangeReplica(d, 0)
	return rr, n.startRangeInto(rr, shardCfg, raftCfg, founders, false)
}

// foundersOf are the nodes that started range d's raft group (maps written
// before descriptors named them: its replicas, which no membership change
// had changed then).
func foundersOf(d *placementpb.RangeDescriptor) []uint64 {
	if len(d.Founders) > 0 {
		return d.Founders
	}
	return d.Replicas
}

// newRangeReplica returns the node's replica of range d, not started, its
// watch hub at rev.
func (n *Node) newRangeReplica(d *placementpb.RangeDescriptor, rev mvcc.Revision) *rangeReplica {
	rr := &rangeReplica{Range: shard.NewRange(n.rangeCfg(n.selfReplica()), d, rev)}
	rr.client = n.fwd.Range(rr)
	return rr
}

// rangeCfg is what every range of this member shares, replicaID its
// replica of them.
func (n *Node) rangeCfg(replicaID shard.ReplicaID) shard.RangeConfig {
	c := shard.RangeConfig{NodeHost: n.nh, ReplicaID: replicaID, ProgressEvery: n.cfg.WatchProgressNotifyInterval, Log: n.log}
	if n.cfg.Sharded {
		c.Stamper, c.CloseEvery, c.Tick = n.oracle, closedEvery, n.closedClock.Next
		c.Publish, c.ForwardKick = n.publishClosed, n.forwardKick
	}
	return c
}

// startRangeInto starts the raft replica of rr (shard.Range.Start). With
// founders, a node among the range's founders starts it with them (raft
// takes them again on a restart); any other node joins it (or restarts what
// it joined), to be added by a membership change and sent a snapshot. With
// join, this node joins it whatever it is (joinLateSplit).
func (n *Node) startRangeInto(rr *rangeReplica, shardCfg shard.Config, raftCfg dbconfig.Config, founders, join bool) error {
	d := rr.desc()
	shardCfg.Span = spanOf(d)
	shardCfg.OnApply = nil
	shardCfg.OnSplit = func(child shard.RangeID, span mvcc.Span, rev mvcc.Revision, founders []shard.ReplicaID) {
		n.onSplit(rr, uint64(child), span, rev, replicaIDs(founders))
	}
	shardCfg.OnPeers, shardCfg.OnHold = nil, nil
	var members map[uint64]dragonboat.Target
	if founders && !join {
		if slices.Contains(foundersOf(d), n.memberID) {
			members = map[uint64]dragonboat.Target{}
			for _, id := range foundersOf(d) {
				members[id] = memberTarget(id)
			}
		} else {
			join = true
		}
	}
	// A founder votes; a member joining is a learner until promoted, as
	// it is in range 1 (a member added as a voter is promoted at once).
	raftCfg.IsNonVoting = members == nil && n.learner.Load()
	return rr.Start(shardCfg, members, join, raftCfg)
}

// entry is rr as the router's range cache holds it.
func (rr *rangeReplica) entry() router.RangeEntry {
	return router.RangeEntry{Local: rr, Shard: rr.client, Watches: rr.Hub(), Kick: rr.WantClosed}
}

// Now implements router.Oracle: a revision at or above every write
// completed before the call. While the cluster is one range that counts its
// revisions, it is that range's revision, read linearizably — no oracle
// revision, so that headers show etcd's dense revisions; once it has split,
// the oracle's current value, which reading does not move (DESIGN.md
// "Reads"). In single-group mode (no oracle) it is always the one range's
// revision, read linearizably.
func (n *Node) Now(ctx context.Context) (mvcc.Revision, error) {
	if n.oracle == nil {
		st, err := n.first.proposer().Status(ctx, true)
		if err != nil {
			return 0, err
		}
		return st.Revision, nil
	}
	if n.Counting() {
		st, err := n.first.client.Status(ctx, true)
		if err != nil {
			return 0, err
		}
		// Counting still, as of the read index: no split has committed
		// before it, so no write has an oracle revision.
		if st.Counting {
			return st.Revision, nil
		}
	}
	return n.oracle.Current(ctx)
}

// Counting implements router.Oracle: whether the cluster is one range that
// numbers its revisions itself (single-group mode, or a sharded cluster
// before its first split), so that the range's revision is the cluster's.
// Range 1 counts while it spans the whole key space; once a split has
// applied here it never does again.
func (n *Node) Counting() bool {
	if n.oracle == nil {
		return true
	}
	sm := n.first.StateMachine()
	return sm != nil && sm.Counting()
}

// closedEvery is how often the node raises the closed revision of the idle
// ranges it leads (DESIGN.md "Closed revision": at least every 100 ms).
const closedEvery = 50 * time.Millisecond

// publishClosed sends the other replicas of a range this node leads its
// closed revision, with the index applied here (the side channel of
// DESIGN.md "Closed revision", one per node pair: sidechannel.go).
func (n *Node) publishClosed(r *shard.Range, closed mvcc.Revision) {
	rc := &internalpb.RangeClosed{Range: uint64(r.ID()), Closed: int64(closed), Index: r.AppliedIndex()}
	for _, id := range r.Descriptor().Replicas {
		if id != n.memberID {
			n.side.Publish(placement.NodeID(id), rc)
		}
	}
}

// forwardKick asks the leader of a range to close what watches here wait
// for.
func (n *Node) forwardKick(r *shard.Range, leader shard.ReplicaID, rev mvcc.Revision) {
	nc, err := n.nodeClient(memberOf(leader))
	if err != nil {
		return
	}
	req := &internalpb.KickRequest{Range: uint64(r.ID()), Revision: int64(rev)}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), closedEvery*4)
		defer cancel()
		_, _ = nc.Kick(ctx, req)
	}()
}

// mergedProgress sends the progress notifications of watches over the
// ranges (sharded mode) on etcd's interval.
func (n *Node) mergedProgress() {
	defer n.wg.Done()
	t := time.NewTicker(n.cfg.WatchProgressNotifyInterval)
	defer t.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
			n.merger.ProgressTick()
		}
	}
}

// Closed reports the closed revision this node's client of range id knows
// (0 for an unknown range): what the side channel publishes.
func (n *Node) Closed(id uint64) mvcc.Revision {
	if rr := n.rangeSet.get(id, true); rr != nil {
		return rr.proposer().Closed()
	}
	return 0
}

// RangeInfo is one range as /cairn/ranges (and `cairn ranges`) shows it.
type RangeInfo = router.RangeInfo

// Ranges returns this node's view of the range map (nil in single-group
// mode): router.Server.Ranges.
func (n *Node) Ranges() []RangeInfo {
	if n.rs == nil {
		return nil // not started
	}
	return n.rs.Ranges()
}

// rangeMembers is router.Config.RangeMembers: the replicas of each range
// here as raft has them, by range id (membership changes since the range
// started show).
func (n *Node) rangeMembers() map[uint64][]uint64 {
	members := map[uint64][]uint64{}
	for _, si := range n.nh.GetNodeHostInfo(dragonboat.NodeHostInfoOption{SkipLogInfo: true}).ShardInfoList {
		for id := range si.Replicas {
			members[si.ShardID] = append(members[si.ShardID], id)
		}
		slices.Sort(members[si.ShardID])
	}
	return members
}

// leaseHome is range 1, every lease's home, as the router's lease fan-out
// asks the node of it (router.LeaseHome).
type leaseHome struct{ n *Node }

var (
	_ router.LeaseHome = leaseHome{}
	_ router.Replica   = (*shard.Replica)(nil)
)

func (h leaseHome) Leads() bool {
	leader, _, ok := h.n.first.proposer().Leader()
	return ok && leader == h.n.selfReplica()
}

func (h leaseHome) AppliedIndex() uint64 { return h.n.first.AppliedIndex() }

func (h leaseHome) PendingRevokes() (map[lease.ID][]uint64, error) {
	return h.n.first.StateMachine().Lessor().PendingRevokes()
}
