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

// resumeAdds finishes, while this member's placement replica leads, the
// sharded-mode member add under way: MemberAdd answers once the member is
// in the placement group (placement.Membership.Begin), and the walk that
// adds it to every range (Continue, O(ranges × members) snapshots) is run
// here, from the range map's mark; so an add whose member answered and
// then died, or whose leader changed, is finished by the next leader.
// It returns when the node stops.
func (n *Node) resumeAdds() {
	defer n.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-n.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
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
		member, learner, ok, err := n.reconfig.Pending(rctx)
		rcancel()
		if err != nil || !ok {
			continue
		}
		err = n.reconfig.Continue(ctx, member, learner)
		switch {
		case err == nil:
			n.log.Info("added a member to every range", "member", fmt.Sprintf("%x", uint64(member)))
		case errors.Is(err, placement.ErrAddSuperseded) || ctx.Err() != nil:
		default:
			n.log.Warn("adding a member to the ranges failed; trying again", "member", fmt.Sprintf("%x", uint64(member)), "error", err)
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
