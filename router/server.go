package router

import (
	"errors"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"

	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/shard"
	"github.com/cairn-kv/cairn/watch"
)

var errNoHeader = errors.New("router: response without a header")

// DefaultLeaderCheckInterval is etcd's default election timeout.
const DefaultLeaderCheckInterval = time.Second

// etcd's defaults for the client port's keepalive (Config.GRPCKeepAlive*).
const (
	DefaultGRPCKeepAliveMinTime  = 5 * time.Second
	DefaultGRPCKeepAliveInterval = 2 * time.Hour
	DefaultGRPCKeepAliveTimeout  = 20 * time.Second
)

// Config wires a Server.
type Config struct {
	// ClusterID and MemberID fill every response header.
	ClusterID uint64
	MemberID  placement.NodeID
	// Shard is range 1, which also answers for the cluster (status,
	// alarms, leases: their home); in single-group mode it is the one
	// range.
	Shard Shard
	// MemberOf names the member holding a range's replica (the leader of
	// Shard, whose member leases and MoveLeader go to); nil: the member
	// whose id is the replica's.
	MemberOf MemberOf
	// Ranges routes requests by key: in sharded mode the range map as
	// this member has it, in single-group mode a static map of range 1
	// alone (NewStaticRangeCache). Required to serve the KV and Watch
	// services.
	Ranges *RangeCache
	// Oracle is the revision oracle, the cluster's revision once the key
	// space has split (Server.now); before, and over a static map
	// (single-group mode) for good, the counting range's revision is.
	// Required unless Ranges is static.
	Oracle Oracle
	// MaxRequestBytes refuses larger writes (etcd --max-request-bytes);
	// 0 means DefaultMaxRequestBytes.
	MaxRequestBytes int
	// QuotaBackendBytes is the store size beyond which writes that add data
	// raise NOSPACE and are refused (etcd --quota-backend-bytes); 0 means
	// etcd's default of 2 GiB, a negative value no quota.
	QuotaBackendBytes int64
	// MaxTxnOps refuses larger txns (etcd --max-txn-ops); 0 means DefaultMaxTxnOps.
	MaxTxnOps int
	// GRPCKeepAliveMinTime is the least time a client must leave between
	// keepalive pings while it has a stream open (etcd
	// --grpc-keepalive-min-time; with none open grpc-go wants two hours,
	// as etcd leaves it): one that pings more often collects strikes and
	// after three is sent GOAWAY "too_many_pings". 0 means
	// DefaultGRPCKeepAliveMinTime; a negative value sets no policy, which
	// leaves grpc-go's (5 minutes), as etcd does for 0.
	GRPCKeepAliveMinTime time.Duration
	// GRPCKeepAliveInterval is how long a connection may be idle before
	// the server pings the client (etcd --grpc-keepalive-interval), and
	// GRPCKeepAliveTimeout how long it waits for the answer before it
	// closes the connection (--grpc-keepalive-timeout). 0 means
	// DefaultGRPCKeepAliveInterval, DefaultGRPCKeepAliveTimeout; a
	// negative value in either sets neither, which leaves grpc-go's (2
	// hours, 20 seconds), as etcd does for 0.
	GRPCKeepAliveInterval, GRPCKeepAliveTimeout time.Duration
	// Node answers what only the process knows (members, disk usage) and
	// does what only it can (membership changes, defragmentation, leader
	// transfer, backups).
	Node Node
	// Term is the raft term a response header reports when range 1 has no
	// replica here to take it from (sharded mode with ranges on subsets of
	// the members: the placement group's, which every member follows);
	// nil reports 0 then.
	Term func() uint64
	// Merger serves the Watch service over the ranges' hubs
	// (RangePart.Watches), in either mode: over one range its streams are
	// that range's hub streams as they are (watch.Merged, "Direct"); nil
	// leaves the service unregistered.
	Merger *watch.Merger
	// Mirrors serves watches over ranges without a replica here from
	// mirror hubs fed by members holding them (feed.go); nil refuses
	// such watches.
	Mirrors *Mirrors
	// RemoteLeases handles, in sharded mode, leases with keys outside
	// their home range (remotelease.go; LeaseFanout). nil: every key of a
	// lease is in its home, as in single-group mode, whose one range is
	// every lease's home — nothing to fan out.
	RemoteLeases RemoteLeases
	// RangeMembers returns, in sharded mode, the replica ids of each range
	// here by range id, as raft has them (membership changes since a range
	// started show; Ranges names them by their members, MemberOf); nil, or
	// a range it leaves out, shows the members its descriptor names.
	RangeMembers func() map[uint64][]uint64
	// LeaderCheckInterval is how often a watch stream that requires a
	// leader checks for one (etcd checks about every election timeout);
	// 0 means DefaultLeaderCheckInterval.
	LeaderCheckInterval time.Duration
	// Lessor serves the Lease service (with the Shard for grants and
	// revokes); nil leaves it unregistered.
	Lessor Lessor
	// Members dials the other members' peer ports: the lease requests
	// only the shard's leader's lessor answers (keepalive, time-to-live,
	// list) go to the member leading it; nil serves them locally only.
	Members *MemberConns
	// Backups writes the images of this member's replicas that Snapshot
	// sends (shard.Set).
	Backups Backups
	// Self is a client of this node's own services: the Lock and Election
	// services run etcd's concurrency recipes on it, as etcd runs them on
	// an in-process client (lock.go); nil leaves them unregistered. The
	// process owns and closes it.
	Self *clientv3.Client
	// UnaryInterceptors and StreamInterceptors run, in order, before the
	// router's own (which refuse calls on a learner and without a
	// leader), so that what they observe includes the refusals: the
	// node's gRPC metrics, in etcd's order.
	UnaryInterceptors  []grpc.UnaryServerInterceptor
	StreamInterceptors []grpc.StreamServerInterceptor
	// Observer receives what the node's metrics count (probes.go); nil
	// reports nothing.
	Observer Observer
	// RequestTimeout bounds the probes' reads and the automatic
	// compactor's wait on one range, as etcd's request timeout (5s plus
	// two election timeouts) bounds its own; 0 means
	// DefaultRequestTimeout.
	RequestTimeout time.Duration
	// CrossRangeWrites runs a DeleteRange or Txn whose keys fall in several
	// ranges through the cross-range coordinator (txncoord.go); off, such
	// writes are refused with InvalidArgument naming the ranges (the node
	// turns it on unless --cross-range-writes=false).
	CrossRangeWrites bool
	// MaxLearners is how many learners MemberAdd lets the cluster have
	// (etcd --max-learners); 0 means DefaultMaxLearners, a negative value
	// none.
	MaxLearners int
	// Log receives the probes' failures and warnings; nil discards them.
	Log *slog.Logger
	// Auth reads the cluster's auth state (auth.go); nil: auth is never
	// enabled and the Auth service answers as a disabled one.
	Auth AuthStore
	// AuthTokenTTL is how long a simple token lives unused (etcd
	// --auth-token-ttl); 0 means DefaultAuthTokenTTL.
	AuthTokenTTL time.Duration
	// BcryptCost hashes passwords (etcd --bcrypt-cost); out of bcrypt's
	// range means its default, 10, as etcd.
	BcryptCost int
	// JWT, if set, makes tokens etcd's JWT tokens (ParseAuthToken, etcd's
	// --auth-token jwt,...) instead of simple ones.
	JWT *JWT
	// ClientCertAuth is etcd's --client-cert-auth: with auth enabled, a
	// request without a token is made by the user named by its verified
	// client certificate's common name.
	ClientCertAuth bool
	// CheckedWrite, if set, is called with every client write after its
	// permissions were checked and before it is proposed: tests hold a
	// write there to race it against an auth change.
	CheckedWrite func()
	// DropAuthFence, if set and true when an auth change applied, has the
	// change answered without fencing the other ranges, as if the member
	// making it crashed before it could (authfence.go): tests check that
	// the AuthFencer makes up for it.
	DropAuthFence func() bool
	// TxnStep, if set, is called as a cross-range transaction's
	// coordinator passes each of TxnSteps (it may hold it there); true
	// stops the coordinator there, as a crash of its member would: it
	// answers etcd's timeout and leaves the rest to the resolver.
	TxnStep func(step string) bool
}

