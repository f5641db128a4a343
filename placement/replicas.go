package placement

import (
	"cmp"
	"fmt"
	"slices"

	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/proto/placementpb"
)

// A range's replicas are (member, replica id) pairs: the member holding
// the replica and its id in the range's raft group. Ids are allocated by
// the Table from one counter for all ranges, never reissued and never
// equal to a member id it knows of, so that the ids of descriptors written
// before allocation — each replica's id its member's id — stay unique:
//
//	legacy descriptor   replicas=[1 2 3]                     → pairs 1:1 2:2 3:3
//	add_replica r1 m4   (next id 1; 1..4 are members)        → pairs 1:1 2:2 3:3 4:5(learner)
//	split r1            → r1 and the new range both hold 1:1 2:2 3:3 4:5 (a new group)
//
// The helpers below read a descriptor whatever its age: one written before
// pairs (empty replica_set) reads as its replicas' (m, m) pairs.

// Pairs returns d's replicas, voters and learners (the descriptor's own
// pairs: the caller must not change them).
func Pairs(d *placementpb.RangeDescriptor) []*placementpb.Replica {
	if len(d.GetReplicaSet()) > 0 || len(d.GetReplicas()) == 0 {
		return d.GetReplicaSet()
	}
	return legacyPairs(d.Replicas)
}

// Voters returns d's voting replicas, in d's order.
func Voters(d *placementpb.RangeDescriptor) []*placementpb.Replica {
	var out []*placementpb.Replica
	for _, r := range Pairs(d) {
		if !r.Learner {
			out = append(out, r)
		}
	}
	return out
}

// Founders returns the replicas that started d's raft group: founder_set,
// else (descriptors written before pairs) founders as (m, m) pairs, else
// (written before founders) d's voters.
func Founders(d *placementpb.RangeDescriptor) []*placementpb.Replica {
	switch {
	case len(d.GetFounderSet()) > 0:
		return d.FounderSet
	case len(d.GetFounders()) > 0:
		return legacyPairs(d.Founders)
	}
	return Voters(d)
}

// MemberOf returns the member holding replica rid of d.
func MemberOf(d *placementpb.RangeDescriptor, rid ReplicaID) (NodeID, bool) {
	for _, r := range Pairs(d) {
		if r.Id == uint64(rid) {
			return NodeID(r.Member), true
		}
	}
	return 0, false
}

// ReplicaOf returns the id of member's replica of d.
func ReplicaOf(d *placementpb.RangeDescriptor, member NodeID) (ReplicaID, bool) {
	if r := pairOf(Pairs(d), uint64(member)); r != nil {
		return ReplicaID(r.Id), true
	}
	return 0, false
}

// replicaMember is the member holding replica rid of range r (0: none
// the map names).
func (t *Table) replicaMember(r RangeID, rid ReplicaID) NodeID {
	if d := t.byID[r]; d != nil {
		if m, ok := MemberOf(d, rid); ok {
			return m
		}
	}
	return 0
}

// pairOf returns member's pair among pairs, or nil.
func pairOf(pairs []*placementpb.Replica, member uint64) *placementpb.Replica {
	for _, r := range pairs {
		if r.Member == member {
			return r
		}
	}
	return nil
}

// pairByID returns the pair with replica id among pairs, or nil.
func pairByID(pairs []*placementpb.Replica, id uint64) *placementpb.Replica {
	for _, r := range pairs {
		if r.Id == id {
			return r
		}
	}
	return nil
}

func legacyPairs(members []uint64) []*placementpb.Replica {
	out := make([]*placementpb.Replica, len(members))
	for i, m := range members {
		out[i] = &placementpb.Replica{Member: m, Id: m}
	}
	return out
}

func clonePairs(pairs []*placementpb.Replica) []*placementpb.Replica {
	if pairs == nil {
		return nil
	}
	out := make([]*placementpb.Replica, len(pairs))
	for i, r := range pairs {
		out[i] = proto.Clone(r).(*placementpb.Replica)
	}
	return out
}

// voterMembers is the mirror of pairs that older readers read: the voters'
// members, in pairs' order.
func voterMembers(pairs []*placementpb.Replica) []uint64 {
	var out []uint64
	for _, r := range pairs {
		if !r.Learner {
			out = append(out, r.Member)
		}
	}
	return out
}

// normalize gives a descriptor written before pairs its pairs: each
// member's replica has the member's id. Its mirrors are left as they are
// (they agree).
func normalize(d *placementpb.RangeDescriptor) {
	if len(d.ReplicaSet) == 0 && len(d.Replicas) > 0 {
		d.ReplicaSet = legacyPairs(d.Replicas)
	}
	if len(d.FounderSet) == 0 && len(d.Founders) > 0 {
		d.FounderSet = legacyPairs(d.Founders)
	}
}

// setPairs makes pairs d's replicas, and replicas their mirror.
func setPairs(d *placementpb.RangeDescriptor, pairs []*placementpb.Replica) {
	d.ReplicaSet = pairs
	d.Replicas = voterMembers(pairs)
}

// setFounders makes pairs d's founders, and founders their mirror.
func setFounders(d *placementpb.RangeDescriptor, pairs []*placementpb.Replica) {
	d.FounderSet = pairs
	d.Founders = voterMembers(pairs)
}

// memberIDs returns every member id the table knows of, with extra: the
// registered nodes, the members of every range's replicas and founders
// and of the open moves, and the member being reconfigured. No replica id
// is allocated among them.
func (t *Table) memberIDs(extra ...uint64) map[uint64]bool {
	ids := map[uint64]bool{}
	for _, m := range extra {
		ids[m] = true
	}
	for id := range t.nodes {
		ids[uint64(id)] = true
	}
	for _, d := range t.byID {
		for _, r := range d.ReplicaSet {
			ids[r.Member] = true
		}
		for _, r := range d.FounderSet {
			ids[r.Member] = true
		}
	}
	for _, mv := range t.moves {
		ids[mv.From.GetMember()] = true
		ids[mv.To.GetMember()] = true
	}
	if t.reconfiguring != 0 {
		ids[t.reconfiguring] = true
	}
	return ids
}

