package node

import (
	"context"
	"fmt"
	"time"

	"github.com/lni/dragonboat/v4"

	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/placementpb"
)

// The map follower: every member runs a replica of the placement group (a
// voter, or non-voting past --placement-replicas), so it has a local,
// prefix-consistent copy of the range map and the members' node records.
// The placement state machine signals each apply (mapSignal, a channel of
// one: signals coalesce); the follower then reads the local copy and keeps
// what the member derives from it current: the routing of the ranges
// held elsewhere (RangeCache.PutMap) and the node registry's peer
// addresses.

// mapApplied is the placement state machine's OnApply: it never blocks.
func (n *Node) mapApplied() {
	select {
	case n.mapSignal <- struct{}{}:
	default:
	}
}

// followMap feeds the members' node records, read from this member's
// placement replica after each signal, to the node registry, until the
// node stops.
func (n *Node) followMap() {
	defer n.wg.Done()
	for {
		select {
		case <-n.stop:
			return
		case <-n.mapSignal:
		}
		if routes := n.mapRoutes.Load(); routes != nil {
			if st, err := n.localState(); err == nil {
				routes.PutMap(st.Ranges)
				routes.PutMerged(st.Merged)
			}
			n.reconcileSoon()
		}
		nodes, err := n.localNodes()
		if err != nil {
			continue // the next apply signals again
		}
		for _, nd := range nodes {
			if len(nd.PeerUrls) > 0 {
				n.notePeers(nd.Id, nd.PeerUrls)
			}
		}
	}
}

// localNodes reads the members' node records from this member's placement
// replica, without a round trip.
func (n *Node) localNodes() ([]*placementpb.Node, error) {
	nh := n.mapHost.Load()
	if nh == nil {
		return nil, fmt.Errorf("node: the placement group is not started")
	}
	v, err := nh.StaleRead(placementShardID, placement.NodesQuery{})
	if err != nil {
		return nil, err
	}
	nodes, ok := v.([]*placementpb.Node)
	if !ok {
		return nil, fmt.Errorf("node: the placement group answered %T for its nodes", v)
	}
	return nodes, nil
}

// localMap reads the range map from this member's placement replica,
// without a round trip.
func (n *Node) localMap() ([]*placementpb.RangeDescriptor, error) {
	st, err := n.localState()
	if err != nil {
		return nil, err
	}
	return st.Ranges, nil
}

// localState reads the placement state (the range map and the open
// moves) from this member's placement replica, without a round trip.
func (n *Node) localState() (*placementpb.State, error) {
	nh := n.mapHost.Load()
	if nh == nil {
		return nil, fmt.Errorf("node: the placement group is not started")
	}
	v, err := nh.StaleRead(placementShardID, placement.StateQuery{})
	if err != nil {
		return nil, err
	}
	st, ok := v.(*placementpb.State)
	if !ok {
		return nil, fmt.Errorf("node: the placement group answered %T for its state", v)
	}
	return st, nil
}

// placementNodes reads the members' node records, by id: through the
// placement group's leader (a read index) if linearizable, else from this
// member's replica.
func (n *Node) placementNodes(ctx context.Context, linearizable bool) (map[uint64]*placementpb.Node, error) {
	var nodes []*placementpb.Node
	if linearizable {
		v, err := n.nh.SyncRead(ctx, placementShardID, placement.NodesQuery{})
		if err != nil {
			return nil, err
		}
		var ok bool
		if nodes, ok = v.([]*placementpb.Node); !ok {
			return nil, fmt.Errorf("node: the placement group answered %T for its nodes", v)
		}
	} else {
		var err error
		if nodes, err = n.localNodes(); err != nil {
			return nil, err
		}
	}
	out := make(map[uint64]*placementpb.Node, len(nodes))
	for _, nd := range nodes {
		out[nd.Id] = nd
	}
	return out, nil
}

// fillPlacement has, while this member's placement replica leads, the
// registered members the placement group lacks added to it (non-voting),
// and non-voting members promoted while fewer than --placement-replicas
// vote (placement.Membership.FillPlacement), until the node stops.
func (n *Node) fillPlacement(m *placement.Membership) {
	defer n.wg.Done()
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
		}
		leader, _, ok, err := n.nh.GetLeaderID(placementShardID)
		if err != nil || !ok || leader != n.memberID {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = m.FillPlacement(ctx)
		cancel()
		if err != nil {
			n.log.Debug("filling the placement group failed; trying again", "error", err)
		}
	}
}

// trackPlacementRole records this member's placement replica as a voter
// once raft shows it promoted and it took a snapshot (dragonboat #373: a
// restart as a voter must not replay the entry that added it non-voting),
// so that a restart starts it as one.
func (n *Node) trackPlacementRole() {
	defer n.wg.Done()
	if !placementNonVoting(n.cfg.DataDir) {
		return
	}
	n.untilPromoted(func(info *dragonboat.NodeHostInfo) ([]uint64, bool) {
		promoted := false
		for _, s := range info.ShardInfoList {
			if s.ShardID == placementShardID {
				promoted = !s.Pending && !s.IsNonVoting
			}
		}
		return []uint64{placementShardID}, promoted
	}, func() error {
		return setPlacementNonVoting(n.cfg.DataDir, false)
	}, "recording the placement role failed")
}
