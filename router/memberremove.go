package router

import (
	"context"
	"errors"
	"fmt"

	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/internalpb"
)

// errNoRemove: this member does not remove members for others (single-group
// mode, or a node that wired no RemoveMember).
var errNoRemove = errors.New("router: this member removes no member for others")

func (m localMember) RemoveMember(ctx context.Context, id uint64) error {
	if m.cfg.RemoveMember == nil {
		return errNoRemove
	}
	return m.cfg.RemoveMember(ctx, id)
}

func (s *internalServer) RemoveMember(ctx context.Context, req *internalpb.RemoveMemberRequest) (*internalpb.RemoveMemberResponse, error) {
	return &internalpb.RemoveMemberResponse{Error: encodeError(s.m.RemoveMember(ctx, req.Member))}, nil
}

// RemoveMember has member remove member id from the cluster (what a member
// asked to remove itself has another do). A refusal there comes back with
// its message.
func (f *Forwarder) RemoveMember(ctx context.Context, member placement.NodeID, id uint64) error {
	nc, err := f.Client(member)
	if err != nil {
		return err
	}
	resp, err := nc.RemoveMember(ctx, &internalpb.RemoveMemberRequest{Member: id})
	if err != nil {
		return rpcError(err)
	}
	if resp.Error != nil {
		return fmt.Errorf("member %x: %s", uint64(member), resp.Error.Message)
	}
	return nil
}
