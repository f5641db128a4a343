package node

import (
	"context"
	"sync"
	"time"

	"github.com/lni/dragonboat/v4"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/cairn-kv/cairn/placement"
)

// reachTimeout bounds each read of the membership and each member's
// answer in the check of a membership change.
const reachTimeout = time.Second

// The strict reconfiguration check (etcd --strict-reconfig-check, on by
// default) refuses a membership change that would leave the voting
// members without a quorum of started, reachable ones, with etcd's
// errors: "re-configuration failed due to not enough started members"
// when too few have ever started (published their name and client URLs),
// "unhealthy cluster" when too few answer now. etcd asks its raft
// transport how long each peer has been connected; Cairn asks each voting
// member's client port for a health answer at the time of the change
// (one round, at most reachTimeout), so a cluster just started can be
// changed at once and a member that went down a moment ago counts as
// down.

// mayAddMember checks the addition of a member; a learner adds no vote
// and is not checked, as in etcd.
func (n *Node) mayAddMember(ctx context.Context, learner bool) error {
	if n.cfg.NoStrictReconfigCheck || learner {
		return nil
	}
	voters, err := n.votingMembers()
	if err != nil {
		return err
	}
	after := len(voters) + 1
	started := countStarted(voters, 0)
	// Adding a second member to a one-member cluster is how a cluster
	// restored from one member's data grows again: etcd allows it.
	if !(started == 1 && after == 2) && started < after/2+1 {
		return rpctypes.ErrMemberNotEnoughStarted
	}
	// Every voter must answer: the new member does not vote until it has
	// caught up, so one that does not answer is a vote short of the
	// larger quorum.
	if n.reachable(ctx, voters, 0) < len(voters) {
		return rpctypes.ErrUnhealthy
	}
	return nil
}

// mayRemoveMember checks the removal of member id.
func (n *Node) mayRemoveMember(ctx context.Context, id uint64) error {
	if n.cfg.NoStrictReconfigCheck {
		return nil
	}
	voters, err := n.votingMembers()
	if err != nil {
		return err
	}
	var gone *pb.Member
	for _, m := range voters {
		if m.ID == id {
			gone = m
		}
	}
	if gone == nil {
		return nil // a learner: no vote to lose
	}
	left := len(voters) - 1
	if countStarted(voters, id) < left/2+1 {
		return rpctypes.ErrMemberNotEnoughStarted
	}
	// The members left must answer in a quorum of the smaller group;
	// a member that is down is not part of the active quorum, so
	// removing it changes nothing the check must protect.
	if n.reachable(ctx, voters, id) < left/2+1 {
		return rpctypes.ErrUnhealthy
	}
	return nil
}

// mayPromoteMember checks the promotion of a learner, which counts as
// started (it caught up to be promoted).
func (n *Node) mayPromoteMember(id uint64) error {
	if n.cfg.NoStrictReconfigCheck {
		return nil
	}
	voters, err := n.votingMembers()
	if err != nil {
		return err
	}
	after := len(voters) + 1
	if countStarted(voters, 0)+1 < after/2+1 {
		return rpctypes.ErrMemberNotEnoughStarted
	}
	return nil
}

// votingMembers is the member list without its learners: read through
// the leader, or where that fails (the change just made may have cost the
// quorum) the list this node has applied, as etcd checks against its
// applied membership. A voter that view has not caught up with is taken
// from the member group's applied configuration, as a member not started.
func (n *Node) votingMembers() ([]*pb.Member, error) {
	all, err := n.members(true, reachTimeout)
	if err != nil {
		if all, err = n.members(false, reachTimeout); err != nil {
			return nil, err
		}
	}
	known := make(map[uint64]bool, len(all))
	var voters []*pb.Member
	for _, m := range all {
		known[m.ID] = true
		if !m.IsLearner {
			voters = append(voters, m)
		}
	}
	info := n.nh.GetNodeHostInfo(dragonboat.NodeHostInfoOption{SkipLogInfo: true})
	for _, s := range info.ShardInfoList {
		if s.ShardID != n.memberShard() {
			continue
		}
		for id := range s.Replicas {
			if !known[id] {
				voters = append(voters, &pb.Member{ID: id})
			}
		}
	}
	return voters, nil
}

// countStarted counts the members other than skip that have started: a
// member publishes its name and client URLs when it first starts.
func countStarted(members []*pb.Member, skip uint64) int {
	c := 0
	for _, m := range members {
		if m.ID != skip && (m.Name != "" || len(m.ClientURLs) > 0) {
			c++
		}
	}
	return c
}

// reachable counts the members other than skip that answer a health
// check now; this member counts without asking.
func (n *Node) reachable(ctx context.Context, members []*pb.Member, skip uint64) int {
	var (
		mu sync.Mutex
		c  int
		wg sync.WaitGroup
	)
	for _, m := range members {
		if m.ID == skip {
			continue
		}
		if m.ID == n.memberID {
			c++
			continue
		}
		wg.Add(1)
		go func(id uint64) {
			defer wg.Done()
			if n.answers(ctx, id) {
				mu.Lock()
				c++
				mu.Unlock()
			}
		}(m.ID)
	}
	wg.Wait()
	return c
}

// answers reports whether member id answers a gRPC health check on the
// connection the node forwards on within reachTimeout.
func (n *Node) answers(ctx context.Context, id uint64) bool {
	cc, err := n.conns.Conn(placement.NodeID(id))
	if err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, reachTimeout)
	defer cancel()
	_, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	return err == nil
}
