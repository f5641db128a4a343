package router

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/status"

	"github.com/cairn-kv/cairn/lease"
	"github.com/cairn-kv/cairn/shard"
)

// switchedReplica is a fakeReplica whose leader a test changes while the
// server runs.
type switchedReplica struct {
	fakeReplica
	leaderID atomic.Uint64
}

func (r *switchedReplica) Leader() (shard.ReplicaID, uint64, bool) {
	id := r.leaderID.Load()
	return shard.ReplicaID(id), 1, id != 0
}

// primaryLessor renews every lease with a TTL of 10s.
type primaryLessor struct{}

func (primaryLessor) Renew(lease.ID, time.Time) (int64, bool, error) { return 10, false, nil }
func (primaryLessor) TimeToLive(lease.ID, time.Time, bool) (lease.Status, error) {
	return lease.Status{}, nil
}
func (primaryLessor) Leases() []lease.Lease { return nil }
func (primaryLessor) IsPrimary() bool       { return true }

// TestRequireLeaderKeepAlive: a LeaseKeepAlive stream whose client
// requires a leader (clientv3.WithRequireLeader) is refused with etcd's
// "no leader" while range 1 has none, and, once open, is cancelled with
// that error after the member has lost its leader for noLeaderChecks
// checks, even while it waits for the client's next request, as etcd's
// stream interceptor does; a stream without the requirement stays open.
func TestRequireLeaderKeepAlive(t *testing.T) {
	noLeader := status.Convert(rpctypes.ErrGRPCNoLeader)
	r := &switchedReplica{}
	conn := serveClientPort(t, New(Config{Shard: r, Lessor: primaryLessor{}, LeaderCheckInterval: time.Millisecond}))
	lc := pb.NewLeaseClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	isNoLeader := func(err error) bool {
		got := status.Convert(err)
		return got.Code() == noLeader.Code() && got.Message() == noLeader.Message()
	}

	// No leader: refused at once.
	st, err := lc.LeaseKeepAlive(clientv3.WithRequireLeader(ctx))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); !isNoLeader(err) {
		t.Fatalf("keepalive stream opened without a leader: %v, want %q", err, noLeader.Message())
	}

	// A leader: served; then the leader goes and the stream, idle, ends.
	r.leaderID.Store(1)
	required, err := lc.LeaseKeepAlive(clientv3.WithRequireLeader(ctx))
	if err != nil {
		t.Fatal(err)
	}
	plain, err := lc.LeaseKeepAlive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []pb.Lease_LeaseKeepAliveClient{required, plain} {
		if err := s.Send(&pb.LeaseKeepAliveRequest{ID: 7}); err != nil {
			t.Fatal(err)
		}
		if resp, err := s.Recv(); err != nil || resp.TTL != 10 {
			t.Fatalf("keepalive with a leader: %v, %v; want TTL 10", resp, err)
		}
	}
	r.leaderID.Store(0)
	if _, err := required.Recv(); !isNoLeader(err) {
		t.Fatalf("keepalive stream after the leader was lost: %v, want %q", err, noLeader.Message())
	}
	// The stream without the requirement is still served once a leader is
	// back (the check counts only for streams that asked for it).
	r.leaderID.Store(1)
	if err := plain.Send(&pb.LeaseKeepAliveRequest{ID: 7}); err != nil {
		t.Fatal(err)
	}
	if resp, err := plain.Recv(); err != nil || resp.TTL != 10 {
		t.Fatalf("keepalive without the requirement: %v, %v; want TTL 10", resp, err)
	}
}
