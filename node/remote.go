package node

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/internalpb"
	"github.com/cairn-kv/cairn/proto/shardpb"
	"github.com/cairn-kv/cairn/shard"
)

// Sharded mode on several nodes: what only a range's leader may do (stamp
// a write, answer at a closed revision) or only the placement group's
// leader may do (hand out revisions) is sent to the node that leads, over
// the node-to-node service (internalpb.Node) on its client port. Range
// leaders publish closed revisions to the other replicas the same way.

// forwardRetry is the wait between tries while leadership is moving.
const forwardRetry = 10 * time.Millisecond

// errNotLeader is the internal service's answer when this node does not
// lead what it was asked about: the caller looks for the leader again.
var errNotLeader = status.Error(codes.FailedPrecondition, "cairn: not the leader")

// rangeClient is a range as the router uses it on this node: reads from
// the local replica, writes and reads at a closed revision through the
// range's leader, here or on another node (router.RangeShard).
type rangeClient struct {
	n  *Node
	rr *rangeReplica
}

func (c *rangeClient) Read(ctx context.Context, query any, linearizable bool) (any, error) {
	if err := c.wait(ctx); err != nil {
		return nil, err
	}
	return c.rr.replica.Read(ctx, query, linearizable)
}

func (c *rangeClient) Leader() (uint64, uint64, bool) {
	if !c.rr.started() {
		return 0, 0, false
	}
	return c.rr.replica.Leader()
}

// wait waits until the range's replica here is started (a split's new
// range starts as the split applies).
func (c *rangeClient) wait(ctx context.Context) error {
	select {
	case <-c.rr.ready:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: range %d is starting: %v", shard.ErrNoLeader, c.rr.desc().Id, ctx.Err())
	}
}

// viaLeader runs local while this node leads the range and remote on the
// leader's node otherwise, trying again while leadership moves.
func (c *rangeClient) viaLeader(ctx context.Context, local func() error, remote func(internalpb.NodeClient) error) error {
	if err := c.wait(ctx); err != nil {
		return err
	}
	for {
		leader, _, ok := c.rr.replica.Leader()
		var err error
		switch {
		case !ok:
			err = shard.ErrNoLeader
		case leader == c.n.memberID:
			if err = local(); !errors.Is(err, shard.ErrNoLeader) {
				return err
			}
		default:
			var nc internalpb.NodeClient
			if nc, err = c.n.nodeClient(leader); err == nil {
				err = remote(nc)
				if status.Code(err) != codes.FailedPrecondition {
					return fromRemote(err)
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: range %d: %v", shard.ErrNoLeader, c.rr.desc().Id, err)
		case <-time.After(forwardRetry):
		}
	}
}

// Write proposes req: requests that take a revision through the range's
// leader, which stamps them, and compactions, which the leader's closed
// revision (carried by its proposals) lets reach past the range's last
// write; others (registrations, member records) from here, as raft
// carries them to the leader.
func (c *rangeClient) Write(ctx context.Context, req *shardpb.Request) (*shardpb.Response, error) {
	if err := c.wait(ctx); err != nil {
		return nil, err
	}
	if !shard.Stamps(req) && req.GetCompaction() == nil {
		return c.rr.replica.Write(ctx, req)
	}
	var out *shardpb.Response
	err := c.viaLeader(ctx, func() (err error) {
		out, err = c.rr.replica.Write(ctx, req)
		return err
	}, func(nc internalpb.NodeClient) error {
		resp, err := nc.Write(ctx, &internalpb.WriteRequest{Range: c.rr.desc().Id, Request: req})
		if err != nil {
			return err
		}
		out = resp.Response
		if e := out.GetError(); e != nil {
			return &shard.Error{Code: e.Code, Message: e.Message}
		}
		return nil
	})
	return out, err
}

func (c *rangeClient) ReadAt(ctx context.Context, req *pb.RangeRequest, rev mvcc.Revision) (*pb.RangeResponse, error) {
	var out *pb.RangeResponse
	err := c.viaLeader(ctx, func() (err error) {
		out, err = c.rr.replica.ReadAt(ctx, req, rev)
		return err
	}, func(nc internalpb.NodeClient) error {
		data, err := proto.Marshal(req)
		if err != nil {
			return err
		}
		resp, err := nc.ReadAt(ctx, &internalpb.ReadAtRequest{Range: c.rr.desc().Id, Request: data, Revision: int64(rev)})
		if err != nil {
			return err
		}
		out = &pb.RangeResponse{}
		return proto.Unmarshal(resp.Response, out)
	})
	return out, err
}

func (c *rangeClient) WaitClosed(ctx context.Context, rev mvcc.Revision) error {
	return c.viaLeader(ctx, func() error { return c.rr.replica.WaitClosed(ctx, rev) },
		func(nc internalpb.NodeClient) error {
			_, err := nc.WaitClosed(ctx, &internalpb.WaitClosedRequest{Range: c.rr.desc().Id, Revision: int64(rev)})
			return err
		})
}

// nodeClient returns a client of member id's node-to-node service.
func (n *Node) nodeClient(id uint64) (internalpb.NodeClient, error) {
	conn, err := n.memberConn(id)
	if err != nil {
		return nil, err
	}
	return internalpb.NewNodeClient(conn), nil
}

// toRemote turns an error of this node into the internal service's
// status: not leading is FailedPrecondition (the caller retries), a
// refusal keeps its code in the message's place (the caller rebuilds it).
func toRemote(err error) error {
	var se *shard.Error
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, shard.ErrNoLeader), errors.Is(err, placement.ErrNotLeader):
		return errNotLeader
	case errors.As(err, &se):
		return status.Error(codes.Aborted, fmt.Sprintf("%d:%s", se.Code, se.Message))
	}
	return status.Error(codes.Unavailable, err.Error())
}

