package router

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"errors"
	"go.etcd.io/etcd/api/v3/authpb"
	"io"
	"slices"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"

	"github.com/cairn-kv/cairn/lease"
	"github.com/cairn-kv/cairn/proto/shardpb"
	"github.com/cairn-kv/cairn/shard"
)

// Lessor is the shard's lessor as the Lease service uses it: what only the
// primary (the lessor on the shard's raft leader) answers. *lease.Lessor
// implements it. Grants, revokes and checkpoints go through the shard's
// raft log instead.
type Lessor interface {
	Renew(id lease.ID, now time.Time) (ttl int64, clear bool, err error)
	TimeToLive(id lease.ID, now time.Time, withKeys bool) (lease.Status, error)
	Leases() []lease.Lease
	IsPrimary() bool
}

// primaryWait bounds how long a lease request waits for this node's lessor
// to become primary (right after an election it is promoted within a
// leader check interval) before it is refused as etcd refuses a request to
// a member that is not the leader.
const primaryWait = 3 * time.Second

// grantAttempts bounds the retries of a grant whose server-picked id
// collides with an existing lease.
const grantAttempts = 8

// leaseServer is etcd's Lease service over the shard's lessor.
type leaseServer struct {
	pb.UnimplementedLeaseServer
	s *Server
	// peer: the peer port's, serving calls other members forward after
	// checking their callers (authlease.go); it checks no permission.
	peer bool
}

func (ls *leaseServer) LeaseGrant(ctx context.Context, r *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	if r.TTL > lease.MaxTTL {
		return nil, rpctypes.ErrGRPCLeaseTTLTooLarge
	}
	if err := ls.s.checkQuota(ctx, r); err != nil {
		return nil, err
	}
	ctx, err := ls.authorize(ctx, nil)
	if err != nil {
		return nil, err
	}
	req := &pb.LeaseGrantRequest{ID: r.ID, TTL: r.TTL}
	for attempt := 1; ; attempt++ {
		picked := req.ID == int64(lease.NoLease)
		if picked {
			req.ID = newLeaseID()
		}
		out, err := ls.s.write(ctx, ls.s.cfg.Shard, req, func(b []byte) *shardpb.Request {
			return &shardpb.Request{Op: &shardpb.Request_LeaseGrant{LeaseGrant: b}}
		})
		if picked && attempt < grantAttempts && errors.Is(err, rpctypes.ErrGRPCLeaseExist) {
			req.ID = int64(lease.NoLease)
			continue
		}
		if err != nil {
			return nil, err
		}
		resp := &pb.LeaseGrantResponse{}
		return resp, ls.s.decode(out.GetLeaseGrant(), resp, resp.GetHeader)
	}
}

// newLeaseID picks a random positive id, as etcd uses only positive ids
// for the ones it picks.
func newLeaseID() int64 {
	var b [8]byte
	for {
		_, _ = crand.Read(b[:])
		if id := int64(binary.BigEndian.Uint64(b[:]) >> 1); id != 0 {
			return id
		}
	}
}

func (ls *leaseServer) LeaseRevoke(ctx context.Context, r *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
	ctx, err := ls.authorize(ctx, func(c caller) error { return c.checkLeaseKeys(r.ID, authpb.Permission_WRITE) })
	if err != nil {
		return nil, err
	}
	out, err := ls.s.write(ctx, ls.s.cfg.Shard, r, func(b []byte) *shardpb.Request {
		return &shardpb.Request{Op: &shardpb.Request_LeaseRevoke{LeaseRevoke: b}}
	})
	if err != nil {
		return nil, err
	}
	resp := &pb.LeaseRevokeResponse{}
	if err := ls.s.decode(out.GetLeaseRevoke(), resp, resp.GetHeader); err != nil {
		return nil, err
	}
	// As in etcd, the lease's keys are gone when the revoke returns: those
	// in other ranges too (the node finishes it if this fails half way).
	if rl := ls.s.cfg.RemoteLeases; rl != nil {
		if err := rl.RevokeRemote(ctx, r.ID); err != nil {
			return nil, toGRPC(err)
		}
	}
	return resp, nil
}

