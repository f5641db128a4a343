package placement

// The dragonboat behaviours issue 21 (ranges on a subset of the members)
// rests on, checked on real NodeHosts on 127.0.0.1 that resolve replicas
// through PeerRegistry, with replica ids that are not member ids (and no
// member id equal to a replica id, so the legacy rule resolves nothing).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lni/dragonboat/v4"
	dbconfig "github.com/lni/dragonboat/v4/config"
	"github.com/lni/dragonboat/v4/logger"
	"github.com/lni/dragonboat/v4/raftio"
	sm "github.com/lni/dragonboat/v4/statemachine"

	"github.com/cairn-kv/cairn/node/testport"
)

// replicaShard is the shard the dragonboat tests run.
const replicaShard = 77

// kvSM is the tests' state machine: "key=value" commands into a map,
// Lookup of a key, the whole map in a snapshot. recovered counts the
// snapshots its host's replicas recovered from.
type kvSM struct {
	mu        sync.Mutex
	data      map[string]string // REQUIRES: mu
	recovered *atomic.Int64
}

func (s *kvSM) Update(e sm.Entry) (sm.Result, error) {
	k, v, _ := strings.Cut(string(e.Cmd), "=")
	s.mu.Lock()
	defer s.mu.Unlock()
	s.data[k] = v
	return sm.Result{Value: e.Index}, nil
}

func (s *kvSM) Lookup(q interface{}) (interface{}, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.data[q.(string)], nil
}

func (s *kvSM) SaveSnapshot(w io.Writer, _ sm.ISnapshotFileCollection, _ <-chan struct{}) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return json.NewEncoder(w).Encode(s.data)
}

func (s *kvSM) RecoverFromSnapshot(r io.Reader, _ []sm.SnapshotFile, _ <-chan struct{}) error {
	data := map[string]string{}
	if err := json.NewDecoder(r).Decode(&data); err != nil {
		return err
	}
	s.mu.Lock()
	s.data = data
	s.mu.Unlock()
	s.recovered.Add(1)
	return nil
}

func (s *kvSM) Close() error { return nil }

// tracedRegistry is a member's PeerRegistry as its NodeHost uses it,
// counting the replicas of the test's shard it failed to resolve.
type tracedRegistry struct {
	*PeerRegistry
	unresolved sync.Map // replica id → number of failed Resolves
}

func (r *tracedRegistry) Create(nhid string, streams uint64, v dbconfig.TargetValidator) (raftio.INodeRegistry, error) {
	if _, err := r.PeerRegistry.Create(nhid, streams, v); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *tracedRegistry) Resolve(shardID, replicaID uint64) (string, string, error) {
	addr, key, err := r.PeerRegistry.Resolve(shardID, replicaID)
	if err != nil && shardID == replicaShard {
		n, _ := r.unresolved.LoadOrStore(replicaID, new(atomic.Int64))
		n.(*atomic.Int64).Add(1)
	}
	return addr, key, err
}

// failed is how many times replica id could not be resolved.
func (r *tracedRegistry) failed(id uint64) int64 {
	if n, ok := r.unresolved.Load(id); ok {
		return n.(*atomic.Int64).Load()
	}
	return 0
}

// replicaHost is one member: a NodeHost in its own directory, restarted
// there, with a fresh PeerRegistry at every start (a restarted process
// remembers nothing) seeded with every member's address, as
// --initial-cluster seeds a member's.
type replicaHost struct {
	member NodeID
	addr   string
	dir    string
	c      *hostCluster

	nh        *dragonboat.NodeHost
	peers     *tracedRegistry
	recovered atomic.Int64 // snapshots recovered, over restarts
	deleted   chan raftio.NodeInfo
}