// DefaultMaxLearners is etcd's default --max-learners.
const DefaultMaxLearners = 1

// Node is what the router asks of the process hosting it; the node
// implements it.
type Node interface {
	NodeInfo
	Membership
	Learner
	Operator
	Snapshotter
}

// NodeInfo is what the router asks of the process hosting it about itself.
type NodeInfo interface {
	// Members lists the cluster's members as etcd reports them; a
	// linearizable list that cannot be read is an error.
	Members(linearizable bool) ([]*pb.Member, error)
	// Status reports the process's view of its store and raft group.
	Status() NodeStatus
}

// NodeStatus is the part of etcd's StatusResponse only the process knows.
type NodeStatus struct {
	// DBSize is what the store takes on disk; DBSizeInUse is what its live
	// data takes (etcd's: the file less its free pages), which the quota
	// check compares and a defragmentation brings down to the data left.
	DBSize, DBSizeInUse, DBSizeQuota int64
	// RaftIndex is the last raft index known here, 0 if not known (Status
	// then reports the applied index).
	RaftIndex uint64
	IsLearner bool
}

// Server serves etcd's gRPC services for one node.
type Server struct {
	cfg Config
	// size and sizeAt cache the node's storage size for the quota check
	// (unix nanoseconds of the last refresh; 0: never).
	size, sizeAt atomic.Int64
	// registered: leases registered at their home for a range (sharded).
	registered registered
	// leaders is the leader watch once StartLeaderWatch has started it.
	leaders atomic.Pointer[LeaderWatch]
	// tokens are the simple tokens this member issued (auth.go).
	tokens tokens
}

