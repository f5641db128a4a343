package router

import (
	"context"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cairn-kv/cairn/proto/electionpb"
	"github.com/cairn-kv/cairn/proto/etcdwirepb"
)

// electionServiceName is the service etcd registers as
// v3electionpb.Election. Its messages are generated from Cairn's copy of
// etcd's v3election.proto (see lock.go for why).
const electionServiceName = "v3electionpb.Election"

// errMissingLeaderKey is etcd's answer to a Proclaim or Resign without a
// leader key.
var errMissingLeaderKey = status.Error(codes.Unknown, `"leader" field must be provided`)

// electionServer is etcd's Election service: a candidate's key is
// name/<lease in hex>, the oldest key under name/ is the leader, and its
// value is what the leader proclaims.
type electionServer struct {
	s *Server
}

// electionService is the method set gRPC checks electionServer against.
type electionService interface {
	Campaign(context.Context, *electionpb.CampaignRequest) (*electionpb.CampaignResponse, error)
	Proclaim(context.Context, *electionpb.ProclaimRequest) (*electionpb.ProclaimResponse, error)
	Leader(context.Context, *electionpb.LeaderRequest) (*electionpb.LeaderResponse, error)
	Observe(*electionpb.LeaderRequest, grpc.ServerStream) error
	Resign(context.Context, *electionpb.ResignRequest) (*electionpb.ResignResponse, error)
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
			r := new(electionpb.LeaderRequest)
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
func (es *electionServer) Campaign(ctx context.Context, r *electionpb.CampaignRequest) (*electionpb.CampaignResponse, error) {
	ctx = asCaller(ctx)
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
		_ = e.Resign(detached(c, ctx))
		if err != nil {
			return nil, clientError(c, err)
		}
		return nil, rpctypes.ErrGRPCLeaseNotFound
	}
	return &electionpb.CampaignResponse{
		Header: header(e.Header()),
		Leader: &electionpb.LeaderKey{Name: r.Name, Key: []byte(e.Key()), Rev: e.Rev(), Lease: int64(sess.Lease())},
	}, nil
}

// Proclaim sets the leader's value; a key that no longer leads (or never
// did) is answered with etcd's "election: not leader".
func (es *electionServer) Proclaim(ctx context.Context, r *electionpb.ProclaimRequest) (*electionpb.ProclaimResponse, error) {
	ctx = asCaller(ctx)
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
	return &electionpb.ProclaimResponse{Header: header(e.Header())}, nil
}

// Leader answers the leader's key and value; an election without
// candidates is answered with etcd's "election: no leader".
func (es *electionServer) Leader(ctx context.Context, r *electionpb.LeaderRequest) (*electionpb.LeaderResponse, error) {
	ctx = asCaller(ctx)
	c := es.s.cfg.Self
	sess, err := orphanSession(ctx, c, observerLease)
	if err != nil {
		return nil, clientError(c, err)
	}
	resp, err := concurrency.NewElection(sess, string(r.Name)).Leader(ctx)
	if err != nil {
		return nil, clientError(c, err)
	}
	return &electionpb.LeaderResponse{Header: header(resp.Header), Kv: keyValue(resp.Kvs[0])}, nil
}

// Observe streams the leader's key and value: the current one (or the
// first candidate to come), each proclamation, then each next leader.
func (es *electionServer) Observe(r *electionpb.LeaderRequest, stream grpc.ServerStream) error {
	c := es.s.cfg.Self
	ctx, done := boundToSelf(asCaller(stream.Context()), c)
	defer done()
	sess, err := orphanSession(ctx, c, observerLease)
	if err != nil {
		return clientError(c, err)
	}
	for resp := range concurrency.NewElection(sess, string(r.Name)).Observe(ctx) {
		if err := stream.SendMsg(&electionpb.LeaderResponse{Header: header(resp.Header), Kv: keyValue(resp.Kvs[0])}); err != nil {
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
func (es *electionServer) Resign(ctx context.Context, r *electionpb.ResignRequest) (*electionpb.ResignResponse, error) {
	ctx = asCaller(ctx)
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
	return &electionpb.ResignResponse{Header: header(e.Header())}, nil
}

// resume returns the election a leader key names.
func (es *electionServer) resume(ctx context.Context, l *electionpb.LeaderKey) (*concurrency.Election, error) {
	sess, err := orphanSession(ctx, es.s.cfg.Self, l.Lease)
	if err != nil {
		return nil, err
	}
	return concurrency.ResumeElection(sess, string(l.Name), string(l.Key), l.Rev), nil
}

// keyValue is etcd's key-value as the election messages carry it.
func keyValue(kv *mvccpb.KeyValue) *etcdwirepb.KeyValue {
	return &etcdwirepb.KeyValue{
		Key: kv.Key, CreateRevision: kv.CreateRevision, ModRevision: kv.ModRevision,
		Version: kv.Version, Value: kv.Value, Lease: kv.Lease,
	}
}

// observerLease names the session of Leader and Observe, which write
// nothing: any id but 0 (which would grant a lease) serves, as the session
// only hands the recipe its client.
const observerLease = -1
