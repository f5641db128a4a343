package router

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/internalpb"
	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/shard"
)

// Moves (sharded mode; placement.Mover): the operator's MoveRange and
// TransferRangeLeader are served on the client port — root's only once
// auth is enabled, as SplitRange (authgate.go) — and on the peer port,
// where the member a client asked forwards a MoveRange to the placement
// leader's member, which drives it. ChangeRange, on the peer port only,
// is how the Mover reaches a range's raft group through a member holding
// it; RangeStats, on the peer port only too, is how the placement
// scheduler gathers a member's figures.

// RangeMover is what the move calls ask of this member; a Member that
// does not implement it refuses them (single-group mode).
type RangeMover interface {
	// ChangeRange reads or changes range req.Range's raft group through
	// this member's replica of it (its Error says why it could not).
	ChangeRange(ctx context.Context, req *internalpb.ChangeRangeRequest) *internalpb.ChangeRangeResponse
	// RangeStats answers this member's disk use and the figures of every
	// range it holds (the placement scheduler's report, one call per
	// member a window).
	RangeStats(ctx context.Context, req *internalpb.RangeStatsRequest) (*internalpb.RangeStatsResponse, error)
	// MoveRange moves range r's replica on member from to member to and
	// returns the range as the move left it; with forward, a member whose
	// placement replica does not lead has the leader's member do it.
	MoveRange(ctx context.Context, r shard.RangeID, from, to placement.NodeID, forward bool) (*placementpb.RangeDescriptor, error)
	// TransferRangeLeader makes member's replica of range r its leader.
	TransferRangeLeader(ctx context.Context, r shard.RangeID, member placement.NodeID) error
}

// errNoMoves: this member moves no ranges (single-group mode).
var errNoMoves = Refuse(ErrPrecondition, "cairn: moving ranges needs sharded mode (this cluster runs with --single-group)")

func (s *internalServer) mover() (RangeMover, bool) {
	mv, ok := s.m.(RangeMover)
	return mv, ok
}

func (s *internalServer) ChangeRange(ctx context.Context, req *internalpb.ChangeRangeRequest) (*internalpb.ChangeRangeResponse, error) {
	mv, ok := s.mover()
	if !ok {
		return &internalpb.ChangeRangeResponse{Error: encodeError(errNoMoves)}, nil
	}
	return mv.ChangeRange(ctx, req), nil
}

// RangeStats on the peer port answers this member's figures (a member
// that moves no ranges answers Unimplemented: it has none to report).
func (s *internalServer) RangeStats(ctx context.Context, req *internalpb.RangeStatsRequest) (*internalpb.RangeStatsResponse, error) {
	mv, ok := s.mover()
	if !ok {
		return nil, status.Error(codes.Unimplemented, errNoMoves.Error())
	}
	resp, err := mv.RangeStats(ctx, req)
	if err != nil {
		return nil, moveStatus(err)
	}
	return resp, nil
}

// MoveRange on the peer port runs the move here (a member forwarded it to
// this one, the placement leader's).
func (s *internalServer) MoveRange(ctx context.Context, req *internalpb.MoveRangeRequest) (*internalpb.MoveRangeResponse, error) {
	return s.moveRange(ctx, req, false)
}

func (s *internalServer) moveRange(ctx context.Context, req *internalpb.MoveRangeRequest, forward bool) (*internalpb.MoveRangeResponse, error) {
	mv, ok := s.mover()
	if !ok {
		return nil, moveStatus(errNoMoves)
	}
	d, err := mv.MoveRange(ctx, shard.RangeID(req.Range), placement.NodeID(req.FromMember), placement.NodeID(req.ToMember), forward)
	if err != nil {
		return nil, moveStatus(err)
	}
	return &internalpb.MoveRangeResponse{Range: d}, nil
}

func (s *internalServer) TransferRangeLeader(ctx context.Context, req *internalpb.TransferRangeLeaderRequest) (*internalpb.TransferRangeLeaderResponse, error) {
	mv, ok := s.mover()
	if !ok {
		return nil, moveStatus(errNoMoves)
	}
	if err := mv.TransferRangeLeader(ctx, shard.RangeID(req.Range), placement.NodeID(req.Member)); err != nil {
		return nil, moveStatus(err)
	}
	return &internalpb.TransferRangeLeaderResponse{}, nil
}

// MoveRange on the client port: the placement leader's member drives it.
func (o operatorServer) MoveRange(ctx context.Context, req *internalpb.MoveRangeRequest) (*internalpb.MoveRangeResponse, error) {
	return o.in.moveRange(ctx, req, true)
}

func (o operatorServer) TransferRangeLeader(ctx context.Context, req *internalpb.TransferRangeLeaderRequest) (*internalpb.TransferRangeLeaderResponse, error) {
	return o.in.TransferRangeLeader(ctx, req)
}

