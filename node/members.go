package node

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/lni/dragonboat/v4"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/proto/shardpb"
	"github.com/cairn-kv/cairn/shard"
)

// The members as etcd's Cluster API shows and changes them: published
// attributes, MemberList, MemberAdd/Update/Remove/Promote, learners.

// publish records this member's name and client URLs in the group, as
// etcd's members publish theirs, retrying until it commits or ctx ends.
func (n *Node) publish(ctx context.Context) {
	attrs, _ := proto.Marshal(&pb.Member{ID: n.memberID, Name: n.cfg.Name, ClientURLs: n.cfg.AdvertiseClientURLs})
	reqs := []*shardpb.Request{
		{Op: &shardpb.Request_MemberAttrs{MemberAttrs: attrs}},
		// The peer URLs this member started with, unless the group has
		// some for it already (from MemberAdd or MemberUpdate).
		{Op: &shardpb.Request_MemberPeers{MemberPeers: &shardpb.MemberPeers{Id: n.memberID, PeerUrls: n.peerURLs, IfAbsent: true}}},
	}
	// Sharded mode: in this member's node record too (the member list's
	// attributes), the peer URLs unless the record has some, the learner
	// mark only if the record is new (a cluster founded before the
	// records: the Membership's record it otherwise).
	node := &placementpb.AddNode{Node: &placementpb.Node{Id: n.memberID, Name: n.cfg.Name, ClientUrls: n.cfg.AdvertiseClientURLs,
		PeerUrls: n.peerURLs, Learner: n.learner.Load()}, Merge: true, PeersIfAbsent: true}
	for {
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		errs := n.writeRange1(wctx, reqs)
		if n.cfg.Sharded {
			errs = append(errs, n.placement.RecordNode(wctx, node))
		}
		cancel()
		err := errors.Join(errs...)
		if err == nil {
			return
		}
		n.log.Warn("publishing member attributes failed; retrying", "error", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// Members implements router.NodeInfo: the raft membership (voters and
// learners) of the member list's group (memberShard) with the attributes
// each member published. A member added but
// not yet started has no name and no client URLs, as in etcd.
//
// Linearizable asks the raft group (a read index); otherwise the member
// answers from its own view, as etcd does without --linearizable: the
// membership it last read, reused while its local config-change index is
// unchanged, so a member cut off from the others still lists them.
//
// A non-linearizable list whose view is stale (a membership change applied
// since) reads it again for at most a second, or 200ms when a view exists
// to fall back on: a change that left the group without a quorum (a second
// voter added to a one-member cluster, not started yet) must not hold up
// answers such as MemberAdd's by a whole second.
func (n *Node) Members(linearizable bool) ([]*pb.Member, error) {
	timeout := 5 * time.Second
	if !linearizable {
		timeout = time.Second
		if n.membersView.Load() != nil {
			timeout = 200 * time.Millisecond
		}
	}
	return n.members(linearizable, timeout)
}

// members is Members with the read bounded by timeout.
func (n *Node) members(linearizable bool, timeout time.Duration) ([]*pb.Member, error) {
	cc := n.configChangeIndex()
	if !linearizable {
		if v := n.membersView.Load(); v != nil && v.cc == cc {
			return v.members, nil
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	ms, err := n.membership(ctx)
	if err != nil {
		if linearizable {
			// A linearizable list is the group's or none, as in etcd.
			n.log.Warn("reading the membership failed", "error", err)
			return nil, rpctypes.ErrTimeout
		}
		if v := n.membersView.Load(); v != nil {
			return v.members, nil
		}
		// Not reachable now: report what this node knows of itself.
		return []*pb.Member{{ID: n.memberID, Name: n.cfg.Name, PeerURLs: n.peerURLs, ClientURLs: n.cfg.AdvertiseClientURLs}}, nil
	}
	attrs, records := n.attrsOf(ctx, linearizable)
	var out []*pb.Member
	add := func(id uint64, learner bool) {
		if rec := records[id]; rec != nil {
			// An etcd learner is one by its node record, whatever its
			// placement role (a member without a record, of a cluster
			// founded before them, by its role).
			learner = rec.Learner
		}
		m := &pb.Member{ID: id, IsLearner: learner}
		if a := attrs[id]; a != nil {
			m.Name, m.ClientURLs, m.PeerURLs = a.Name, a.ClientURLs, a.PeerURLs
		}
		if len(m.PeerURLs) == 0 {
			if addr, ok := n.peers.MemberAddr(placement.NodeID(id)); ok {
				m.PeerURLs = []string{"http://" + addr}
			}
		}
		if id == n.memberID {
			m.Name, m.ClientURLs = n.cfg.Name, n.cfg.AdvertiseClientURLs
		}
		out = append(out, m)
	}
	for id := range ms.Nodes {
		add(id, false)
	}
	for id := range ms.NonVotings {
		add(id, true)
	}
	slices.SortFunc(out, func(a, b *pb.Member) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	if ms.ConfigChangeID >= cc {
		n.membersView.Store(&membersView{cc: ms.ConfigChangeID, members: out})
	}
	return out, nil
}

// refreshMembers keeps the member's own view of the membership (what a
// non-linearizable MemberList answers) current: it reads the membership
// again whenever the local config-change index moves, and every two
// seconds for the names and client URLs members publish once they serve.
func (n *Node) refreshMembers() {
	defer n.wg.Done()
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	var last time.Time
	for {
		if v := n.membersView.Load(); v == nil || v.cc != n.configChangeIndex() || time.Since(last) > 2*time.Second {
			_, _ = n.Members(true) // refreshes the view; a failure is tried again
			last = time.Now()
		}
		select {
		case <-n.stop:
			return
		case <-t.C:
		}
	}
}

// membersView is the membership a member last read, with the config-change
// index it was read at.
type membersView struct {
	cc      uint64
	members []*pb.Member
}

// configChangeIndex is the raft index of the last membership change this
// member's replica of the member list's group applied (its local view; 0
// if unknown).
func (n *Node) configChangeIndex() uint64 {
	info := n.nh.GetNodeHostInfo(dragonboat.NodeHostInfoOption{SkipLogInfo: true})
	for _, s := range info.ShardInfoList {
		if s.ShardID == n.memberShard() {
			return s.ConfigChangeIndex
		}
	}
	return 0
}

// attrsOf returns the members' attributes, by id: in sharded mode their
// node records in the placement group (records), over what range 1
// records (data directories from before the records, members that have
// not published since); in single-group mode range 1's. Linearizable reads
// the records through the placement leader. What cannot be read is left
// out.
func (n *Node) attrsOf(ctx context.Context, linearizable bool) (attrs map[uint64]*pb.Member, records map[uint64]*placementpb.Node) {
	attrs, err := n.memberAttrs(ctx)
	if err != nil {
		attrs = map[uint64]*pb.Member{}
	}
	if !n.cfg.Sharded {
		return attrs, nil
	}
	records, err = n.placementNodes(ctx, linearizable)
	if err != nil {
		return attrs, nil
	}
	for id, nd := range records {
		a := attrs[id]
		if a == nil {
			a = &pb.Member{ID: id}
			attrs[id] = a
		}
		if nd.Name != "" {
			a.Name = nd.Name
		}
		if len(nd.ClientUrls) > 0 {
			a.ClientURLs = nd.ClientUrls
		}
		if len(nd.PeerUrls) > 0 {
			a.PeerURLs = nd.PeerUrls
		}
	}
	return attrs, records
}

// memberAttrs reads, from this member's replica of range 1, the members'
// published attributes (name, client URLs).
func (n *Node) memberAttrs(ctx context.Context) (map[uint64]*pb.Member, error) {
	first := n.first.Load()
	if first == nil || !first.Started() {
		return nil, errors.New("node: range 1 is not started yet")
	}
	return first.Replica().Members(ctx, false)
}

// memberAddr is member id's client address (router.MemberConns): its
// first published client URL.
func (n *Node) memberAddr(id placement.NodeID) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	attrs, _ := n.attrsOf(ctx, false)
	m := attrs[uint64(id)]
	if m == nil || len(m.ClientURLs) == 0 {
		return "", fmt.Errorf("node: member %x has not published its client URLs: %w", uint64(id), shard.ErrNoLeader)
	}
	return hostPort(m.ClientURLs[0])
}

// memberShard is the raft group whose membership is the member list: in
// sharded mode the placement group, where each member's replica has the
// member's id (a range's replicas have ids of their own), a learner's
// non-voting; in single-group mode the one range.
func (n *Node) memberShard() uint64 {
	if n.cfg.Sharded {
		return placementShardID
	}
	return singleShardID
}

// membership reads the member list's group's membership (memberShard).
func (n *Node) membership(ctx context.Context) (*dragonboat.Membership, error) {
	return n.groupMembership(ctx, n.memberShard())
}

// groupMembership reads raft group shardID's membership through the
// leader (a ReadIndex), trying again while the replica is between states
// (no leader yet, a leadership change under way) until ctx ends.
func (n *Node) groupMembership(ctx context.Context, shardID uint64) (*dragonboat.Membership, error) {
	for {
		ms, err := n.nh.SyncGetShardMembership(ctx, shardID)
		if err == nil || errors.Is(err, dragonboat.ErrClosed) || errors.Is(err, dragonboat.ErrShardClosed) ||
			errors.Is(err, dragonboat.ErrShardNotFound) {
			return ms, err
		}
		// Not ready, busy, a read index dropped or timed out while
		// leadership settles: reading the membership again is harmless.
		select {
		case <-ctx.Done():
			return nil, rpctypes.ErrTimeoutDueToLeaderFail
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// findMember returns member id's peer address and whether it is a learner
// (in sharded mode, by its node record if it has one: its placement role
// may be non-voting past --placement-replicas).
func (n *Node) findMember(ctx context.Context, id uint64) (addr string, learner, ok bool, err error) {
	ms, err := n.membership(ctx)
	if err != nil {
		return "", false, false, err
	}
	a, voter := ms.Nodes[id]
	if !voter {
		if a, ok = ms.NonVotings[id]; !ok {
			return "", false, false, nil
		}
	}
	learner = !voter
	if n.cfg.Sharded {
		records, err := n.placementNodes(ctx, true)
		if err != nil {
			return "", false, false, err
		}
		if rec := records[id]; rec != nil {
			learner = rec.Learner
		}
	}
	return a, learner, true, nil
}

// AddMember implements router.Membership. The new member's id derives from
// its peer URLs and this cluster's token, so the member started with
// --initial-cluster-state existing and the same token finds itself.
func (n *Node) AddMember(ctx context.Context, peerURLs []string, learner bool) (*pb.Member, error) {
	if _, err := hostPort(peerURLs[0]); err != nil {
		return nil, rpctypes.ErrMemberBadURLs
	}
	if err := n.mayAddMember(ctx, learner); err != nil {
		return nil, err
	}
	ms, err := n.membership(ctx)
	if err != nil {
		return nil, err
	}
	if n.peerURLTaken(ms, peerURLs, 0) {
		return nil, rpctypes.ErrPeerURLExist
	}
	var id uint64
	for gen := 0; ; gen++ {
		if gen == maxJoinGenerations {
			return nil, fmt.Errorf("node: add member: peer URLs %v were removed %d times; use new ones", peerURLs, gen)
		}
		id = memberIDGen(peerURLs, n.token, gen)
		_, member := ms.Nodes[id]
		_, learnerMember := ms.NonVotings[id]
		_, removed := ms.Removed[id]
		if !member && !learnerMember && !removed {
			break
		}
	}
	// The peer URLs first, so that raft finds the member once it is in
	// (range 1's records; the node record, in sharded mode, written by
	// the Membership once its change is marked under way: a record of a
	// member not in the placement group is one its leader adds).
	if err := n.recordRange1Peers(ctx, id, peerURLs); err != nil {
		return nil, fmt.Errorf("node: add member: %w", err)
	}
	if n.merger != nil {
		// The answer once the member list shows the member; the placement
		// leader adds it to every range (resumeChanges). Nothing is written
		// after Begin: a one-member cluster's placement group has no
		// quorum then until the new member runs (as etcd's has not).
		if err := n.reconfig.Begin(ctx, placement.NodeID(id), learner, peerURLs); err != nil {
			return nil, fmt.Errorf("node: add member: %w", err)
		}
		return &pb.Member{ID: id, PeerURLs: peerURLs, IsLearner: learner}, nil
	}
	if learner {
		err = n.nh.SyncRequestAddNonVoting(ctx, singleShardID, id, memberTarget(id), 0)
	} else {
		err = n.nh.SyncRequestAddReplica(ctx, singleShardID, id, memberTarget(id), 0)
	}
	if err != nil {
		return nil, fmt.Errorf("node: add member: %w", err)
	}
	return &pb.Member{ID: id, PeerURLs: peerURLs, IsLearner: learner}, nil
}

// UpdateMember implements router.Membership: member id's peer URLs become
// peerURLs. Every member dials the new ones from the moment the change
// applies; the member itself is then restarted listening there (as with
// etcd's member update).
func (n *Node) UpdateMember(ctx context.Context, id uint64, peerURLs []string) error {
	for _, u := range peerURLs {
		if _, err := hostPort(u); err != nil {
			return rpctypes.ErrMemberBadURLs
		}
	}
	ms, err := n.membership(ctx)
	if err != nil {
		return err
	}
	_, voter := ms.Nodes[id]
	_, learner := ms.NonVotings[id]
	if !voter && !learner {
		return rpctypes.ErrMemberNotFound
	}
	if n.peerURLTaken(ms, peerURLs, id) {
		return rpctypes.ErrPeerURLExist
	}
	if n.cfg.Sharded && id == n.memberID {
		return n.updateSelf(ctx, ms, peerURLs)
	}
	if n.cfg.Sharded {
		n.placementOffMember(ctx, id) // yield.go
	}
	if err := n.recordPeers(ctx, id, peerURLs); err != nil {
		return fmt.Errorf("node: update member: %w", err)
	}
	return nil
}

// recordPeers records member id's peer URLs: in range 1's records (what
// members read before the node records, and single-group mode), then in
// sharded mode in the member's node record. Each record, once applied,
// moves where the members reach id, while id still listens at the old URLs
// until it restarts: a group id leads then stalls until id hands it over
// (yield.go). Range 1's write needs a revision from the placement group's
// oracle, so it goes first, while every member still reaches every leader;
// the placement group's leadership was moved off id before (UpdateMember),
// so its record commits without id.
//
// Both writes set the same value again if repeated, so each is tried in
// attempts of a few election timeouts (retryIdempotent): a proposal
// forwarded to a leader that can no longer be reached (the moved member,
// when the hand-over did not happen in time) is never answered, and the
// next attempt goes to the leader elected since.
func (n *Node) recordPeers(ctx context.Context, id uint64, peerURLs []string) error {
	if err := n.retryIdempotent(ctx, "range 1's peer record", func(ctx context.Context) error {
		return n.recordRange1Peers(ctx, id, peerURLs)
	}); err != nil {
		return err
	}
	if n.cfg.Sharded {
		return n.retryIdempotent(ctx, "the node record", func(ctx context.Context) error {
			return n.placement.RecordNode(ctx, &placementpb.AddNode{Node: &placementpb.Node{Id: id, PeerUrls: peerURLs}, Merge: true})
		})
	}
	return nil
}

// retryIdempotent runs write, which must change nothing more when
// repeated, in attempts of three election timeouts until it succeeds or
// ctx ends, and returns its last error.
func (n *Node) retryIdempotent(ctx context.Context, what string, write func(context.Context) error) error {
	for {
		actx, cancel := context.WithTimeout(ctx, 3*n.cfg.ElectionTimeout)
		err := write(actx)
		cancel()
		if err == nil || ctx.Err() != nil {
			return err
		}
		n.log.Info("a write failed; trying again", "write", what, "error", err)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(n.cfg.HeartbeatInterval):
		}
	}
}

// recordRange1Peers records member id's peer URLs in range 1's records
// (what members read before the node records, and single-group mode).
func (n *Node) recordRange1Peers(ctx context.Context, id uint64, peerURLs []string) error {
	return errors.Join(n.writeRange1(ctx, []*shardpb.Request{{Op: &shardpb.Request_MemberPeers{MemberPeers: &shardpb.MemberPeers{Id: id, PeerUrls: peerURLs}}}})...)
}

// writeRange1 proposes reqs to range 1: through this member's replica, or
// through range 1's client when it is held elsewhere (--range-replicas).
func (n *Node) writeRange1(ctx context.Context, reqs []*shardpb.Request) []error {
	if first := n.first.Load(); first != nil {
		_, errs := first.Replica().WriteAll(ctx, reqs)
		return errs
	}
	c := n.routes.Client(singleShardID)
	if c == nil {
		return []error{fmt.Errorf("node: range 1 is neither here nor in the range map")}
	}
	var errs []error
	for _, r := range reqs {
		if _, err := c.Write(ctx, r); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// peerURLTaken reports whether a member other than except already has one
// of peerURLs.
func (n *Node) peerURLTaken(ms *dragonboat.Membership, peerURLs []string, except uint64) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	attrs, _ := n.attrsOf(ctx, false)
	want := map[string]bool{}
	for _, u := range peerURLs {
		if a, err := hostPort(u); err == nil {
			want[a] = true
		}
	}
	for _, group := range []map[uint64]string{ms.Nodes, ms.NonVotings} {
		for id := range group {
			if id == except {
				continue
			}
			var theirs []string
			if a := attrs[id]; a != nil {
				theirs = a.PeerURLs
			}
			if len(theirs) == 0 {
				if addr, ok := n.peers.MemberAddr(placement.NodeID(id)); ok {
					theirs = []string{"http://" + addr}
				}
			}
			for _, u := range theirs {
				if a, err := hostPort(u); err == nil && want[a] {
					return true
				}
			}
		}
	}
	return false
}

// RemoveMember implements router.Membership. In sharded mode a member
// asked to remove itself has another member do it (removeSelf): its own
// replicas close as the walk removes them.
func (n *Node) RemoveMember(ctx context.Context, id uint64) error {
	return n.removeMember(ctx, id, true)
}

// removeMember removes member id; forward lets a member asked to remove
// itself have another do it (not for a request forwarded already).
func (n *Node) removeMember(ctx context.Context, id uint64, forward bool) error {
	_, _, ok, err := n.findMember(ctx, id)
	if err != nil {
		return err
	}
	if !ok {
		return rpctypes.ErrMemberNotFound
	}
	if err := n.mayRemoveMember(ctx, id); err != nil {
		return err
	}
	if n.merger != nil {
		if id == n.memberID && forward {
			return n.removeSelf(ctx)
		}
		return n.removeSharded(ctx, placement.NodeID(id))
	}
	if err := n.nh.SyncRequestDeleteReplica(ctx, singleShardID, id, 0); err != nil {
		return fmt.Errorf("node: remove member: %w", err)
	}
	return nil
}

// removeSharded removes member (sharded mode) as etcd does, answering once
// the member has left the member list: placement.Membership.BeginRemove
// takes it out of the placement group and leaves the walk over the ranges
// to the placement leader (resumeChanges), which can outlast a client's
// deadline (etcdctl's 5 s) with many ranges. A removal that drains first
// (subsets) answers once the drain is over, or with etcd's timeout when
// ctx ends before it is — the placement leader finishes it all the same.
func (n *Node) removeSharded(ctx context.Context, member placement.NodeID) error {
	drain, err := n.reconfig.BeginRemove(ctx, member)
	if err != nil || !drain {
		return err
	}
	for {
		done, err := n.reconfig.Removed(ctx, member)
		if err == nil && done {
			return nil
		}
		select {
		case <-ctx.Done():
			return rpctypes.ErrTimeout
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// PromoteMember implements router.Membership.
func (n *Node) PromoteMember(ctx context.Context, id uint64) error {
	addr, learner, ok, err := n.findMember(ctx, id)
	if err != nil {
		return err
	}
	if !ok {
		return rpctypes.ErrMemberNotFound
	}
	if !learner {
		return rpctypes.ErrMemberNotLearner
	}
	if err := n.mayPromoteMember(id); err != nil {
		return err
	}
	if n.merger != nil {
		return n.reconfig.Promote(ctx, placement.NodeID(id))
	}
	if err := n.nh.SyncRequestAddReplica(ctx, singleShardID, id, addr, 0); err != nil {
		return fmt.Errorf("node: promote member: %w", err)
	}
	return nil
}

// trackLearner clears the learner mark once raft shows this member
// promoted, so that a restart starts it as a voter.
func (n *Node) trackLearner() {
	defer n.wg.Done()
	if !isLearner(n.cfg.DataDir) {
		return
	}
	record := func() error {
		n.learner.Store(false)
		return setLearner(n.cfg.DataDir, false)
	}
	if n.merger != nil && n.cfg.RangeReplicas > 0 {
		// With subsets a member may hold no range (range 1 included):
		// promoted once its node record says it is no learner and each
		// replica it runs votes.
		n.untilPromoted(func(info *dragonboat.NodeHostInfo) ([]uint64, bool) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			records, err := n.placementNodes(ctx, false)
			if rec := records[n.memberID]; err != nil || rec == nil || rec.Learner {
				return nil, false
			}
			var shards []uint64
			for _, s := range info.ShardInfoList {
				if s.ShardID == placementShardID {
					continue
				}
				if s.Pending || s.IsNonVoting {
					return nil, false
				}
				shards = append(shards, s.ShardID)
			}
			return shards, true
		}, record, "clearing the learner mark failed")
		return
	}
	// Promoted in range 1 (sharded mode: in every range, range 1 last;
	// the placement group's role is trackPlacementRole's, a voter only
	// within --placement-replicas).
	n.untilPromoted(func(info *dragonboat.NodeHostInfo) ([]uint64, bool) {
		promoted, found := true, false
		var shards []uint64
		for _, s := range info.ShardInfoList {
			if s.ShardID == singleShardID {
				found = true
			}
			if s.ShardID == singleShardID || (n.merger != nil && s.ShardID != placementShardID) {
				promoted = promoted && !s.Pending && !s.IsNonVoting
				shards = append(shards, s.ShardID)
			}
		}
		return shards, found && promoted
	}, record, "clearing the learner mark failed")
}

// untilPromoted waits, polling every 100ms, for raft to show this member
// promoted to a voter, then records the promotion, and returns once
// record succeeds or the node stops. promoted reads the NodeHost's view
// and returns the groups the promotion concerns and whether this member
// votes in all of them. Each of those groups then takes a snapshot
// (snapshotAll) before record runs: a restart as a voter must not replay
// the entry that added this member non-voting, which raft refuses to apply
// to a voter (dragonboat #373). A failed snapshot or record is tried again
// at the next poll; a failed record is logged as failed.
func (n *Node) untilPromoted(promoted func(*dragonboat.NodeHostInfo) (shards []uint64, ok bool), record func() error, failed string) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
		}
		shards, ok := promoted(n.nh.GetNodeHostInfo(dragonboat.NodeHostInfoOption{SkipLogInfo: true}))
		if !ok || !n.snapshotAll(shards) {
			continue
		}
		if err := record(); err != nil {
			n.log.Warn(failed, "error", err)
			continue
		}
		return
	}
}

// snapshotAll has this node's replica of each of shards take a snapshot,
// and reports whether all did.
func (n *Node) snapshotAll(shards []uint64) bool {
	for _, id := range shards {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := n.nh.SyncRequestSnapshot(ctx, id, dragonboat.SnapshotOption{})
		cancel()
		// Rejected: nothing applied since the replica's last snapshot,
		// which so holds the promotion already.
		if err != nil && !errors.Is(err, dragonboat.ErrRejected) {
			n.log.Warn("a snapshot after the promotion failed; trying again", "shard", id, "error", err)
			return false
		}
	}
	return true
}

// Defragment implements router.Operator: pebble compacts every level, which
// drops deleted and overwritten data from the files.
func (n *Node) Defragment(ctx context.Context) error {
	defer n.metrics.time(n.metrics.defragSec)()
	if err := n.db.Compact(ctx, []byte{0}, []byte{0xff, 0xff, 0xff, 0xff}, true); err != nil {
		return fmt.Errorf("node: defragment: %w", err)
	}
	return nil
}

// IsLearner implements router.Learner.
func (n *Node) IsLearner() bool { return n.learner.Load() }

// updateSelf has another member record this member's new peer URLs
// (sharded mode): once the first record applies the others dial this
// member where it does not listen yet, so it would never see the second
// one commit. The placement group's voters are asked first, then its other
// members, in id order, until one answers.
func (n *Node) updateSelf(ctx context.Context, ms *dragonboat.Membership, peerURLs []string) error {
	var errs []error
	for _, group := range []map[uint64]string{ms.Nodes, ms.NonVotings} {
		for _, id := range slices.Sorted(maps.Keys(group)) {
			if id == n.memberID {
				continue
			}
			err := n.fwd.UpdateMember(ctx, placement.NodeID(id), n.memberID, peerURLs)
			if err == nil {
				return nil
			}
			if ctx.Err() != nil {
				return err
			}
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		// The only member: nobody else dials it, so it records them itself.
		return n.recordPeers(ctx, n.memberID, peerURLs)
	}
	return fmt.Errorf("node: no other member recorded this member's new peer URLs: %w", errors.Join(errs...))
}
