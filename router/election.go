package router

import (
	"context"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// electionServiceName is the service etcd registers as
// v3electionpb.Election. Its wire types follow etcd's v3election.proto
// (see lock.go for why they are declared here).
const electionServiceName = "v3electionpb.Election"

// errMissingLeaderKey is etcd's answer to a Proclaim or Resign without a
// leader key.
var errMissingLeaderKey = status.Error(codes.Unknown, `"leader" field must be provided`)

type campaignRequest struct {
	Name  []byte `protobuf:"bytes,1,opt,name=name,proto3"`
	Lease int64  `protobuf:"varint,2,opt,name=lease,proto3"`
	Value []byte `protobuf:"bytes,3,opt,name=value,proto3"`
}

type campaignResponse struct {
	Header *pb.ResponseHeader `protobuf:"bytes,1,opt,name=header,proto3"`
	Leader *leaderKey         `protobuf:"bytes,2,opt,name=leader,proto3"`
}

// leaderKey names a leadership: the election, the candidate's key and its
// create revision, and the lease it lives on.
type leaderKey struct {
	Name  []byte `protobuf:"bytes,1,opt,name=name,proto3"`
	Key   []byte `protobuf:"bytes,2,opt,name=key,proto3"`
	Rev   int64  `protobuf:"varint,3,opt,name=rev,proto3"`
	Lease int64  `protobuf:"varint,4,opt,name=lease,proto3"`
}

type leaderRequest struct {
	Name []byte `protobuf:"bytes,1,opt,name=name,proto3"`
}

type leaderResponse struct {
	Header *pb.ResponseHeader `protobuf:"bytes,1,opt,name=header,proto3"`
	Kv     *mvccpb.KeyValue   `protobuf:"bytes,2,opt,name=kv,proto3"`
}

type resignRequest struct {
	Leader *leaderKey `protobuf:"bytes,1,opt,name=leader,proto3"`
}

type resignResponse struct {
	Header *pb.ResponseHeader `protobuf:"bytes,1,opt,name=header,proto3"`
}

type proclaimRequest struct {
	Leader *leaderKey `protobuf:"bytes,1,opt,name=leader,proto3"`
	Value  []byte     `protobuf:"bytes,2,opt,name=value,proto3"`
}

type proclaimResponse struct {
	Header *pb.ResponseHeader `protobuf:"bytes,1,opt,name=header,proto3"`
}

func (m *campaignRequest) Reset()         { *m = campaignRequest{} }
func (m *campaignRequest) String() string { return messageString(m) }
func (*campaignRequest) ProtoMessage()    {}

func (m *campaignResponse) Reset()         { *m = campaignResponse{} }
func (m *campaignResponse) String() string { return messageString(m) }
func (*campaignResponse) ProtoMessage()    {}

func (m *leaderKey) Reset()         { *m = leaderKey{} }
func (m *leaderKey) String() string { return messageString(m) }
func (*leaderKey) ProtoMessage()    {}

func (m *leaderRequest) Reset()         { *m = leaderRequest{} }
func (m *leaderRequest) String() string { return messageString(m) }
func (*leaderRequest) ProtoMessage()    {}

func (m *leaderResponse) Reset()         { *m = leaderResponse{} }
func (m *leaderResponse) String() string { return messageString(m) }
func (*leaderResponse) ProtoMessage()    {}

func (m *resignRequest) Reset()         { *m = resignRequest{} }
func (m *resignRequest) String() string { return messageString(m) }
func (*resignRequest) ProtoMessage()    {}

func (m *resignResponse) Reset()         { *m = resignResponse{} }
func (m *resignResponse) String() string { return messageString(m) }
func (*resignResponse) ProtoMessage()    {}

func (m *proclaimRequest) Reset()         { *m = proclaimRequest{} }
func (m *proclaimRequest) String() string { return messageString(m) }
func (*proclaimRequest) ProtoMessage()    {}

func (m *proclaimResponse) Reset()         { *m = proclaimResponse{} }
func (m *proclaimResponse) String() string { return messageString(m) }
func (*proclaimResponse) ProtoMessage()    {}

// electionServer is etcd's Election service: a candidate's key is
// name/<lease in hex>, the oldest key under name/ is the leader, and its
// value is what the leader proclaims.
type electionServer struct {
	s *Server
}

// electionService is the method set gRPC checks electionServer against.
type electionService interface {
	Campaign(context.Context, *campaignRequest) (*campaignResponse, error)
	Proclaim(context.Context, *proclaimRequest) (*proclaimResponse, error)
	Leader(context.Context, *leaderRequest) (*leaderResponse, error)
	Observe(*leaderRequest, grpc.ServerStream) error
	Resign(context.Context, *resignRequest) (*resignResponse, error)
}

var electionServiceDesc = grpc.ServiceDesc{
	ServiceName: electionServiceName,
	HandlerType: (*electionService)(nil),
	Methods: []grpc.MethodDesc{
		unaryMethod(electionServiceName, "Campaign", electionService.Campaign),
		unaryMethod(electionServiceName, "Proclaim", electionService.Proclaim),
		unaryMethod(electionServiceName, "Leader", electionService.Leader),
		unaryMethod(electionServiceName, "Resign", electionService.Resign),
	},
	Streams: []grpc.StreamDesc{{
		StreamName:    "Observe",
		ServerStreams: true,
		Handler: func(srv any, stream grpc.ServerStream) error {
			r := new(leaderRequest)
			if err := stream.RecvMsg(r); err != nil {
				return err
			}
			return srv.(electionService).Observe(r, stream)
		},
	}},
	Metadata: "v3election.proto",
}

// Campaign puts the candidate's key (its value the request's) and answers
// once every older candidate is gone, that is once the candidate leads. A
// lease that already campaigns keeps its key, proclaiming the new value.
// As Lock, it checks the lease is still alive before answering (etcd does
// not, and would name a leader whose key has gone with its lease): one that
// ran out while waiting is answered with "requested lease not found".
func (es *electionServer) Campaign(ctx context.Context, r *campaignRequest) (*campaignResponse, error) {
	c := es.s.cfg.Self
	ctx, done := boundToSelf(ctx, c)
	defer done()
	sess, err := orphanSession(ctx, c, r.Lease)
	if err != nil {
		return nil, clientError(c, err)
	}
	e := concurrency.NewElection(sess, string(r.Name))
	if err := e.Campaign(ctx, string(r.Value)); err != nil {
		return nil, clientError(c, err)
	}
	alive, err := leaseAlive(ctx, c, sess.Lease())
	if err != nil || !alive {
		// Not answered, so never to be resigned by the caller.
		_ = e.Resign(c.Ctx())
		if err != nil {
			return nil, clientError(c, err)
		}
		return nil, rpctypes.ErrGRPCLeaseNotFound
	}
	return &campaignResponse{
		Header: e.Header(),
		Leader: &leaderKey{Name: r.Name, Key: []byte(e.Key()), Rev: e.Rev(), Lease: int64(sess.Lease())},
	}, nil
}

// Proclaim sets the leader's value; a key that no longer leads (or never
// did) is answered with etcd's "election: not leader".
func (es *electionServer) Proclaim(ctx context.Context, r *proclaimRequest) (*proclaimResponse, error) {
	if r.Leader == nil {
		return nil, errMissingLeaderKey
	}
	c := es.s.cfg.Self
	e, err := es.resume(ctx, r.Leader)
	if err != nil {
		return nil, clientError(c, err)
	}
	if err := e.Proclaim(ctx, string(r.Value)); err != nil {
		return nil, clientError(c, err)
	}
	return &proclaimResponse{Header: e.Header()}, nil
}

// Leader answers the leader's key and value; an election without
// candidates is answered with etcd's "election: no leader".
func (es *electionServer) Leader(ctx context.Context, r *leaderRequest) (*leaderResponse, error) {
	c := es.s.cfg.Self
	sess, err := orphanSession(ctx, c, observerLease)
	if err != nil {
		return nil, clientError(c, err)
	}
	resp, err := concurrency.NewElection(sess, string(r.Name)).Leader(ctx)
	if err != nil {
		return nil, clientError(c, err)
	}
	return &leaderResponse{Header: resp.Header, Kv: resp.Kvs[0]}, nil
}

// Observe streams the leader's key and value: the current one (or the
// first candidate to come), each proclamation, then each next leader.
func (es *electionServer) Observe(r *leaderRequest, stream grpc.ServerStream) error {
	c := es.s.cfg.Self
	ctx, done := boundToSelf(stream.Context(), c)
	defer done()
	sess, err := orphanSession(ctx, c, observerLease)
	if err != nil {
		return clientError(c, err)
	}
	for resp := range concurrency.NewElection(sess, string(r.Name)).Observe(ctx) {
		if err := stream.SendMsg(&leaderResponse{Header: resp.Header, Kv: resp.Kvs[0]}); err != nil {
			return err
		}
	}
	// The recipe ends the stream on any error without saying which; etcd
	// then ends the call without one.
	switch {
	case c.Ctx().Err() != nil:
		return rpctypes.ErrGRPCStopped
	case ctx.Err() != nil:
		return status.FromContextError(ctx.Err()).Err()
	}
	return nil
}

// Resign deletes the leader's key if it still leads (a key that does not
// is left alone), passing leadership to the next candidate.
func (es *electionServer) Resign(ctx context.Context, r *resignRequest) (*resignResponse, error) {
	if r.Leader == nil {
		return nil, errMissingLeaderKey
	}
	c := es.s.cfg.Self
	e, err := es.resume(ctx, r.Leader)
	if err != nil {
		return nil, clientError(c, err)
	}
	if err := e.Resign(ctx); err != nil {
		return nil, clientError(c, err)
	}
	return &resignResponse{Header: e.Header()}, nil
}

// resume returns the election a leader key names.
func (es *electionServer) resume(ctx context.Context, l *leaderKey) (*concurrency.Election, error) {
	sess, err := orphanSession(ctx, es.s.cfg.Self, l.Lease)
	if err != nil {
		return nil, err
	}
	return concurrency.ResumeElection(sess, string(l.Name), string(l.Key), l.Rev), nil
}

// observerLease names the session of Leader and Observe, which write
// nothing: any id but 0 (which would grant a lease) serves, as the session
// only hands the recipe its client.
const observerLease = -1