// moveStatus is the status `cairn range move` and `transfer-leader` show
// for err: a status already (a forwarded call's) as it is; a refusal's own;
// what the range map refuses, FailedPrecondition (NotFound for a range it
// does not have); a move undone, Aborted; a deadline, DeadlineExceeded;
// anything else Unavailable.
func moveStatus(err error) error {
	var rf *refusal
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.As(err, &rf):
		return rf.status().Err()
	case errors.Is(err, placement.ErrUnknownRange):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, placement.ErrMoveUndone):
		return status.Error(codes.Aborted, err.Error())
	case errors.Is(err, placement.ErrMoving), errors.Is(err, placement.ErrNoReplica), errors.Is(err, placement.ErrHasReplica),
		errors.Is(err, placement.ErrNoNode), errors.Is(err, placement.ErrStaleRange), errors.Is(err, placement.ErrReconfiguring):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	return status.Error(codes.Unavailable, err.Error())
}

// ChangeRange asks member to read or change range req.Range's raft group
// through its replica (an error for a member that could not).
func (f *Forwarder) ChangeRange(ctx context.Context, member placement.NodeID, req *internalpb.ChangeRangeRequest) (*internalpb.ChangeRangeResponse, error) {
	nc, err := f.Client(member)
	if err != nil {
		return nil, err
	}
	resp, err := nc.ChangeRange(ctx, req)
	if err != nil {
		return nil, rpcError(err)
	}
	if err := decodeError(resp.Error, errNotLeader); err != nil {
		return nil, err
	}
	return resp, nil
}

// MoveRange has member (the placement leader's) drive a move; its status
// comes back as it is.
func (f *Forwarder) MoveRange(ctx context.Context, member placement.NodeID, r shard.RangeID, from, to placement.NodeID) (*placementpb.RangeDescriptor, error) {
	nc, err := f.Client(member)
	if err != nil {
		return nil, err
	}
	resp, err := nc.MoveRange(ctx, &internalpb.MoveRangeRequest{Range: uint64(r), FromMember: uint64(from), ToMember: uint64(to)})
	if err != nil {
		return nil, err
	}
	return resp.Range, nil
}

func (m localMember) ChangeRange(ctx context.Context, req *internalpb.ChangeRangeRequest) *internalpb.ChangeRangeResponse {
	if m.cfg.Mover == nil {
		return &internalpb.ChangeRangeResponse{Error: encodeError(errNoMoves)}
	}
	return m.cfg.Mover.ChangeRange(ctx, req)
}

func (m localMember) RangeStats(ctx context.Context, req *internalpb.RangeStatsRequest) (*internalpb.RangeStatsResponse, error) {
	if m.cfg.Mover == nil {
		return nil, errNoMoves
	}
	return m.cfg.Mover.RangeStats(ctx, req)
}

func (m localMember) MoveRange(ctx context.Context, r shard.RangeID, from, to placement.NodeID, forward bool) (*placementpb.RangeDescriptor, error) {
	if m.cfg.Mover == nil {
		return nil, errNoMoves
	}
	return m.cfg.Mover.MoveRange(ctx, r, from, to, forward)
}

func (m localMember) TransferRangeLeader(ctx context.Context, r shard.RangeID, member placement.NodeID) error {
	if m.cfg.Mover == nil {
		return errNoMoves
	}
	return m.cfg.Mover.TransferRangeLeader(ctx, r, member)
}

// EncodeError is the Error a ChangeRange answer carries for err (nil: none).
func EncodeError(err error) *internalpb.Error { return encodeError(err) }

// IsLocal reports whether the cache routes range id to this member's
// replica.
func (c *RangeCache) IsLocal(id shard.RangeID) bool {
	return c.view.Load().entries[id].Local != nil
}

// Reread builds the cache's view again, its replicas' descriptors read
// anew: a move changed a range's replicas, which no generation records
// (Refresh). Unlike PutRanges it routes no range to a replica here that
// the cache does not route there already: a move's source left (Leave)
// stays left.
func (c *RangeCache) Reread() { c.update(func(map[shard.RangeID]RangeEntry) {}) }

// Leave routes range id, whose replica here is going (a move's source
// told to stop serving it, or raft removed it), through the members
// holding it, by the descriptor the cache has of it until the map
// follower's next PutMap replaces it. A range routed so already keeps its
// entry: a source is told to leave, then its drop says so again, and the
// map may name this member until the move is recorded as over (PutMap
// puts in no entry for such a range) — a range left out of the cache
// meanwhile would be no range here, its keys read as absent.
func (c *RangeCache) Leave(id shard.RangeID) {
	c.update(func(all map[shard.RangeID]RangeEntry) {
		e, ok := all[id]
		if !ok || e.Local == nil {
			return // routed through the holders already (told to stop serving it, then removed)
		}
		d := e.descriptor()
		if d == nil {
			delete(all, id)
			return
		}
		rc := c.fwd.RemoteRange(d)
		all[id] = RangeEntry{Descriptor: d, Shard: rc, Counting: rc.counting}
	})
}
