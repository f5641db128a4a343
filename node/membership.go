package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/lni/dragonboat/v4"
	"google.golang.org/protobuf/proto"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/proto/shardpb"
	"github.com/cairn-kv/cairn/shard"
)

// Membership changes in sharded mode (DESIGN.md "Ranges, placement,
// membership"): every member holds a replica of the placement group and
// of every range, so adding a member adds it to each raft group, and
// removing one removes it from each. The member list is range 1's
// membership, as in single-group mode.
//
// A range's store shares the node's pebble with the other ranges, keyed by
// user key: a new member must get each range as a snapshot of that range,
// never by replaying its log from the start, which would replay splits
// (and the writes before them) across what other ranges own now. So
// before a member is added to a range, every replica of the range takes a
// snapshot and drops its log up to it (compactEverywhere): whichever
// leads then sends the new member a snapshot. Splits wait while a change
// is under way (the placement group refuses them, Reconfigure), and a
// change waits for the splits under way to apply here first, so that no
// range is split while the new member is added to it.

// addSharded adds member id (a learner if learner) to the placement group
// and to every range, range 1 first, after its peer URLs are recorded.
func (n *Node) addSharded(ctx context.Context, id uint64, learner bool) error {
	if err := n.placement.Reconfigure(ctx, placement.NodeID(id), false); err != nil {
		return err
	}
	defer n.endReconfigure(id)
	add := func(shard uint64) error {
		ms, err := n.groupMembership(ctx, shard)
		if err != nil {
			return err
		}
		if _, ok := ms.Nodes[id]; ok {
			return nil
		}
		if _, ok := ms.NonVotings[id]; ok && learner {
			return nil
		}
		return retryRaft(ctx, func(ctx context.Context) error {
			if learner {
				return n.nh.SyncRequestAddNonVoting(ctx, shard, id, memberTarget(id), 0)
			}
			return n.nh.SyncRequestAddReplica(ctx, shard, id, memberTarget(id), 0)
		})
	}
	if err := add(placementShardID); err != nil {
		return fmt.Errorf("node: add member %x to the placement group: %w", id, err)
	}
	return n.eachRange(ctx, func(d *placementpb.RangeDescriptor) error {
		if slices.Contains(d.Replicas, id) {
			return nil
		}
		ms, err := n.groupMembership(ctx, d.Id)
		if err != nil {
			return err
		}
		_, voter := ms.Nodes[id]
		_, nonVoting := ms.NonVotings[id]
		if !voter && !nonVoting {
			if err := n.compactEverywhere(ctx, d.Id, id); err != nil {
				return fmt.Errorf("node: compact range %d's log before adding member %x: %w", d.Id, id, err)
			}
			if err := add(d.Id); err != nil {
				return fmt.Errorf("node: add member %x to range %d: %w", id, d.Id, err)
			}
		}
		if learner {
			// The map's replicas found the ranges later splits make: a
			// learner is not one until promoted.
			return nil
		}
		return n.placement.ChangeReplicas(ctx, placement.RangeID(d.Id), placement.NodeID(id), 0)
	})
}

// removeSharded removes member id from every range, range 1 last (it
// leaves the member list last), and from the placement group.
func (n *Node) removeSharded(ctx context.Context, id uint64) error {
	if err := n.placement.Reconfigure(ctx, placement.NodeID(id), false); err != nil {
		return err
	}
	defer n.endReconfigure(id)
	remove := func(shard uint64) error {
		ms, err := n.groupMembership(ctx, shard)
		if err != nil {
			return err
		}
		_, voter := ms.Nodes[id]
		_, nonVoting := ms.NonVotings[id]
		if !voter && !nonVoting {
			return nil
		}
		return retryRaft(ctx, func(ctx context.Context) error { return n.nh.SyncRequestDeleteReplica(ctx, shard, id, 0) })
	}
	var first *placementpb.RangeDescriptor
	err := n.eachRange(ctx, func(d *placementpb.RangeDescriptor) error {
		if d.Id == singleShardID {
			first = d
			return nil
		}
		if err := remove(d.Id); err != nil {
			return fmt.Errorf("node: remove member %x from range %d: %w", id, d.Id, err)
		}
		return n.placement.ChangeReplicas(ctx, placement.RangeID(d.Id), 0, placement.NodeID(id))
	})
	if err != nil {
		return err
	}
	if err := remove(placementShardID); err != nil {
		return fmt.Errorf("node: remove member %x from the placement group: %w", id, err)
	}
	if err := remove(singleShardID); err != nil {
		return fmt.Errorf("node: remove member %x: %w", id, err)
	}
	if first != nil {
		return n.placement.ChangeReplicas(ctx, placement.RangeID(first.Id), 0, placement.NodeID(id))
	}
	return nil
}