// hostCluster is the members of a test. memberOf, if set, is every
// registry's MemberOf (what the range map would say).
type hostCluster struct {
	hosts []*replicaHost

	// memberNHID gives each NodeHost its member's MemberTarget as
	// NodeHost id (Cairn's NodeHosts have random ones today).
	memberNHID bool
	mu         sync.Mutex
	memberOf   map[uint64]NodeID // replica id → member; REQUIRES: mu
}

// newHostCluster makes n members, 0x101…, not started.
func newHostCluster(t *testing.T, n int, memberNHID bool) *hostCluster {
	t.Helper()
	for _, name := range []string{"raft", "rsm", "transport", "dragonboat", "logdb", "grpc", "config", "raftpb"} {
		logger.GetLogger(name).SetLevel(logger.CRITICAL)
	}
	c := &hostCluster{memberNHID: memberNHID}
	for i := range n {
		c.hosts = append(c.hosts, &replicaHost{member: NodeID(0x101 + i), addr: testport.Addr(t),
			dir: filepath.Join(t.TempDir(), "raft"), c: c, deleted: make(chan raftio.NodeInfo, 16)})
	}
	return c
}

// setMemberOf makes replica id known as member's to every registry's
// MemberOf, as the range map would once ranges name their pairs.
func (c *hostCluster) setMemberOf(id uint64, member NodeID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.memberOf == nil {
		c.memberOf = map[uint64]NodeID{}
	}
	c.memberOf[id] = member
}

func (c *hostCluster) lookupMember(shardID, replicaID uint64) (NodeID, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m, ok := c.memberOf[replicaID]
	return m, ok && shardID == replicaShard
}

// start starts h's NodeHost with a fresh registry.
func (h *replicaHost) start(t *testing.T) {
	t.Helper()
	h.peers = &tracedRegistry{PeerRegistry: NewPeerRegistry()}
	for _, o := range h.c.hosts {
		h.peers.Seed(o.member, o.addr)
	}
	h.peers.SetMemberOf(h.c.lookupMember)
	cfg := dbconfig.NodeHostConfig{
		NodeHostDir:         h.dir,
		RTTMillisecond:      5,
		RaftAddress:         h.addr,
		Expert:              dbconfig.ExpertConfig{LogDB: dbconfig.GetTinyMemLogDBConfig(), NodeRegistryFactory: h.peers},
		SystemEventListener: deletedListener{h.deleted},
	}
	if h.c.memberNHID {
		cfg.NodeHostID = MemberTarget(h.member)
	}
	nh, err := dragonboat.NewNodeHost(cfg)
	if err != nil {
		t.Fatalf("member %x: %v", uint64(h.member), err)
	}
	h.nh = nh
	t.Cleanup(h.stop)
}

// stop closes h's NodeHost, once.
func (h *replicaHost) stop() {
	if h.nh != nil {
		h.nh.Close()
		h.nh = nil
	}
}

// run starts replica id of the shard on h: a founder with initial
// members, else joining.
func (h *replicaHost) run(t *testing.T, id uint64, initial map[uint64]string, nonVoting bool) {
	t.Helper()
	err := h.startReplica(id, initial, nonVoting)
	if err != nil {
		t.Fatalf("member %x: start replica %d: %v", uint64(h.member), id, err)
	}
}

func (h *replicaHost) startReplica(id uint64, initial map[uint64]string, nonVoting bool) error {
	create := func(uint64, uint64) sm.IStateMachine {
		return &kvSM{data: map[string]string{}, recovered: &h.recovered}
	}
	return h.nh.StartReplica(initial, len(initial) == 0, create, dbconfig.Config{
		ReplicaID: id, ShardID: replicaShard, HeartbeatRTT: 2, ElectionRTT: 20,
		CheckQuorum: true, PreVote: true, IsNonVoting: nonVoting})
}

// targets are the initial members of founders (replica id → member).
func targets(founders map[uint64]*replicaHost) map[uint64]string {
	m := map[uint64]string{}
	for id, h := range founders {
		m[id] = MemberTarget(h.member)
	}
	return m
}