// LeaseKeepAlive renews each lease the client names and answers with its
// TTL; an unknown or expired lease answers TTL 0, as etcd does. The stream
// ends on the first error that is not about the lease itself, and when its
// context ends, even while it waits for the client's next request: as
// etcd's, a stream that requires a leader is cancelled so (leaderStream).
func (ls *leaseServer) LeaseKeepAlive(stream pb.Lease_LeaseKeepAliveServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	// The receiver hands each request over; once this returns, the
	// stream's end makes its Recv fail, and it returns too.
	reqs, recvErr := make(chan *pb.LeaseKeepAliveRequest), make(chan error, 1)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case reqs <- req:
			case <-ctx.Done():
				return
			}
		}
	}()
	var upstream pb.Lease_LeaseKeepAliveClient // to the leader, opened when first needed
	for {
		var req *pb.LeaseKeepAliveRequest
		select {
		case req = <-reqs:
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case <-ctx.Done():
			return toGRPC(ctx.Err())
		}
		if _, err := ls.authorize(ctx, func(c caller) error { return c.checkLeaseKeys(req.ID, authpb.Permission_WRITE) }); err != nil {
			return err
		}
		if conn, err := ls.remote(ctx); err != nil {
			return toGRPC(err)
		} else if conn != nil {
			if upstream == nil {
				if upstream, err = pb.NewLeaseClient(conn).LeaseKeepAlive(ctx); err != nil {
					return toGRPC(err)
				}
			}
			if err := upstream.Send(req); err != nil {
				return toGRPC(err)
			}
			resp, err := upstream.Recv()
			if err != nil {
				return toGRPC(err)
			}
			if err := stream.Send(resp); err != nil {
				return err
			}
			continue
		}
		upstream = nil
		ttl, err := ls.renew(ctx, lease.ID(req.ID))
		if err != nil {
			return toGRPC(err)
		}
		h, err := ls.s.header(ctx)
		if err != nil {
			return err
		}
		if err := stream.Send(&pb.LeaseKeepAliveResponse{Header: h, ID: req.ID, TTL: ttl}); err != nil {
			return err
		}
	}
}

// renew renews lease id on the primary. A lease carrying a checkpoint has
// it cleared through raft before the answer, so that a leader change
// cannot restart the lease from the stale checkpoint (as etcd).
func (ls *leaseServer) renew(ctx context.Context, id lease.ID) (int64, error) {
	if err := ls.waitPrimary(ctx); err != nil {
		return 0, err
	}
	ttl, clear, err := ls.s.cfg.Lessor.Renew(id, time.Now())
	switch {
	case errors.Is(err, lease.ErrLeaseNotFound), errors.Is(err, lease.ErrLeaseExpired):
		return 0, nil
	case err != nil:
		return 0, err
	}
	if clear {
		cp := &pb.LeaseCheckpointRequest{Checkpoints: []*pb.LeaseCheckpoint{{ID: int64(id)}}}
		if _, err := ls.s.write(ctx, ls.s.cfg.Shard, cp, func(b []byte) *shardpb.Request {
			return &shardpb.Request{Op: &shardpb.Request_LeaseCheckpoint{LeaseCheckpoint: b}}
		}); err != nil {
			return 0, err
		}
	}
	return ttl, nil
}

// LeaseTimeToLive answers as etcd, which checks, with keys, read
// permission on each attached key, and refuses the answer if the auth
// state changed meanwhile.
func (ls *leaseServer) LeaseTimeToLive(ctx context.Context, r *pb.LeaseTimeToLiveRequest) (*pb.LeaseTimeToLiveResponse, error) {
	ctx, err := ls.authorize(ctx, func(c caller) error {
		if !r.Keys {
			return nil
		}
		return c.checkLeaseKeys(r.ID, authpb.Permission_READ)
	})
	if err != nil {
		return nil, err
	}
	resp, err := ls.timeToLive(ctx, r)
	if err != nil || !r.Keys {
		return resp, err
	}
	return resp, ls.sameAuth(ctx)
}