// promoteSharded makes learner id a voter in the placement group and in
// every range, range 1 last; a range split while it was a learner, which
// it does not hold yet, it is added to as addSharded adds.
func (n *Node) promoteSharded(ctx context.Context, id uint64) error {
	if err := n.placement.Reconfigure(ctx, placement.NodeID(id), false); err != nil {
		return err
	}
	defer n.endReconfigure(id)
	promote := func(shard uint64) error {
		ms, err := n.groupMembership(ctx, shard)
		if err != nil {
			return err
		}
		if _, ok := ms.Nodes[id]; ok {
			return nil
		}
		if _, ok := ms.NonVotings[id]; !ok && shard != placementShardID {
			if err := n.compactEverywhere(ctx, shard, id); err != nil {
				return err
			}
		}
		return retryRaft(ctx, func(ctx context.Context) error {
			return n.nh.SyncRequestAddReplica(ctx, shard, id, memberTarget(id), 0)
		})
	}
	if err := promote(placementShardID); err != nil {
		return fmt.Errorf("node: promote member %x in the placement group: %w", id, err)
	}
	err := n.eachRange(ctx, func(d *placementpb.RangeDescriptor) error {
		if d.Id == singleShardID {
			return nil
		}
		if err := promote(d.Id); err != nil {
			return fmt.Errorf("node: promote member %x in range %d: %w", id, d.Id, err)
		}
		return n.placement.ChangeReplicas(ctx, placement.RangeID(d.Id), placement.NodeID(id), 0)
	})
	if err != nil {
		return err
	}
	if err := promote(singleShardID); err != nil {
		return fmt.Errorf("node: promote member %x: %w", id, err)
	}
	return n.placement.ChangeReplicas(ctx, placement.RangeID(singleShardID), placement.NodeID(id), 0)
}

// eachRange calls f with every range of the map, in key order, once the
// splits under way have applied here (a range the map names runs here),
// reading the map again until a pass finds all of them so.
func (n *Node) eachRange(ctx context.Context, f func(d *placementpb.RangeDescriptor) error) error {
	for {
		st, err := n.placement.State(ctx)
		if err != nil {
			return err
		}
		waiting := false
		for _, d := range st.Ranges {
			if !n.runsRange(d.Id) {
				waiting = true
				continue
			}
			if err := f(d); err != nil {
				return err
			}
		}
		if !waiting {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node: a split under way did not finish: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// runsRange reports whether this node's replica of range id is started.
func (n *Node) runsRange(id uint64) bool {
	return n.rangeSet.Get(shard.RangeID(id), true) != nil
}

// endReconfigure marks member's change over, on its own deadline: the
// change's may have run out.
func (n *Node) endReconfigure(member uint64) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.placement.Reconfigure(ctx, placement.NodeID(member), true); err != nil {
		n.log.Warn("mark a membership change over", "member", fmt.Sprintf("%x", member), "error", err)
	}
}

// compactEverywhere makes every replica of range id but newcomer's take a
// snapshot and drop its log up to it, after one entry applied everywhere
// (an empty lease checkpoint), so that each has progress to snapshot.
func (n *Node) compactEverywhere(ctx context.Context, id, newcomer uint64) error {
	rr := n.rangeSet.Get(shard.RangeID(id), true)
	if rr == nil {
		return fmt.Errorf("node: range %d does not run here", id)
	}
	empty, _ := proto.Marshal(&pb.LeaseCheckpointRequest{})
	if _, err := n.routes.Client(rr.ID()).Write(ctx, &shardpb.Request{Op: &shardpb.Request_LeaseCheckpoint{LeaseCheckpoint: empty}}); err != nil {
		return err
	}
	ms, err := n.groupMembership(ctx, id)
	if err != nil {
		return err
	}
	for _, group := range []map[uint64]string{ms.Nodes, ms.NonVotings} {
		for m := range group {
			switch m {
			case newcomer:
			case n.memberID:
				if err := n.compactLog(ctx, id); err != nil {
					return err
				}
			default:
				if err := n.fwd.CompactLog(ctx, placement.NodeID(m), shard.RangeID(id)); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// groupMembership reads raft group shard's membership through its leader.
func (n *Node) groupMembership(ctx context.Context, shard uint64) (*dragonboat.Membership, error) {
	var ms *dragonboat.Membership
	err := retryRaft(ctx, func(ctx context.Context) (err error) {
		ms, err = n.nh.SyncGetShardMembership(ctx, shard)
		return err
	})
	return ms, err
}

// retryRaft calls f until it succeeds, fails for good, or ctx ends: raft
// drops requests while a group is busy, not ready (a snapshot being
// taken or applied), electing, or changing its membership.
func retryRaft(ctx context.Context, f func(ctx context.Context) error) error {
	for {
		rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		err := f(rctx)
		cancel()
		transient := errors.Is(err, dragonboat.ErrShardNotReady) || errors.Is(err, dragonboat.ErrSystemBusy) ||
			errors.Is(err, dragonboat.ErrRejected) || errors.Is(err, dragonboat.ErrTimeout) ||
			errors.Is(err, dragonboat.ErrAborted) || errors.Is(err, context.DeadlineExceeded)
		if err == nil || !transient || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// compactLog snapshots this node's replica of range id and drops its raft
// log up to the snapshot.
func (n *Node) compactLog(ctx context.Context, id uint64) error {
	return retryRaft(ctx, func(ctx context.Context) error {
		_, err := n.nh.SyncRequestSnapshot(ctx, id, dragonboat.SnapshotOption{OverrideCompactionOverhead: true})
		return err
	})
}