// deletedListener reports dragonboat's NodeDeleted events.
type deletedListener struct{ deleted chan raftio.NodeInfo }

func (l deletedListener) NodeDeleted(info raftio.NodeInfo) {
	select {
	case l.deleted <- info:
	default:
	}
}
func (deletedListener) NodeHostShuttingDown()                       {}
func (deletedListener) NodeUnloaded(raftio.NodeInfo)                {}
func (deletedListener) NodeReady(raftio.NodeInfo)                   {}
func (deletedListener) MembershipChanged(raftio.NodeInfo)           {}
func (deletedListener) ConnectionEstablished(raftio.ConnectionInfo) {}
func (deletedListener) ConnectionFailed(raftio.ConnectionInfo)      {}
func (deletedListener) SendSnapshotStarted(raftio.SnapshotInfo)     {}
func (deletedListener) SendSnapshotCompleted(raftio.SnapshotInfo)   {}
func (deletedListener) SendSnapshotAborted(raftio.SnapshotInfo)     {}
func (deletedListener) SnapshotReceived(raftio.SnapshotInfo)        {}
func (deletedListener) SnapshotRecovered(raftio.SnapshotInfo)       {}
func (deletedListener) SnapshotCreated(raftio.SnapshotInfo)         {}
func (deletedListener) SnapshotCompacted(raftio.SnapshotInfo)       {}
func (deletedListener) LogCompacted(raftio.EntryInfo)               {}
func (deletedListener) LogDBCompacted(raftio.EntryInfo)             {}

// waitUntil polls cond until it holds, failing after 30s.
func waitUntil(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 30s: %v", what, err)
		}
		time.Sleep(5 * time.Millisecond) // polling a condition, with a deadline
	}
}

// try runs op with a short deadline until it succeeds (dragonboat's
// requests time out or are dropped while leadership settles).
func try(t *testing.T, what string, op func(ctx context.Context) error) {
	t.Helper()
	waitUntil(t, what, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return op(ctx)
	})
}

// write proposes key=value through h (a follower's or non-voting
// replica's NodeHost forwards it to the leader) and returns its index.
func (h *replicaHost) write(t *testing.T, key, value string) uint64 {
	t.Helper()
	var index uint64
	try(t, fmt.Sprintf("write %s through member %x", key, uint64(h.member)), func(ctx context.Context) error {
		r, err := h.nh.SyncPropose(ctx, h.nh.GetNoOPSession(replicaShard), []byte(key+"="+value))
		index = r.Value
		return err
	})
	return index
}

// readOnce is a linearizable read (ReadIndex) of key on h's replica.
func (h *replicaHost) readOnce(key string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	v, err := h.nh.SyncRead(ctx, replicaShard, key)
	if err != nil {
		return "", err
	}
	return v.(string), nil
}

// read is readOnce retried while leadership settles: a value read is
// never retried (a stale answer fails the caller).
func (h *replicaHost) read(t *testing.T, key string) string {
	t.Helper()
	var v string
	try(t, fmt.Sprintf("read %s on member %x", key, uint64(h.member)), func(context.Context) error {
		var err error
		v, err = h.readOnce(key)
		return err
	})
	return v
}

// membership is the shard's raft membership as h's replica knows it.
func (h *replicaHost) membership(t *testing.T) *dragonboat.Membership {
	t.Helper()
	var m *dragonboat.Membership
	try(t, "membership", func(ctx context.Context) error {
		var err error
		m, err = h.nh.SyncGetShardMembership(ctx, replicaShard)
		return err
	})
	return m
}

// compact snapshots h's replica and drops its whole log below it.
func (h *replicaHost) compact(t *testing.T) {
	t.Helper()
	try(t, "snapshot", func(ctx context.Context) error {
		_, err := h.nh.SyncRequestSnapshot(ctx, replicaShard, dragonboat.SnapshotOption{OverrideCompactionOverhead: true, CompactionOverhead: 0})
		if errors.Is(err, dragonboat.ErrRejected) { // nothing new since the last one
			return nil
		}
		return err
	})
}

