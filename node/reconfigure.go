package node

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/shard"
)

// resumeChanges finishes, while this member's placement replica leads,
// the sharded-mode membership change whose walk over the ranges is left
// to the placement leader (placement.Membership.Pending):
//
//   - an add: MemberAdd answers once the member is in the placement group
//     (placement.Membership.Begin), and the walk that adds it to every
//     range (Continue, O(ranges × members) snapshots) is run here;
//   - a removal: MemberRemove answers once the member has left the member
//     list (BeginRemove; with a drain, once the walk is over), and the walk
//     that removes or moves its replicas (ContinueRemove) is run here.
//
// Both run from the range map's mark, so a change whose member answered
// and then died, whose caller went away, or whose leader changed, is
// finished by the next leader. It returns when the node stops.
func (n *Node) resumeChanges() {
	defer n.wg.Done()
	ctx, cancel := n.untilStop()
	defer cancel()
	wait := 200 * time.Millisecond
	for {
		select {
		case <-n.stop:
			return
		case <-time.After(wait):
		}
		wait = 200 * time.Millisecond
		leader, _, ok, err := n.nh.GetLeaderID(placementShardID)
		if err != nil || !ok || leader != n.memberID {
			continue
		}
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		p, ok, err := n.reconfig.Pending(rctx)
		rcancel()
		if err != nil || !ok {
			continue
		}
		member := fmt.Sprintf("%x", uint64(p.Member))
		if p.Removing {
			err = n.reconfig.ContinueRemove(ctx, p.Member)
		} else {
			err = n.reconfig.Continue(ctx, p.Member, p.Learner)
		}
		switch {
		case err == nil && p.Removing:
			n.log.Info("removed a member from every range", "member", member)
		case err == nil:
			n.log.Info("added a member to every range", "member", member)
		case errors.Is(err, placement.ErrAddSuperseded) || errors.Is(err, placement.ErrRemoveSuperseded) || ctx.Err() != nil:
		default:
			n.log.Warn("a membership change's walk over the ranges failed; trying again", "member", member,
				"removing", p.Removing, "error", err)
			wait = time.Second
		}
	}
}

// removeSelf has another member remove this one (sharded mode): the
// placement group's voters first, then its other members, in id order,
// until one answers.
func (n *Node) removeSelf(ctx context.Context) error {
	ms, err := n.membership(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, group := range []map[uint64]string{ms.Nodes, ms.NonVotings} {
		for _, id := range slices.Sorted(maps.Keys(group)) {
			if id == n.memberID {
				continue
			}
			err := n.fwd.RemoveMember(ctx, placement.NodeID(id), n.memberID)
			if err == nil {
				return nil
			}
			if ctx.Err() != nil {
				return err
			}
			errs = append(errs, err)
		}
	}
	return fmt.Errorf("node: no other member removed this one: %w", errors.Join(errs...))
}

// moveForMembership moves range r's replica from one member to another for
// a member removal with subsets (placement.MembershipConfig.Move): the
// placement leader's member drives it (MoveRange, forwarded there).
func (n *Node) moveForMembership(ctx context.Context, r placement.RangeID, from, to placement.NodeID) error {
	_, err := n.MoveRange(ctx, shard.RangeID(r), from, to, true)
	return err
}
