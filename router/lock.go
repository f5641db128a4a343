package router

import (
	"context"
	"errors"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cairn-kv/cairn/proto/etcdwirepb"
	"github.com/cairn-kv/cairn/proto/lockpb"
)

// The Lock and Election services are etcd's v3lock and v3election: thin
// servers over the recipes of go.etcd.io/etcd/client/v3/concurrency
// (Session, Mutex, Election), run on Config.Self, a client of this node's
// own KV, Lease and Watch services, the way etcd runs them on an
// in-process client. They keep no state: every lock and candidacy is a
// key under the request's lease, so they survive a restart of the member
// that served them and work the same on any member.
//
// Wire types. etcd generates these services' messages in its server module
// (go.etcd.io/etcd/server/v3), which this module does not depend on (the
// server's dependencies stay lean, DESIGN.md). Cairn generates its own from
// .proto files with etcd's field numbers and types (proto/lockpb,
// proto/electionpb), under proto packages of its own so that they do not
// clash in the protobuf registry with etcd's when both are linked into one
// binary (tests/compat). The header and key-value they embed are Cairn's
// copies of etcd's (proto/etcdwirepb), filled from etcd's by header and
// keyValue. The services are not generated: they are registered here by
// hand under etcd's names (v3lockpb.Lock, v3electionpb.Election), so etcd's
// generated clients and etcdctl call them unchanged.

// lockServiceName is the service etcd registers as v3lockpb.Lock.
const lockServiceName = "v3lockpb.Lock"

// header is etcd's response header as the lock and election messages carry
// it.
func header(h *pb.ResponseHeader) *etcdwirepb.ResponseHeader {
	if h == nil {
		return nil
	}
	return &etcdwirepb.ResponseHeader{ClusterId: h.ClusterId, MemberId: h.MemberId, Revision: h.Revision, RaftTerm: h.RaftTerm}
}

// lockServer is etcd's Lock service.
type lockServer struct {
	s *Server
}

// lockService is the method set gRPC checks lockServer against.
type lockService interface {
	Lock(context.Context, *lockpb.LockRequest) (*lockpb.LockResponse, error)
	Unlock(context.Context, *lockpb.UnlockRequest) (*lockpb.UnlockResponse, error)
}

var lockServiceDesc = grpc.ServiceDesc{
	ServiceName: lockServiceName,
	HandlerType: (*lockService)(nil),
	Methods: []grpc.MethodDesc{
		unaryMethod(lockServiceName, "Lock", lockService.Lock),
		unaryMethod(lockServiceName, "Unlock", lockService.Unlock),
	},
	Metadata: "v3lock.proto",
}

// Lock acquires the named lock for the request's lease and answers once it
// is held, with the key that holds it (name/<lease in hex>): the oldest key
// under name/ holds the lock, each waiter watches the key just older than
// its own. A lease that already holds the lock gets the same key again. A
// waiter whose request is cancelled deletes its key. Before answering, Lock
// checks that the lease is still alive (etcd#11456): one that ran out
// while the request waited has its key released and is answered with
// etcd's "requested lease not found".
func (ls *lockServer) Lock(ctx context.Context, r *lockpb.LockRequest) (*lockpb.LockResponse, error) {
	ctx = asCaller(ctx)
	c := ls.s.cfg.Self
	ctx, done := boundToSelf(ctx, c)
	defer done()
	sess, err := orphanSession(ctx, c, r.Lease)
	if err != nil {
		return nil, clientError(c, err)
	}
	m := concurrency.NewMutex(sess, string(r.Name))
	lockErr := m.Lock(ctx)
	if lockErr != nil && !errors.Is(lockErr, concurrency.ErrSessionExpired) {
		return nil, clientError(c, lockErr)
	}
	// Held, or the key is gone (ErrSessionExpired): either way the lease
	// decides the answer.
	alive, err := leaseAlive(ctx, c, sess.Lease())
	if err != nil || !alive {
		if lockErr == nil {
			// Not answered, so never to be unlocked by the caller.
			_ = m.Unlock(detached(c, ctx))
		}
		if err != nil {
			return nil, clientError(c, err)
		}
		return nil, rpctypes.ErrGRPCLeaseNotFound
	}
	if lockErr != nil {
		// The lease lives but its key was deleted while it waited (an
		// Unlock of the waiter's key): etcd's answer.
		return nil, clientError(c, lockErr)
	}
	return &lockpb.LockResponse{Header: header(m.Header()), Key: []byte(m.Key())}, nil
}