// resolves waits until h's registry resolves each replica to its member's
// address.
func (h *replicaHost) resolves(t *testing.T, want map[uint64]*replicaHost) {
	t.Helper()
	waitUntil(t, fmt.Sprintf("member %x resolving the shard's replicas", uint64(h.member)), func() error {
		for id, o := range want {
			addr, _, err := h.peers.PeerRegistry.Resolve(replicaShard, id)
			if err != nil || addr != o.addr {
				return fmt.Errorf("replica %d resolved to %q (%v), want member %x at %s", id, addr, err, uint64(o.member), o.addr)
			}
		}
		return nil
	})
}

// added is the member dragonboat's targets told h's registry replica id
// of the shard is on.
func (h *replicaHost) added(id uint64) (NodeID, bool) {
	h.peers.mu.RLock()
	defer h.peers.mu.RUnlock()
	m, ok := h.peers.replicas[peerReplica{replicaShard, id}]
	return m, ok
}

// deletedReplica waits for dragonboat to report that h's replica id
// applied its own removal.
func (h *replicaHost) deletedReplica(t *testing.T, id uint64) {
	t.Helper()
	select {
	case info := <-h.deleted:
		if info.ShardID != replicaShard || info.ReplicaID != id {
			t.Fatalf("NodeDeleted %+v, want replica %d of shard %d", info, id, replicaShard)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("no NodeDeleted for replica %d within 30s", id)
	}
}

// hostsOf maps replica ids to the members running them.
type hostsOf = map[uint64]*replicaHost

// found starts founders' NodeHosts and replicas, as the range map would
// name them (MemberOf knows each pair).
func (c *hostCluster) found(t *testing.T, founders hostsOf) {
	t.Helper()
	for id, h := range founders {
		c.setMemberOf(id, h.member)
		h.start(t)
		h.run(t, id, targets(founders), false)
	}
}

// join adds replica id on h through via (non-voting if asked) and starts
// it on h's running NodeHost.
func (c *hostCluster) join(t *testing.T, via, h *replicaHost, id uint64, nonVoting bool) {
	t.Helper()
	c.setMemberOf(id, h.member)
	try(t, fmt.Sprintf("add replica %d", id), func(ctx context.Context) error {
		if nonVoting {
			return via.nh.SyncRequestAddNonVoting(ctx, replicaShard, id, MemberTarget(h.member), 0)
		}
		return via.nh.SyncRequestAddReplica(ctx, replicaShard, id, MemberTarget(h.member), 0)
	})
	h.run(t, id, nil, nonVoting)
}

// sees waits until h's replica reads key = value linearizably.
func (h *replicaHost) sees(t *testing.T, key, value string) {
	t.Helper()
	waitUntil(t, fmt.Sprintf("member %x reading %s=%s", uint64(h.member), key, value), func() error {
		v, err := h.readOnce(key)
		if err == nil && v != value {
			err = fmt.Errorf("read %q", v)
		}
		return err
	})
}

// sameIDs reports whether m's keys are exactly ids.
func sameIDs[V any](m map[uint64]V, ids ...uint64) bool {
	if len(m) != len(ids) {
		return false
	}
	for _, id := range ids {
		if _, ok := m[id]; !ok {
			return false
		}
	}
	return true
}

// TestRejoinWithNewReplicaID: a member whose replica was removed from a
// shard (dragonboat reports NodeDeleted on it, its registry forgets the
// shard, its data is removed) rejoins the shard on the same NodeHost under
// a new replica id; the old id stays refused (ErrReplicaRemoved). The
// rejoined replica catches up from a snapshot (the others compacted their
// logs), serves linearizable reads and takes writes, also after every
// NodeHost restarts.
func TestRejoinWithNewReplicaID(t *testing.T) {
	c := newHostCluster(t, 3, false)
	a, b, h := c.hosts[0], c.hosts[1], c.hosts[2]
	founders := hostsOf{11: a, 12: b, 13: h}
	c.found(t, founders)
	a.write(t, "k", "1")
	h.sees(t, "k", "1")

	try(t, "remove replica 13", func(ctx context.Context) error {
		return a.nh.SyncRequestDeleteReplica(ctx, replicaShard, 13, 0)
	})
	h.deletedReplica(t, 13)
	for _, id := range []uint64{11, 12} {
		if m, ok := h.added(id); ok {
			t.Fatalf("the removed member's registry still holds replica %d on member %x (no RemoveShard)", id, uint64(m))
		}
	}
	try(t, "remove replica 13's data", func(ctx context.Context) error {
		return h.nh.SyncRemoveData(ctx, replicaShard, 13)
	})
	if err := h.startReplica(13, nil, false); !errors.Is(err, dragonboat.ErrReplicaRemoved) {
		t.Fatalf("restarting removed replica 13: %v, want ErrReplicaRemoved", err)
	}
	b.write(t, "k", "2")
	a.compact(t)
	b.compact(t)

	c.join(t, a, h, 14, false)
	h.sees(t, "k", "2")
	if h.recovered.Load() == 0 {
		t.Fatal("the rejoined replica caught up without a snapshot")
	}
	h.write(t, "k", "3")
	a.sees(t, "k", "3")
	if m := a.membership(t); !sameIDs(m.Nodes, 11, 12, 14) || !sameIDs(m.Removed, 13) {
		t.Fatalf("membership: voters %v removed %v", m.Nodes, m.Removed)
	}

	for _, o := range c.hosts {
		o.stop()
	}
	for id, o := range (hostsOf{11: a, 12: b}) {
		o.start(t)
		o.run(t, id, targets(founders), false)
	}
	h.start(t)
	h.run(t, 14, nil, false)
	b.write(t, "k", "4")
	h.sees(t, "k", "4")
	h.write(t, "k", "5")
	a.sees(t, "k", "5")
}

// TestLearnerPromoteThenRemove: a non-voting replica catches up, is
// promoted to voter under the same replica id, and counts in the quorum
// (4 voters tolerate one stopped); a voter is then removed (3 voters, one
// stopped: the promoted one makes the quorum). Restarted as a voter after
// a snapshot (raft refuses to replay its own AddNonVoting entry to a
// voter), the promoted replica keeps serving.
func TestLearnerPromoteThenRemove(t *testing.T) {
	c := newHostCluster(t, 4, false)
	a, b, h3, d := c.hosts[0], c.hosts[1], c.hosts[2], c.hosts[3]
	founders := hostsOf{21: a, 22: b, 23: h3}
	c.found(t, founders)
	a.write(t, "k", "1")
	d.start(t)
	c.join(t, a, d, 24, true)
	d.sees(t, "k", "1")
	if m := a.membership(t); !sameIDs(m.NonVotings, 24) {
		t.Fatalf("non-voting %v, want 24", m.NonVotings)
	}

	try(t, "promote replica 24", func(ctx context.Context) error {
		return a.nh.SyncRequestAddReplica(ctx, replicaShard, 24, MemberTarget(d.member), 0)
	})
	try(t, "replica 24 a voter on its member", func(ctx context.Context) error {
		m, err := d.nh.SyncGetShardMembership(ctx, replicaShard)
		if err != nil {
			return err
		}
		if !sameIDs(m.Nodes, 21, 22, 23, 24) || len(m.NonVotings) != 0 {
			return fmt.Errorf("voters %v non-voting %v", m.Nodes, m.NonVotings)
		}
		return nil
	})

	h3.stop()
	d.write(t, "k", "2") // 3 of 4 voters
	try(t, "remove replica 21", func(ctx context.Context) error {
		return b.nh.SyncRequestDeleteReplica(ctx, replicaShard, 21, 0)
	})
	a.deletedReplica(t, 21)
	b.write(t, "k", "3") // 2 of 3 voters: 22 and the promoted 24
	d.sees(t, "k", "3")

	d.compact(t)
	d.stop()
	d.start(t)
	d.run(t, 24, nil, false)
	h3.start(t)
	h3.run(t, 23, targets(founders), false)
	d.write(t, "k", "4")
	h3.sees(t, "k", "4")
	if m := b.membership(t); !sameIDs(m.Nodes, 22, 23, 24) || len(m.NonVotings) != 0 || !sameIDs(m.Removed, 21) {
		t.Fatalf("membership: voters %v non-voting %v removed %v", m.Nodes, m.NonVotings, m.Removed)
	}
}

// TestNonVotingReadIndexAndPropose: a non-voting replica serves
// linearizable reads (ReadIndex through the leader: a write acknowledged
// anywhere is seen by the next read, never retried for its value) and
// forwards proposals to the leader, also after restarting non-voting.
func TestNonVotingReadIndexAndPropose(t *testing.T) {
	c := newHostCluster(t, 4, false)
	a, b, h3, d := c.hosts[0], c.hosts[1], c.hosts[2], c.hosts[3]
	founders := hostsOf{31: a, 32: b, 33: h3}
	c.found(t, founders)
	d.start(t)
	c.join(t, a, d, 34, true)
	d.sees(t, "k", "")

	check := func(round int) {
		t.Helper()
		for i := range 20 {
			want := fmt.Sprintf("%d/%d", round, i)
			c.hosts[i%3].write(t, "k", want)
			if got := d.read(t, "k"); got != want {
				t.Fatalf("non-voting replica read %q after %q was acknowledged", got, want)
			}
			want += "d"
			d.write(t, "k", want)
			if got := c.hosts[i%3].read(t, "k"); got != want {
				t.Fatalf("member %x read %q after the non-voting replica's %q was acknowledged", uint64(c.hosts[i%3].member), got, want)
			}
		}
	}
	check(0)
	d.stop()
	d.start(t)
	d.run(t, 34, nil, true)
	check(1)
	if m := d.membership(t); !sameIDs(m.Nodes, 31, 32, 33) || !sameIDs(m.NonVotings, 34) {
		t.Fatalf("membership: voters %v non-voting %v", m.Nodes, m.NonVotings)
	}
}

// forgetMembers clears every registry's MemberOf answers.
func (c *hostCluster) forgetMembers() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.memberOf = nil
}