// allocReplica allocates a replica id, skipping the member ids in skip.
func (t *Table) allocReplica(skip map[uint64]bool) ReplicaID {
	for t.nextReplicaID == 0 || skip[uint64(t.nextReplicaID)] {
		t.nextReplicaID++
	}
	id := t.nextReplicaID
	t.nextReplicaID++
	return id
}

// changeReplicas applies a ChangeReplicas, the command of logs written
// before replica ids were allocated: the member added holds the replica
// whose id is its member id (as a voter; a learner it holds is promoted),
// the member removed loses its replica. The mirror comes out as it did
// then: sorted after an addition, in its order otherwise.
func (t *Table) changeReplicas(d *placementpb.RangeDescriptor, c *placementpb.ChangeReplicas) {
	pairs := d.ReplicaSet
	if c.Remove != 0 {
		pairs = slices.DeleteFunc(pairs, func(r *placementpb.Replica) bool { return r.Member == c.Remove })
	}
	if c.Add != 0 {
		if r := pairOf(pairs, c.Add); r != nil {
			r.Learner = false
		} else {
			pairs = append(pairs, &placementpb.Replica{Member: c.Add, Id: c.Add})
			slices.SortStableFunc(pairs, func(a, b *placementpb.Replica) int { return cmp.Compare(a.Member, b.Member) })
		}
	}
	setPairs(d, pairs)
}

// openMoveOf returns the open move of range d whose source or destination
// is member or replica id (0: any), or nil.
func (t *Table) openMoveOf(d *placementpb.RangeDescriptor, member, id uint64) *placementpb.Move {
	mv := t.moves[RangeID(d.Id)]
	if mv == nil {
		return nil
	}
	for _, r := range []*placementpb.Replica{mv.From, mv.To} {
		if (member != 0 && r.GetMember() == member) || (id != 0 && r.GetId() == id) {
			return mv
		}
	}
	return nil
}

func (t *Table) addReplica(c *placementpb.AddReplica) (*placementpb.Result, error) {
	d := t.byID[RangeID(c.Range)]
	if d == nil {
		return nil, fmt.Errorf("%w: %d", ErrUnknownRange, c.Range)
	}
	if err := t.refuseMerging(d); err != nil {
		return nil, err
	}
	if c.Member == 0 {
		return nil, ErrNoNode
	}
	if pairOf(d.ReplicaSet, c.Member) == nil {
		if mv := t.openMoveOf(d, c.Member, 0); mv != nil {
			return nil, fmt.Errorf("%w: range %d, member %x is its destination", ErrMoving, d.Id, c.Member)
		}
		id := t.allocReplica(t.memberIDs(c.Member))
		setPairs(d, append(d.ReplicaSet, &placementpb.Replica{Member: c.Member, Id: uint64(id), Learner: c.Learner}))
	}
	return &placementpb.Result{Ranges: []*placementpb.RangeDescriptor{clone(d)}}, nil
}

func (t *Table) promoteReplica(c *placementpb.PromoteReplica) (*placementpb.Result, error) {
	d := t.byID[RangeID(c.Range)]
	if d == nil {
		return nil, fmt.Errorf("%w: %d", ErrUnknownRange, c.Range)
	}
	if err := t.refuseMerging(d); err != nil {
		return nil, err
	}
	r := pairByID(d.ReplicaSet, c.Id)
	if r == nil {
		return nil, fmt.Errorf("%w: range %d, replica %d", ErrNoReplica, d.Id, c.Id)
	}
	if r.Learner {
		if t.openMoveOf(d, 0, c.Id) != nil {
			return nil, fmt.Errorf("%w: range %d, replica %d is moving", ErrMoving, d.Id, c.Id)
		}
		r.Learner = false
		setPairs(d, d.ReplicaSet)
	}
	return &placementpb.Result{Ranges: []*placementpb.RangeDescriptor{clone(d)}}, nil
}

func (t *Table) removeReplica(c *placementpb.RemoveReplica) (*placementpb.Result, error) {
	d := t.byID[RangeID(c.Range)]
	if d == nil {
		return nil, fmt.Errorf("%w: %d", ErrUnknownRange, c.Range)
	}
	if err := t.refuseMerging(d); err != nil {
		return nil, err
	}
	if r := pairByID(d.ReplicaSet, c.Id); r != nil {
		if t.openMoveOf(d, 0, c.Id) != nil {
			return nil, fmt.Errorf("%w: range %d, replica %d is moving", ErrMoving, d.Id, c.Id)
		}
		if !r.Learner && len(voterMembers(d.ReplicaSet)) == 1 {
			return nil, fmt.Errorf("%w: range %d, replica %d", ErrLastVoter, d.Id, c.Id)
		}
		setPairs(d, slices.DeleteFunc(d.ReplicaSet, func(r *placementpb.Replica) bool { return r.Id == c.Id }))
		forgetLeader(d, r.Member)
	}
	return &placementpb.Result{Ranges: []*placementpb.RangeDescriptor{clone(d)}}, nil
}

// forgetLeader drops d's leader hint if it names member, which holds no
// replica of d any more.
func forgetLeader(d *placementpb.RangeDescriptor, member uint64) {
	if d.Leader == member && pairOf(d.ReplicaSet, member) == nil {
		d.Leader = 0
	}
}
