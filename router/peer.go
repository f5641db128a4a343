package router

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/cairn-kv/cairn/proto/internalpb"
)

// The node-to-node service has two faces. On the peer port (RegisterPeer)
// it is served whole, with etcd's Lease service for the lease calls other
// members forward to range 1's leader, and only to callers a PeerGate
// admits: members. On the client port (RegisterOperator) only the
// operator's call, SplitRange, is served; every other method answers
// Unimplemented there, so that no client can submit shard commands, forge
// closed revisions or draw revisions from the oracle.

// PeerGate decides whether the caller of a peer-port call is a member of
// this cluster; the node implements it (with peer TLS, by its verified
// certificate; without, by its address).
type PeerGate interface {
	// Admit returns nil for a member and otherwise why the caller is not
	// one (the refusal's message).
	Admit(p *peer.Peer) error
}

// RegisterPeer attaches, to g (the peer port's server), the node-to-node
// service served from m and etcd's Lease service.
func (s *Server) RegisterPeer(g *grpc.Server, m Member) {
	// grpc.health.v1 too: members time their round trips to each other
	// with it (etcd_network_peer_round_trip_time_seconds).
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(g, hs)
	s.RegisterInternal(g, m)
	if s.cfg.Lessor != nil {
		pb.RegisterLeaseServer(g, &leaseServer{s: s, peer: true})
	}
}

// PeerGRPCOptions are the peer port's server options: the client port's
// (GRPCOptions), after gate, which refuses with PermissionDenied every
// call whose caller it does not admit.
func (s *Server) PeerGRPCOptions(gate PeerGate) []grpc.ServerOption {
	admit := func(ctx context.Context) error {
		p, ok := peer.FromContext(ctx)
		if !ok {
			return status.Error(codes.PermissionDenied, "cairn: peer port: caller unknown")
		}
		if err := gate.Admit(p); err != nil {
			return status.Errorf(codes.PermissionDenied, "cairn: peer port: %v", err)
		}
		return nil
	}
	return append([]grpc.ServerOption{
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if err := admit(ctx); err != nil {
				return nil, err
			}
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if err := admit(ss.Context()); err != nil {
				return err
			}
			return h(srv, ss)
		}),
	}, s.GRPCOptions()...)
}

// RegisterOperator attaches to g (the client port's server) the
// node-to-node service's operator calls, SplitRange, CheckReplicas
// (replicaops.go), MoveRange and TransferRangeLeader (move.go), served
// from m; the service's other methods answer Unimplemented.
func (s *Server) RegisterOperator(g *grpc.Server, m Member) {
	internalpb.RegisterNodeServer(g, operatorServer{in: &internalServer{self: s.cfg.MemberID, m: m, srv: s}})
}

// operatorServer is the client port's face of the node-to-node service.
type operatorServer struct {
	internalpb.UnimplementedNodeServer
	in *internalServer
}

func (o operatorServer) SplitRange(ctx context.Context, req *internalpb.SplitRangeRequest) (*internalpb.SplitRangeResponse, error) {
	return o.in.SplitRange(ctx, req)
}
