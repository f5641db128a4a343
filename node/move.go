package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/internalpb"
	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/proto/shardpb"
	"github.com/cairn-kv/cairn/router"
	"github.com/cairn-kv/cairn/shard"
)

// Moves (sharded mode; placement.Mover, docs/plan-scale-out.md S8): the
// placement leader's member drives every move (MoveRange, forwarded there
// from the member a client asked; runMoves resumes the open ones after a
// crash or a change of placement leader). It reaches a range's raft group
// through a member holding the range (rangeRaft: the internal ChangeRange
// call, or this member's NodeHost if it holds one); the destination's
// reconciler (reconcile.go) starts the new replica and the source's drops
// it once raft removed it (drop.go).
//
// Range 1 moves as any range does: the leases' home and the cluster's
// records and auth state follow its replicas (first.go).

// changeTry bounds one raft request a ChangeRange makes here.
const changeTry = 3 * time.Second

// moverResumeEvery is how often the placement leader's member looks for
// moves left open.
const moverResumeEvery = 2 * time.Second

// newMover returns this member's mover (sharded mode).
func (n *Node) newMover() *placement.Mover {
	return placement.NewMover(placement.MoverConfig{Map: n.placement, Raft: rangeRaft{n}, Log: n.log,
		Crash: func(step string) bool {
			if f := n.hooks.moveStep.Load(); f != nil {
				(*f)(step)
			}
			return false
		}})
}

// leadsPlacement reports whether this member's placement replica leads
// its group, and the member that does (0: none known).
func (n *Node) leadsPlacement() (bool, placement.NodeID) {
	leader, _, ok, err := n.nh.GetLeaderID(placementShardID)
	if err != nil || !ok {
		return false, 0
	}
	return leader == n.memberID, placement.NodeID(leader) // the placement replica's id is its member's
}

// MoveRange implements router.RangeMover: the placement leader's member
// drives the move; another forwards it there (with forward) or refuses.
func (n *Node) MoveRange(ctx context.Context, r shard.RangeID, from, to placement.NodeID, forward bool) (*placementpb.RangeDescriptor, error) {
	if from == to {
		return nil, router.Refuse(router.ErrInvalid, "cairn: a move needs two members (from %x to %x)", uint64(from), uint64(to))
	}
	leads, leader := n.leadsPlacement()
	switch {
	case leads:
		return n.mover.Move(ctx, placement.RangeID(r), from, to)
	case leader == 0:
		return nil, router.Refuse(router.ErrTryAgain, "cairn: the placement group has no leader")
	case !forward:
		return nil, router.Refuse(router.ErrTryAgain, "cairn: member %x does not lead the placement group (%x does)", n.memberID, uint64(leader))
	}
	return n.fwd.MoveRange(ctx, leader, r, from, to)
}

// TransferRangeLeader implements router.RangeMover: member's replica of
// range r leads it once this returns.
func (n *Node) TransferRangeLeader(ctx context.Context, r shard.RangeID, member placement.NodeID) error {
	st, err := n.placement.State(ctx)
	if err != nil {
		return err
	}
	var d *placementpb.RangeDescriptor
	for _, rd := range st.Ranges {
		if rd.Id == uint64(r) {
			d = rd
		}
	}
	if d == nil {
		return router.Refuse(router.ErrNotFound, "cairn: no range %d", r)
	}
	for _, p := range placement.Voters(d) {
		if placement.NodeID(p.Member) == member {
			return rangeRaft{n}.TransferLeader(ctx, d, placement.ReplicaID(p.Id))
		}
	}
	return router.Refuse(router.ErrPrecondition, "cairn: member %x holds no voting replica of range %d", uint64(member), r)
}

