package node_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/cairn-kv/cairn/node/nodetest"
)

// startPartitionable starts three members on a network that can cut them
// apart, writes "before" through a client of every member and returns
// that client and the number of the member that led after the write, as
// member 0 saw it.
func startPartitionable(t *testing.T, ctx context.Context) (cl *nodetest.Cluster, c *clientv3.Client, leader int) {
	t.Helper()
	cl = nodetest.Start(t, 3, nodetest.Partitionable())
	urls := cl.URLs()
	c = nodetest.NewClient(t, urls...)
	if _, err := c.Put(ctx, "before", "v"); err != nil {
		t.Fatal(err)
	}
	st, err := c.Status(ctx, urls[0])
	if err != nil {
		t.Fatal(err)
	}
	return cl, c, cl.MemberIndex(st.Leader)
}

// TestPartition: the leader is cut off from the two others. The majority
// elects a leader and keeps serving writes and linearizable reads; the
// cut-off member refuses them with etcd's errors (it cannot reach a
// quorum); once the partition heals, every member converges to the same
// history. The refusals wait out timeouts, so the test runs in parallel
// with the package's other waiting tests.
func TestPartition(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cl, c, leader := startPartitionable(t, ctx)
	urls := cl.URLs()
	leaderID, leaderURL := cl.Node(leader).MemberID(), urls[leader]
	var majority []string
	for i, u := range urls {
		if i != leader {
			majority = append(majority, u)
		}
	}
	cl.Partition(leader)

	mc := nodetest.NewClient(t, majority...)
	// Writes proposed while the majority still follows the old leader
	// time out, in etcd as here; wait for the majority's own leader.
	for _, u := range majority {
		nodetest.Eventually(t, "member "+u+" follows a new leader", func() bool {
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

	lc := nodetest.NewClient(t, leaderURL)
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

	cl.Heal()
	last, err := c.Put(ctx, "after", "v")
	if err != nil {
		t.Fatal(err)
	}
	nodetest.SameHashes(ctx, t, c, urls, last.Header.Revision, "after the partition healed")
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
	cl, _, leader := startPartitionable(t, ctx)
	follower := (leader + 1) % 3
	fc := cl.Client(follower)
	if _, err := fc.Put(ctx, "through-follower", "v"); err != nil {
		t.Fatal(err)
	}
	cl.CutOneWay(follower, leader)
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
	cl.Heal()
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
// stream that did not ask keeps running. The member counts leader checks
// (a second apart) before it ends the stream, so the test runs in parallel
// with the package's other waiting tests.
func TestWatchRequireLeader(t *testing.T) {
	t.Parallel()
	cl := nodetest.Start(t, 3, nodetest.Partitionable())
	c := cl.Client(0)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
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

	cl.Partition(0)
	_, err := required.Recv()
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
