package router

import (
	"context"
	"errors"
	"fmt"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/internalpb"
	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/proto/shardpb"
	"github.com/cairn-kv/cairn/shard"
	"github.com/cairn-kv/cairn/shard/auth"
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
	// UpdateMember gives member id new peer URLs, here.
	UpdateMember(ctx context.Context, id uint64, peerURLs []string) error
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
	in := &internalServer{self: s.cfg.MemberID, memberOf: s.cfg.MemberOf, m: m, srv: s}
	if s.cfg.Merger != nil && s.cfg.Ranges != nil && !s.cfg.Ranges.static {
		in.feeds = &feedServer{src: cacheSource{s.cfg.Ranges}, merger: s.cfg.Merger}
	}
	internalpb.RegisterNodeServer(g, in)
}

// Feed serves the feeds of the caller's mirror hubs (feed.go).
func (s *internalServer) Feed(stream internalpb.Node_FeedServer) error {
	if s.feeds == nil {
		return status.Error(codes.Unimplemented, "cairn: feeds need sharded mode")
	}
	return s.feeds.serve(stream)
}

// Events serves a mirror hub's catch-up (feed.go).
func (s *internalServer) Events(req *internalpb.EventsRequest, stream internalpb.Node_EventsServer) error {
	if s.feeds == nil {
		return status.Error(codes.Unimplemented, "cairn: feeds need sharded mode")
	}
	return s.feeds.events(req, stream)
}

// internalServer serves the node-to-node service.
type internalServer struct {
	internalpb.UnimplementedNodeServer
	self     placement.NodeID
	memberOf MemberOf
	m        Member
	srv      *Server // serves the admin calls over every range (CheckReplicas)
	// feeds serves Feed and Events (nil: single-group mode).
	feeds *feedServer
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
		if e := s.mergedAway(id, l); e != nil {
			return nil, nil, e
		}
		return nil, nil, &internalpb.Error{Code: internalpb.ErrorCode_ERROR_CODE_NO_RANGE,
			Message: fmt.Sprintf("cairn: no range %d here", id)}
	}
	r := l.Replica()
	leader, _, ok := r.Leader()
	if !ok || s.memberOf.member(id, leader) != s.self {
		e := encodeError(errNotLeader)
		if ok {
			e.Leader = uint64(s.memberOf.member(id, leader))
		}
		return nil, nil, e
	}
	return r, l, nil
}

// started returns this member's started replica of range id, or the
// NO_RANGE answer.
func (s *internalServer) started(id shard.RangeID) (Local, *internalpb.Error) {
	l := s.m.Range(id)
	if l != nil {
		select {
		case <-l.Ready():
			return l, nil
		default:
		}
	}
	if e := s.mergedAway(id, l); e != nil {
		return nil, e
	}
	return nil, &internalpb.Error{Code: internalpb.ErrorCode_ERROR_CODE_NO_RANGE, Message: fmt.Sprintf("cairn: no range %d here", id)}
}

// mergedAway is the answer to a request for range id, which this member
// does not run (l nil) because a range here absorbed it (a merge,
// RangeCache.Successor): the refusal of keys outside the range
// (OutsideRangeError) with the descriptor of this member's replica of the
// range holding the start of id's old span, so that the caller routes by
// it (RangeCache.Refresh) without waiting for the range map. nil if id
// was not merged into a range here.
func (s *internalServer) mergedAway(id shard.RangeID, l Local) *internalpb.Error {
	if l != nil || s.srv == nil || s.srv.cfg.Ranges == nil {
		return nil
	}
	for _, sid := range s.srv.cfg.Ranges.Successor(id) {
		if sid == id {
			return nil // not merged away: a replica starting or leaving here
		}
		if into := s.m.Range(sid); into != nil {
			return encodeError(&shard.OutsideRangeError{Range: into.Descriptor(), Err: &shard.Error{
				Code: shardpb.ErrorCode_ERROR_CODE_OUTSIDE_RANGE, Message: fmt.Sprintf("cairn: range %d was merged into range %d", id, sid)}})
		}
	}
	return nil
}

