package node

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/lni/dragonboat/v4"

	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/internalpb"
)

// Handing leadership over when this member's peer URLs move.
//
// A MemberUpdate gives a member new peer URLs while it keeps listening at
// the old ones until it restarts (as etcd's members do). From the moment a
// member applies the new record it dials the moved member there, so every
// raft group the moved member leads hears no answer from it and stalls
// until raft's check quorum deposes it, an election timeout or two later:
// the placement group's oracle with it, so a write anywhere waits (the
// member update's own second record among them). The moved member, which
// still reaches the others, hands each group it leads over at once when it
// sees its own record change.

// notePeers records member id's peer URLs, and yields this member's
// leaderships when they are its own and no longer the ones it listens at.
// It runs on followMap's goroutine.
func (n *Node) notePeers(id uint64, urls []string) {
	n.peers.Record(placement.NodeID(id), urls)
	if id != n.memberID || len(urls) == 0 || slices.Equal(urls, n.peerURLs) {
		return
	}
	key := strings.Join(urls, ",")
	if old, _ := n.yieldedFor.Swap(key).(string); old == key {
		return // yielded for these already
	}
	n.log.Info("this member's peer URLs moved while it listens at the old ones; handing its leaderships over",
		"recorded", urls, "listening", n.peerURLs)
	// Counted in the node's wait group, so that Close does not close the
	// NodeHost under it (followMap, the only caller, is counted there
	// too, so adding cannot race Close's Wait).
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		n.yieldLeadership()
	}()
}

// yieldLeadership asks raft to hand each group this member leads to another
// voter. Best effort: a group whose transfer does not happen is deposed by
// check quorum as before.
func (n *Node) yieldLeadership() {
	hosts := []*dragonboat.NodeHost{n.nh}
	if mh := n.mapHost.Load(); mh != nil && mh != n.nh {
		hosts = append(hosts, mh)
	}
	for _, nh := range hosts {
		if nh == nil {
			continue
		}
		info := nh.GetNodeHostInfo(dragonboat.NodeHostInfoOption{SkipLogInfo: true})
		for _, si := range info.ShardInfoList {
			n.log.Debug("yield: shard", "shard", si.ShardID, "replica", si.ReplicaID, "leader", si.LeaderID, "term", si.Term, "replicas", len(si.Replicas))
			if si.LeaderID != si.ReplicaID || si.Term == 0 {
				continue
			}
			var targets []uint64
			for r := range si.Replicas {
				if r != si.ReplicaID {
					targets = append(targets, r)
				}
			}
			if len(targets) == 0 {
				continue
			}
			slices.Sort(targets)
			if err := nh.RequestLeaderTransfer(si.ShardID, targets[0]); err != nil {
				n.log.Warn("handing a group's leadership over failed", "shard", si.ShardID, "to", targets[0], "error", err)
			}
		}
	}
}

// placementOffMember moves the placement group's leadership off member id
// before its peer URLs move, asking id's member to hand it over (only a
// leader can): once the others dial id at URLs it does not listen at yet,
// a placement group it led would stall every stamped write and membership
// read until check quorum deposed it. Best effort, bounded by a few
// election timeouts: the update goes on either way.
func (n *Node) placementOffMember(ctx context.Context, id uint64) {
	leads, leader := n.leadsPlacement()
	if uint64(leader) != id {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 4*n.cfg.ElectionTimeout)
	defer cancel()
	var err error
	if leads {
		err = n.handPlacementOver(ctx)
	} else {
		_, err = rangeRaft{n}.on(ctx, leader, &internalpb.ChangeRangeRequest{Range: placementShardID,
			Op: internalpb.ChangeRangeOp_CHANGE_RANGE_OP_TRANSFER_LEADER})
	}
	if err != nil {
		n.log.Warn("moving the placement group's leadership off a member whose peer URLs change failed; updating anyway",
			"member", fmt.Sprintf("%x", id), "error", err)
	}
}

// handPlacementOver has this member, if it leads the placement group, hand
// the leadership to another voter and waits until it has.
func (n *Node) handPlacementOver(ctx context.Context) error {
	nh := n.mapHost.Load()
	if nh == nil {
		return fmt.Errorf("node: the placement group is not started here")
	}
	ms, err := nh.SyncGetShardMembership(ctx, placementShardID)
	if err != nil {
		return err
	}
	var targets []uint64
	for r := range ms.Nodes {
		if r != n.memberID {
			targets = append(targets, r)
		}
	}
	if len(targets) == 0 {
		return nil // no other voter: nothing to hand over to
	}
	slices.Sort(targets)
	for i := 0; ; i++ {
		leader, _, ok, err := nh.GetLeaderID(placementShardID)
		if err != nil {
			return err
		}
		if ok && leader != n.memberID {
			return nil
		}
		if ok && i%20 == 0 { // a transfer raft gave up on is asked for again, to the next voter
			if err := nh.RequestLeaderTransfer(placementShardID, targets[(i/20)%len(targets)]); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node: the placement group's leadership did not move: %w", ctx.Err())
		case <-time.After(n.cfg.HeartbeatInterval):
		}
	}
}
