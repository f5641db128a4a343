package placement

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/lni/dragonboat/v4"

	"github.com/cairn-kv/cairn/proto/placementpb"
)

// Membership changes with subsets (MembershipConfig.RangeReplicas > 0): a
// member holds only some ranges, so a member added gets none unless a
// range is short of voters, and a member removed hands its replicas on:
//
//	Add(6)     placement group += 6 (voter if fewer than PlacementVoters vote, else non-voting);
//	           a range with fewer voters than min(RangeReplicas, voting members with 6) is
//	           named for 6 and added as Add does without subsets (2 members → 3 with R=3: every
//	           range); the others are not (5 members → 6 with R=3: none). An etcd learner gets none.
//	Remove(4)  more than RangeReplicas members: each range 4 holds (a voter) moves to the
//	           member with the fewest replicas that does not hold it (Move, the placement
//	           leader's Mover: the count is kept); a learner replica loses 4's replica
//	           (raft, then the map).
//	           at most RangeReplicas members: every range loses 4's replica, as without subsets.
//	           Then the placement group −= 4 as without subsets (a non-voting member votes if 4 did).
//
// While members ≤ RangeReplicas every member holds every range (the map's
// bootstrap names min(RangeReplicas, founders) of them, an add fills, a
// removal removes), so the member walking an add holds each range it fills;
// a range short of voters that it does not hold (a drain that failed
// half-way) is not filled: its name for the member is taken back (the
// member's reconciler drops the empty replica it started) and is left to
// a move.

// subsets reports whether members hold subsets of the ranges.
func (m *Membership) subsets() bool { return m.cfg.RangeReplicas > 0 }

// fills returns, with subsets, the ranges whose voters are fewer than
// min(RangeReplicas, voting members), member counted (not if learner):
// those an add (or promotion) of member gives a replica. nil without
// subsets: every range.
func (m *Membership) fills(ctx context.Context, st *placementpb.State, member NodeID, learner bool) (map[uint64]bool, error) {
	if !m.subsets() {
		return nil, nil
	}
	out := map[uint64]bool{}
	if learner {
		return out, nil
	}
	ms, err := m.groupMembership(ctx, m.cfg.ShardID)
	if err != nil {
		return nil, err
	}
	voting := len(votingMembers(st, ms, 0))
	if !slices.Contains(votingMembers(st, ms, 0), member) {
		voting++
	}
	want := min(m.cfg.RangeReplicas, voting)
	for _, d := range st.Ranges {
		if len(Voters(d)) < want {
			out[d.Id] = true
		}
	}
	return out, nil
}

// votingMembers returns, by id, the members of the placement group
// (membership ms) that are no etcd learners (by their node records; a
// member without one by its placement role), except member.
func votingMembers(st *placementpb.State, ms *dragonboat.Membership, except NodeID) []NodeID {
	learner := map[uint64]bool{}
	recorded := map[uint64]bool{}
	for _, n := range st.Nodes {
		learner[n.Id], recorded[n.Id] = n.Learner, true
	}
	var out []NodeID
	for id := range ms.Nodes {
		if !learner[id] && NodeID(id) != except {
			out = append(out, NodeID(id))
		}
	}
	for id := range ms.NonVotings {
		if recorded[id] && !learner[id] && NodeID(id) != except {
			out = append(out, NodeID(id))
		}
	}
	slices.Sort(out)
	return out
}

// skipUnfilled reports whether Continue leaves range d alone with subsets:
// the map names no replica of member in it (Begin did not fill it), or it
// names one in a range that does not run here, whose name is then taken
// back (see above).
func (m *Membership) skipUnfilled(ctx context.Context, d *placementpb.RangeDescriptor, member NodeID) (bool, error) {
	pair := pairOf(Pairs(d), uint64(member))
	if pair == nil {
		return true, nil
	}
	if m.cfg.Ranges.Runs(RangeID(d.Id)) {
		return false, nil
	}
	m.cfg.Log.Warn("a range short of voters is not held by the member adding another; left to a move",
		"range", d.Id, "member", fmt.Sprintf("%x", uint64(member)))
	_, err := m.cfg.Map.RemoveReplica(ctx, RangeID(d.Id), ReplicaID(pair.Id))
	return true, err
}

// drains reports whether removing member moves its replicas (more than
// RangeReplicas members in the placement group, member counted even once
// it has left it) rather than removing them.
func (m *Membership) drains(ctx context.Context, member NodeID) (bool, error) {
	ms, err := m.groupMembership(ctx, m.cfg.ShardID)
	if err != nil {
		return false, err
	}
	n := len(ms.Nodes) + len(ms.NonVotings)
	_, voter := ms.Nodes[uint64(member)]
	_, nonVoting := ms.NonVotings[uint64(member)]
	if !voter && !nonVoting {
		n++
	}
	return n > m.cfg.RangeReplicas, nil
}

