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

// UpdateMember gives member id new peer URLs, here (refused when the node
// wired no UpdateMember).
func (m localMember) UpdateMember(ctx context.Context, id uint64, peerURLs []string) error {
	if m.cfg.UpdateMember == nil {
		return fmt.Errorf("router: this member does not update members for others")
	}
	return m.cfg.UpdateMember(ctx, id, peerURLs)
}

func (s *internalServer) UpdateMember(ctx context.Context, req *internalpb.UpdateMemberRequest) (*internalpb.UpdateMemberResponse, error) {
	return &internalpb.UpdateMemberResponse{Error: encodeError(s.m.UpdateMember(ctx, req.Member, req.PeerUrls))}, nil
}

// UpdateMember has member give member id new peer URLs (what a member
// asked to move itself has another do). A refusal there comes back with
// its message.
func (f *Forwarder) UpdateMember(ctx context.Context, member placement.NodeID, id uint64, peerURLs []string) error {
	nc, err := f.Client(member)
	if err != nil {
		return err
	}
	resp, err := nc.UpdateMember(ctx, &internalpb.UpdateMemberRequest{Member: id, PeerUrls: peerURLs})
	if err != nil {
		return rpcError(err)
	}
	if resp.Error != nil {
		return fmt.Errorf("member %x: %s", uint64(member), resp.Error.Message)
	}
	return nil
}
