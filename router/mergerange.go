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

// Merges (sharded mode; placement.MergeDriver): the operator's MergeRange
// is served on the client port — root's only once auth is enabled, as
// MoveRange — and on the peer port, where the member a client asked
// forwards it to the placement leader's member, which drives it.

// RangeMerger is the merge call a member's mover may also serve; one that
// does not refuses it (single-group mode).
type RangeMerger interface {
	// MergeRange merges the range right of range left into left and
	// returns left as the merge left it; with forward, a member whose
	// placement replica does not lead has the leader's member do it.
	MergeRange(ctx context.Context, left shard.RangeID, forward bool) (*placementpb.RangeDescriptor, error)
}

// errNoMerges: this member merges no ranges (single-group mode).
var errNoMerges = Refuse(ErrPrecondition, "cairn: merging ranges needs sharded mode (this cluster runs with --single-group)")

// MergeRange on the peer port runs the merge here (a member forwarded it
// to this one, the placement leader's).
func (s *internalServer) MergeRange(ctx context.Context, req *internalpb.MergeRangeRequest) (*internalpb.MergeRangeResponse, error) {
	return s.mergeRange(ctx, req, false)
}

func (s *internalServer) mergeRange(ctx context.Context, req *internalpb.MergeRangeRequest, forward bool) (*internalpb.MergeRangeResponse, error) {
	mg, ok := s.m.(RangeMerger)
	if !ok {
		return nil, moveStatus(errNoMerges)
	}
	d, err := mg.MergeRange(ctx, shard.RangeID(req.Left), forward)
	if err != nil {
		return nil, mergeStatus(err)
	}
	return &internalpb.MergeRangeResponse{Range: d}, nil
}

// MergeRange on the client port: the placement leader's member drives it.
func (o operatorServer) MergeRange(ctx context.Context, req *internalpb.MergeRangeRequest) (*internalpb.MergeRangeResponse, error) {
	return o.in.mergeRange(ctx, req, true)
}

// mergeStatus is the status `cairn range merge` shows for err: what the
// range map refuses of a merge, FailedPrecondition; a merge undone,
// Aborted; the rest as moveStatus has it.
func mergeStatus(err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, placement.ErrMergeUndone):
		return status.Error(codes.Aborted, err.Error())
	case errors.Is(err, placement.ErrMerging), errors.Is(err, placement.ErrNotAligned), errors.Is(err, placement.ErrNotAdjacent):
		return status.Error(codes.FailedPrecondition, err.Error())
	}
	return moveStatus(err)
}

// MergeRange has member (the placement leader's) drive a merge; its
// status comes back as it is.
func (f *Forwarder) MergeRange(ctx context.Context, member placement.NodeID, left shard.RangeID) (*placementpb.RangeDescriptor, error) {
	nc, err := f.Client(member)
	if err != nil {
		return nil, err
	}
	resp, err := nc.MergeRange(ctx, &internalpb.MergeRangeRequest{Left: uint64(left)})
	if err != nil {
		return nil, err
	}
	return resp.Range, nil
}

func (m localMember) MergeRange(ctx context.Context, left shard.RangeID, forward bool) (*placementpb.RangeDescriptor, error) {
	mg, ok := m.cfg.Mover.(RangeMerger)
	if !ok {
		return nil, errNoMerges
	}
	return mg.MergeRange(ctx, left, forward)
}
