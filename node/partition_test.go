package node_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"testing"
	"time"

	dbconfig "github.com/lni/dragonboat/v4/config"
	chantransport "github.com/lni/dragonboat/v4/plugin/chan"
	"github.com/lni/dragonboat/v4/raftio"
	raftpb "github.com/lni/dragonboat/v4/raftpb"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/cairn-kv/cairn/node"
)

// network is dragonboat's in-memory transport with partitions: a message
// from a member cut off from its target is dropped, as a network would.
type network struct {
	mu  sync.Mutex
	cut map[[2]string]bool // (from, to) raft addresses
}

// isolate cuts addr off from every other member, both ways.
func (n *network) isolate(addr string, others []string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, o := range others {
		n.cut[[2]string{addr, o}] = true
		n.cut[[2]string{o, addr}] = true
	}
}

// cutOneWay drops what from sends to, and nothing else.
func (n *network) cutOneWay(from, to string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.cut[[2]string{from, to}] = true
}

func (n *network) heal() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.cut = map[[2]string]bool{}
}

func (n *network) dropped(from, to string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cut[[2]string{from, to}]
}

// transportFactory makes one member's transport on the network.
type transportFactory struct {
	net   *network
	inner chantransport.ChanTransportFactory
}

func (f *transportFactory) Create(cfg dbconfig.NodeHostConfig, h raftio.MessageHandler, ch raftio.ChunkHandler) raftio.ITransport {
	return &transport{ITransport: f.inner.Create(cfg, h, ch), self: cfg.RaftAddress, net: f.net}
}

func (f *transportFactory) Validate(string) bool { return true }

type transport struct {
	raftio.ITransport
	self string
	net  *network
}

func (t *transport) GetConnection(ctx context.Context, target string) (raftio.IConnection, error) {
	c, err := t.ITransport.GetConnection(ctx, target)
	if err != nil {
		return nil, err
	}
	return &connection{IConnection: c, from: t.self, to: target, net: t.net}, nil
}

func (t *transport) GetSnapshotConnection(ctx context.Context, target string) (raftio.ISnapshotConnection, error) {
	if t.net.dropped(t.self, target) {
		return nil, errors.New("partitioned")
	}
	return t.ITransport.GetSnapshotConnection(ctx, target)
}

type connection struct {
	raftio.IConnection
	from, to string
	net      *network
}

func (c *connection) SendMessageBatch(b raftpb.MessageBatch) error {
	if c.net.dropped(c.from, c.to) {
		return nil
	}
	return c.IConnection.SendMessageBatch(b)
}

// netCluster is three members on a network that can cut them apart.
type netCluster struct {
	net     *network
	c       *clientv3.Client // through every member
	urls    []string         // the members' client URLs
	members []netMember
	leader  uint64 // the member that led after the first write
}

type netMember struct {
	id           uint64
	raft, client string // raft address, client URL
}

// startNetCluster starts a netCluster and writes "before" through it.
func startNetCluster(t *testing.T, ctx context.Context) *netCluster {
	nc := &netCluster{net: &network{cut: map[[2]string]bool{}}}
	nodes := startClusterWith(t, 3, func(c *node.Config) { c.RaftTransport = &transportFactory{net: nc.net} })
	for _, n := range nodes {
		nc.urls = append(nc.urls, n.ClientURLs()...)
	}
	nc.c = clientFor(t, nc.urls...)
	if _, err := nc.c.Put(ctx, "before", "v"); err != nil {
		t.Fatal(err)
	}
	ml, err := nc.c.MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st, err := nc.c.Status(ctx, nc.urls[0])
	if err != nil {
		t.Fatal(err)
	}
	nc.leader = st.Leader
	for _, m := range ml.Members {
		u, err := url.Parse(m.PeerURLs[0])
		if err != nil {
			t.Fatal(err)
		}
		nc.members = append(nc.members, netMember{id: m.ID, raft: u.Host, client: m.ClientURLs[0]})
	}
	return nc
}

