package node

import (
	"context"
	"crypto/sha1"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/lni/dragonboat/v4"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/proto/shardpb"
	"github.com/cairn-kv/cairn/shard"
)

// defaultClusterToken is etcd's default --initial-cluster-token.
const defaultClusterToken = "etcd-cluster"

// initialMember is one entry of --initial-cluster.
type initialMember struct {
	name     string
	peerURLs []string
	id       uint64
}

// parseInitialCluster reads etcd's name=url[,name=url...] list; a name may
// appear several times, once per peer URL.
func parseInitialCluster(s, token string) ([]initialMember, error) {
	byName := map[string]*initialMember{}
	var order []string
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, u, ok := strings.Cut(part, "=")
		if !ok || name == "" || u == "" {
			return nil, fmt.Errorf("node: --initial-cluster entry %q: want name=peer-url", part)
		}
		if _, err := hostPort(u); err != nil {
			return nil, fmt.Errorf("node: --initial-cluster: %w", err)
		}
		m := byName[name]
		if m == nil {
			m = &initialMember{name: name}
			byName[name] = m
			order = append(order, name)
		}
		m.peerURLs = append(m.peerURLs, u)
	}
	if len(order) == 0 {
		return nil, fmt.Errorf("node: --initial-cluster is empty")
	}
	out := make([]initialMember, 0, len(order))
	seen := map[uint64]string{}
	for _, name := range order {
		m := *byName[name]
		m.id = memberID(m.peerURLs, token)
		if other, dup := seen[m.id]; dup {
			return nil, fmt.Errorf("node: --initial-cluster members %q and %q have the same peer URLs", other, name)
		}
		seen[m.id] = name
		out = append(out, m)
	}
	return out, nil
}

// memberID derives a member's id, as etcd does in spirit, from its sorted
// peer URLs and the cluster token: the same flags give the same id on every
// member. The id doubles as the member's raft replica id, so it is never 0.
func memberID(peerURLs []string, token string) uint64 {
	urls := slices.Clone(peerURLs)
	slices.Sort(urls)
	sum := sha1.Sum([]byte(strings.Join(urls, "") + token))
	if id := binary.BigEndian.Uint64(sum[:8]); id != 0 {
		return id
	}
	return 1
}

// clusterIDFor names the cluster by its token, so that every member —
// founders and those that join later — reports the same id.
func clusterIDFor(token string) uint64 {
	sum := sha1.Sum([]byte("cairn-cluster/" + token))
	return binary.BigEndian.Uint64(sum[:8])
}

// memberFile records this member's id in the data directory: a restart
// keeps its identity whatever the flags say (etcd ignores --initial-* on a
// restart too).
const memberFile = "member-id"

func readMemberID(dataDir string) (uint64, bool, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, memberFile))
	if os.IsNotExist(err) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("node: read member id: %w", err)
	}
	id, err := strconv.ParseUint(strings.TrimSpace(string(b)), 16, 64)
	if err != nil || id == 0 {
		return 0, false, fmt.Errorf("node: member id file %s is corrupt", filepath.Join(dataDir, memberFile))
	}
	return id, true, nil
}

// modeFile records the mode a data directory was created in: a store of
// one mode cannot be read in the other (sharded mode keeps a placement
// group and ranges beside range 1).
const modeFile = "mode"

// checkMode refuses to start a data directory in the other mode than the
// one it was created in (one created before modes were recorded is not
// checked).
func checkMode(dataDir string, sharded bool) error {
	got, ok, err := recordedMode(dataDir)
	if err != nil || !ok || got == sharded {
		return err
	}
	flag := "--single-group"
	if got {
		flag = "--single-group=false"
	}
	return fmt.Errorf("node: the data directory %s was created in %s mode; start it so (%s): a store does not change modes", dataDir, modeName(got), flag)
}

// modeName is a mode as the mode file and the logs name it.
func modeName(sharded bool) string {
	if sharded {
		return "sharded"
	}
	return "single-group"
}

// recordedMode reads the mode a data directory was created in (see
// modeFile); ok is false if it records none: a new directory, a restored
// backup not started yet, or one created before modes were recorded.
func recordedMode(dataDir string) (sharded, ok bool, err error) {
	data, err := os.ReadFile(filepath.Join(dataDir, modeFile))
	if errors.Is(err, os.ErrNotExist) {
		return false, false, nil
	}
	if err != nil {
		return false, false, fmt.Errorf("node: read the data directory's mode: %w", err)
	}
	switch mode := strings.TrimSpace(string(data)); mode {
	case modeName(true):
		return true, true, nil
	case modeName(false):
		return false, true, nil
	default:
		return false, false, fmt.Errorf("node: the data directory's mode file %s holds %q: want single-group or sharded",
			filepath.Join(dataDir, modeFile), mode)
	}
}

