package router

import (
	"context"
	"errors"
	"fmt"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/internalpb"
	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/shard"
)

// The node-to-node service (internalpb.Node), served on every member's
// peer port to members only (peer.go; the client port serves SplitRange
// alone): the leader's side of forwarding
// (forward.go), the oracle, the side channel of closed revisions, and the
// admin calls behind `cairn range split`. Refusals travel in the
// responses' Error fields (encodeError); only SplitRange, which the cairn
// command calls, answers with gRPC statuses.

// Member is what the node-to-node service asks of this member; the node
// implements it.
type Member interface {
	// Range returns this member's replica of range id, nil if it has none.
	Range(id shard.RangeID) Local
	// Revisions hands out count revisions from the oracle (the first of
	// them), each above above; placement.ErrNotLeader if this member's
	// placement replica does not lead.
	Revisions(ctx context.Context, count int64, above mvcc.Revision) (mvcc.Revision, error)
	// Published takes the closed revisions of ranges the caller leads.
	Published(r *internalpb.ClosedRequest)
	// Kick asks range id's closer here to close rev soon.
	Kick(id shard.RangeID, rev mvcc.Revision)
	// SplitRange splits the range holding key at key (Refuse says why it
	// cannot).
	SplitRange(ctx context.Context, key []byte) ([]*placementpb.RangeDescriptor, error)
	// CompactLog snapshots this member's replica of range id and drops its
	// raft log up to the snapshot.
	CompactLog(ctx context.Context, id shard.RangeID) error
	// RemoveMember removes member id from the cluster, here.
	RemoveMember(ctx context.Context, id uint64) error
}

// Kinds of refusal (Refuse) that the node gives for requests the router
// serves through it (SplitRange, Snapshot): each is answered with its gRPC
// code and the refusal's own message.
var (
	// ErrInvalid: the request is malformed (InvalidArgument).
	ErrInvalid = errors.New("router: invalid request")
	// ErrNotFound: what the request names does not exist (NotFound).
	ErrNotFound = errors.New("router: not found")
	// ErrPrecondition: the cluster's state does not allow it
	// (FailedPrecondition).
	ErrPrecondition = errors.New("router: not possible in this state")
	// ErrTryAgain: a transient condition (Unavailable).
	ErrTryAgain = errors.New("router: try again")
)

var refusalCodes = map[error]codes.Code{
	ErrInvalid:      codes.InvalidArgument,
	ErrNotFound:     codes.NotFound,
	ErrPrecondition: codes.FailedPrecondition,
	ErrTryAgain:     codes.Unavailable,
}

// Refuse returns a refusal of kind (ErrInvalid, ErrNotFound,
// ErrPrecondition or ErrTryAgain) whose message, the client's, is format
// applied to args (%w wraps as fmt.Errorf does).
func Refuse(kind error, format string, args ...any) error {
	return &refusal{kind: kind, err: fmt.Errorf(format, args...)}
}

type refusal struct {
	kind error
	err  error
}

func (r *refusal) Error() string          { return r.err.Error() }
func (r *refusal) Unwrap() error          { return r.err }
func (r *refusal) Is(target error) bool   { return target == r.kind }
func (r *refusal) status() *status.Status { return status.New(refusalCodes[r.kind], r.err.Error()) }

// RegisterInternal attaches the node-to-node service, served from m, to g.
func (s *Server) RegisterInternal(g *grpc.Server, m Member) {
	internalpb.RegisterNodeServer(g, &internalServer{self: s.cfg.MemberID, memberOf: s.cfg.MemberOf, m: m})
}

// internalServer serves the node-to-node service.
type internalServer struct {
	internalpb.UnimplementedNodeServer
	self     placement.NodeID
	memberOf MemberOf
	m        Member
}

// leading returns this member's replica of range id if this member leads
// it.
func (s *internalServer) leading(id shard.RangeID) (Replica, Local, *internalpb.Error) {
	l := s.m.Range(id)
	started := false
	if l != nil {
		select {
		case <-l.Ready():
			started = true
		default:
		}
	}
	if !started {
		return nil, nil, &internalpb.Error{Code: internalpb.ErrorCode_ERROR_CODE_NO_RANGE,
			Message: fmt.Sprintf("cairn: no range %d here", id)}
	}
	r := l.Replica()
	if leader, _, ok := r.Leader(); !ok || s.memberOf.member(id, leader) != s.self {
		return nil, nil, encodeError(errNotLeader)
	}
	return r, l, nil
}

