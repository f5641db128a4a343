package router

import (
	"context"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"

	"github.com/cairn-kv/cairn/proto/internalpb"
)

// The calls etcd lets only root make once auth is enabled, and those it
// lets any authenticated user make, by gRPC method; the KV, Watch, Lease
// and Auth services check their own (auth.go). Cairn's operator calls on
// the client port (SplitRange, CheckReplicas, MoveRange,
// TransferRangeLeader) are root's too.
var (
	adminMethods = map[string]bool{
		"/etcdserverpb.Maintenance/Defragment":       true,
		"/etcdserverpb.Maintenance/Hash":             true,
		"/etcdserverpb.Maintenance/HashKV":           true,
		"/etcdserverpb.Maintenance/MoveLeader":       true,
		"/etcdserverpb.Maintenance/Downgrade":        true,
		"/etcdserverpb.Maintenance/Snapshot":         true,
		"/etcdserverpb.Cluster/MemberAdd":            true,
		"/etcdserverpb.Cluster/MemberRemove":         true,
		"/etcdserverpb.Cluster/MemberUpdate":         true,
		"/etcdserverpb.Cluster/MemberPromote":        true,
		internalpb.Node_SplitRange_FullMethodName:    true,
		internalpb.Node_CheckReplicas_FullMethodName: true,

		// Moves (move.go).
		internalpb.Node_MoveRange_FullMethodName:           true,
		internalpb.Node_TransferRangeLeader_FullMethodName: true,
		internalpb.Node_MergeRange_FullMethodName:          true,
	}
	userMethods = map[string]bool{
		"/etcdserverpb.Maintenance/Status": true,
	}
)

// authUnary refuses, with auth enabled, an admin call without root and a
// call that needs a user without one (Alarm: GET needs a user, the rest
// root), with etcd's errors.
func (s *Server) authUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	m := info.FullMethod
	var err error
	switch {
	case isPeerService(info.Server):
	case adminMethods[m]:
		err = s.requireAdmin(ctx)
	case userMethods[m]:
		err = s.requireUser(ctx)
	case m == "/etcdserverpb.Maintenance/Alarm":
		if r, ok := req.(*pb.AlarmRequest); ok && r.Action == pb.AlarmRequest_GET {
			err = s.requireUser(ctx)
		} else {
			err = s.requireAdmin(ctx)
		}
	}
	if err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

// authStream refuses, with auth enabled, an admin stream (Snapshot)
// without root.
func (s *Server) authStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if adminMethods[info.FullMethod] && !isPeerService(srv) {
		if err := s.requireAdmin(ss.Context()); err != nil {
			return err
		}
	}
	return handler(srv, ss)
}

// isPeerService reports whether srv is the node-to-node service as the
// peer port serves it (RegisterInternal), not the client port's operator
// face (RegisterOperator).
func isPeerService(srv any) bool {
	_, ok := srv.(*internalServer)
	return ok
}