// Read answers a member without a replica of the range from this
// member's (linearizable reads through raft's read index, so any replica
// may answer them).
func (s *internalServer) Read(ctx context.Context, req *internalpb.ReadRequest) (*internalpb.ReadResponse, error) {
	id := shard.RangeID(req.Range)
	l, e := s.started(id)
	if e != nil {
		return &internalpb.ReadResponse{Error: e}, nil
	}
	r := l.Replica()
	out := &internalpb.ReadResponse{}
	var (
		msg proto.Message
		err error
	)
	switch q := req.Query.(type) {
	case *internalpb.ReadRequest_RangeRequest:
		var rr pb.RangeRequest
		if err = proto.Unmarshal(q.RangeRequest, &rr); err == nil {
			msg, err = r.Range(ctx, &rr, req.Linearizable)
		}
	case *internalpb.ReadRequest_Txn:
		var tr pb.TxnRequest
		if err = proto.Unmarshal(q.Txn.GetTxn(), &tr); err == nil {
			msg, err = r.ReadTxn(ctx, &tr, mvcc.Revision(q.Txn.GetFloor()), req.Linearizable)
		}
	case *internalpb.ReadRequest_Status:
		var st shard.Status
		if st, err = r.Status(ctx, req.Linearizable); err == nil {
			out.Status = &internalpb.RangeStatus{Revision: int64(st.Revision), CompactRevision: int64(st.CompactRevision),
				AppliedIndex: st.AppliedIndex, Closed: int64(st.Closed), Fence: st.Fence, Counting: st.Counting}
		}
	case *internalpb.ReadRequest_Hash:
		var h shard.HashResult
		if h, err = r.Hash(ctx, mvcc.Revision(q.Hash.GetRevision()), req.Linearizable); err == nil {
			out.Hash = &internalpb.RangeHash{Hash: h.Hash, Revision: int64(h.Revision), CompactRevision: int64(h.CompactRevision)}
		}
	case *internalpb.ReadRequest_Alarms:
		var alarms []*pb.AlarmMember
		if alarms, err = r.Alarms(ctx, req.Linearizable); err == nil {
			msg = &pb.AlarmResponse{Alarms: alarms}
		}
	case *internalpb.ReadRequest_Auth:
		as, ok := r.(AuthStore)
		if !ok {
			err = fmt.Errorf("router: range %d's replica here keeps no auth state", id)
			break
		}
		var st *auth.State
		if st, err = as.Auth(ctx, req.Linearizable); err == nil {
			out.Response, err = st.Marshal()
		}
	case *internalpb.ReadRequest_Registered:
		var ids []shard.RangeID
		if ids, err = r.Registered(ctx, q.Registered.GetLease(), req.Linearizable); err == nil {
			for _, id := range ids {
				out.Ranges = append(out.Ranges, uint64(id))
			}
		}
	case *internalpb.ReadRequest_ShadowKeys:
		out.Keys, err = r.ShadowKeys(ctx, q.ShadowKeys.GetLease(), req.Linearizable)
	default:
		err = fmt.Errorf("router: unknown read %T", req.Query)
	}
	if err == nil && msg != nil {
		out.Response, err = proto.Marshal(msg)
	}
	if err != nil {
		return &internalpb.ReadResponse{Error: encodeError(shard.WithRange(err, l.Descriptor()))}, nil
	}
	return out, nil
}

// RemoteAuth is the auth state of range 1 read through its client, for a
// member that holds no replica of it (each read a round trip to a member
// that does).
func RemoteAuth(c *RangeClient) AuthStore { return remoteAuth{c} }

type remoteAuth struct{ c *RangeClient }

func (a remoteAuth) Auth(ctx context.Context, linearizable bool) (*auth.State, error) {
	data, err := a.c.AuthState(ctx, linearizable)
	if err != nil {
		return nil, err
	}
	return auth.Unmarshal(data)
}

