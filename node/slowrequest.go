package node

import (
	"context"
	"log/slog"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/shard"
)

// slowRequests is a unary interceptor that logs, as etcd's "request stats"
// line does, every client request that took longer than warn (at warn),
// and, when the log takes debug lines, every other one (at debug): the
// method, when it started, how long it took, who asked, the request's
// size and the error if any.
func slowRequests(log *slog.Logger, warn time.Duration) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := handler(ctx, req)
		took := time.Since(start)
		level := slog.LevelDebug
		if took > warn {
			level = slog.LevelWarn
		}
		if !log.Enabled(ctx, level) {
			return resp, err
		}
		remote := "no remote client info"
		if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
			remote = p.Addr.String()
		}
		attrs := []any{"method", info.FullMethod, "start time", start, "time spent", took, "remote", remote}
		if m, ok := req.(proto.Message); ok {
			attrs = append(attrs, "request size", proto.Size(m))
		}
		if err != nil {
			attrs = append(attrs, "error", err)
		}
		log.Log(ctx, level, "request stats", attrs...)
		return resp, err
	}
}

// slowApplies is the ranges' observer (shard.Observer) with etcd's slow
// apply warning: a request whose store work — applying it, or serving it
// as a read — took longer than warn (--warning-apply-duration) is logged
// at warn as "apply request took too long", with etcd's fields, and
// counted in etcd_server_slow_apply_total. Only the slow ones are
// described, so the others cost a comparison.
type slowApplies struct {
	*metrics
	log  *slog.Logger
	warn time.Duration
}

func (s slowApplies) Took(t shard.Timing) {
	if t.Took <= s.warn {
		return
	}
	s.slowApply.Inc()
	attrs := []any{"took", t.Took, "expected-duration", s.warn, "prefix", t.Prefix(),
		"request", t.Request(), "response", t.Response()}
	if err := t.Err(); err != nil {
		attrs = append(attrs, "error", err)
	}
	s.log.Warn("apply request took too long", attrs...)
}