// TestPartition: the leader is cut off from the two others. The majority
// elects a leader and keeps serving writes and linearizable reads; the
// cut-off member refuses them with etcd's errors (it cannot reach a
// quorum); once the partition heals, every member converges to the same
// history.
func TestPartition(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	nc := startNetCluster(t, ctx)
	net, c, urls, leaderID := nc.net, nc.c, nc.urls, nc.leader
	var leaderAddr, leaderURL string
	var raft, majority []string
	for _, m := range nc.members {
		raft = append(raft, m.raft)
		if m.id == leaderID {
			leaderAddr, leaderURL = m.raft, m.client
		} else {
			majority = append(majority, m.client)
		}
	}
	net.isolate(leaderAddr, raft)

	mc := clientFor(t, majority...)
	// Writes proposed while the majority still follows the old leader
	// time out, in etcd as here; wait for the majority's own leader.
	for _, u := range majority {
		waitUntil(t, "member "+u+" follows a new leader", func() bool {
			st, err := mc.Status(ctx, u)
			return err == nil && st.Leader != 0 && st.Leader != leaderID
		})
	}
	for i := range 10 {
		if _, err := mc.Put(ctx, fmt.Sprintf("during/%d", i), "v"); err != nil {
			t.Fatalf("majority write %d: %v", i, err)
		}
	}
	if r, err := mc.Get(ctx, "during/", clientv3.WithPrefix()); err != nil || len(r.Kvs) != 10 {
		t.Fatalf("majority linearizable read: %v %v", r, err)
	}

	lc := clientFor(t, leaderURL)
	var wg sync.WaitGroup
	var putErr, getErr error
	wg.Add(2)
	go func() { defer wg.Done(); _, putErr = lc.Put(ctx, "minority", "v") }()
	// clientv3 retries a read refused as unavailable until its deadline
	// (against etcd too); the raw call shows the member's own answer.
	go func() {
		defer wg.Done()
		_, getErr = pb.NewKVClient(lc.ActiveConnection()).Range(ctx, &pb.RangeRequest{Key: []byte("before")})
	}()
	wg.Wait()
	for what, err := range map[string]error{"write": putErr, "linearizable read": getErr} {
		if !etcdUnavailable(err) {
			t.Fatalf("minority %s: %v, want etcd's timeout or no-leader error", what, err)
		}
	}
	// A serializable read is served from the member's own replica.
	if r, err := lc.Get(ctx, "before", clientv3.WithSerializable()); err != nil || len(r.Kvs) != 1 {
		t.Fatalf("minority serializable read: %v %v", r, err)
	}
	// So is a non-linearizable member list, from the member's own view.
	if r, err := pb.NewClusterClient(lc.ActiveConnection()).MemberList(ctx, &pb.MemberListRequest{}); err != nil || len(r.Members) != 3 {
		t.Fatalf("minority member list (not linearizable): %v %v", r, err)
	}
	// As the read above, it gives up by itself (a CI run on 2 busy cores
	// took over 10 s to, so the test's deadline is not the call's).
	_, err := pb.NewClusterClient(lc.ActiveConnection()).MemberList(ctx, &pb.MemberListRequest{Linearizable: true})
	if !etcdUnavailable(err) {
		t.Fatalf("minority member list (linearizable): %v, want etcd's timeout or no-leader error", err)
	}

	net.heal()
	last, err := c.Put(ctx, "after", "v")
	if err != nil {
		t.Fatal(err)
	}
	hashes := map[uint32]bool{}
	for _, u := range urls {
		waitUntil(t, "member "+u+" catches up", func() bool {
			st, err := c.Status(ctx, u)
			return err == nil && st.Header.Revision >= last.Header.Revision
		})
		h, err := c.HashKV(ctx, u, last.Header.Revision)
		if err != nil {
			t.Fatal(err)
		}
		hashes[h.Hash] = true
	}
	if len(hashes) != 1 {
		t.Fatalf("members diverge after the partition healed: %d hashes", len(hashes))
	}
	if r, err := lc.Get(ctx, "minority"); err != nil || len(r.Kvs) != 0 {
		t.Fatalf("the refused minority write is visible: %v %v", r, err)
	}
}