// TestJoinResolvesPeers: a replica joining a shard knows none of the
// shard's replicas until a snapshot or a membership change is applied,
// yet must answer the leader first. dragonboat adds the sender of each
// message it receives with the sender NodeHost's id as target: with
// random NodeHost ids (Cairn's today) that names no member, the joiner
// cannot resolve the leader and never catches up until MemberOf answers;
// with member-shaped NodeHost ids (MemberTarget) it learns every replica
// from their messages alone.
func TestJoinResolvesPeers(t *testing.T) {
	for _, memberNHID := range []bool{false, true} {
		t.Run(fmt.Sprintf("memberNHID=%v", memberNHID), func(t *testing.T) {
			c := newHostCluster(t, 4, memberNHID)
			a, b, h3, d := c.hosts[0], c.hosts[1], c.hosts[2], c.hosts[3]
			founders := hostsOf{11: a, 12: b, 13: h3}
			c.found(t, founders)
			c.forgetMembers()
			a.write(t, "k", "1")
			d.start(t)
			c.join(t, a, d, 14, false)
			c.forgetMembers()
			if !memberNHID {
				waitUntil(t, "the joiner failing to resolve a founder", func() error {
					if d.peers.failed(11)+d.peers.failed(12)+d.peers.failed(13) == 0 {
						return errors.New("no failed Resolve")
					}
					return nil
				})
				for id := range founders {
					if m, ok := d.added(id); ok {
						t.Fatalf("replica %d added on member %x before the joiner caught up", id, uint64(m))
					}
				}
				for id, h := range founders {
					c.setMemberOf(id, h.member)
				}
			}
			d.sees(t, "k", "1")
			d.resolves(t, hostsOf{11: a, 12: b, 13: h3})
			if memberNHID {
				for id, h := range founders {
					if m, ok := d.added(id); !ok || m != h.member {
						t.Fatalf("replica %d: added %x %v, want member %x", id, uint64(m), ok, uint64(h.member))
					}
				}
			}
		})
	}
}

