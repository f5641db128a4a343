package router

import (
	"context"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
)

// leaderUnary refuses a unary call whose client requires a leader
// (clientv3.WithRequireLeader: "hasleader" metadata) while a range it
// touches has no leader this member knows of, with etcd's "no leader", as
// etcd's unary interceptor does, so that the client moves to another
// member. A KV request touches the ranges of its keys (a txn's compares
// and ops, nested ones included), Compact every range, and every other
// call range 1, which answers for the cluster. Of the streams, Watch
// checks at its start and while it runs (watch.go).
func (s *Server) leaderUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if requireLeader(ctx) && !s.touchedHaveLeaders(req) {
		return nil, rpctypes.ErrGRPCNoLeader
	}
	return handler(ctx, req)
}

// touchedHaveLeaders reports whether every range req touches has a
// leader this member knows of.
func (s *Server) touchedHaveLeaders(req any) bool {
	if _, _, ok := s.cfg.Shard.Leader(); !ok {
		return false // range 1: every call needs the cluster's records
	}
	if s.cfg.Ranges == nil {
		return true
	}
	var parts []RangePart
	span := func(key, end []byte) { parts = append(parts, s.spanning(key, end)...) }
	switch r := req.(type) {
	case *pb.RangeRequest:
		span(r.Key, r.RangeEnd)
	case *pb.PutRequest:
		span(r.Key, nil)
	case *pb.DeleteRangeRequest:
		span(r.Key, r.RangeEnd)
	case *pb.TxnRequest:
		for _, k := range txnSpans(r, nil) {
			span(k.key, k.end)
		}
	case *pb.CompactionRequest:
		parts = s.cfg.Ranges.All()
	}
	for _, p := range parts {
		if p.Shard == nil {
			return false // a gap in the map: no range here to ask
		}
		if _, _, ok := p.Shard.Leader(); !ok {
			return false
		}
	}
	return true
}
