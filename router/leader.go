package router

import (
	"context"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
)

// leaderUnary refuses a unary call whose client requires a leader
// (clientv3.WithRequireLeader: "hasleader" metadata) while this member
// knows no leader of range 1, with etcd's "no leader", as etcd's unary
// interceptor does, so that the client moves to another member. Of the
// streams, Watch checks at its start and while it runs (watch.go).
func (s *Server) leaderUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if requireLeader(ctx) {
		if _, _, ok := s.cfg.Shard.Leader(); !ok {
			return nil, rpctypes.ErrGRPCNoLeader
		}
	}
	return handler(ctx, req)
}
