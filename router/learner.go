package router

import (
	"context"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
)

// Learner tells whether this member is a learner (non-voting); the node
// implements it. A learner serves only what etcd lets a learner serve.
type Learner interface{ IsLearner() bool }

func (s *Server) learner() bool {
	return s.cfg.Node != nil && s.cfg.Node.IsLearner()
}

// learnerUnary refuses, on a learner, every unary call but Status and
// serializable Range, with etcd's error.
func (s *Server) learnerUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if s.learner() && !supportedForLearner(req) {
		return nil, rpctypes.ErrGRPCNotSupportedForLearner
	}
	return handler(ctx, req)
}

// learnerStream refuses, on a learner, every stream but Snapshot.
func (s *Server) learnerStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if s.learner() && info.FullMethod != "/etcdserverpb.Maintenance/Snapshot" {
		return rpctypes.ErrGRPCNotSupportedForLearner
	}
	return handler(srv, ss)
}

func supportedForLearner(req any) bool {
	switch r := req.(type) {
	case *pb.StatusRequest:
		return true
	case *pb.RangeRequest:
		return r.Serializable
	}
	return false
}
