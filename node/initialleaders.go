package node

import (
	"fmt"
	"time"

	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/placementpb"
)

// Leaders of a new cluster's initial ranges.
//
// The map's bootstrap places the initial ranges round robin over the
// founders (placement.Table's bootstrap) and hints the first replica of
// each as its leader, so the hints are spread as evenly as the replicas:
//
//	5 founders a..e, 10 ranges, R=3:  range 1 a,b,c (hint a)  range 2 b,c,d (hint b) … range 6 a,b,c (hint a) …
//
// Raft, though, elects whichever replica's election timer fires first, and
// the founders that started first win most ranges. So on its first start
// each founder takes the leadership of the initial ranges hinted to it:
// once raft has elected a leader of such a range, and it is not this
// member's replica, the replica asks for the leadership (dragonboat passes
// a follower's transfer request on to the leader), again every election
// timeout until it leads or initialLeadWait passes. Only a founder's first
// start does this: a restart finds leaders where raft and the scheduler's
// leader balance left them. Best effort: a range whose transfer does not
// take keeps the leader raft elected.

// initialLeadWait bounds how long a founder keeps asking for the
// leadership of its initial ranges.
func (n *Node) initialLeadWait() time.Duration { return max(30*n.cfg.ElectionTimeout, 10*time.Second) }

// initialLeadStartWait bounds how long Start waits for those transfers
// before it reports the member ready (they go on in the background): long
// enough for an unhurried election and transfer, so that the leaders a
// client of a new cluster sees are the spread ones; short enough that a
// founder whose peers are not up yet does not keep its clients waiting.
func (n *Node) initialLeadStartWait() time.Duration { return 5 * n.cfg.ElectionTimeout }

// leadInitialRanges starts taking the leadership of the ranges among
// ranges (this founder's replicas of the bootstrapped map) whose leader
// hint names this member, and waits until it has or initialLeadStartWait
// has passed.
func (n *Node) leadInitialRanges(ranges []*placementpb.RangeDescriptor) {
	pending := map[uint64]uint64{} // range → this member's replica of it
	for _, d := range ranges {
		// The bootstrap's own descriptor (a split or a move since
		// makes another), of a range with other voters to lead it.
		if d.Leader != n.memberID || d.Generation != 1 || d.Parent != 0 || len(placement.Voters(d)) < 2 {
			continue
		}
		if id, ok := placement.ReplicaOf(d, placement.NodeID(n.memberID)); ok {
			pending[d.Id] = uint64(id)
		}
	}
	if len(pending) == 0 {
		return
	}
	done := make(chan struct{})
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		defer close(done)
		n.takeLeaderships(pending)
	}()
	select {
	case <-done:
	case <-n.stop:
	case <-time.After(n.initialLeadStartWait()):
		n.log.Info("still taking the leadership of the initial ranges hinted to this member; serving meanwhile")
	}
}

// takeLeaderships asks raft, for each range of pending (range → replica
// here), to hand the range's leadership to the replica here once the range
// has a leader, again each election timeout (plus two heartbeats: raft
// aborts a transfer that has not taken within one), until every replica
// leads or initialLeadWait passes.
func (n *Node) takeLeaderships(pending map[uint64]uint64) {
	deadline := time.Now().Add(n.initialLeadWait())
	again := n.cfg.ElectionTimeout + 2*n.cfg.HeartbeatInterval
	asked := map[uint64]time.Time{}
	total, requests := len(pending), 0
	t := time.NewTicker(n.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		now := time.Now()
		for r, id := range pending {
			leader, _, ok, err := n.nh.GetLeaderID(r)
			switch {
			case err != nil || !ok:
				continue // not started or no leader yet
			case leader == id:
				delete(pending, r)
				continue
			case now.Sub(asked[r]) < again:
				continue
			}
			asked[r] = now
			requests++
			if err := n.nh.RequestLeaderTransfer(r, id); err != nil {
				n.log.Debug("asking for the leadership of an initial range failed; asking again", "range", r, "error", err)
			}
		}
		if len(pending) == 0 {
			n.log.Info("leading the initial ranges hinted to this member", "ranges", total, "transfer-requests", requests)
			return
		}
		if now.After(deadline) {
			n.log.Info("some initial ranges hinted to this member keep the leader raft elected",
				"ranges", total, "not-led", len(pending), "waited", n.initialLeadWait().String(),
				"member", fmt.Sprintf("%x", n.memberID))
			return
		}
		select {
		case <-n.stop:
			return
		case <-t.C:
		}
	}
}