// adoptMode applies Config.AdoptRecordedMode to cfg.Sharded and reports
// whether it changed it: a data directory that records its mode starts in
// that mode. One that has started before (it has a member id) but records
// no mode was created before modes were recorded, when single-group mode
// was the default: it starts in single-group mode, as it did then.
// (checkMode does not check such a directory: a mode given explicitly,
// without AdoptRecordedMode, is taken as it is.)
func adoptMode(cfg *Config) (changed bool, err error) {
	if !cfg.AdoptRecordedMode {
		return false, nil
	}
	sharded, ok, err := recordedMode(cfg.DataDir)
	if err != nil {
		return false, err
	}
	if !ok {
		_, started, err := readMemberID(cfg.DataDir)
		if err != nil || !started {
			return false, err
		}
		sharded = false
	}
	changed = sharded != cfg.Sharded
	cfg.Sharded = sharded
	return changed, nil
}

// recordMode records the mode of a data directory started for the first
// time (see checkMode).
func recordMode(dataDir string, sharded bool) error {
	if err := os.WriteFile(filepath.Join(dataDir, modeFile), []byte(modeName(sharded)+"\n"), 0o600); err != nil {
		return fmt.Errorf("node: record the data directory's mode: %w", err)
	}
	return nil
}

func writeMemberID(dataDir string, id uint64) error {
	if err := os.WriteFile(filepath.Join(dataDir, memberFile), []byte(fmt.Sprintf("%x\n", id)), 0o600); err != nil {
		return fmt.Errorf("node: record member id: %w", err)
	}
	return nil
}

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
	for {
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, errs := n.first.proposer().WriteAll(wctx, reqs)
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
// learners) with the attributes each member published. A member added but
// not yet started has no name and no client URLs, as in etcd.
//
// Linearizable asks the raft group (a read index); otherwise the member
// answers from its own view, as etcd does without --linearizable: the
// membership it last read, reused while its local config-change index is
// unchanged, so a member cut off from the others still lists them.
func (n *Node) Members(linearizable bool) ([]*pb.Member, error) {
	cc := n.configChangeIndex()
	if !linearizable {
		if v := n.membersView.Load(); v != nil && v.cc == cc {
			return v.members, nil
		}
	}
	timeout := 5 * time.Second
	if !linearizable {
		timeout = time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	ms, err := n.membership(ctx)
	if err != nil {
		if linearizable {
			// A linearizable list is the group's or none, as in etcd.
			n.log.Warn("reading the membership failed", "error", err)
			return nil, rpctypes.ErrGRPCTimeout
		}
		if v := n.membersView.Load(); v != nil {
			return v.members, nil
		}
		// Not reachable now: report what this node knows of itself.
		return []*pb.Member{{ID: n.memberID, Name: n.cfg.Name, PeerURLs: n.peerURLs, ClientURLs: n.cfg.AdvertiseClientURLs}}, nil
	}
	attrs := map[uint64]*pb.Member{}
	if v, err := n.memberAttrs(ctx); err == nil {
		attrs = v
	}
	var out []*pb.Member
	add := func(id uint64, learner bool) {
		m := &pb.Member{ID: id, IsLearner: learner}
		if a := attrs[id]; a != nil {
			m.Name, m.ClientURLs, m.PeerURLs = a.Name, a.ClientURLs, a.PeerURLs
		}
		if len(m.PeerURLs) == 0 {
			if addr, _, err := n.peers.Resolve(singleShardID, id); err == nil {
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
// replica applied (its local view; 0 if unknown).
func (n *Node) configChangeIndex() uint64 {
	info := n.nh.GetNodeHostInfo(dragonboat.NodeHostInfoOption{SkipLogInfo: true})
	for _, s := range info.ShardInfoList {
		if s.ShardID == singleShardID {
			return s.ConfigChangeIndex
		}
	}
	return 0
}

// leaderConn returns a client connection to the member leading the shard,
// for the router's forwarded lease requests.
func (n *Node) leaderConn(ctx context.Context) (*grpc.ClientConn, error) {
	leader, _, ok := n.first.proposer().Leader()
	if !ok {
		return nil, shard.ErrNoLeader
	}
	return n.memberConn(leader)
}

// memberAttrs reads, from this member's replica of range 1, the members'
// published attributes (name, client URLs).
func (n *Node) memberAttrs(ctx context.Context) (map[uint64]*pb.Member, error) {
	if n.first == nil || !n.first.Started() {
		return nil, errors.New("node: range 1 is not started yet")
	}
	return n.first.proposer().Members(ctx, false)
}

// memberConn returns a client connection to member id's first published
// client URL. Connections are kept per URL until the node closes.
func (n *Node) memberConn(id uint64) (*grpc.ClientConn, error) {
	attrs, err := n.memberAttrs(context.Background())
	if err != nil {
		return nil, err
	}
	m := attrs[id]
	if m == nil || len(m.ClientURLs) == 0 {
		return nil, fmt.Errorf("node: member %x has not published its client URLs: %w", id, shard.ErrNoLeader)
	}
	target, err := hostPort(m.ClientURLs[0])
	if err != nil {
		return nil, err
	}
	n.connMu.Lock()
	defer n.connMu.Unlock()
	if c := n.conns[target]; c != nil {
		return c, nil
	}
	c, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("node: dial member %x at %s: %w", id, target, err)
	}
	if n.conns == nil {
		n.conns = map[string]*grpc.ClientConn{}
	}
	n.conns[target] = c
	return c, nil
}

// membership reads the shard's membership through the leader (a ReadIndex),
// trying again while the replica is between states (no leader yet, a
// leadership change under way) until ctx ends.
func (n *Node) membership(ctx context.Context) (*dragonboat.Membership, error) {
	for {
		ms, err := n.nh.SyncGetShardMembership(ctx, singleShardID)
		if err == nil || errors.Is(err, dragonboat.ErrClosed) || errors.Is(err, dragonboat.ErrShardClosed) ||
			errors.Is(err, dragonboat.ErrShardNotFound) {
			return ms, err
		}
		// Not ready, busy, a read index dropped or timed out while
		// leadership settles: reading the membership again is harmless.
		select {
		case <-ctx.Done():
			return nil, rpctypes.ErrGRPCTimeoutDueToLeaderFail
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// findMember returns member id's peer address and whether it is a learner.
func (n *Node) findMember(ctx context.Context, id uint64) (addr string, learner, ok bool, err error) {
	ms, err := n.membership(ctx)
	if err != nil {
		return "", false, false, err
	}
	if a, found := ms.Nodes[id]; found {
		return a, false, true, nil
	}
	if a, found := ms.NonVotings[id]; found {
		return a, true, true, nil
	}
	return "", false, false, nil
}

// AddMember implements router.Membership. The new member's id derives from
// its peer URLs and this cluster's token, so the member started with
// --initial-cluster-state existing and the same token finds itself.
func (n *Node) AddMember(ctx context.Context, peerURLs []string, learner bool) (*pb.Member, error) {
	if _, err := hostPort(peerURLs[0]); err != nil {
		return nil, rpctypes.ErrGRPCMemberBadURLs
	}
	ms, err := n.membership(ctx)
	if err != nil {
		return nil, err
	}
	if n.peerURLTaken(ms, peerURLs, 0) {
		return nil, rpctypes.ErrGRPCPeerURLExist
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
	// The peer URLs first, so that raft finds the member once it is in.
	if err := n.recordPeers(ctx, id, peerURLs); err != nil {
		return nil, fmt.Errorf("node: add member: %w", err)
	}
	if n.merger != nil {
		if err := n.addSharded(ctx, id, learner); err != nil {
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
			return rpctypes.ErrGRPCMemberBadURLs
		}
	}
	ms, err := n.membership(ctx)
	if err != nil {
		return err
	}
	_, voter := ms.Nodes[id]
	_, learner := ms.NonVotings[id]
	if !voter && !learner {
		return rpctypes.ErrGRPCMemberNotFound
	}
	if n.peerURLTaken(ms, peerURLs, id) {
		return rpctypes.ErrGRPCPeerURLExist
	}
	if err := n.recordPeers(ctx, id, peerURLs); err != nil {
		return fmt.Errorf("node: update member: %w", err)
	}
	return nil
}

// recordPeers records member id's peer URLs in the group.
func (n *Node) recordPeers(ctx context.Context, id uint64, peerURLs []string) error {
	_, err := n.first.proposer().Write(ctx, &shardpb.Request{Op: &shardpb.Request_MemberPeers{MemberPeers: &shardpb.MemberPeers{Id: id, PeerUrls: peerURLs}}})
	return err
}

// peerURLTaken reports whether a member other than except already has one
// of peerURLs.
func (n *Node) peerURLTaken(ms *dragonboat.Membership, peerURLs []string, except uint64) bool {
	attrs := map[uint64]*pb.Member{}
	if v, err := n.memberAttrs(context.Background()); err == nil {
		attrs = v
	}
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
				if addr, _, err := n.peers.Resolve(singleShardID, id); err == nil {
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

// RemoveMember implements router.Membership.
func (n *Node) RemoveMember(ctx context.Context, id uint64) error {
	_, _, ok, err := n.findMember(ctx, id)
	if err != nil {
		return err
	}
	if !ok {
		return rpctypes.ErrGRPCMemberNotFound
	}
	if n.merger != nil {
		return n.removeSharded(ctx, id)
	}
	if err := n.nh.SyncRequestDeleteReplica(ctx, singleShardID, id, 0); err != nil {
		return fmt.Errorf("node: remove member: %w", err)
	}
	return nil
}

// PromoteMember implements router.Membership.
func (n *Node) PromoteMember(ctx context.Context, id uint64) error {
	addr, learner, ok, err := n.findMember(ctx, id)
	if err != nil {
		return err
	}
	if !ok {
		return rpctypes.ErrGRPCMemberNotFound
	}
	if !learner {
		return rpctypes.ErrGRPCMemberNotLearner
	}
	if n.merger != nil {
		return n.promoteSharded(ctx, id)
	}
	if err := n.nh.SyncRequestAddReplica(ctx, singleShardID, id, addr, 0); err != nil {
		return fmt.Errorf("node: promote member: %w", err)
	}
	return nil
}

// learnerFile marks a member that joined as a learner and has not been
// seen promoted yet: raft must restart it as non-voting until it is.
const learnerFile = "learner"

func isLearner(dataDir string) bool {
	_, err := os.Stat(filepath.Join(dataDir, learnerFile))
	return err == nil
}

func setLearner(dataDir string, learner bool) error {
	p := filepath.Join(dataDir, learnerFile)
	if learner {
		return os.WriteFile(p, nil, 0o600)
	}
	if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
		return err
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
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
		}
		info := n.nh.GetNodeHostInfo(dragonboat.NodeHostInfoOption{SkipLogInfo: true})
		// Promoted in range 1 (sharded mode: in every group, range 1
		// last). Each group then takes a snapshot before the mark goes:
		// a restart as a voter must not replay the entry that added this
		// member as a learner, which raft refuses to apply to a voter.
		promoted, found := true, false
		var shards []uint64
		for _, s := range info.ShardInfoList {
			if s.ShardID == singleShardID {
				found = true
			}
			if s.ShardID == singleShardID || n.merger != nil {
				promoted = promoted && !s.Pending && !s.IsNonVoting
				shards = append(shards, s.ShardID)
			}
		}
		if !found || !promoted || !n.snapshotAll(shards) {
			continue
		}
		n.learner.Store(false)
		if err := setLearner(n.cfg.DataDir, false); err != nil {
			n.log.Warn("clearing the learner mark failed", "error", err)
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
	if err := n.db.Compact(ctx, []byte{0}, []byte{0xff, 0xff, 0xff, 0xff}, true); err != nil {
		return fmt.Errorf("node: defragment: %w", err)
	}
	return nil
}

// TransferLeader implements router.Operator and waits until the target
// leads (or ctx ends).
func (n *Node) TransferLeader(ctx context.Context, target uint64) error {
	if _, learner, ok, err := n.findMember(ctx, target); err != nil {
		return err
	} else if !ok {
		return rpctypes.ErrGRPCBadLeaderTransferee
	} else if learner {
		return rpctypes.ErrGRPCBadLeaderTransferee
	}
	// dragonboat's target skips the campaign while it has committed
	// entries it has not applied (its conservative check for a pending
	// config change), and the leader then refuses proposals until the
	// transfer aborts an election timeout later. Under a write load that is
	// the likely outcome if the transfer starts while entries are in
	// flight. So each attempt first stops the flow: a TransferHold entry
	// makes every replica that applies it hold back new proposals until
	// the target leads (or a bound passes). Once no entry has been applied
	// here for a few milliseconds, the target has applied what it was sent
	// and the transfer can take at once. An attempt that has not taken
	// after an election timeout has aborted, and the next one begins.
	start, attempts, holds := time.Now(), 0, 0
	for {
		leader, _, ok := n.first.proposer().Leader()
		switch {
		case ok && leader == target:
			n.logTransfer(target, attempts, start)
			return nil
		case ok && leader == n.memberID:
			hold := n.transferHold()
			req := &shardpb.Request{Op: &shardpb.Request_TransferHold{TransferHold: &shardpb.TransferHold{
				Target: target, UntilUnixNano: time.Now().Add(hold).UnixNano(), MaxNanos: int64(hold)}}}
			held := time.Now()
			if _, err := n.first.proposer().Write(ctx, req); err != nil {
				// Leadership moved or the group is between states: look again.
				n.waitTransferee(ctx, target, 10*time.Millisecond)
				break
			}
			ready := n.waitTransferReady(ctx, target, n.appliedIndex(ctx), held.Add(hold*3/4))
			holds++
			if !ready && holds < maxUnreadyHolds {
				// Not caught up within the hold (a busy machine): a
				// transfer now would likely fail and cost an election
				// timeout; hold again instead.
				n.log.Info("leader transfer: target not caught up within the hold; holding again", "to", fmt.Sprintf("%x", target))
				break
			}
			attempts++
			// Busy or not ready (the replica is between states): the next
			// round tries again.
			err := n.nh.RequestLeaderTransfer(singleShardID, target)
			if err != nil && !errors.Is(err, dragonboat.ErrSystemBusy) && !errors.Is(err, dragonboat.ErrShardNotReady) {
				return fmt.Errorf("node: transfer leadership: %w", err)
			}
			if n.waitTransferee(ctx, target, n.cfg.ElectionTimeout+2*n.cfg.HeartbeatInterval) {
				n.logTransfer(target, attempts, start)
				return nil
			}
			n.log.Warn("leader transfer did not take; trying again", "to", fmt.Sprintf("%x", target), "target-caught-up", ready)
		default:
			// No leader, or another one (a transfer elsewhere): look again.
			n.waitTransferee(ctx, target, 10*time.Millisecond)
		}
		if ctx.Err() != nil {
			return rpctypes.ErrGRPCTimeoutDueToLeaderFail
		}
	}
}

// maxUnreadyHolds bounds the holds a transfer tries before it requests the
// transfer even though the target has not caught up (a load that never
// lets it).
const maxUnreadyHolds = 4

// logTransfer reports a finished transfer; one that took more than one
// attempt cost an election timeout of refused proposals, and warns.
func (n *Node) logTransfer(target uint64, attempts int, start time.Time) {
	log := n.log.Info
	if attempts > 1 {
		log = n.log.Warn
	}
	log("leadership transferred", "to", fmt.Sprintf("%x", target), "attempts", attempts, "took", time.Since(start))
}

// transferHold bounds how long a leader transfer holds back proposals if
// leadership does not move (it normally moves within a few round trips):
// long enough for the flow to stop and the target to catch up on a busy
// machine, short against clients' deadlines.
func (n *Node) transferHold() time.Duration {
	return min(max(n.cfg.ElectionTimeout/2, 200*time.Millisecond), 500*time.Millisecond)
}

// waitTransferReady waits until a leader transfer can take at once: every
// other member has applied the hold at index hold (so none sends new
// proposals), nothing has been applied here for a moment (what was in flight
// has landed), and the target has applied all that this replica has. It
// gives up at deadline (false).
func (n *Node) waitTransferReady(ctx context.Context, target, hold uint64, deadline time.Time) bool {
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	ms, err := n.membership(ctx)
	if err != nil {
		return false
	}
	var others []uint64
	for id := range ms.Nodes {
		others = append(others, id)
	}
	for id := range ms.NonVotings {
		others = append(others, id)
	}
	for _, id := range others {
		if id == n.memberID {
			continue
		}
		for {
			a, err := n.appliedOf(ctx, id)
			if (err != nil && id != target) || a >= hold || ctx.Err() != nil {
				break // a member that does not answer sends nothing either
			}
			time.Sleep(time.Millisecond) // polling the member's applied index
		}
	}
	for ctx.Err() == nil {
		n.waitQuiet(ctx, 2*time.Millisecond, time.Until(deadline))
		a := n.appliedIndex(ctx)
		if t, err := n.appliedOf(ctx, target); err == nil && t >= a && n.appliedIndex(ctx) == a {
			return true
		}
	}
	return false
}

// appliedOf asks member id for the raft index it has applied.
func (n *Node) appliedOf(ctx context.Context, id uint64) (uint64, error) {
	c, err := n.memberConn(id)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	st, err := pb.NewMaintenanceClient(c).Status(ctx, &pb.StatusRequest{})
	if err != nil {
		return 0, err
	}
	return st.RaftAppliedIndex, nil
}

// appliedIndex is the raft index this replica has applied (0 if unknown).
func (n *Node) appliedIndex(ctx context.Context) uint64 {
	st, err := n.first.proposer().Status(ctx, false)
	if err != nil {
		return 0
	}
	return st.AppliedIndex
}

// waitQuiet returns once this replica has applied no entry for quiet, or
// after at most limit (or when ctx ends).
func (n *Node) waitQuiet(ctx context.Context, quiet, limit time.Duration) {
	deadline := time.Now().Add(limit)
	last, since := n.appliedIndex(ctx), time.Now()
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if time.Since(since) >= quiet {
			return
		}
		time.Sleep(time.Millisecond) // polling the local applied index
		if a := n.appliedIndex(ctx); a != last {
			last, since = a, time.Now()
		}
	}
}

// waitTransferee reports whether target leads within d.
func (n *Node) waitTransferee(ctx context.Context, target uint64, d time.Duration) bool {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	deadline := time.After(d)
	for {
		if leader, _, ok := n.first.proposer().Leader(); ok && leader == target {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-deadline:
			return false
		case <-t.C:
		}
	}
}

// maxJoinGenerations bounds how many ids a joining member tries: one more
// than the times its peer URLs were removed from the cluster.
const maxJoinGenerations = 16

// memberIDGen is the id MemberAdd gives peer URLs whose earlier ids
// (generations 0..gen-1) are taken or were removed: raft never takes a
// removed id back, so a member removed and added again gets a new one.
// Generation 0 is the founders' id.
func memberIDGen(peerURLs []string, token string, gen int) uint64 {
	if gen == 0 {
		return memberID(peerURLs, token)
	}
	return memberID(peerURLs, token+"/"+strconv.Itoa(gen))
}

// join starts this member's replica as one added to an existing cluster.
// Its id is the first generation of its peer URLs' ids that the cluster's
// leader contacts: an id the cluster does not have (taken earlier, removed)
// never hears from a leader, and is stopped and the next one tried.
func (n *Node) join(ctx context.Context, shardID uint64, start func(id uint64) error) error {
	probe := max(10*n.cfg.ElectionTimeout, 3*time.Second)
	for gen := range maxJoinGenerations {
		id := memberIDGen(n.peerURLs, n.token, gen)
		if err := start(id); err != nil {
			return err
		}
		if n.heardLeader(ctx, shardID, probe) {
			n.memberID = id
			return writeMemberID(n.cfg.DataDir, id)
		}
		if ctx.Err() != nil {
			return fmt.Errorf("node: joining the cluster: %w", ctx.Err())
		}
		// Start over with a fresh NodeHost: dragonboat cannot restart a
		// shard under another replica id in the same NodeHost, and this
		// member has no raft state worth keeping yet.
		n.nh.Close()
		if err := os.RemoveAll(n.nhConfig.NodeHostDir); err != nil {
			return fmt.Errorf("node: joining the cluster: %w", err)
		}
		nh, err := dragonboat.NewNodeHost(n.nhConfig)
		if err != nil {
			return fmt.Errorf("node: joining the cluster: %w", err)
		}
		n.nh = nh
	}
	return fmt.Errorf("node: no leader contacted this member: add it first (etcdctl member add %s --peer-urls=%s) with the same --initial-cluster-token",
		n.cfg.Name, strings.Join(n.peerURLs, ","))
}

// heardLeader waits up to d for the replica here of shardID to know a
// leader.
func (n *Node) heardLeader(ctx context.Context, shardID uint64, d time.Duration) bool {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	t := time.NewTicker(rttMillisecond * time.Millisecond)
	defer t.Stop()
	for {
		if _, _, ok, err := n.nh.GetLeaderID(shardID); err == nil && ok {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
}

// IsLearner implements router.Learner.
func (n *Node) IsLearner() bool { return n.learner.Load() }
