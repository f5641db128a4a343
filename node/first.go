package node

import (
	"context"
	"fmt"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/cairn-kv/cairn/lease"
	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/proto/shardpb"
	"github.com/cairn-kv/cairn/router"
	"github.com/cairn-kv/cairn/shard"
	"github.com/cairn-kv/cairn/shard/auth"
)

// Range 1 on a member (sharded mode): the leases' home, the cluster's auth
// state and records. Like any range it lives on --range-replicas members and
// moves (move.go), so a member may gain or lose its replica while it runs:
//
//   - Its replica starting here — at a start from the map (startRanges), or
//     as a move's destination (reconcile.go) — gets range 1's shard config
//     (firstShardCfg: member peers, transfer holds, splits of range 1) and
//     is wired as the leases' home at once (wireFirst): its lease primary
//     runs (expiry, checkpoints; it promotes the lessor only while the
//     replica leads, so a destination not voting yet does nothing), and
//     leader changes and transfer holds reach its client (n.holds).
//   - n.first is the replica while it serves here: set at a start, or when
//     the reconciler routes a move's destination here (caught up); cleared
//     when a move's source is told to stop serving it, and when raft
//     removed it (drop.go, which also stops its primary: unwireFirst).
//   - What the router reads of range 1 follows n.first and the routes as
//     they are at each call (firstShard, firstLessor, firstAuth, firstHome):
//     the local replica while n.first is set, else the members holding it
//     (range 1's RangeClient: absentLessor answers so that lease requests
//     go to its leader's member, auth state is read through its client).
//
//	start: r1 here → wireFirst(r1:5), first=r1:5
//	move r1 5 → 9 on member 4: member 4 starts r1:9, wireFirst(r1:9); caught up → first=r1:9
//	member 1: stop serving → first=nil; raft removed r1:5 → unwireFirst(r1:5), drop
//
// Single-group mode wires its one range at start alone (it never moves).

// firstShardCfg is the shard config of r, this member's replica of range 1:
// what every range has, and what range 1 alone carries (member peers,
// transfer holds).
func (n *Node) firstShardCfg(r *shard.Range) shard.Config {
	cfg := n.shardCfg
	cfg.OnSplit = func(child shard.RangeID, span mvcc.Span, rev mvcc.Revision, founders []*shardpb.ReplicaRef) {
		if n.splitter != nil {
			n.splitter.OnSplit(r, child, span, rev, founders)
		}
	}
	cfg.OnMerge = n.onMerge(r)
	return cfg
}

// wireFirst makes r, this member's replica of range 1, started, the
// leases' home here: its lease primary runs, and leader changes and
// transfer holds reach its client.
func (n *Node) wireFirst(r *shard.Range) {
	n.firstMu.Lock()
	defer n.firstMu.Unlock()
	if n.primary != nil {
		n.primary.Close() // a replica of range 1 this member ran before
	}
	n.primaryOf = r
	n.primary = shard.StartPrimary(shard.PrimaryConfig{
		Replica: r.Replica(),
		Lessor: func() *lease.Lessor {
			if sm := r.StateMachine(); sm != nil {
				return sm.Lessor()
			}
			return nil
		},
		ReplicaID:       r.ReplicaID(),
		ElectionTimeout: n.cfg.ElectionTimeout,
		Log:             n.log,
	})
	n.holds.Store(r.Replica())
}

// unwireFirst undoes wireFirst for r, this member's replica of range 1
// that raft removed (or a destination given up), before it is dropped:
// its primary stops (its lessor demoted), and range 1 is served through
// the members holding it.
func (n *Node) unwireFirst(r *shard.Range) {
	n.first.CompareAndSwap(r, nil)
	n.firstMu.Lock()
	defer n.firstMu.Unlock()
	if n.primaryOf == r && n.primary != nil {
		n.primary.Close()
		n.primary, n.primaryOf = nil, nil
	}
	if rep := r.Replica(); rep != nil {
		n.holds.CompareAndSwap(rep, nil)
	}
}

// closePrimary stops range 1's primary here, if any (Close).
func (n *Node) closePrimary() {
	n.firstMu.Lock()
	defer n.firstMu.Unlock()
	if n.primary != nil {
		n.primary.Close()
		n.primary, n.primaryOf = nil, nil
	}
}

// firstClient is range 1's client in the routes as they are now.
func (n *Node) firstClient() (*router.RangeClient, error) {
	if c := n.routes.Client(singleShardID); c != nil {
		return c, nil
	}
	return nil, fmt.Errorf("%w: range 1 is neither here nor in the range map", shard.ErrNoLeader)
}

// firstShard is router.Shard over range 1 (sharded mode): its client in
// the routes at each call, a local replica's while one serves here, else
// one through the members holding it.
type firstShard struct{ n *Node }

var _ router.Shard = firstShard{}

