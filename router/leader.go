package router

import (
	"context"
	"errors"
	"time"

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
// call range 1, which answers for the cluster. Streams are leaderStream's.
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

// leaderStream does for a stream whose client requires a leader what
// etcd's stream interceptor does: the stream is refused with etcd's "no
// leader" while range 1 has no leader this member knows of, and once
// started it is cancelled with that error after noLeaderChecks checks in a
// row found none, so that the client moves to another member. The
// handler sees the cancellation as its stream's context ending (it must
// return then: LeaseKeepAlive, Observe and Snapshot do) and the client
// gets "no leader" whatever the handler returned. Watch is left to its own
// check (watch.go), which also follows the ranges its watchers reach.
func (s *Server) leaderStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if info.FullMethod == pb.Watch_Watch_FullMethodName || !requireLeader(ss.Context()) {
		return handler(srv, ss)
	}
	if _, _, ok := s.cfg.Shard.Leader(); !ok {
		return rpctypes.ErrGRPCNoLeader
	}
	ctx, cancel := context.WithCancelCause(ss.Context())
	defer cancel(nil)
	monitored := make(chan struct{})
	go func() {
		defer close(monitored)
		s.monitorRangeOne(ctx, cancel)
	}()
	err := handler(srv, leaderServerStream{ServerStream: ss, ctx: ctx})
	cancel(nil)
	<-monitored
	if errors.Is(context.Cause(ctx), rpctypes.ErrGRPCNoLeader) {
		return rpctypes.ErrGRPCNoLeader
	}
	return err
}

// leaderServerStream is a stream whose context leaderStream cancels.
type leaderServerStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (l leaderServerStream) Context() context.Context { return l.ctx }

// monitorRangeOne cancels ctx with etcd's "no leader" once noLeaderChecks
// checks in a row, one per leader check interval, found range 1 without a
// leader; it returns then or when ctx ends.
func (s *Server) monitorRangeOne(ctx context.Context, cancel context.CancelCauseFunc) {
	s.cancelWhenLeaderless(ctx, cancel, func() bool {
		_, _, ok := s.cfg.Shard.Leader()
		return ok
	})
}

// cancelWhenLeaderless calls led once per leader check interval and
// cancels ctx with etcd's "no leader" once noLeaderChecks calls in a row
// returned false (a true resets the count); it returns then or when ctx
// ends.
func (s *Server) cancelWhenLeaderless(ctx context.Context, cancel context.CancelCauseFunc, led func() bool) {
	every := s.cfg.LeaderCheckInterval
	if every <= 0 {
		every = DefaultLeaderCheckInterval
	}
	t := time.NewTicker(every)
	defer t.Stop()
	misses := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if led() {
			misses = 0
			continue
		}
		if misses++; misses >= noLeaderChecks {
			cancel(rpctypes.ErrGRPCNoLeader)
			return
		}
	}
}