// timeToLive answers LeaseTimeToLive without checking the caller.
func (ls *leaseServer) timeToLive(ctx context.Context, r *pb.LeaseTimeToLiveRequest) (*pb.LeaseTimeToLiveResponse, error) {
	if conn, err := ls.remote(ctx); err != nil {
		return nil, toGRPC(err)
	} else if conn != nil {
		return pb.NewLeaseClient(conn).LeaseTimeToLive(ctx, r)
	}
	if err := ls.waitPrimary(ctx); err != nil {
		return nil, toGRPC(err)
	}
	h, err := ls.s.header(ctx)
	if err != nil {
		return nil, err
	}
	st, err := ls.s.cfg.Lessor.TimeToLive(lease.ID(r.ID), time.Now(), r.Keys)
	if errors.Is(err, lease.ErrLeaseNotFound) {
		return &pb.LeaseTimeToLiveResponse{Header: h, ID: r.ID, TTL: -1}, nil
	}
	if err != nil {
		return nil, toGRPC(err)
	}
	if rl := ls.s.cfg.RemoteLeases; rl != nil && r.Keys {
		more, err := rl.RemoteKeys(ctx, r.ID)
		if err != nil {
			return nil, toGRPC(err)
		}
		st.Keys = append(st.Keys, more...)
		slices.SortFunc(st.Keys, bytes.Compare)
	}
	return &pb.LeaseTimeToLiveResponse{Header: h, ID: r.ID, TTL: st.TTL, GrantedTTL: st.GrantedTTL, Keys: st.Keys}, nil
}

// LeaseLeases answers as etcd, which checks read permission on every key
// attached to any lease.
func (ls *leaseServer) LeaseLeases(ctx context.Context, r *pb.LeaseLeasesRequest) (*pb.LeaseLeasesResponse, error) {
	ctx, err := ls.authorize(ctx, nil)
	if err != nil {
		return nil, err
	}
	resp, err := ls.leases(ctx, r)
	if err != nil || ls.peer {
		return resp, err
	}
	c, _ := ctx.Value(callerKey{}).(caller)
	if c.st.CheckAdmin(c.user) == nil {
		return resp, nil
	}
	for _, l := range resp.Leases {
		if err := c.checkLeaseKeys(l.ID, authpb.Permission_READ); err != nil {
			return nil, toGRPC(err)
		}
	}
	return resp, ls.sameAuth(ctx)
}

// leases answers LeaseLeases without checking the caller.
func (ls *leaseServer) leases(ctx context.Context, r *pb.LeaseLeasesRequest) (*pb.LeaseLeasesResponse, error) {
	if conn, err := ls.remote(ctx); err != nil {
		return nil, toGRPC(err)
	} else if conn != nil {
		return pb.NewLeaseClient(conn).LeaseLeases(ctx, r)
	}
	if err := ls.waitPrimary(ctx); err != nil {
		return nil, toGRPC(err)
	}
	h, err := ls.s.header(ctx)
	if err != nil {
		return nil, err
	}
	all := ls.s.cfg.Lessor.Leases()
	out := make([]*pb.LeaseStatus, len(all))
	for i, l := range all {
		out[i] = &pb.LeaseStatus{ID: int64(l.ID)}
	}
	return &pb.LeaseLeasesResponse{Header: h, Leases: out}, nil
}

// remote returns a connection to the shard's leader when that is another
// member (its lessor answers), nil to answer here. With no leader known it
// waits for one, as long as waitPrimary would.
func (ls *leaseServer) remote(ctx context.Context) (*grpc.ClientConn, error) {
	if ls.s.cfg.Members == nil || ls.s.cfg.Lessor.IsPrimary() {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(ctx, primaryWait)
	defer cancel()
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		if leader, _, ok := ls.s.cfg.Shard.Leader(); ok {
			if ls.s.shardMember(leader) == ls.s.cfg.MemberID {
				return nil, nil
			}
			return ls.s.cfg.Members.Conn(ls.s.shardMember(leader))
		}
		select {
		case <-ctx.Done():
			return nil, shard.ErrNoLeader
		case <-t.C:
		}
	}
}

// waitPrimary waits until this node's lessor is the primary, for at most
// primaryWait; a node whose shard replica is not the leader answers
// ErrNotPrimary (etcd's "not leader" for lease requests it cannot forward).
func (ls *leaseServer) waitPrimary(ctx context.Context) error {
	if ls.s.cfg.Lessor.IsPrimary() {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, primaryWait)
	defer cancel()
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if _, _, ok := ls.s.cfg.Shard.Leader(); !ok {
				return shard.ErrNoLeader
			}
			return lease.ErrNotPrimary
		case <-t.C:
			if ls.s.cfg.Lessor.IsPrimary() {
				return nil
			}
		}
	}
}

// header returns a filled response header at the store's current revision
// on this node (as etcd fills lease responses from its local store).
func (s *Server) header(ctx context.Context) (*pb.ResponseHeader, error) {
	st, err := s.cfg.Shard.Status(ctx, false)
	if err != nil {
		return nil, toGRPC(err)
	}
	h := &pb.ResponseHeader{Revision: int64(st.Revision)}
	s.fill(h)
	return h, nil
}
