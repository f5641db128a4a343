package router

import (
	"cmp"
	"context"
	"slices"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// Membership changes the raft membership of the cluster; the node
// implements it. Errors are etcd's statuses (rpctypes) or Go errors that
// toGRPC classifies.
type Membership interface {
	// AddMember adds a member with peerURLs, as a learner (non-voting)
	// if asked, and returns it.
	AddMember(ctx context.Context, peerURLs []string, learner bool) (*pb.Member, error)
	// RemoveMember removes member id.
	RemoveMember(ctx context.Context, id uint64) error
	// PromoteMember makes learner id a voting member.
	PromoteMember(ctx context.Context, id uint64) error
	// UpdateMember gives member id new peer URLs.
	UpdateMember(ctx context.Context, id uint64, peerURLs []string) error
}

func (c *clusterServer) membership() (Membership, error) { return c.s.cfg.Node, nil }

func (c *clusterServer) MemberAdd(ctx context.Context, r *pb.MemberAddRequest) (*pb.MemberAddResponse, error) {
	ms, err := c.membership()
	if err != nil {
		return nil, err
	}
	if len(r.PeerURLs) == 0 {
		return nil, rpctypes.ErrGRPCMemberBadURLs
	}
	if r.IsLearner {
		// As etcd: a learner more than the cluster may have is refused
		// (etcd counts at apply; here the linearizable list stands in).
		current, err := c.s.cfg.Node.Members(true)
		if err != nil {
			return nil, toGRPC(err)
		}
		learners := 0
		for _, m := range current {
			if m.IsLearner {
				learners++
			}
		}
		if learners+1 > c.s.maxLearners() {
			return nil, rpctypes.ErrGRPCTooManyLearners
		}
	}
	m, err := ms.AddMember(ctx, r.PeerURLs, r.IsLearner)
	if err != nil {
		return nil, toGRPC(err)
	}
	resp := &pb.MemberAddResponse{Header: &pb.ResponseHeader{}, Member: m, Members: c.s.membersWith(m)}
	c.s.fill(resp.Header)
	return resp, nil
}

func (c *clusterServer) MemberRemove(ctx context.Context, r *pb.MemberRemoveRequest) (*pb.MemberRemoveResponse, error) {
	ms, err := c.membership()
	if err != nil {
		return nil, err
	}
	if err := ms.RemoveMember(ctx, r.ID); err != nil {
		return nil, toGRPC(err)
	}
	// The list is this member's view without the member removed, as etcd
	// answers (its own cluster view): a linearizable read would wait out
	// its timeout on a member that removed itself, which no group answers
	// any more.
	local, _ := c.s.cfg.Node.Members(false)
	members := make([]*pb.Member, 0, len(local))
	for _, m := range local {
		if m.ID != r.ID {
			members = append(members, m)
		}
	}
	resp := &pb.MemberRemoveResponse{Header: &pb.ResponseHeader{}, Members: members}
	c.s.fill(resp.Header)
	return resp, nil
}

func (c *clusterServer) MemberPromote(ctx context.Context, r *pb.MemberPromoteRequest) (*pb.MemberPromoteResponse, error) {
	ms, err := c.membership()
	if err != nil {
		return nil, err
	}
	if err := ms.PromoteMember(ctx, r.ID); err != nil {
		return nil, toGRPC(err)
	}
	resp := &pb.MemberPromoteResponse{Header: &pb.ResponseHeader{}, Members: c.s.members()}
	c.s.fill(resp.Header)
	return resp, nil
}

// MemberUpdate gives a member new peer URLs: raft reaches it there from
// then on, and the member is restarted listening there.
func (c *clusterServer) MemberUpdate(ctx context.Context, r *pb.MemberUpdateRequest) (*pb.MemberUpdateResponse, error) {
	ms, err := c.membership()
	if err != nil {
		return nil, err
	}
	if len(r.PeerURLs) == 0 {
		return nil, rpctypes.ErrGRPCMemberBadURLs
	}
	if err := ms.UpdateMember(ctx, r.ID, r.PeerURLs); err != nil {
		return nil, toGRPC(err)
	}
	// The list is this member's view with the update, as etcd answers
	// (its own cluster view): a linearizable read would wait out its
	// timeout on a member that moved itself, which the others no longer
	// reach.
	updated := &pb.Member{ID: r.ID, PeerURLs: r.PeerURLs}
	if local, err := c.s.cfg.Node.Members(false); err == nil {
		for _, m := range local {
			if m.ID == r.ID {
				updated = &pb.Member{ID: m.ID, Name: m.Name, PeerURLs: r.PeerURLs, ClientURLs: m.ClientURLs, IsLearner: m.IsLearner}
			}
		}
	}
	resp := &pb.MemberUpdateResponse{Header: &pb.ResponseHeader{}, Members: c.s.membersWith(updated)}
	c.s.fill(resp.Header)
	return resp, nil
}

// maxLearners is Config.MaxLearners with its default.
func (s *Server) maxLearners() int {
	switch {
	case s.cfg.MaxLearners == 0:
		return DefaultMaxLearners
	case s.cfg.MaxLearners < 0:
		return 0
	}
	return s.cfg.MaxLearners
}

// membersWith lists the members after m was added: this member's view
// (as etcd answers from its applied membership), with m as added. Not
// linearizably: a second voter added to a one-member cluster leaves it
// without a quorum until that member runs, so a linearizable read would
// outlast the client's deadline.
func (s *Server) membersWith(m *pb.Member) []*pb.Member {
	ms, _ := s.cfg.Node.Members(false)
	out := make([]*pb.Member, 0, len(ms)+1)
	for _, o := range ms {
		if o.ID != m.ID {
			out = append(out, o)
		}
	}
	out = append(out, m)
	slices.SortFunc(out, func(a, b *pb.Member) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// members lists the members after a change, linearizably if it can: the
// change succeeded, so a list that cannot be read is the local view.
func (s *Server) members() []*pb.Member {
	if ms, err := s.cfg.Node.Members(true); err == nil {
		return ms
	}
	ms, _ := s.cfg.Node.Members(false)
	return ms
}