// Write proposes a write for the member forwarding it, answering before
// the caller's deadline (answerBefore) so that a write that cannot commit
// comes back as this replica's timeout, not as the caller's deadline.
func (s *internalServer) Write(ctx context.Context, req *internalpb.WriteRequest) (*internalpb.WriteResponse, error) {
	r, l, e := s.leading(shard.RangeID(req.Range))
	if e != nil {
		return &internalpb.WriteResponse{Error: e}, nil
	}
	ctx, cancel := answerBefore(ctx)
	defer cancel()
	resp, err := r.Write(ctx, req.Request)
	if err != nil {
		return &internalpb.WriteResponse{Error: encodeError(shard.WithRange(err, l.Descriptor()))}, nil
	}
	return &internalpb.WriteResponse{Response: resp}, nil
}

// answerMargin is how long before the caller's deadline a forwarded write
// gives up (answerBefore), at most: time for its answer to travel back.
const answerMargin = 250 * time.Millisecond

// answerBefore is ctx ending a little before its deadline (a tenth of the
// time left, at most answerMargin), so that the caller hears this member's
// answer — etcd's timeout errors, which say whether the leader was lost —
// rather than running out of time on the wire, which it takes for a
// member that failed (writeVia).
func answerBefore(ctx context.Context) (context.Context, context.CancelFunc) {
	d, ok := ctx.Deadline()
	if !ok {
		return context.WithCancel(ctx)
	}
	return context.WithDeadline(ctx, d.Add(-min(answerMargin, time.Until(d)/10)))
}

// leaderPoll is how often a forwarded read waiting at the leader checks
// that its replica still leads (whileLeading).
const leaderPoll = 25 * time.Millisecond

// whileLeading runs call, which needs range id's replica r here to lead,
// with a ctx that ends once r no longer leads, and answers its error — the
// NOT_LEADER answer (naming the new leader if r knows it) if it failed
// after r lost the lead. A leader cut off from the others steps down and
// its reads could never finish (no read index, no closed revision): the
// caller asks the new leader at once, not once this member's timeout runs
// out.
func (s *internalServer) whileLeading(ctx context.Context, id shard.RangeID, r Replica, call func(context.Context) error) *internalpb.Error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	done := make(chan struct{})
	defer close(done)
	go func() {
		tick := time.NewTicker(leaderPoll)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				if leader, _, ok := r.Leader(); !ok || s.memberOf.member(id, leader) != s.self {
					cancel(errNotLeader)
					return
				}
			}
		}
	}()
	err := call(ctx)
	if err == nil {
		return nil
	}
	if errors.Is(context.Cause(ctx), errNotLeader) {
		e := encodeError(errNotLeader)
		if leader, _, ok := r.Leader(); ok {
			e.Leader = uint64(s.memberOf.member(id, leader))
		}
		return e
	}
	return encodeError(err)
}

func (s *internalServer) ReadAt(ctx context.Context, req *internalpb.ReadAtRequest) (*internalpb.ReadAtResponse, error) {
	id := shard.RangeID(req.Range)
	r, l, e := s.leading(id)
	if e != nil {
		return &internalpb.ReadAtResponse{Error: e}, nil
	}
	var rr pb.RangeRequest
	if err := proto.Unmarshal(req.Request, &rr); err != nil {
		return &internalpb.ReadAtResponse{Error: encodeError(fmt.Errorf("router: decode a forwarded range request: %w", err))}, nil
	}
	var resp *pb.RangeResponse
	if e := s.whileLeading(ctx, id, r, func(ctx context.Context) (err error) {
		resp, err = r.ReadAt(ctx, &rr, mvcc.Revision(req.Revision))
		return shard.WithRange(err, l.Descriptor())
	}); e != nil {
		return &internalpb.ReadAtResponse{Error: e}, nil
	}
	data, err := proto.Marshal(resp)
	return &internalpb.ReadAtResponse{Response: data, Error: encodeError(err)}, nil
}

func (s *internalServer) WaitClosed(ctx context.Context, req *internalpb.WaitClosedRequest) (*internalpb.WaitClosedResponse, error) {
	id := shard.RangeID(req.Range)
	r, _, e := s.leading(id)
	if e != nil {
		return &internalpb.WaitClosedResponse{Error: e}, nil
	}
	return &internalpb.WaitClosedResponse{Error: s.whileLeading(ctx, id, r, func(ctx context.Context) error {
		return r.WaitClosed(ctx, mvcc.Revision(req.Revision))
	})}, nil
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