func (s firstShard) Write(ctx context.Context, req *shardpb.Request) (*shardpb.Response, error) {
	c, err := s.n.firstClient()
	if err != nil {
		return nil, err
	}
	return c.Write(ctx, req)
}

func (s firstShard) Range(ctx context.Context, req *pb.RangeRequest, linearizable bool) (*pb.RangeResponse, error) {
	c, err := s.n.firstClient()
	if err != nil {
		return nil, err
	}
	return c.Range(ctx, req, linearizable)
}

func (s firstShard) ReadTxn(ctx context.Context, req *pb.TxnRequest, floor mvcc.Revision, linearizable bool) (*pb.TxnResponse, error) {
	c, err := s.n.firstClient()
	if err != nil {
		return nil, err
	}
	return c.ReadTxn(ctx, req, floor, linearizable)
}

func (s firstShard) Status(ctx context.Context, linearizable bool) (shard.Status, error) {
	c, err := s.n.firstClient()
	if err != nil {
		return shard.Status{}, err
	}
	return c.Status(ctx, linearizable)
}

func (s firstShard) Hash(ctx context.Context, rev mvcc.Revision, linearizable bool) (shard.HashResult, error) {
	c, err := s.n.firstClient()
	if err != nil {
		return shard.HashResult{}, err
	}
	return c.Hash(ctx, rev, linearizable)
}

func (s firstShard) Alarms(ctx context.Context, linearizable bool) ([]*pb.AlarmMember, error) {
	c, err := s.n.firstClient()
	if err != nil {
		return nil, err
	}
	return c.Alarms(ctx, linearizable)
}

func (s firstShard) Leader() (shard.ReplicaID, uint64, bool) {
	c, err := s.n.firstClient()
	if err != nil {
		return 0, 0, false
	}
	return c.Leader()
}

// firstLessor is range 1's lessor as the router's Lease service asks it
// (sharded mode): the local replica's while one serves here, else
// absentLessor (never the primary: the requests go to range 1's leader's
// member).
type firstLessor struct{ n *Node }

var _ router.Lessor = firstLessor{}

func (l firstLessor) lessor() router.Lessor {
	if r := l.n.first.Load(); r != nil {
		if sm := r.StateMachine(); sm != nil {
			if ls := sm.Lessor(); ls != nil {
				return ls
			}
		}
	}
	return absentLessor{}
}

func (l firstLessor) Renew(id lease.ID, now time.Time) (int64, bool, error) {
	return l.lessor().Renew(id, now)
}

func (l firstLessor) TimeToLive(id lease.ID, now time.Time, withKeys bool) (lease.Status, error) {
	return l.lessor().TimeToLive(id, now, withKeys)
}

func (l firstLessor) Leases() []lease.Lease { return l.lessor().Leases() }
func (l firstLessor) IsPrimary() bool       { return l.lessor().IsPrimary() }

// firstAuth is the cluster's auth state as the router reads it (sharded
// mode): from the local replica of range 1 while one serves here, else
// through n.authCache, which reads it through range 1's client
// (remoteFirstAuth).
type firstAuth struct{ n *Node }

var _ router.AuthStore = firstAuth{}

func (a firstAuth) Auth(ctx context.Context, linearizable bool) (*auth.State, error) {
	if rep := a.local(); rep != nil {
		return rep.Auth(ctx, linearizable)
	}
	return a.n.authCache.Auth(ctx, linearizable)
}

// AuthCache is the cache the router reads the auth state through now: nil
// while range 1 serves here.
func (a firstAuth) AuthCache() *router.AuthCache {
	if a.local() != nil {
		return nil
	}
	return a.n.authCache
}

func (a firstAuth) local() *shard.Replica {
	if r := a.n.first.Load(); r != nil {
		return r.Replica()
	}
	return nil
}

// remoteFirstAuth is range 1's auth state read through its client.
type remoteFirstAuth struct{ n *Node }

func (a remoteFirstAuth) Auth(ctx context.Context, linearizable bool) (*auth.State, error) {
	c, err := a.n.firstClient()
	if err != nil {
		return nil, err
	}
	return router.RemoteAuth(c).Auth(ctx, linearizable)
}

// firstHome is range 1 as the lease fan-out's home (sharded mode): the
// replica serving here, else absentHome (never led here).
type firstHome struct{ n *Node }

var _ router.LeaseHome = firstHome{}

func (h firstHome) home() router.LeaseHome {
	if r := h.n.first.Load(); r != nil {
		return r
	}
	return absentHome{}
}

func (h firstHome) Leads() bool                                    { return h.home().Leads() }
func (h firstHome) AppliedIndex() uint64                           { return h.home().AppliedIndex() }
func (h firstHome) PendingRevokes() (map[lease.ID][]uint64, error) { return h.home().PendingRevokes() }
