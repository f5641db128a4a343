package router

import (
	"context"
	"net"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
)

// serveClientPort serves s as node does on a client port (GRPCOptions,
// Register) in process and returns a connection to it.
func serveClientPort(t *testing.T, s *Server) *grpc.ClientConn {
	t.Helper()
	l := bufconn.Listen(1 << 20)
	g := grpc.NewServer(s.GRPCOptions()...)
	s.Register(g)
	go func() { _ = g.Serve(l) }()
	t.Cleanup(g.Stop)
	conn, err := grpc.NewClient("passthrough:///cairn", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return l.DialContext(ctx) }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// TestHealthService: gRPC's standard health service answers SERVING for
// the server as a whole (the empty service name), as etcd's does, and
// NOT_FOUND for a service it has no status for.
func TestHealthService(t *testing.T) {
	hc := healthpb.NewHealthClient(serveClientPort(t, New(Config{Shard: &fakeReplica{leader: 1}})))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health check: %v, %v; want SERVING", resp, err)
	}
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "etcdserverpb.KV"}); status.Code(err) != codes.NotFound {
		t.Fatalf("health check of a service without a status: %v, want NotFound", err)
	}
}

// TestRequireLeaderUnary: a unary call made with clientv3.WithRequireLeader
// is refused with etcd's "no leader" while the member knows no leader of
// range 1, before it reaches the service; without the requirement, or with
// a leader, it is served.
func TestRequireLeaderUnary(t *testing.T) {
	noLeader := status.Convert(rpctypes.ErrGRPCNoLeader)
	for _, tc := range []struct {
		name    string
		leader  bool
		require bool
		refused bool
	}{
		{name: "no leader, required", require: true, refused: true},
		{name: "no leader, not required"},
		{name: "leader, required", leader: true, require: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &fakeReplica{}
			if tc.leader {
				r.leader = 1
			}
			conn := serveClientPort(t, New(Config{Shard: r}))
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if tc.require {
				ctx = clientv3.WithRequireLeader(ctx)
			}
			_, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
			if got := status.Convert(err); tc.refused != (err != nil) || tc.refused && (got.Code() != noLeader.Code() || got.Message() != noLeader.Message()) {
				t.Fatalf("health check: %v; want refused with %q: %v", err, noLeader.Message(), tc.refused)
			}
			if !tc.refused {
				return
			}
			// An etcd call is refused the same way, before its service is
			// asked (this server could not serve a Range).
			_, err = pb.NewKVClient(conn).Range(ctx, &pb.RangeRequest{Key: []byte("k")})
			if got := status.Convert(err); got.Code() != noLeader.Code() || got.Message() != noLeader.Message() {
				t.Fatalf("range: %v; want %q", err, noLeader.Message())
			}
		})
	}
}