// New returns a Server; Register attaches it to a gRPC server.
func New(cfg Config) *Server {
	if cfg.MaxRequestBytes <= 0 {
		cfg.MaxRequestBytes = DefaultMaxRequestBytes
	}
	if cfg.MaxTxnOps <= 0 {
		cfg.MaxTxnOps = DefaultMaxTxnOps
	}
	if cfg.GRPCKeepAliveMinTime == 0 {
		cfg.GRPCKeepAliveMinTime = DefaultGRPCKeepAliveMinTime
	}
	if cfg.GRPCKeepAliveInterval == 0 {
		cfg.GRPCKeepAliveInterval = DefaultGRPCKeepAliveInterval
	}
	if cfg.GRPCKeepAliveTimeout == 0 {
		cfg.GRPCKeepAliveTimeout = DefaultGRPCKeepAliveTimeout
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.AuthTokenTTL <= 0 {
		cfg.AuthTokenTTL = DefaultAuthTokenTTL
	}
	return &Server{cfg: cfg, tokens: tokens{ttl: cfg.AuthTokenTTL}}
}

// GRPCOptions are the server options etcd uses for its client port: the
// receive limit leaves room for etcd's own "request is too large" answer;
// keepalive is etcd's (Config.GRPCKeepAlive*): as etcd, a client that
// pings with no stream open is held to grpc-go's two hours, not to the
// minimum; after Config's interceptors, unary calls are refused on a
// learner (learner.go) and, when the client requires a leader, without one
// (leader.go; streams too); then root-only and user-only calls are refused to others
// once auth is enabled (authgate.go).
func (s *Server) GRPCOptions() []grpc.ServerOption {
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(s.cfg.MaxRequestBytes + grpcOverheadBytes),
		grpc.MaxSendMsgSize(1<<31 - 1),
		grpc.MaxConcurrentStreams(1<<32 - 1),
		grpc.ChainUnaryInterceptor(append(slices.Clone(s.cfg.UnaryInterceptors), s.learnerUnary, s.leaderUnary, s.authUnary)...),
		grpc.ChainStreamInterceptor(append(slices.Clone(s.cfg.StreamInterceptors), s.learnerStream, s.leaderStream, s.authStream)...),
	}
	if s.cfg.GRPCKeepAliveMinTime > 0 {
		opts = append(opts, grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: s.cfg.GRPCKeepAliveMinTime}))
	}
	if s.cfg.GRPCKeepAliveInterval > 0 && s.cfg.GRPCKeepAliveTimeout > 0 {
		opts = append(opts, grpc.KeepaliveParams(keepalive.ServerParameters{Time: s.cfg.GRPCKeepAliveInterval,
			Timeout: s.cfg.GRPCKeepAliveTimeout}))
	}
	return opts
}

// Register attaches etcd's services to g, and gRPC's standard health
// service (grpc.health.v1) as etcd registers it: SERVING for the server as
// a whole (the empty service name) from the start, since g serves only
// once the node is ready.
func (s *Server) Register(g *grpc.Server) {
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(g, hs)
	pb.RegisterKVServer(g, &kvServer{s: s})
	pb.RegisterMaintenanceServer(g, &maintenanceServer{s: s})
	pb.RegisterClusterServer(g, &clusterServer{s: s})
	pb.RegisterAuthServer(g, &authServer{s: s})
	if s.cfg.Merger != nil {
		pb.RegisterWatchServer(g, &watchServer{s: s})
	}
	if s.cfg.Lessor != nil {
		pb.RegisterLeaseServer(g, &leaseServer{s: s})
	}
	if s.cfg.Self != nil {
		g.RegisterService(&lockServiceDesc, &lockServer{s: s})
		g.RegisterService(&electionServiceDesc, &electionServer{s: s})
	}
}

// fill completes a response header as etcd does: cluster and member ids and
// the raft term; the revision comes from the store.
func (s *Server) fill(h *pb.ResponseHeader) {
	h.ClusterId = s.cfg.ClusterID
	h.MemberId = uint64(s.cfg.MemberID)
	_, term, _ := s.cfg.Shard.Leader()
	if term == 0 && s.cfg.Term != nil {
		term = s.cfg.Term()
	}
	h.RaftTerm = term
}

// shardRange is the id of range 1, Config.Shard, in either mode.
const shardRange shard.RangeID = 1

// shardMember is the member holding replica id of range 1 (Config.Shard).
func (s *Server) shardMember(id shard.ReplicaID) placement.NodeID {
	return s.cfg.MemberOf.member(shardRange, id)
}