// fromRemote turns the internal service's status back into this node's
// errors.
func fromRemote(err error) error {
	if err == nil {
		return nil
	}
	var se *shard.Error
	if errors.As(err, &se) {
		return err
	}
	st, ok := status.FromError(err)
	if ok && st.Code() == codes.Aborted {
		if c, msg, found := strings.Cut(st.Message(), ":"); found {
			if code, convErr := strconv.Atoi(c); convErr == nil {
				return &shard.Error{Code: shardpb.ErrorCode(code), Message: msg}
			}
		}
	}
	if ok && st.Code() == codes.DeadlineExceeded {
		return context.DeadlineExceeded
	}
	return fmt.Errorf("%w: %v", shard.ErrNoLeader, err)
}

// internalServer serves the node-to-node service.
type internalServer struct {
	internalpb.UnimplementedNodeServer
	n *Node
}

// leading returns this node's replica of range id if this node leads it.
func (s *internalServer) leading(id uint64) (*rangeReplica, error) {
	for _, rr := range s.n.rangeSet.all() {
		if rr.desc().Id == id {
			if leader, _, ok := rr.replica.Leader(); ok && leader == s.n.memberID {
				return rr, nil
			}
			return nil, errNotLeader
		}
	}
	return nil, status.Errorf(codes.NotFound, "cairn: no range %d here", id)
}

func (s *internalServer) Write(ctx context.Context, r *internalpb.WriteRequest) (*internalpb.WriteResponse, error) {
	rr, err := s.leading(r.Range)
	if err != nil {
		return nil, err
	}
	resp, err := rr.replica.Write(ctx, r.Request)
	var se *shard.Error
	if errors.As(err, &se) {
		return &internalpb.WriteResponse{Response: &shardpb.Response{Result: &shardpb.Response_Error{
			Error: &shardpb.Error{Code: se.Code, Message: se.Message}}}}, nil
	}
	if err != nil {
		return nil, toRemote(err)
	}
	return &internalpb.WriteResponse{Response: resp}, nil
}

func (s *internalServer) ReadAt(ctx context.Context, r *internalpb.ReadAtRequest) (*internalpb.ReadAtResponse, error) {
	rr, err := s.leading(r.Range)
	if err != nil {
		return nil, err
	}
	var req pb.RangeRequest
	if err := proto.Unmarshal(r.Request, &req); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	resp, err := rr.replica.ReadAt(ctx, &req, mvcc.Revision(r.Revision))
	if err != nil {
		return nil, toRemote(err)
	}
	data, err := proto.Marshal(resp)
	return &internalpb.ReadAtResponse{Response: data}, err
}

func (s *internalServer) WaitClosed(ctx context.Context, r *internalpb.WaitClosedRequest) (*internalpb.WaitClosedResponse, error) {
	rr, err := s.leading(r.Range)
	if err != nil {
		return nil, err
	}
	return &internalpb.WaitClosedResponse{}, toRemote(rr.replica.WaitClosed(ctx, mvcc.Revision(r.Revision)))
}

func (s *internalServer) Revisions(ctx context.Context, r *internalpb.RevisionsRequest) (*internalpb.RevisionsResponse, error) {
	if s.n.alloc == nil {
		return nil, status.Error(codes.FailedPrecondition, "cairn: not in sharded mode")
	}
	first, err := s.n.alloc.RevisionsAbove(ctx, r.Count, mvcc.Revision(r.Above))
	if err != nil {
		return nil, toRemote(err)
	}
	return &internalpb.RevisionsResponse{First: int64(first)}, nil
}

func (s *internalServer) Closed(_ context.Context, r *internalpb.ClosedRequest) (*internalpb.ClosedResponse, error) {
	defer s.n.side.got(r)()
	for _, rc := range r.Ranges {
		for _, rr := range s.n.rangeSet.all() {
			if rr.desc().Id == rc.Range {
				rr.published(mvcc.Revision(rc.Closed), rc.Index)
			}
		}
	}
	return &internalpb.ClosedResponse{}, nil
}

func (s *internalServer) Kick(_ context.Context, r *internalpb.KickRequest) (*internalpb.KickResponse, error) {
	for _, rr := range s.n.rangeSet.all() {
		if rr.desc().Id == r.Range {
			rr.wantClosed(mvcc.Revision(r.Revision))
		}
	}
	return &internalpb.KickResponse{}, nil
}

func (s *internalServer) SplitRange(ctx context.Context, r *internalpb.SplitRangeRequest) (*internalpb.SplitRangeResponse, error) {
	ranges, err := s.n.SplitRange(ctx, r.Key)
	if err != nil {
		return nil, toRemote(err)
	}
	return &internalpb.SplitRangeResponse{Ranges: ranges}, nil
}