// runMoves finishes or undoes, while this member's placement replica
// leads, the moves the range map has open (placement.Mover.Resume), every
// moverResumeEvery, until the node stops.
func (n *Node) runMoves() {
	defer n.wg.Done()
	t := time.NewTicker(moverResumeEvery)
	defer t.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
		}
		if leads, _ := n.leadsPlacement(); !leads {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		go func() {
			select {
			case <-n.stop:
				cancel()
			case <-ctx.Done():
			}
		}()
		if err := n.mover.Resume(ctx); err != nil {
			n.log.Warn("resuming the open moves failed; trying again", "error", err)
		}
		if err := n.merges.Resume(ctx); err != nil {
			n.log.Warn("resuming the open merges failed; trying again", "error", err)
		}
		cancel()
	}
}

// ChangeRange implements router.RangeMover over this member's replica of
// the range (see internalpb.ChangeRangeOp).
func (n *Node) ChangeRange(ctx context.Context, req *internalpb.ChangeRangeRequest) *internalpb.ChangeRangeResponse {
	out, err := n.changeRange(ctx, req)
	if err != nil {
		return &internalpb.ChangeRangeResponse{Error: router.EncodeError(err)}
	}
	return out
}

func (n *Node) changeRange(ctx context.Context, req *internalpb.ChangeRangeRequest) (*internalpb.ChangeRangeResponse, error) {
	id := shard.RangeID(req.Range)
	if req.Op == internalpb.ChangeRangeOp_CHANGE_RANGE_OP_STATS {
		return n.rangeStatsOf(id, req.SplitAbove, req.LoadAbove) // schedstats.go
	}
	if id == placementShardID && req.Op == internalpb.ChangeRangeOp_CHANGE_RANGE_OP_TRANSFER_LEADER {
		return &internalpb.ChangeRangeResponse{}, n.handPlacementOver(ctx) // yield.go
	}
	r := n.rangeSet.Get(id, true)
	if r == nil {
		return nil, fmt.Errorf("%w: no replica of range %d on member %x", shard.ErrNoLeader, id, n.memberID)
	}
	out := &internalpb.ChangeRangeResponse{}
	try, cancel := context.WithTimeout(ctx, changeTry)
	defer cancel()
	var err error
	switch req.Op {
	case internalpb.ChangeRangeOp_CHANGE_RANGE_OP_STATUS:
		out.Replica, out.Applied = uint64(r.ReplicaID()), r.AppliedIndex()
	case internalpb.ChangeRangeOp_CHANGE_RANGE_OP_MEMBERSHIP:
		ms, err := n.nh.SyncGetShardMembership(try, uint64(id))
		if err != nil {
			return nil, err
		}
		for rid := range ms.Nodes {
			out.Voters = append(out.Voters, rid)
		}
		for rid := range ms.NonVotings {
			out.Learners = append(out.Learners, rid)
		}
		for rid := range ms.Removed {
			out.Removed = append(out.Removed, rid)
		}
		slices.Sort(out.Voters)
		slices.Sort(out.Learners)
		slices.Sort(out.Removed)
		if leader, _, ok, _ := n.nh.GetLeaderID(uint64(id)); ok {
			out.Leader = leader
		}
	case internalpb.ChangeRangeOp_CHANGE_RANGE_OP_ADD_LEARNER:
		err = n.nh.SyncRequestAddNonVoting(try, uint64(id), req.Replica, memberTarget(req.Member), 0)
	case internalpb.ChangeRangeOp_CHANGE_RANGE_OP_PROMOTE:
		err = n.nh.SyncRequestAddReplica(try, uint64(id), req.Replica, memberTarget(req.Member), 0)
	case internalpb.ChangeRangeOp_CHANGE_RANGE_OP_REMOVE:
		err = n.nh.SyncRequestDeleteReplica(try, uint64(id), req.Replica, 0)
	case internalpb.ChangeRangeOp_CHANGE_RANGE_OP_LEAVE:
		n.leaving.Store(replicaKey{id, r.ReplicaID()}, true)
		if id == singleShardID {
			n.first.CompareAndSwap(r, nil) // records and auth read through the holders now (first.go)
		}
		n.routes.Leave(id)
	case internalpb.ChangeRangeOp_CHANGE_RANGE_OP_TRANSFER_LEADER:
		err = n.transferRange(try, r, req.Replica)
	default:
		err = fmt.Errorf("node: unknown ChangeRange op %v", req.Op)
	}
	if err != nil {
		return nil, err
	}
	return out, nil
}