// drainsRemoval reports whether removing member moves its replicas before
// it leaves the member list: with subsets, when drains says so.
func (m *Membership) drainsRemoval(ctx context.Context, member NodeID) (bool, error) {
	if !m.subsets() {
		return false, nil
	}
	return m.drains(ctx, member)
}

// drain removes member with subsets: while more than RangeReplicas
// members are in the placement group (drains), it moves each voting
// replica member holds to the member with the fewest replicas that holds
// none of the range (an etcd learner holds none), and removes its learner
// replicas, and then takes member out of the placement group; otherwise
// it takes member out of the placement group first (BeginRemove did,
// unless cut short) and then removes every replica of member (raft,
// through a member holding the range, then the map). It reads the map
// again after each range, until the map names no replica of member.
func (m *Membership) drain(ctx context.Context, member NodeID) error {
	moves, err := m.drains(ctx, member)
	if err != nil {
		return fmt.Errorf("placement: remove member %x: %w", member, err)
	}
	if !moves {
		if err := m.leavePlacement(ctx, member); err != nil {
			return err
		}
	}
	for {
		st, err := m.cfg.Map.State(ctx)
		if err != nil {
			return err
		}
		d := m.heldBy(st, member)
		if d == nil {
			break
		}
		pair := pairOf(Pairs(d), uint64(member))
		if !moves || pair.Learner {
			if err := m.removeRangeReplica(ctx, d, ReplicaID(pair.Id)); err != nil {
				return fmt.Errorf("placement: remove member %x from range %d: %w", member, d.Id, err)
			}
			continue
		}
		to, err := m.moveTarget(ctx, st, d, member)
		if err != nil {
			return fmt.Errorf("placement: remove member %x: range %d: %w", member, d.Id, err)
		}
		m.cfg.Log.Info("moving a replica off a member being removed", "range", d.Id,
			"from", fmt.Sprintf("%x", uint64(member)), "to", fmt.Sprintf("%x", uint64(to)))
		if err := m.cfg.Move(ctx, RangeID(d.Id), member, to); err != nil {
			return fmt.Errorf("placement: remove member %x: move range %d to %x: %w", member, d.Id, uint64(to), err)
		}
	}
	return m.leavePlacement(ctx, member)
}

// heldBy returns the first range, in key order, that names a replica of
// member (an open move's source first: the move is finished before
// another begins); nil if none does.
func (m *Membership) heldBy(st *placementpb.State, member NodeID) *placementpb.RangeDescriptor {
	for _, mv := range st.Moves {
		if NodeID(mv.From.GetMember()) == member {
			if d := rangeIn(st, RangeID(mv.Range)); d != nil && pairOf(Pairs(d), uint64(member)) != nil {
				return d
			}
		}
	}
	for _, d := range st.Ranges {
		if pairOf(Pairs(d), uint64(member)) != nil {
			return d
		}
	}
	return nil
}

// errNoTarget: every member that could take a replica holds the range.
var errNoTarget = errors.New("placement: no member without a replica of the range to move it to")

// moveTarget returns where member's replica of range d goes: an open
// move's destination, else the voting member (not member) that holds no
// replica of d and the fewest replicas overall (open moves' destinations
// counted), the lowest id among equals.
func (m *Membership) moveTarget(ctx context.Context, st *placementpb.State, d *placementpb.RangeDescriptor, member NodeID) (NodeID, error) {
	load := map[NodeID]int{}
	for _, rd := range st.Ranges {
		for _, p := range Pairs(rd) {
			load[NodeID(p.Member)]++
		}
	}
	for _, mv := range st.Moves {
		if mv.Range == d.Id && NodeID(mv.From.GetMember()) == member {
			return NodeID(mv.To.GetMember()), nil
		}
		load[NodeID(mv.To.GetMember())]++
	}
	ms, err := m.groupMembership(ctx, m.cfg.ShardID)
	if err != nil {
		return 0, err
	}
	var best NodeID
	for _, id := range votingMembers(st, ms, member) {
		if pairOf(Pairs(d), uint64(id)) != nil {
			continue
		}
		if best == 0 || load[id] < load[best] {
			best = id
		}
	}
	if best == 0 {
		return 0, errNoTarget
	}
	return best, nil
}

// removeRangeReplica takes replica id out of range d's raft group (through
// a member holding it) and then out of the map.
func (m *Membership) removeRangeReplica(ctx context.Context, d *placementpb.RangeDescriptor, id ReplicaID) error {
	rm, err := m.cfg.RangeRaft.Membership(ctx, d)
	if err != nil {
		return err
	}
	if in, _ := rm.Has(id); in {
		if err := m.cfg.RangeRaft.Remove(ctx, d, id); err != nil {
			return err
		}
	}
	_, err = m.cfg.Map.RemoveReplica(ctx, RangeID(d.Id), id)
	return err
}