func (s *internalServer) Write(ctx context.Context, req *internalpb.WriteRequest) (*internalpb.WriteResponse, error) {
	r, l, e := s.leading(shard.RangeID(req.Range))
	if e != nil {
		return &internalpb.WriteResponse{Error: e}, nil
	}
	resp, err := r.Write(ctx, req.Request)
	if err != nil {
		return &internalpb.WriteResponse{Error: encodeError(shard.WithRange(err, l.Descriptor()))}, nil
	}
	return &internalpb.WriteResponse{Response: resp}, nil
}

func (s *internalServer) ReadAt(ctx context.Context, req *internalpb.ReadAtRequest) (*internalpb.ReadAtResponse, error) {
	r, l, e := s.leading(shard.RangeID(req.Range))
	if e != nil {
		return &internalpb.ReadAtResponse{Error: e}, nil
	}
	var rr pb.RangeRequest
	if err := proto.Unmarshal(req.Request, &rr); err != nil {
		return &internalpb.ReadAtResponse{Error: encodeError(fmt.Errorf("router: decode a forwarded range request: %w", err))}, nil
	}
	resp, err := r.ReadAt(ctx, &rr, mvcc.Revision(req.Revision))
	if err != nil {
		return &internalpb.ReadAtResponse{Error: encodeError(shard.WithRange(err, l.Descriptor()))}, nil
	}
	data, err := proto.Marshal(resp)
	return &internalpb.ReadAtResponse{Response: data, Error: encodeError(err)}, nil
}

func (s *internalServer) WaitClosed(ctx context.Context, req *internalpb.WaitClosedRequest) (*internalpb.WaitClosedResponse, error) {
	r, _, e := s.leading(shard.RangeID(req.Range))
	if e != nil {
		return &internalpb.WaitClosedResponse{Error: e}, nil
	}
	return &internalpb.WaitClosedResponse{Error: encodeError(r.WaitClosed(ctx, mvcc.Revision(req.Revision)))}, nil
}

func (s *internalServer) Revisions(ctx context.Context, req *internalpb.RevisionsRequest) (*internalpb.RevisionsResponse, error) {
	first, err := s.m.Revisions(ctx, req.Count, mvcc.Revision(req.Above))
	if err != nil {
		return &internalpb.RevisionsResponse{Error: encodeError(err)}, nil
	}
	return &internalpb.RevisionsResponse{First: int64(first)}, nil
}

func (s *internalServer) Closed(_ context.Context, req *internalpb.ClosedRequest) (*internalpb.ClosedResponse, error) {
	s.m.Published(req)
	return &internalpb.ClosedResponse{}, nil
}

func (s *internalServer) Kick(_ context.Context, req *internalpb.KickRequest) (*internalpb.KickResponse, error) {
	s.m.Kick(shard.RangeID(req.Range), mvcc.Revision(req.Revision))
	return &internalpb.KickResponse{}, nil
}

func (s *internalServer) CompactLog(ctx context.Context, req *internalpb.CompactLogRequest) (*internalpb.CompactLogResponse, error) {
	return &internalpb.CompactLogResponse{Error: encodeError(s.m.CompactLog(ctx, shard.RangeID(req.Range)))}, nil
}

// SplitRange answers the cairn command with a status: a refusal's own, and
// as before the node-to-node service carried typed errors otherwise.
func (s *internalServer) SplitRange(ctx context.Context, req *internalpb.SplitRangeRequest) (*internalpb.SplitRangeResponse, error) {
	ranges, err := s.m.SplitRange(ctx, req.Key)
	if err != nil {
		return nil, splitStatus(err)
	}
	return &internalpb.SplitRangeResponse{Ranges: ranges}, nil
}

// splitStatus is the status `cairn range split` shows for err: a
// refusal's code and message; not leading, FailedPrecondition; a state
// machine's refusal, Aborted with its code before its message; anything
// else Unavailable.
func splitStatus(err error) error {
	var (
		rf *refusal
		se *shard.Error
	)
	switch {
	case errors.As(err, &rf):
		return rf.status().Err()
	case errors.Is(err, shard.ErrNoLeader), errors.Is(err, placement.ErrNotLeader):
		return status.Error(codes.FailedPrecondition, "cairn: not the leader")
	case errors.As(err, &se):
		return status.Error(codes.Aborted, fmt.Sprintf("%d:%s", se.Code, se.Message))
	}
	return status.Error(codes.Unavailable, err.Error())
}