// transferRange asks raft to hand range r's leadership to replica and
// waits until it leads (raft says nothing when a transfer is done).
func (n *Node) transferRange(ctx context.Context, r *shard.Range, replica uint64) error {
	id := r.ID()
	for {
		leader, _, ok, err := n.nh.GetLeaderID(uint64(id))
		if err != nil {
			return err
		}
		if ok && leader == replica {
			return nil
		}
		if ok && leader == uint64(r.ReplicaID()) {
			if err := n.nh.RequestLeaderTransfer(uint64(id), replica); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node: range %d: replica %d does not lead yet: %w", id, replica, ctx.Err())
		case <-time.After(n.cfg.HeartbeatInterval):
		}
	}
}

// rangeRaft is placement.RangeRaft over the members holding a range.
type rangeRaft struct{ n *Node }

var _ placement.RangeRaft = rangeRaft{}

// holders are the members d names, leader hint first, then voters.
func holders(d *placementpb.RangeDescriptor) []placement.NodeID {
	var out []placement.NodeID
	add := func(m uint64) {
		if m != 0 && !slices.Contains(out, placement.NodeID(m)) {
			out = append(out, placement.NodeID(m))
		}
	}
	add(d.Leader)
	for _, p := range placement.Voters(d) {
		add(p.Member)
	}
	for _, p := range placement.Pairs(d) {
		add(p.Member)
	}
	return out
}

// on asks member to do req (this member, here).
func (rr rangeRaft) on(ctx context.Context, member placement.NodeID, req *internalpb.ChangeRangeRequest) (*internalpb.ChangeRangeResponse, error) {
	if uint64(member) == rr.n.memberID {
		return rr.n.changeRange(ctx, req)
	}
	return rr.n.fwd.ChangeRange(ctx, member, req)
}