// TestRegistryAfterRestart: after every NodeHost restarts with a fresh
// registry and no MemberOf, dragonboat's own Adds resolve every replica of
// the shard, for founders, a replica that joined with the log uncompacted,
// and one that joined from a snapshot. On start dragonboat adds the
// bootstrap record's initial members (founders only), the membership of
// the snapshot it recovers, and every membership change it replays from
// the log after it — the founders' initial membership included: it is the
// log's first entries (one AddNode each), so a joiner that never saw a
// snapshot learns it too. The replay is applied asynchronously, though: a
// restarted joiner may answer a peer's message before it has replayed the
// entry that adds the peer, and that answer fails to resolve and is
// dropped (raft sends again; Cairn's members set MemberOf, which answers
// from the range map). So Resolve may fail while the members restart, and
// never once the shard has settled.
func TestRegistryAfterRestart(t *testing.T) {
	c := newHostCluster(t, 5, false)
	a, b, h3, d, e := c.hosts[0], c.hosts[1], c.hosts[2], c.hosts[3], c.hosts[4]
	founders := hostsOf{41: a, 42: b, 43: h3}
	all := hostsOf{41: a, 42: b, 43: h3, 44: d, 45: e}
	c.found(t, founders)
	a.write(t, "k", "1")
	d.start(t)
	c.join(t, a, d, 44, false)
	d.sees(t, "k", "1")
	t.Logf("replica 44 joined recovering %d snapshots", d.recovered.Load())
	for _, h := range []*replicaHost{a, b, h3} {
		h.compact(t)
	}
	a.write(t, "k", "2")
	e.start(t)
	c.join(t, b, e, 45, false)
	e.sees(t, "k", "2")
	if e.recovered.Load() == 0 {
		t.Fatal("replica 45 joined without a snapshot")
	}
	e.write(t, "k", "3")

	c.forgetMembers()
	for _, h := range c.hosts {
		h.stop()
	}
	for id, h := range all {
		h.start(t)
		if founders[id] != nil {
			h.run(t, id, targets(founders), false)
		} else {
			h.run(t, id, nil, false)
		}
	}
	round := func(base int) {
		for i, h := range c.hosts {
			h.write(t, "k", fmt.Sprint(base+i))
			for _, o := range c.hosts {
				o.sees(t, "k", fmt.Sprint(base+i))
			}
		}
	}
	round(4)
	for _, h := range c.hosts {
		h.resolves(t, all)
	}
	settled := map[NodeID]map[uint64]int64{}
	for _, h := range c.hosts {
		settled[h.member] = map[uint64]int64{}
		for id := range all {
			settled[h.member][id] = h.peers.failed(id)
			if n := settled[h.member][id]; n > 0 {
				t.Logf("member %x failed to resolve replica %d %d times while the members restarted", uint64(h.member), id, n)
			}
		}
	}
	round(4 + len(c.hosts))
	for _, h := range c.hosts {
		for id := range all {
			if n := h.peers.failed(id) - settled[h.member][id]; n > 0 {
				t.Errorf("member %x failed to resolve replica %d %d times after the shard settled", uint64(h.member), id, n)
			}
		}
	}
}