// Unlock deletes the key a Lock answered, releasing the lock (or giving
// up waiting for it).
func (ls *lockServer) Unlock(ctx context.Context, r *lockpb.UnlockRequest) (*lockpb.UnlockResponse, error) {
	ctx = asCaller(ctx)
	c := ls.s.cfg.Self
	resp, err := c.Delete(ctx, string(r.Key))
	if err != nil {
		return nil, clientError(c, err)
	}
	return &lockpb.UnlockResponse{Header: header(resp.Header)}, nil
}

// orphanSession returns a session on lease (a new lease of the session's
// default TTL when 0) whose keepalive has already stopped: keeping the
// lease alive is the caller's job, as in etcd; the session only names the
// lease and the client for the recipes.
func orphanSession(ctx context.Context, c *clientv3.Client, lease int64) (*concurrency.Session, error) {
	s, err := concurrency.NewSession(c, concurrency.WithLease(clientv3.LeaseID(lease)), concurrency.WithContext(ctx))
	if err != nil {
		return nil, err
	}
	s.Orphan()
	return s, nil
}

// leaseAlive reports whether lease has time left. Time-to-live rounds down
// to whole seconds, so a lease in its last second counts as gone: it
// cannot be told apart from one that has run out and awaits its revoke.
func leaseAlive(ctx context.Context, c *clientv3.Client, lease clientv3.LeaseID) (bool, error) {
	resp, err := c.TimeToLive(ctx, lease)
	if err != nil {
		return false, err
	}
	return resp.TTL > 0, nil
}

// clientError turns an error of the Self client into the status etcd's
// clients expect: an etcd error keeps its code and message (the client
// turned the status it got into an rpctypes.EtcdError), one of the
// concurrency recipes gets etcd's codes.Unknown with its message, and a
// closed client means this node is stopping.
// boundToSelf returns ctx, cancelled too once the node's own client c
// closes (the node stops): a call that waits (Lock, Campaign, Observe)
// then ends at once, whatever the recipe was doing, and the graceful stop
// of the gRPC server need not wait for it.
func boundToSelf(ctx context.Context, c *clientv3.Client) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(c.Ctx(), cancel)
	return ctx, func() { stop(); cancel() }
}

func clientError(c *clientv3.Client, err error) error {
	if c.Ctx().Err() != nil {
		return rpctypes.ErrGRPCStopped
	}
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		if authRefusal(ee) {
			// etcd's in-process client hands its server the refusal
			// as a plain error: the caller gets codes.Unknown.
			return status.Error(codes.Unknown, ee.Error())
		}
		return status.Error(ee.Code(), ee.Error())
	}
	return toGRPC(err)
}

// unaryMethod describes a unary method of a hand-registered service: the
// request decodes into a new Req, and call runs behind the server's
// interceptors like a generated handler.
func unaryMethod[S any, Req, Resp any](service, name string, call func(S, context.Context, *Req) (*Resp, error)) grpc.MethodDesc {
	full := "/" + service + "/" + name
	return grpc.MethodDesc{
		MethodName: name,
		Handler: func(srv any, ctx context.Context, dec func(any) error, intercept grpc.UnaryServerInterceptor) (any, error) {
			r := new(Req)
			if err := dec(r); err != nil {
				return nil, err
			}
			handle := func(ctx context.Context, req any) (any, error) {
				resp, err := call(srv.(S), ctx, req.(*Req))
				if err != nil {
					return nil, err
				}
				return resp, nil
			}
			if intercept == nil {
				return handle(ctx, r)
			}
			return intercept(ctx, r, &grpc.UnaryServerInfo{Server: srv, FullMethod: full}, handle)
		},
	}
}