// any asks the members holding d, in turn, until one does req.
func (rr rangeRaft) any(ctx context.Context, d *placementpb.RangeDescriptor, req *internalpb.ChangeRangeRequest) (*internalpb.ChangeRangeResponse, error) {
	req.Range = d.Id
	var errs []error
	for _, m := range holders(d) {
		resp, err := rr.on(ctx, m, req)
		if err == nil {
			return resp, nil
		}
		errs = append(errs, fmt.Errorf("member %x: %w", uint64(m), err))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("node: range %d: %s: %w", d.Id, req.Op, errors.Join(errs...))
}

func (rr rangeRaft) Membership(ctx context.Context, d *placementpb.RangeDescriptor) (placement.RangeMembership, error) {
	resp, err := rr.any(ctx, d, &internalpb.ChangeRangeRequest{Op: internalpb.ChangeRangeOp_CHANGE_RANGE_OP_MEMBERSHIP})
	if err != nil {
		return placement.RangeMembership{}, err
	}
	ids := func(in []uint64) []placement.ReplicaID {
		out := make([]placement.ReplicaID, len(in))
		for i, id := range in {
			out[i] = placement.ReplicaID(id)
		}
		return out
	}
	return placement.RangeMembership{Voters: ids(resp.Voters), Learners: ids(resp.Learners), Removed: ids(resp.Removed),
		Leader: placement.ReplicaID(resp.Leader)}, nil
}

func (rr rangeRaft) AddLearner(ctx context.Context, d *placementpb.RangeDescriptor, r *placementpb.Replica) error {
	_, err := rr.any(ctx, d, &internalpb.ChangeRangeRequest{Op: internalpb.ChangeRangeOp_CHANGE_RANGE_OP_ADD_LEARNER, Replica: r.Id, Member: r.Member})
	return err
}

func (rr rangeRaft) Promote(ctx context.Context, d *placementpb.RangeDescriptor, r *placementpb.Replica) error {
	_, err := rr.any(ctx, d, &internalpb.ChangeRangeRequest{Op: internalpb.ChangeRangeOp_CHANGE_RANGE_OP_PROMOTE, Replica: r.Id, Member: r.Member})
	return err
}

func (rr rangeRaft) Remove(ctx context.Context, d *placementpb.RangeDescriptor, id placement.ReplicaID) error {
	_, err := rr.any(ctx, d, &internalpb.ChangeRangeRequest{Op: internalpb.ChangeRangeOp_CHANGE_RANGE_OP_REMOVE, Replica: uint64(id)})
	return err
}

// TransferLeader asks the member of the leader raft names (the map's
// holders if it names none here) to hand leadership over.
func (rr rangeRaft) TransferLeader(ctx context.Context, d *placementpb.RangeDescriptor, to placement.ReplicaID) error {
	ms, err := rr.Membership(ctx, d)
	if err != nil {
		return err
	}
	req := &internalpb.ChangeRangeRequest{Range: d.Id, Op: internalpb.ChangeRangeOp_CHANGE_RANGE_OP_TRANSFER_LEADER, Replica: uint64(to)}
	if m, ok := placement.MemberOf(d, ms.Leader); ok {
		_, err = rr.on(ctx, m, req)
		return err
	}
	_, err = rr.any(ctx, d, req)
	return err
}

// Touch commits an empty lease checkpoint to d through its client here.
func (rr rangeRaft) Touch(ctx context.Context, d *placementpb.RangeDescriptor) error {
	rc := rr.n.routes.Client(shard.RangeID(d.Id))
	if rc == nil {
		return fmt.Errorf("node: range %d is not routed here", d.Id)
	}
	empty, _ := proto.Marshal(&pb.LeaseCheckpointRequest{})
	_, err := rc.Write(ctx, &shardpb.Request{Op: &shardpb.Request_LeaseCheckpoint{LeaseCheckpoint: empty}})
	return err
}

func (rr rangeRaft) CompactLog(ctx context.Context, member placement.NodeID, d *placementpb.RangeDescriptor) error {
	if uint64(member) == rr.n.memberID {
		return rr.n.reconfig.CompactLog(ctx, placement.RangeID(d.Id))
	}
	return rr.n.fwd.CompactLog(ctx, member, shard.RangeID(d.Id))
}

func (rr rangeRaft) StopServing(ctx context.Context, member placement.NodeID, d *placementpb.RangeDescriptor) error {
	_, err := rr.on(ctx, member, &internalpb.ChangeRangeRequest{Range: d.Id, Op: internalpb.ChangeRangeOp_CHANGE_RANGE_OP_LEAVE})
	return err
}

// notServing reports whether this member's replica of range id serves
// nothing, to the node-to-node service either: a move's source about to
// leave the group (told to stop serving it), or a move's destination not
// caught up yet (reconcile.go).
func (n *Node) notServing(id shard.RangeID) bool {
	r := n.rangeSet.Get(id, false)
	if r == nil {
		return false
	}
	key := replicaKey{id, r.ReplicaID()}
	if _, ok := n.leaving.Load(key); ok {
		return true
	}
	_, ok := n.destinations.Load(key)
	return ok
}

func (rr rangeRaft) Status(ctx context.Context, member placement.NodeID, d *placementpb.RangeDescriptor) (placement.ReplicaStatus, error) {
	resp, err := rr.on(ctx, member, &internalpb.ChangeRangeRequest{Range: d.Id, Op: internalpb.ChangeRangeOp_CHANGE_RANGE_OP_STATUS})
	if err != nil {
		return placement.ReplicaStatus{}, err
	}
	return placement.ReplicaStatus{Replica: placement.ReplicaID(resp.Replica), Applied: resp.Applied}, nil
}