// TestAbandonedWritesDoNotStall: writes whose clients gave up do not hold
// back the writes after them. A follower whose messages to the leader are
// lost (it still hears the leader, so it forwards its proposals, which
// vanish) takes many writes from clients that time out; once its messages
// flow again, a new write through it succeeds at once, as in etcd, not
// after the abandoned proposals time out (10 s): they held every in-flight
// slot of the proposer.
func TestAbandonedWritesDoNotStall(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	nc := startNetCluster(t, ctx)
	var leaderAddr, followerAddr, followerURL string
	for _, m := range nc.members {
		if m.id == nc.leader {
			leaderAddr = m.raft
		} else if followerAddr == "" {
			followerAddr, followerURL = m.raft, m.client
		}
	}
	fc := clientFor(t, followerURL)
	if _, err := fc.Put(ctx, "through-follower", "v"); err != nil {
		t.Fatal(err)
	}
	nc.net.cutOneWay(followerAddr, leaderAddr)
	// More writes than the proposer keeps in flight, one after another
	// (each its own proposal), each abandoned by its client.
	const abandoned = 24
	for i := range abandoned {
		wctx, wcancel := context.WithTimeout(ctx, 50*time.Millisecond)
		_, err := fc.Put(wctx, fmt.Sprintf("abandoned/%d", i), "v")
		wcancel()
		if err == nil {
			t.Fatalf("write %d through a follower whose messages are lost succeeded", i)
		}
	}
	nc.net.heal()
	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	defer wcancel()
	if _, err := fc.Put(wctx, "after", "v"); err != nil {
		t.Fatalf("a write after the abandoned ones: %v (they stall it)", err)
	}
}

// etcdUnavailable reports whether err (from clientv3 or a raw call) is one
// of etcd's answers when a member cannot reach a quorum.
func etcdUnavailable(err error) bool {
	if err == nil {
		return false
	}
	got := rpctypes.Error(err)
	for _, want := range []error{rpctypes.ErrTimeout, rpctypes.ErrNoLeader, rpctypes.ErrTimeoutDueToLeaderFail} {
		if got.Error() == want.Error() {
			return true
		}
	}
	return false
}

// TestWatchRequireLeader: on a member cut off from the others, a watch
// stream opened with clientv3.WithRequireLeader ("hasleader" metadata)
// fails with etcd's "no leader" once the member has no leader, while a
// stream that did not ask keeps running.
func TestWatchRequireLeader(t *testing.T) {
	net := &network{cut: map[[2]string]bool{}}
	nodes := startClusterWith(t, 3, func(c *node.Config) { c.RaftTransport = &transportFactory{net: net} })
	c := clientFor(t, nodes[0].ClientURLs()...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ml, err := c.MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var self string
	var raft []string
	for _, m := range ml.Members {
		u, _ := url.Parse(m.PeerURLs[0])
		raft = append(raft, u.Host)
		if m.ClientURLs[0] == nodes[0].ClientURLs()[0] {
			self = u.Host
		}
	}
	wc := pb.NewWatchClient(c.ActiveConnection())
	open := func(ctx context.Context) pb.Watch_WatchClient {
		s, err := wc.Watch(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{Key: []byte("k")}}}); err != nil {
			t.Fatal(err)
		}
		if r, err := s.Recv(); err != nil || !r.Created {
			t.Fatalf("create: %v %v", r, err)
		}
		return s
	}
	required := open(metadata.AppendToOutgoingContext(ctx, rpctypes.MetadataRequireLeaderKey, rpctypes.MetadataHasLeader))
	plain := open(ctx)

	net.isolate(self, raft)
	_, err = required.Recv()
	if got := status.Convert(err); got.Message() != status.Convert(rpctypes.ErrGRPCNoLeader).Message() {
		t.Fatalf("stream requiring a leader ended with %v, want %v", err, rpctypes.ErrGRPCNoLeader)
	}
	// The other stream still answers (a progress request is answered by
	// the member itself).
	if err := plain.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_ProgressRequest{ProgressRequest: &pb.WatchProgressRequest{}}}); err != nil {
		t.Fatal(err)
	}
	if r, err := plain.Recv(); err != nil || r.WatchId != -1 {
		t.Fatalf("stream without the requirement: %v %v", r, err)
	}
}
