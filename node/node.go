package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/lni/dragonboat/v4"
	dbconfig "github.com/lni/dragonboat/v4/config"
	dblogger "github.com/lni/dragonboat/v4/logger"
	"github.com/lni/dragonboat/v4/raftio"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/soheilhy/cmux"
	"go.etcd.io/etcd/client/pkg/v3/tlsutil"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	"github.com/cairn-kv/cairn/lease"
	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/router"
	"github.com/cairn-kv/cairn/shard"
	"github.com/cairn-kv/cairn/watch"
)

// Config is one process's configuration. Zero values take etcd's defaults
// (see withDefaults); flags in cmd/cairn mirror etcd's names.
type Config struct {
	// Name is the member name (etcd --name); default "default".
	Name string
	// DataDir holds raft logs and the state machine (etcd --data-dir);
	// default "<name>.cairn".
	DataDir string
	// ListenClientURLs are the client (gRPC + HTTP) listeners; default
	// http://127.0.0.1:2379. Port 0 picks a free port; Node.ClientURLs
	// reports what was bound.
	ListenClientURLs []string
	// AdvertiseClientURLs are the URLs members report; default the bound
	// listen URLs.
	AdvertiseClientURLs []string
	// ListenPeerURLs: the first one is the raft address; default
	// http://127.0.0.1:2380. Port 0 picks a free port.
	ListenPeerURLs []string
	// InitialAdvertisePeerURLs are this member's peer URLs as the others
	// reach it (etcd --initial-advertise-peer-urls); default the listen
	// peer URLs.
	InitialAdvertisePeerURLs []string
	// InitialCluster is etcd's --initial-cluster: name=peerURL pairs,
	// comma-separated, naming every founding member; default this member
	// alone.
	InitialCluster string
	// InitialClusterState is "new" (found a cluster) or "existing" (join
	// one through MemberAdd first); default "new".
	InitialClusterState string
	// InitialClusterToken tells clusters apart (etcd
	// --initial-cluster-token); it seeds the cluster and member ids.
	InitialClusterToken string
	// QuotaBackendBytes raises the NOSPACE alarm when the store exceeds it
	// (etcd --quota-backend-bytes); 0 means etcd's default of 2 GiB.
	QuotaBackendBytes int64
	// EnablePprof serves Go's runtime profiles under /debug/pprof/ on the
	// client URLs (etcd's --enable-pprof).
	EnablePprof bool
	// DebugJournal, if set, is a file every applied raft entry is
	// appended to (shard/journal.go): a testing aid that lets the
	// robustness suite check the persisted history as etcd's reads its WAL.
	DebugJournal string
	// AutoCompactionMode ("periodic" or "revision") and
	// AutoCompactionRetention (a duration or hours for periodic, a
	// revision count for revision) are etcd's --auto-compaction-*; an
	// empty or zero retention disables automatic compaction.
	AutoCompactionMode, AutoCompactionRetention string
	// HeartbeatInterval and ElectionTimeout are etcd's raft timings;
	// defaults 100ms and 1s.
	HeartbeatInterval, ElectionTimeout time.Duration
	// RequestTimeout bounds the probes' reads and the automatic
	// compactor's wait on one range, as etcd's request timeout does its
	// own; default etcd's, 5s plus two ElectionTimeouts. It is no flag
	// (etcd has none): tests shorten it to reach a timeout sooner.
	RequestTimeout time.Duration
	// WatchProgressNotifyInterval is how often watchers that asked for
	// progress notifications get one (etcd --watch-progress-notify-interval);
	// default 10 minutes, as etcd.
	WatchProgressNotifyInterval time.Duration
	// SnapshotCount is the number of applied entries between raft log
	// compactions (etcd --snapshot-count); default 10000.
	SnapshotCount uint64
	// MaxRequestBytes and MaxTxnOps are etcd's request limits; defaults
	// 1.5 MiB and 128.
	MaxRequestBytes int
	MaxTxnOps       int
	// AuthToken is etcd's --auth-token: "simple" (or empty) for simple
	// tokens, "jwt,sign-method=…,pub-key=…,priv-key=…,ttl=…" for JWT
	// tokens (router.ParseAuthToken). AuthTokenTTL is
	// --auth-token-ttl (0: 300s) and BcryptCost --bcrypt-cost (out of
	// bcrypt's range: 10), as etcd.
	AuthToken    string
	AuthTokenTTL time.Duration
	BcryptCost   int
	// GRPCKeepAliveMinTime is the least time a client must leave between
	// keepalive pings on the client port before it is sent GOAWAY
	// "too_many_pings" (etcd --grpc-keepalive-min-time); default 5s.
	// GRPCKeepAliveInterval is how long a client connection may be idle
	// before the server pings it, GRPCKeepAliveTimeout how long the server
	// then waits for the answer before it closes the connection (etcd
	// --grpc-keepalive-interval, --grpc-keepalive-timeout); defaults 2h
	// and 20s. A negative value turns the setting off, as etcd's 0 does
	// (router.Config says what is left then).
	GRPCKeepAliveMinTime, GRPCKeepAliveInterval, GRPCKeepAliveTimeout time.Duration
	// Sharded runs the key space as ranges, each its own raft group, with
	// a placement group holding the range map and the revision oracle
	// (DESIGN.md); false is single-group mode, one raft group for every
	// key, as etcd. It is the zero value, so Config{} is single-group.
	Sharded bool
	// PlacementReplicas is how many members vote in the placement group
	// (sharded mode): 3 or 5, 0 meaning 3. The first PlacementReplicas
	// founders by member id found it, every other member runs a non-voting
	// replica of it, added by the placement leader (its local copy of the
	// range map and the member list); removing a voter promotes a
	// non-voting member first. A data directory whose placement group has
	// more voters (one founded before) keeps them.
	PlacementReplicas int
	// RangeReplicas is how many members hold each range (sharded mode):
	// 0 means DefaultRangeReplicas, EveryMember every member (a member
	// added later joins every range). A new cluster's initial ranges are
	// placed round robin on min(RangeReplicas, founders) founders each; a
	// member starts only the replicas the range map names for it, and
	// serves the other ranges through members holding them. Member add
	// gives a new member no ranges (moves do); member remove moves the
	// member's replicas to others first.
	RangeReplicas int
	// PlacementScheduler runs the placement scheduler (sharded mode;
	// placement.Scheduler, node/scheduler.go) on the placement leader's
	// member: every SchedulerWindow it reads the ranges' sizes and loads
	// and the members' liveness, and moves replicas and leaders to even
	// them out and re-creates the replicas of dead members. Off by default
	// until it has soaked.
	PlacementScheduler bool
	// RefuseCrossRangeWrites (--cross-range-writes=false) refuses writes
	// whose keys fall in several ranges with InvalidArgument instead of
	// running them as cross-range transactions, the default
	// (router.Config.CrossRangeWrites).
	RefuseCrossRangeWrites bool
	// SchedulerWindow is the scheduler's round (0: 10 s).
	SchedulerWindow time.Duration
	// RangeMaxBytes, RangeMinBytes and MemberDownTimeout are the
	// scheduler's thresholds (placement.SchedulerConfig; 0: its defaults).
	// RangeMinBytes negative: the scheduler merges nothing.
	RangeMaxBytes, RangeMinBytes int64
	MemberDownTimeout            time.Duration
	// SplitLoad is the scheduler's split-by-load threshold: a range
	// serving more writes+reads per second than this for
	// placement.DefaultSplitLoadWindows windows in a row splits at its
	// load key (0: placement.DefaultSplitLoad).
	SplitLoad int64
	// AdoptRecordedMode makes Sharded the mode of a new data directory
	// only: one that records its mode (<data-dir>/mode, written at the
	// first start) starts in that mode, and one from before modes were
	// recorded in single-group mode, the default then. cmd/cairn sets it
	// when --single-group is not given, so a data directory keeps starting
	// without the flag whichever mode it was created in. Without it, a
	// data directory started in the other mode than its own is refused.
	AdoptRecordedMode bool
	// InitialSplitKeys split a new sharded cluster's key space into
	// ranges: n keys, n+1 ranges. Later starts ignore them.
	InitialSplitKeys [][]byte
	// RaftTransport replaces dragonboat's TCP transport between members;
	// nil keeps it. In-process cluster tests inject a transport that can
	// partition members.
	RaftTransport dbconfig.TransportFactory
	// Logger receives structured logs; nil discards them.
	Logger *slog.Logger
	// Metrics is the registry the node registers its metrics on, served
	// at /metrics; nil makes a registry of the node's own. Nothing goes
	// to the prometheus package's default registry, and a registry can
	// serve one node only.
	Metrics *prometheus.Registry
	// MetricsLevel is etcd's --metrics: MetricsBasic (the default) or
	// MetricsExtensive, which adds the gRPC handling-time histograms.
	MetricsLevel string
	// ListenMetricsURLs are extra http:// or https:// listeners serving
	// /metrics and the probes (/health, /livez, /readyz) only (etcd
	// --listen-metrics-urls); https ones with ClientTLS's settings, which
	// they then require, as etcd. The client URLs serve them too. Port 0
	// picks a free port; Node.MetricsURLs reports what was bound.
	ListenMetricsURLs []string
	// ClientTLS is TLS on the https:// and unixs:// client URLs, PeerTLS
	// on an https:// peer URL (tls.go, peer.go).
	ClientTLS, PeerTLS TLS
	// CipherSuites, TLSMinVersion and TLSMaxVersion apply to both sides
	// (etcd's --cipher-suites, --tls-min-version, --tls-max-version; as
	// etcd's names, "TLS1.2", "TLS1.3"): the defaults are Go's suites, TLS
	// 1.2 and Go's highest version.
	CipherSuites                 []string
	TLSMinVersion, TLSMaxVersion string
	// SelfSignedCertValidity is the validity in years of the certificates
	// --auto-tls and --peer-auto-tls make; default 1.
	SelfSignedCertValidity uint
	// DisableGRPCGateway turns off etcd's JSON gateway at /v3/ (etcd
	// --enable-grpc-gateway=false; on by default, as etcd's).
	DisableGRPCGateway bool
	// ListenClientHTTPURLs, if any, serve HTTP alone — the gateway,
	// /metrics, the probes, /version — and the client URLs then serve gRPC
	// alone (etcd --listen-client-http-urls). Same schemes as the client
	// URLs; Node.ClientHTTPURLs reports what was bound.
	ListenClientHTTPURLs []string
	// HostWhitelist is the Host header values a plain-HTTP client request
	// may carry (etcd --host-whitelist); others get 421. Empty, or "*",
	// allows any; TLS requests are never checked.
	HostWhitelist []string
	// WALDir keeps the raft log apart from the data directory (etcd
	// --wal-dir; dragonboat's NodeHostConfig.WALDir): empty keeps it under
	// <data-dir>/raft. Like etcd's, a member restarts with the same one.
	WALDir string
	// SnapshotCatchUpEntries is how many entries a range's raft log keeps
	// behind a snapshot for slow followers to catch up from (etcd
	// --snapshot-catchup-entries; dragonboat's CompactionOverhead); default
	// etcd's 5000, or half of SnapshotCount if that is less, so that a
	// small --snapshot-count still truncates the log.
	SnapshotCatchUpEntries uint64
	// MaxConcurrentStreams bounds the concurrent streams of one client
	// connection (etcd --max-concurrent-streams); 0 means no bound (etcd's
	// default, math.MaxUint32).
	MaxConcurrentStreams uint32
	// DisablePreVote turns off raft's pre-vote (etcd --pre-vote=false;
	// on by default, as etcd's).
	DisablePreVote bool
	// MaxLearners is how many learners the cluster may have (etcd
	// --max-learners); MemberAdd of one more is refused with etcd's "too
	// many learner members in cluster". Default 1; a negative value allows
	// none (etcd's 0).
	MaxLearners int
	// NoStrictReconfigCheck turns off the check that refuses a membership
	// change leaving fewer started, reachable voting members than a
	// quorum (etcd --strict-reconfig-check=false; on by default, as
	// etcd's).
	NoStrictReconfigCheck bool
	// WarningUnaryRequestDuration is how long a unary client request may
	// take before it is logged at warn (etcd
	// --warning-unary-request-duration); default 300ms.
	WarningUnaryRequestDuration time.Duration
	// WarningApplyDuration is how long applying a request (or serving a
	// read from the store) may take before it is logged at warn as "apply
	// request took too long" (etcd --warning-apply-duration); default
	// 100ms.
	WarningApplyDuration time.Duration
	// SocketReusePort and SocketReuseAddress set SO_REUSEPORT and
	// SO_REUSEADDR on the client and peer listeners (etcd
	// --socket-reuse-port, --socket-reuse-address).
	SocketReusePort, SocketReuseAddress bool

	// compactionClock drives automatic compaction (router.StartCompactor);
	// nil is the wall clock. Tests inject a fake one.
	compactionClock router.CompactorClock
	// legacyBootstrap has a new sharded cluster bootstrap its range map
	// as before replica ids were allocated: every founder holds every
	// range under its member id. Tests of data directories made then set
	// it (export_test.go).
	legacyBootstrap bool
}

// etcd's defaults for --snapshot-catchup-entries,
// --warning-unary-request-duration and --warning-apply-duration.
const (
	defaultSnapshotCatchUpEntries      = 5000
	defaultWarningUnaryRequestDuration = 300 * time.Millisecond
	defaultWarningApplyDuration        = 100 * time.Millisecond
)

// rttMillisecond is dragonboat's tick: raft timings are whole multiples.
const rttMillisecond = 10

// DefaultRangeReplicas is how many members hold each range unless
// Config.RangeReplicas says otherwise (etcd's usual cluster size).
const DefaultRangeReplicas = 3

// EveryMember as Config.RangeReplicas puts every range on every member.
const EveryMember = -1

// singleShardID names the one raft group of single-group mode; this
// node's replica of it has the member id as its replica id.
const singleShardID = 1

func (c Config) withDefaults() (Config, error) {
	if _, err := router.ParseAuthToken(c.AuthToken); err != nil {
		return c, fmt.Errorf("node: --auth-token: %w", err)
	}
	if c.Name == "" {
		c.Name = "default"
	}
	if c.DataDir == "" {
		c.DataDir = c.Name + ".cairn"
	}
	if len(c.ListenClientURLs) == 0 {
		c.ListenClientURLs = []string{"http://127.0.0.1:2379"}
	}
	if len(c.ListenPeerURLs) == 0 {
		c.ListenPeerURLs = []string{"http://127.0.0.1:2380"}
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = 100 * time.Millisecond
	}
	if c.WatchProgressNotifyInterval <= 0 {
		c.WatchProgressNotifyInterval = 10 * time.Minute
	}
	if c.ElectionTimeout == 0 {
		c.ElectionTimeout = time.Second
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = 5*time.Second + 2*c.ElectionTimeout // etcd's ReqTimeout
	}
	if c.SnapshotCount == 0 {
		c.SnapshotCount = 10000
	}
	if c.SnapshotCatchUpEntries == 0 {
		c.SnapshotCatchUpEntries = min(defaultSnapshotCatchUpEntries, c.SnapshotCount/2)
	}
	if c.MaxLearners == 0 {
		c.MaxLearners = 1
	}
	if c.WarningUnaryRequestDuration == 0 {
		c.WarningUnaryRequestDuration = defaultWarningUnaryRequestDuration
	}
	if c.WarningApplyDuration == 0 {
		c.WarningApplyDuration = defaultWarningApplyDuration
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.TLSMinVersion == "" {
		c.TLSMinVersion = string(tlsutil.TLSVersion12)
	}
	if c.SelfSignedCertValidity == 0 {
		c.SelfSignedCertValidity = 1
	}
	if c.HeartbeatInterval < rttMillisecond*time.Millisecond {
		return c, fmt.Errorf("node: --heartbeat-interval %v is below the %dms raft tick", c.HeartbeatInterval, rttMillisecond)
	}
	if c.ElectionTimeout < 5*c.HeartbeatInterval {
		return c, fmt.Errorf("node: --election-timeout %v must be at least 5 times --heartbeat-interval %v", c.ElectionTimeout, c.HeartbeatInterval)
	}
	if c.RangeMaxBytes < 0 {
		return c, fmt.Errorf("node: --range-max-bytes %d must not be negative", c.RangeMaxBytes)
	}
	if c.SplitLoad < 0 {
		return c, fmt.Errorf("node: --range-split-load %d must not be negative", c.SplitLoad)
	}
	if c.AutoCompactionMode == "" {
		c.AutoCompactionMode = router.CompactionPeriodic
	}
	if _, err := router.CompactionRetention(c.AutoCompactionMode, c.AutoCompactionRetention); err != nil {
		return c, err
	}
	switch {
	case c.RangeReplicas == 0:
		c.RangeReplicas = DefaultRangeReplicas
	case c.RangeReplicas < EveryMember:
		return c, fmt.Errorf("node: --range-replicas %d: want %d (every member) or more", c.RangeReplicas, EveryMember)
	}
	switch c.PlacementReplicas {
	case 0:
		c.PlacementReplicas = 3
	case 3, 5:
	default:
		return c, fmt.Errorf("node: --placement-replicas %d: want 3 or 5", c.PlacementReplicas)
	}
	switch c.InitialClusterState {
	case "", "new", "existing":
	default:
		return c, fmt.Errorf("node: --initial-cluster-state %q: want new or existing", c.InitialClusterState)
	}
	switch c.MetricsLevel {
	case "":
		c.MetricsLevel = MetricsBasic
	case MetricsBasic, MetricsExtensive:
	default:
		return c, fmt.Errorf("node: --metrics %q: want %s or %s", c.MetricsLevel, MetricsBasic, MetricsExtensive)
	}
	for _, u := range slices.Concat(c.ListenClientURLs, c.ListenClientHTTPURLs, c.ListenPeerURLs, c.InitialAdvertisePeerURLs, c.ListenMetricsURLs) {
		if _, err := hostPort(u); err != nil {
			return c, err
		}
	}
	if _, err := c.checkTLS(); err != nil {
		return c, err
	}
	return c, nil
}

// hostPort returns host:port of an etcd-style URL ("http://127.0.0.1:2379").
func hostPort(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("node: invalid URL %q: want scheme://host:port", raw)
	}
	switch u.Scheme {
	case "http", "https":
	case "unix", "unixs":
		return u.Host + u.Path, nil // a socket file's name, as etcd's
	default:
		return "", fmt.Errorf("node: URL %q: want http://, https://, unix:// or unixs://", raw)
	}
	if _, _, err := net.SplitHostPort(u.Host); err != nil {
		return "", fmt.Errorf("node: URL %q: %v", raw, err)
	}
	return u.Host, nil
}

// Node is one running Cairn process: a NodeHost with its replica of the
// single group, the node's pebble, the router and the client listeners.
type Node struct {
	cfg     Config
	log     *slog.Logger
	db      *pebble.DB
	journal *os.File // nil unless Config.DebugJournal
	nh      *dragonboat.NodeHost
	// firstMu guards primary, range 1's lease primary here (nil: none),
	// and primaryOf, the replica it runs on (first.go).
	firstMu   sync.Mutex
	primary   *shard.Primary
	primaryOf *shard.Range
	// hooks let tests stop a split where a crash may stop it
	// (export_test.go; router.SplitterConfig's CutShort and NoStart).
	hooks struct {
		splitCutShort, splitNoStart atomic.Bool
		// dropCutShort: the drop of this member's replica of this range
		// (0: none) stops after its data batch, as a crash may (drop.go).
		dropCutShort atomic.Uint64
		// checkedWrite, if set, holds client writes between their auth
		// check and their proposal (router.Config.CheckedWrite).
		checkedWrite atomic.Pointer[func()]
		// dropAuthFence: auth changes made here skip their fences
		// (router.Config.DropAuthFence).
		dropAuthFence atomic.Bool
		// moveStep, if set, is called as the moves driven here pass each
		// step (placement.MoverConfig.Crash; it may hold them there).
		moveStep atomic.Pointer[func(step string)]
		// mergeStep, if set, is called as the merges driven here pass
		// each step: true stops the merge there, as a crash of this
		// member would (placement.MergeDriverConfig.Crash).
		mergeStep atomic.Pointer[func(step string) bool]
		// txnStep, if set, is called as the cross-range transactions
		// coordinated here pass each step (router.Config.TxnStep).
		txnStep atomic.Pointer[func(step string) bool]
	}
	// events is the lock over db's event log records, which every store
	// here is opened with (mvcc.EventLog).
	events *mvcc.EventLog
	// drops queues the replicas raft removed here for the drop worker
	// (drop.go); records are the replica records written here, by
	// replica, with their learner flag (nil until resumeDrops).
	drops   *dropQueue
	records struct {
		mu    sync.Mutex
		known map[replicaKey]bool // REQUIRES: mu
	}
	// first is range 1, in both modes: single-group mode's only range,
	// and in sharded mode the home of leases and of the cluster's records,
	// while a replica of it serves here (nil: held elsewhere; first.go).
	first atomic.Pointer[shard.Range]
	// authCache is the auth state read from range 1 held elsewhere
	// (sharded mode; firstAuth).
	authCache *router.AuthCache
	// merger serves watches over the ranges' hubs in sharded mode.
	merger *watch.Merger
	// mirrors feeds watches over ranges held elsewhere (sharded mode).
	mirrors *router.Mirrors
	// splitter splits ranges and takes in the splits applied here
	// (sharded mode; nil in single-group mode).
	splitter *router.Splitter
	// fanout revokes leases' keys outside range 1 in sharded mode, and
	// finishes the revokes left pending while this node leads range 1.
	fanout *router.LeaseFanout
	// rs is the router (nil until Start has made it), member what its
	// node-to-node service serves from.
	rs     *router.Server
	member router.Member
	// shardCfg and raftCfg start the ranges after range 1 (sharded mode).
	shardCfg shard.Config
	raftCfg  dbconfig.Config
	// Sharded mode: the revision oracle's allocator on this node's
	// placement replica, the node's oracle client, its client of the
	// range map, and the ranges.
	alloc     *placement.Allocator
	oracle    *placement.OracleClient
	placement *placement.Client
	// fwd forwards to the members leading what this one does not (both
	// modes: in single-group mode nothing asks it).
	fwd *router.Forwarder
	// reconfig walks sharded mode's membership changes through the
	// placement group and the ranges, and compacts this node's replica
	// of a range's log for them (both modes: single-group mode asks
	// nothing of it).
	reconfig *placement.Membership
	// routes is the router's range cache (sharded mode): the node puts
	// each range in as it starts one or a split changes or makes one.
	routes *router.RangeCache
	// rangeSet is this member's replicas of the ranges (made by
	// startRanges).
	rangeSet *shard.Set
	// closedClock and side are the closers' common round and the side
	// channel of their closed revisions (sidechannel.go).
	closedClock *shard.Clock
	side        *router.SideChannel
	// compactor is automatic compaction (nil: off); Close stops it.
	compactor *router.Compactor
	stop      chan struct{} // closed by Close: stops the watch pump
	grpc      *grpc.Server
	http      *http.Server
	// tls is the TLS settings both sides share; peer the peer port's TLS,
	// peerGRPC its gRPC server and peerL what that serves (peer.go).
	tls      tlsSettings
	peer     peerSide
	peerGRPC *grpc.Server
	peerL    net.Listener
	// raftLoop is dragonboat's loopback listen address, where the peer
	// port sends raft's connections (peer.go).
	raftLoop atomic.Pointer[string]
	// metrics is the node's registry and collectors (metrics.go);
	// metricsHTTP serve metricsURL, the bound --listen-metrics-urls.
	metrics     *metrics
	metricsHTTP []*http.Server
	metricsURL  []string
	// collector reads what scrapes show of the node (rangestats.go),
	// stats refreshes the ranges' figures it shows, and rtt measures the
	// other members (peerrtt.go); nil until serve starts them.
	collector *nodeCollector
	stats     *rangeStats
	rtt       *peerProber
	// leaders is the set of ranges here without a leader, for the probes
	// (nil until serve starts it).
	leaders *router.LeaderWatch
	// fencer re-sends the auth fences a crash lost (sharded mode; nil
	// otherwise or until serve starts it).
	fencer   *router.AuthFencer
	nhConfig dbconfig.NodeHostConfig
	// membersView caches the membership last read (see Members).
	membersView atomic.Pointer[membersView]
	muxes       []cmux.CMux
	listeners   []*trackingListener
	clientURL   []string
	memberID    uint64
	clusterID   uint64
	peerURLs    []string // advertised
	token       string   // --initial-cluster-token
	// learner is set while this member is a learner (see trackLearner).
	learner atomic.Bool
	// peers resolves raft replicas to their members' peer addresses, and
	// names the member holding a range's replica (memberOf).
	peers *placement.PeerRegistry
	// mapHost is the NodeHost running this member's placement replica
	// once it started (sharded mode): the registry reads the member
	// holding a replica it learnt nothing of from its range map
	// (mapMemberOf). Atomic: the registry asks from dragonboat's
	// transport, also while a join replaces the NodeHost.
	mapHost atomic.Pointer[dragonboat.NodeHost]
	// yieldedFor holds the peer URLs (joined) this member last handed its
	// leaderships over for, its record naming them (yield.go).
	yieldedFor atomic.Value
	// mapSignal is signalled after each apply of the local placement
	// replica (mapfollow.go).
	mapSignal chan struct{}
	// reconcileSignal asks the reconciler for a pass (reconcile.go), and
	// askedDrop, the reconciler goroutine's own, holds the replicas it had
	// dropped (replica ids are never reused).
	reconcileSignal chan struct{}
	askedDrop       map[replicaKey]bool
	// destinations holds the moves' destination replicas the reconciler
	// started here and has not routed here yet, by replicaKey: nothing is
	// served from them (notServing).
	destinations sync.Map
	// destinationSnapshots counts the snapshots the destination replicas
	// started here were restored from (a move's catch-up: export_test.go).
	destinationSnapshots atomic.Int64
	// mover drives the moves of ranges between members while this
	// member's placement replica leads (move.go; sharded mode).
	mover *placement.Mover
	// merges drives the merges of ranges while this member's placement
	// replica leads; joiner takes the merges committed here into this
	// member's ranges, and retires queues their right ranges for the
	// merge worker (merge.go; sharded mode).
	merges  *placement.MergeDriver
	joiner  *router.Joiner
	retires *retireQueue
	// leaving holds the replicas here told to stop serving (a move's
	// source about to be removed: move.go), by replicaKey.
	leaving sync.Map
	// holds is the replica client that TransferHold entries and leader
	// changes reach (see TransferLeader); nil until it exists.
	holds atomic.Pointer[shard.Replica]
	// mapRoutes is the routing the map follower feeds (sharded mode, once
	// the ranges here are started).
	mapRoutes atomic.Pointer[router.RangeCache]
	// firstLeader is range 1's leader as last reported (0: none), so that
	// logLeader reports a lost leader once.
	firstLeader atomic.Uint64
	// placementTerm is the newest raft term this member has seen the
	// placement group's leader at (router.Config.Term).
	placementTerm atomic.Uint64

	// self is the node's client of its own gRPC services (the lock and
	// election services run on it), connected in memory through selfL.
	self  *clientv3.Client
	selfL *bufconn.Listener
	// gatewayConn is the JSON gateway's connection to the node's own gRPC
	// server, in memory through selfL too (nil: no gateway).
	gatewayConn *grpc.ClientConn
	// httpURL are the bound Config.ListenClientHTTPURLs.
	httpURL []string

	// conns are the client connections to other members.
	conns *router.MemberConns

	wg        sync.WaitGroup
	closeOnce sync.Once
	// leaveWAL stops timing the raft log's fsyncs for the node (walsync.go).
	leaveWAL func()
	closeErr error
}

// leaderListener passes dragonboat's leader changes to the replica client,
// ending a transfer hold once its target leads.
type leaderListener struct{ n *Node }

func (l leaderListener) LeaderUpdated(info raftio.LeaderInfo) {
	l.n.metrics.leaderUpdated(info, l.n.firstLeader.Load())
	l.n.logLeader(info)
	if info.ShardID == placementShardID {
		for t := l.n.placementTerm.Load(); info.Term > t && !l.n.placementTerm.CompareAndSwap(t, info.Term); t = l.n.placementTerm.Load() {
		}
	}
	if r := l.n.holds.Load(); r != nil && info.ShardID == singleShardID {
		r.LeaderChanged(shard.ReplicaID(info.LeaderID))
	}
}

// Start starts a node and returns once it serves clients and its raft group
// has a leader.
func Start(ctx context.Context, cfg Config) (*Node, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, log: cfg.Logger}
	if n.tls, err = cfg.checkTLS(); err != nil {
		return nil, err
	}
	if err := n.start(ctx); err != nil {
		_ = n.Close()
		return nil, err
	}
	return n, nil
}

// Run starts a node and serves until ctx is done, then closes it.
func Run(ctx context.Context, cfg Config) error {
	n, err := Start(ctx, cfg)
	if err != nil {
		return err
	}
	<-ctx.Done()
	n.log.Info("shutting down", "reason", context.Cause(ctx))
	return n.Close()
}

func (n *Node) start(ctx context.Context) error {
	if changed, err := adoptMode(&n.cfg); err != nil {
		return err
	} else if changed {
		n.log.Info("starting in the mode the data directory was created in", "data-dir", n.cfg.DataDir, "mode", modeName(n.cfg.Sharded))
	}
	n.stop = make(chan struct{})
	n.mapSignal = make(chan struct{}, 1)
	n.reconcileSignal = make(chan struct{}, 1)
	n.askedDrop = map[replicaKey]bool{}
	n.closedClock = shard.NewClock()
	m, err := newMetrics(n.cfg.Metrics, n.cfg.MetricsLevel)
	if err != nil {
		return err
	}
	n.metrics = m
	quietDragonboat(dragonboatLevel(n.log))
	b, err := n.identify()
	if err != nil {
		return err
	}
	if err := n.openStore(b); err != nil {
		return err
	}
	if err := n.startRaft(b); err != nil {
		return err
	}
	if err := n.resumeDrops(ctx); err != nil {
		return err
	}
	ranges, unsplit, err := n.startPlacementGroup(ctx, b)
	if err != nil {
		return err
	}
	if err := n.startRanges(ctx, b, ranges); err != nil {
		return err
	}
	n.startBackground(unsplit)
	if err := n.serve(); err != nil {
		return err
	}
	n.publish(ctx)
	if ctx.Err() != nil {
		return fmt.Errorf("node: publishing member attributes: %w", ctx.Err())
	}
	if b.founders != nil && n.cfg.Sharded {
		// A new cluster: its initial ranges' leaders spread as their
		// hints are (initialleaders.go).
		n.leadInitialRanges(ranges)
	}
	n.log.Info("ready to serve client requests", "name", n.cfg.Name, "client-urls", n.clientURL,
		"peer-urls", n.peerURLs, "data-dir", n.cfg.DataDir, "member-id", fmt.Sprintf("%x", n.memberID), "mode", modeName(n.cfg.Sharded))
	return nil
}

// boot is what a start learns before it starts anything: how this member
// comes to the cluster and its raft timings.
type boot struct {
	// founders are the founding members of a first start of state "new";
	// nil for a restart or a join, which find the membership in raft.
	founders map[uint64]dragonboat.Target
	// join: a first start of state "existing" (after MemberAdd); restart:
	// the data directory has a member id.
	join, restart bool
	// peer is the raft listen address, raftAddr the advertised one.
	peer, raftAddr string
	// heartbeat and election are the raft timings in ticks.
	heartbeat, election uint64
}

// identify prepares the data directory and finds this member's identity:
// its raft address, peer URLs, cluster and member ids, and how it comes to
// the cluster (founding, restarting or joining).
func (n *Node) identify() (boot, error) {
	cfg := n.cfg
	var b boot
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return b, fmt.Errorf("node: create data dir: %w", err)
	}
	// The raft address: bind the peer URL's port now if it asks for port 0.
	peer, err := hostPort(cfg.ListenPeerURLs[0])
	if err != nil {
		return b, err
	}
	// A restart that asks for any port keeps the raft address the data
	// directory was created with: dragonboat refuses a changed address.
	addrFile := filepath.Join(cfg.DataDir, "raft-address")
	if strings.HasSuffix(peer, ":0") {
		if b, err := os.ReadFile(addrFile); err == nil && len(b) > 0 {
			peer = strings.TrimSpace(string(b))
		}
	}
	if peer, err = resolvePort(peer); err != nil {
		return b, err
	}
	if err := os.WriteFile(addrFile, []byte(peer+"\n"), 0o600); err != nil {
		return b, fmt.Errorf("node: record raft address: %w", err)
	}
	n.peerURLs = cfg.InitialAdvertisePeerURLs
	if len(n.peerURLs) == 0 {
		n.peerURLs = []string{schemeOf(cfg.ListenPeerURLs[0]) + "://" + peer}
	}
	raftAddr, err := hostPort(n.peerURLs[0])
	if err != nil {
		return b, err
	}
	token := cfg.InitialClusterToken
	if token == "" {
		token = defaultClusterToken
	}
	n.token = token
	n.clusterID = clusterIDFor(token)
	// The founding members (a first start of state "new"), or none: a
	// restart or a join finds the membership in raft.
	id, restart, err := readMemberID(cfg.DataDir)
	if err != nil {
		return b, err
	}
	if err := checkMode(cfg.DataDir, cfg.Sharded); err != nil {
		return b, err
	}
	n.peers = placement.NewPeerRegistry()
	if cfg.Sharded {
		n.peers.SetMemberOf(n.mapMemberOf)
	}
	b.restart = restart
	if restart {
		n.memberID = id
		// Members the group has not recorded peer URLs for (none moved)
		// are found where --initial-cluster says, if it is given again.
		if members, err := parseInitialCluster(cfg.InitialCluster, token); err == nil {
			n.seedPeers(members)
		}
	} else {
		initial := cfg.InitialCluster
		if initial == "" {
			initial = cfg.Name + "=" + strings.Join(n.peerURLs, ","+cfg.Name+"=")
		}
		members, err := parseInitialCluster(initial, token)
		if err != nil {
			return b, err
		}
		i := slices.IndexFunc(members, func(m initialMember) bool { return m.name == cfg.Name })
		if i < 0 {
			return b, fmt.Errorf("node: --initial-cluster has no member named %q (--name)", cfg.Name)
		}
		n.seedPeers(members)
		self := members[i]
		if !sameURLs(self.peerURLs, n.peerURLs) {
			return b, fmt.Errorf("node: --initial-cluster has %s=%v but this member advertises peer URLs %v",
				cfg.Name, self.peerURLs, n.peerURLs)
		}
		switch cfg.InitialClusterState {
		case "", "new":
			n.memberID = self.id
			b.founders = map[uint64]dragonboat.Target{}
			for _, m := range members {
				b.founders[m.id] = memberTarget(m.id)
			}
		case "existing":
			// A joining member starts as a learner: raft accepts being
			// promoted (or added as a voter) from there, not the reverse.
			b.join = true
			if err := setLearner(cfg.DataDir, true); err != nil {
				return b, err
			}
			if err := setPlacementNonVoting(cfg.DataDir, true); err != nil {
				return b, err
			}
		default:
			return b, fmt.Errorf("node: --initial-cluster-state %q: want new or existing", cfg.InitialClusterState)
		}
		if !b.join {
			if err := writeMemberID(cfg.DataDir, n.memberID); err != nil {
				return b, err
			}
		}
	}
	b.peer, b.raftAddr = peer, raftAddr
	b.heartbeat = uint64(cfg.HeartbeatInterval / (rttMillisecond * time.Millisecond))
	b.election = uint64(cfg.ElectionTimeout / (rttMillisecond * time.Millisecond))
	return b, nil
}

// openStore opens the member's pebble, shared by every range here.
func (n *Node) openStore(b boot) error {
	cfg := n.cfg
	// The block cache holds the index and filter blocks of a store of
	// tens of millions of keys (pebble's default 8 MiB re-reads them from
	// disk on every lookup). The memtable stays at pebble's 4 MiB: every
	// put looks its key up, and a larger skiplist made puts slower (a
	// 64 MiB one cost 10% of put throughput).
	cache := pebble.NewCache(stateCacheBytes)
	defer cache.Unref() // the DB holds its own reference
	db, err := pebble.Open(filepath.Join(cfg.DataDir, "state"), mvcc.PebbleOptions(&pebble.Options{
		Logger: pebbleLogger{n.log.With(loggerNameKey, "pebble")},
		Cache:  cache,
		EventListener: &pebble.EventListener{DiskSlow: func(info pebble.DiskSlowInfo) {
			n.log.Warn("slow disk", "logger", "pebble", "path", info.Path, "op", info.OpType.String(),
				"bytes", info.WriteSize, "took", info.Duration)
		}},
	}))
	if err != nil {
		return fmt.Errorf("node: open state store: %w", err)
	}
	n.db = db
	n.events = mvcc.NewEventLog(db)
	if !b.restart {
		if err := recordMode(cfg.DataDir, cfg.Sharded); err != nil {
			return err
		}
	}
	return nil
}

// startRaft starts the member's dragonboat NodeHost.
func (n *Node) startRaft(b boot) error {
	cfg := n.cfg
	var err error
	if n.peer, err = n.peerTLS(); err != nil {
		return err
	}
	// Dragonboat listens on a loopback port of its own; the peer port is
	// Cairn's, which passes raft's connections on to it (peer.go).
	raftListen, err := resolvePort("127.0.0.1:0")
	if err != nil {
		return err
	}
	n.raftLoop.Store(&raftListen)
	if n.peerL, err = n.listenPeer(b.peer); err != nil {
		return err
	}
	n.drops = newDropQueue()
	n.retires = newRetireQueue()
	// Dragonboat's transport reconnects to a member that went away
	// through a circuit breaker that is not configurable: it retries
	// after 500 ms, growing to at most 1 s (lni/goutils netutil), which is
	// within an election timeout, as failover needs (issue 27).
	logDB, err := raftLogDB(filepath.Join(cfg.DataDir, "raft")) // logdb.go
	if err != nil {
		return err
	}
	n.nhConfig = dbconfig.NodeHostConfig{
		NodeHostDir:       filepath.Join(cfg.DataDir, "raft"),
		WALDir:            cfg.WALDir,
		RTTMillisecond:    rttMillisecond,
		RaftAddress:       b.raftAddr,
		ListenAddress:     raftListen,
		Expert:            dbconfig.ExpertConfig{LogDB: logDB, TransportFactory: cfg.RaftTransport, NodeRegistryFactory: n.peers},
		RaftEventListener: leaderListener{n},
	}
	// Replicas raft removes here are dropped (drop.go).
	n.nhConfig.SystemEventListener = systemListener{n}
	if n.peer.raftTLS {
		n.nhConfig.MutualTLS = true
		n.nhConfig.CAFile, n.nhConfig.CertFile, n.nhConfig.KeyFile = cfg.PeerTLS.TrustedCAFile, cfg.PeerTLS.CertFile, cfg.PeerTLS.KeyFile
	}
	n.leaveWAL = joinWALOwners(n.metrics, n.nhConfig.NodeHostDir, n.nhConfig.WALDir)
	// The loopback port was free when resolvePort closed its probe, but
	// an outgoing connection of this process may take it before
	// dragonboat binds it (the kernel hands out ports from the same
	// range): that bind is tried again on another port.
	for attempt := 1; ; attempt++ {
		if n.nh, err = dragonboat.NewNodeHost(n.nhConfig); err == nil {
			return nil
		}
		if attempt == 5 || !(errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use")) {
			return fmt.Errorf("node: start raft: %w", err)
		}
		if raftListen, err = resolvePort("127.0.0.1:0"); err != nil {
			return err
		}
		n.raftLoop.Store(&raftListen)
		n.nhConfig.ListenAddress = raftListen
	}
}

// startPlacementGroup starts, in sharded mode, this member's replica of
// the placement group — founding it (and bootstrapping the range map),
// restarting it or joining it — and returns the ranges this member runs
// and the splits it may have missed (localRanges).
func (n *Node) startPlacementGroup(ctx context.Context, b boot) (ranges, unsplit []*placementpb.RangeDescriptor, err error) {
	if !n.cfg.Sharded {
		return nil, nil, nil
	}
	// The map followed from the start: the reads below take the
	// placement group's quorum, which a member restarted after a second
	// voter was added to its one-member cluster gets only from that new
	// member, whose address it learns from the node records it applied.
	n.wg.Add(1)
	go n.followMap()
	if b.join {
		// A member added joins the placement group first, which also
		// finds its id (join), then reads the range map there.
		err := n.join(ctx, placementShardID, func(id uint64) error {
			return n.startPlacementReplica(nil, true, id, b.election, b.heartbeat)
		})
		if err != nil {
			return nil, nil, err
		}
		st, err := n.placement.State(ctx)
		if err != nil {
			return nil, nil, err
		}
		ranges = st.Ranges
	} else if ranges, err = n.startPlacement(ctx, b.founders, b.election, b.heartbeat); err != nil {
		return nil, nil, err
	}
	if ranges[0].Id != singleShardID || len(ranges[0].Start) != 0 {
		return nil, nil, fmt.Errorf("node: the range map's first range is %d, want %d", ranges[0].Id, singleShardID)
	}
	if n.cfg.RangeReplicas > 0 {
		// Only the replicas the map names for this member (the others
		// are served through the members holding them); a move's
		// destination not voting yet is the reconciler's to start,
		// non-voting (reconcile.go).
		moving, err := n.movesHere(ctx)
		if err != nil {
			return nil, nil, err
		}
		ranges = slices.DeleteFunc(slices.Clone(ranges), func(d *placementpb.RangeDescriptor) bool {
			_, ok := placement.ReplicaOf(d, placement.NodeID(n.memberID))
			return !ok || moving[d.Id]
		})
	}
	// Ranges a merge absorbed here (the map not told yet) are left out,
	// not started: the merge worker retires them (merge.go).
	var merged []*placementpb.RangeDescriptor
	if ranges, unsplit, merged, err = shard.LocalRanges(n.db, n.memberID, ranges, b.founders != nil, n.log); err != nil {
		return nil, nil, err
	}
	for _, d := range merged {
		n.retires.put(retiring{id: shard.RangeID(d.Id)})
	}
	// The placement group's own upkeep: the registered members it lacks
	// added (on its leader) and this replica's role recorded once
	// promoted.
	fill := placement.NewMembership(placement.MembershipConfig{Self: placement.NodeID(n.memberID),
		ShardID: placementShardID, Raft: n.nh, Map: n.placement, Target: func(id placement.NodeID) string { return memberTarget(uint64(id)) },
		PlacementVoters: n.cfg.PlacementReplicas, Log: n.log})
	n.wg.Add(2)
	go n.fillPlacement(fill)
	go n.trackPlacementRole()
	n.mapApplied() // what the replica applied before the follower started
	return ranges, unsplit, nil
}

// raftConfig is the raft config of this member's replica id of a range.
func (n *Node) raftConfig(b boot, id uint64) dbconfig.Config {
	return dbconfig.Config{
		ReplicaID:    id,
		ShardID:      singleShardID,
		HeartbeatRTT: b.heartbeat,
		ElectionRTT:  b.election,
		CheckQuorum:  true,
		// etcd's --pre-vote, on by default: a member cut off from the
		// others does not disrupt them with higher terms on return.
		PreVote:            !n.cfg.DisablePreVote,
		IsNonVoting:        n.learner.Load(),
		SnapshotEntries:    n.cfg.SnapshotCount,
		CompactionOverhead: n.cfg.SnapshotCatchUpEntries,
	}
}

// startRanges starts this member's replicas of ranges (range 1 alone in
// single-group mode), waits for range 1's leader and brings every watch
// hub to its replica's revision.
func (n *Node) startRanges(ctx context.Context, b boot, ranges []*placementpb.RangeDescriptor) error {
	cfg := n.cfg
	leaseOpts := lease.Options{MinTTL: lease.MinTTLFor(int(cfg.ElectionTimeout/cfg.HeartbeatInterval), cfg.HeartbeatInterval)}
	span := mvcc.Span{}
	if cfg.Sharded && len(ranges) > 0 {
		span = shard.SpanOf(ranges[0])
	}
	creds, err := n.peerCreds()
	if err != nil {
		return err
	}
	n.conns = router.NewMemberConns(n.peerAddr, creds)
	n.fwd = router.NewForwarder(placement.NodeID(n.memberID), n.metrics.countForwards(n.conns.Dial))
	n.fwd.SetMemberOf(n.rangeMember)
	n.side = router.NewSideChannel(n.fwd, closedEvery*4)
	n.rangeSet = shard.NewSet(shard.SetConfig{DB: n.db, Self: n.memberID,
		Target: func(id uint64) dragonboat.Target { return memberTarget(id) }, Learner: n.learner.Load, Events: n.events})
	if cfg.Sharded {
		n.routes = router.NewRangeCacheVia(n.fwd)
		n.merger = watch.NewMerger()
		n.splitter = router.NewSplitter(router.SplitterConfig{Self: placement.NodeID(n.memberID), Map: n.placement,
			RevisionsAbove: n.oracle.RevisionsAbove, Margin: oracleWindow, Ranges: n.routes, Local: n.rangeSet,
			Forwarder: n.fwd, Merger: n.merger, Home: singleShardID, NewRange: n.newRange, StartRange: n.startRange,
			Stop: n.stop, Log: n.log, CutShort: n.hooks.splitCutShort.Load, NoStart: n.hooks.splitNoStart.Load})
		n.joiner = router.NewJoiner(router.JoinerConfig{Ranges: n.routes, Local: n.rangeSet, Merger: n.merger,
			Retire: n.retire, Log: n.log})
	}
	// Sharded mode's membership walk (placement/membership.go; the
	// members.go calls ask nothing of it in single-group mode).
	n.reconfig = placement.NewMembership(placement.MembershipConfig{Self: placement.NodeID(n.memberID),
		ShardID: placementShardID, Raft: n.nh, Map: n.placement, Ranges: router.MemberRanges(n.rangeSet, n.routes),
		Peers: n.fwd, Target: func(id placement.NodeID) string { return memberTarget(uint64(id)) },
		PlacementVoters: n.cfg.PlacementReplicas, RangeReplicas: max(n.cfg.RangeReplicas, 0), RangeRaft: rangeRaft{n},
		Move: n.moveForMembership, Log: n.log})
	if cfg.Sharded {
		n.mover = n.newMover()
		n.merges = n.newMergeDriver()
	}
	// OnSplit is each range's own (firstShardCfg, rangeShardCfg).
	shardCfg := shard.Config{DB: n.db, Events: n.events, Span: span, Sharded: cfg.Sharded, Lease: leaseOpts, OnRecover: func() {
		if n.splitter != nil {
			n.splitter.Recovered()
		}
	}, OnPeers: n.notePeers, OnHold: func(target shard.ReplicaID, until time.Time, max time.Duration) {
		if r := n.holds.Load(); r != nil {
			r.Hold(target, until, max)
		}
	}}
	shardCfg.Observer = slowApplies{n.metrics, n.log, cfg.WarningApplyDuration}
	if cfg.DebugJournal != "" {
		f, err := os.OpenFile(cfg.DebugJournal, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return fmt.Errorf("node: debug journal: %w", err)
		}
		n.journal = f
		shardCfg.Journal = f
	}
	n.learner.Store(isLearner(cfg.DataDir))
	raftCfg := func(id uint64) dbconfig.Config { return n.raftConfig(b, id) }
	n.shardCfg, n.raftCfg = shardCfg, raftCfg(n.memberID)
	first := &placementpb.RangeDescriptor{Id: singleShardID}
	hasFirst := true
	if cfg.Sharded {
		// A member holds range 1 only if the map names it (--range-replicas).
		hasFirst = len(ranges) > 0 && ranges[0].Id == singleShardID
		if hasFirst {
			first, ranges = ranges[0], ranges[1:]
		}
	}
	startFirst := func(id uint64) error {
		if r := n.first.Load(); r != nil {
			r.Close() // a join starting over under another id
		}
		r := shard.NewRange(n.rangeCfg(shard.ReplicaID(id)), first, 0)
		n.first.Store(r)
		n.rangeSet.Add(r)
		var err error
		if cfg.Sharded {
			// Founded by the replicas the range map names (under the ids
			// it allocated), as every range is.
			if err := n.recordReplica(r); err != nil {
				return err
			}
			err = n.rangeSet.Start(r, n.firstShardCfg(r), raftCfg(id), b.founders != nil, b.join)
		} else {
			err = r.Start(n.firstShardCfg(r), b.founders, b.join, raftCfg(id))
		}
		if err != nil {
			return fmt.Errorf("node: start shard: %w", err)
		}
		return nil
	}
	switch {
	case b.join && !cfg.Sharded:
		if err := n.join(ctx, singleShardID, startFirst); err != nil {
			return err
		}
	case hasFirst:
		if err := startFirst(uint64(n.replicaIn(first))); err != nil {
			return err
		}
	}
	if cfg.Sharded {
		for _, d := range ranges {
			// A range a split made starts with its founding members, as
			// the split starts it: raft takes them again on a restart, and
			// they start it if the node stopped after the split applied
			// here but before it started the new range (raft would not
			// know it otherwise).
			if _, merged, err := mvcc.MergedInto(n.db, d.Id); err != nil {
				return err
			} else if merged {
				// Absorbed while its left range replayed its log here
				// (after LocalRanges looked): the merge worker retires it.
				n.retires.put(retiring{id: shard.RangeID(d.Id)})
				continue
			}
			r := n.newRange(d, 0)
			n.rangeSet.Add(r)
			if err := n.startRange(r, b.founders != nil || d.Parent != 0 || !slices.Contains(shard.FoundersOf(d), n.memberID), false); err != nil {
				return err
			}
		}
		n.routes.PutRanges(n.rangeSet.Routing()...)
		n.mapRoutes.Store(n.routes)
		// The ranges held elsewhere, from this member's copy of the map
		// (the map follower keeps them current).
		if st, err := n.localState(); err == nil {
			n.routes.PutMap(st.Ranges)
			n.routes.PutMerged(st.Merged)
		}
	}
	if r := n.first.Load(); r != nil {
		n.holds.Store(r.Replica())
	}
	if err := n.waitLeader(ctx); err != nil {
		return err
	}
	if cfg.Sharded {
		n.waitRangeLeaders(ctx, 3*cfg.ElectionTimeout)
	}
	// Watchers start from the store's revision (later applies notify the
	// hubs as they come).
	for _, rr := range n.rangeSet.All() {
		if err := rr.SyncHub(ctx); err != nil {
			return fmt.Errorf("node: %w", err)
		}
	}
	return nil
}

// startBackground starts what runs beside the ranges: range 1's primary
// (lease expiry and checkpoints), and in sharded mode the closers' clock,
// the merged watches' progress, the lease fan-out and the catching up on
// splits missed (unsplit); and learner tracking.
func (n *Node) startBackground(unsplit []*placementpb.RangeDescriptor) {
	cfg := n.cfg
	if r := n.first.Load(); r != nil {
		n.wireFirst(r)
	}
	if cfg.Sharded {
		n.wg.Add(2)
		go func() {
			defer n.wg.Done()
			n.closedClock.Run(n.stop, closedEvery)
		}()
		go func() {
			defer n.wg.Done()
			router.RunProgress(n.merger, cfg.WatchProgressNotifyInterval, n.stop)
		}()
		n.splitter.Follow(unsplit)
		// Range 1 may come here or leave (first.go): the home is
		// whichever replica of it serves here.
		n.fanout = router.NewLeaseFanout(router.LeaseFanoutConfig{Ranges: n.routes, HomeID: singleShardID,
			Home: firstHome{n}, Every: closedEvery, Try: 5 * time.Second, Log: n.log})
		n.fanout.Start()
		n.wg.Add(5)
		go n.runDrops()
		go n.runRetires()
		go n.resumeChanges()
		go n.runReconciler()
		go n.runMoves()
		if cfg.PlacementScheduler {
			n.wg.Add(1)
			go n.runScheduler()
		}
	}
	n.wg.Add(1)
	go n.trackLearner()
}

// serve starts the router and the client listeners (gRPC and HTTP on each
// client URL), and the compactor.
func (n *Node) serve() error {
	cfg := n.cfg
	var err error
	if err := n.dialSelf(); err != nil {
		return err
	}
	jwt, err := router.ParseAuthToken(cfg.AuthToken)
	if err != nil {
		return fmt.Errorf("node: --auth-token: %w", err)
	}
	rcfg := router.Config{
		Self:              n.self,
		ClusterID:         n.clusterID,
		MemberID:          placement.NodeID(n.memberID),
		MemberOf:          n.rangeMember,
		MaxRequestBytes:   cfg.MaxRequestBytes,
		MaxTxnOps:         cfg.MaxTxnOps,
		CrossRangeWrites:  !cfg.RefuseCrossRangeWrites,
		QuotaBackendBytes: cfg.QuotaBackendBytes,
		Node:              n,
		Members:           n.conns,
		Backups:           timedBackups{n.rangeSet, n.metrics},
		AuthTokenTTL:      cfg.AuthTokenTTL,
		BcryptCost:        cfg.BcryptCost,
		JWT:               jwt,
		ClientCertAuth:    cfg.ClientTLS.ClientCertAuth,
		CheckedWrite: func() {
			if f := n.hooks.checkedWrite.Load(); f != nil {
				(*f)()
			}
		},
		DropAuthFence: n.hooks.dropAuthFence.Load,
		TxnStep: func(step string) bool {
			f := n.hooks.txnStep.Load()
			return f != nil && (*f)(step)
		},

		// zero: etcd's defaults, which router applies.
		GRPCKeepAliveMinTime:  cfg.GRPCKeepAliveMinTime,
		GRPCKeepAliveInterval: cfg.GRPCKeepAliveInterval,
		GRPCKeepAliveTimeout:  cfg.GRPCKeepAliveTimeout,

		UnaryInterceptors:  append(n.metrics.unary(), slowRequests(n.log, cfg.WarningUnaryRequestDuration)),
		StreamInterceptors: n.metrics.stream(),
		Observer:           n.metrics,
		RequestTimeout:     cfg.RequestTimeout,
		MaxLearners:        cfg.MaxLearners,
		Term:               n.placementTerm.Load,
		Log:                n.log,
	}
	if cfg.Sharded {
		// Range 1 as it is at each request (first.go): held here, or
		// elsewhere (--range-replicas), whose lessor's answers come from
		// its leader's member and its auth state through its client; it
		// may come here or leave with a move. Read elsewhere, the auth
		// state is cached (router.AuthCache).
		n.authCache = router.CachedAuth(remoteFirstAuth{n}, n.routes)
		rcfg.Shard, rcfg.Lessor, rcfg.Auth = firstShard{n}, firstLessor{n}, firstAuth{n}
		rcfg.Oracle = n.oracle
		rcfg.Ranges = n.routes
		rcfg.Merger = n.merger
		n.mirrors = router.NewMirrors(router.MirrorsConfig{Ranges: n.routes, Log: n.log})
		rcfg.Mirrors = n.mirrors
		rcfg.RemoteLeases = n.fanout
		rcfg.RangeMembers = n.rangeSet.RaftMembers
	} else {
		// Single-group mode: range 1 alone, for good, through the same
		// routing and watch path; its replica proposes through raft (no
		// forwarding), its watches are direct hub streams (watch.Merged),
		// whose progress notifications its hub sends. Every lease's keys
		// are in its home: no fan-out (RemoteLeases nil).
		first := n.first.Load()
		rcfg.Shard, rcfg.Lessor, rcfg.Auth = first.Replica(), first.StateMachine().Lessor(), first.Replica()
		rcfg.Ranges = router.NewStaticRangeCache(router.RangeEntry{Local: router.LocalRange(first), Shard: first.Replica(),
			Watches: first.Hub()})
		rcfg.Merger = watch.NewMerger()
	}
	rs := router.New(rcfg)
	n.rs = rs
	n.leaders = rs.StartLeaderWatch(cfg.HeartbeatInterval)
	if cfg.Sharded {
		// Auth fences a crash cut short (router.AuthFencer).
		n.fencer = rs.StartAuthFencer(0)
	}
	n.collector = &nodeCollector{n: n}
	if err := n.metrics.reg.Register(n.collector); err != nil {
		return fmt.Errorf("node: register metrics: %w", err)
	}
	n.stats = startRangeStats(n.rangeSet.All, cfg.Sharded, rangeStatsEvery)
	n.rtt = startPeerProber(n)
	// Automatic compaction compacts as a client's Compact does.
	if n.compactor, err = rs.StartCompactor(router.CompactorConfig{Mode: cfg.AutoCompactionMode,
		Retention: cfg.AutoCompactionRetention, Clock: cfg.compactionClock, Log: n.log, OnFailure: n.metrics.CompactionFailed}); err != nil {
		return err
	}
	// TLS is the listeners' (tls.go); the credentials show it to handlers.
	gopts := append(rs.GRPCOptions(), grpc.Creds(tlsStateCreds{}))
	if cfg.MaxConcurrentStreams > 0 {
		gopts = append(gopts, grpc.MaxConcurrentStreams(cfg.MaxConcurrentStreams)) // the last one counts
	}
	n.grpc = grpc.NewServer(gopts...)
	rs.Register(n.grpc)
	// The node-to-node service (sharded mode; in single-group mode it
	// answers that it needs sharded mode): whole on the peer port, to
	// members only, and its operator call alone on the client port.
	mcfg := router.MemberConfig{Sharded: cfg.Sharded, Ranges: n.rangeSet, Side: n.side, Splitter: n.splitter,
		CompactLog: n.reconfig.CompactLog, RemoveMember: func(ctx context.Context, id uint64) error { return n.removeMember(ctx, id, false) },
		UpdateMember: n.UpdateMember}
	if n.alloc != nil {
		mcfg.Oracle = n.alloc
	}
	if cfg.Sharded {
		mcfg.Mover, mcfg.Leaving = n, n.notServing
	}
	n.member = router.NewMember(mcfg)
	rs.RegisterOperator(n.grpc, n.member)
	n.peerGRPC = n.newPeerServer(rs.PeerGRPCOptions(newPeerGate(n)))
	rs.RegisterPeer(n.peerGRPC, n.member)
	n.wg.Add(1)
	go func() { defer n.wg.Done(); _ = n.peerGRPC.Serve(n.peerL) }()
	n.metrics.grpc.InitializeMetrics(n.grpc) // every method's series from 0, as etcd
	n.wg.Add(1)
	go func() { defer n.wg.Done(); _ = n.grpc.Serve(n.selfL) }()
	mux := http.NewServeMux()
	mux.Handle("/", rs.HTTPHandler(cfg.EnablePprof))
	mux.Handle("/metrics", n.metrics.handler)
	if !cfg.DisableGRPCGateway {
		gw, err := n.gateway(rs)
		if err != nil {
			return err
		}
		mux.Handle("/v3/", gw)
	}
	n.http = &http.Server{Handler: router.AccessControl(mux, cfg.HostWhitelist), ReadHeaderTimeout: 10 * time.Second}
	if cfg.MaxConcurrentStreams > 0 {
		n.http.HTTP2 = &http.HTTP2Config{MaxConcurrentStreams: int(min(cfg.MaxConcurrentStreams, math.MaxInt32))}
	}
	info, err := n.clientTLS()
	if err != nil {
		return err
	}
	if err := n.serveMetrics(rs.ProbeHandler(), info); err != nil {
		return err
	}
	for _, raw := range cfg.ListenClientURLs {
		l, tl, bound, err := n.listenClient(raw, info)
		if err != nil {
			return err
		}
		n.clientURL = append(n.clientURL, bound)
		n.listeners = append(n.listeners, tl)
		m := cmux.New(l)
		grpcL := m.MatchWithWriters(cmux.HTTP2MatchHeaderFieldSendSettings("content-type", "application/grpc"))
		n.muxes = append(n.muxes, m)
		n.wg.Add(2)
		go func() { defer n.wg.Done(); _ = n.grpc.Serve(grpcL) }()
		go func() { defer n.wg.Done(); _ = m.Serve() }()
		if len(cfg.ListenClientHTTPURLs) > 0 {
			continue // gRPC alone: the matcher closes anything else
		}
		httpL := m.Match(cmux.Any())
		n.wg.Add(1)
		go func() { defer n.wg.Done(); _ = n.http.Serve(httpL) }()
	}
	for _, raw := range cfg.ListenClientHTTPURLs {
		l, tl, bound, err := n.listenClient(raw, info)
		if err != nil {
			return err
		}
		n.httpURL = append(n.httpURL, bound)
		n.listeners = append(n.listeners, tl)
		n.wg.Add(1)
		go func() { defer n.wg.Done(); _ = n.http.Serve(l) }()
	}
	if len(n.cfg.AdvertiseClientURLs) == 0 {
		n.cfg.AdvertiseClientURLs = n.clientURL
	}
	n.wg.Add(1)
	go n.refreshMembers() // reads the config: started once it is final
	return nil
}

// waitLeader waits until the group has elected a leader.
func (n *Node) waitLeader(ctx context.Context) error {
	t := time.NewTicker(rttMillisecond * time.Millisecond)
	defer t.Stop()
	for {
		if first := n.first.Load(); first == nil {
			// Range 1 is held elsewhere: the placement group's leader.
			if _, _, ok, err := n.nh.GetLeaderID(placementShardID); err == nil && ok {
				return nil
			}
		} else if _, _, ok := first.Replica().Leader(); ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node: waiting for a raft leader: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// waitRangeLeaders waits, at most max, until every range started here
// knows its leader. The other ranges elect theirs about when range 1 does;
// a member that served before they had would answer its first requests
// for them with "no leader" and fail /health, where a just-started etcd
// is healthy. The wait is bounded so that a range whose quorum is away
// does not keep the member from serving the others.
func (n *Node) waitRangeLeaders(ctx context.Context, max time.Duration) {
	ctx, cancel := context.WithTimeout(ctx, max)
	defer cancel()
	t := time.NewTicker(rttMillisecond * time.Millisecond)
	defer t.Stop()
	for {
		waiting := 0
		for _, r := range n.rangeSet.All() {
			if _, _, ok := r.Replica().Leader(); !ok {
				waiting++
			}
		}
		if waiting == 0 {
			return
		}
		select {
		case <-ctx.Done():
			n.log.Warn("serving before every range here has a leader", "without-leader", waiting)
			return
		case <-t.C:
		}
	}
}

// selfBufferBytes sizes each direction of the in-memory connections of
// the node's own client.
const selfBufferBytes = 1 << 20

// dialSelf creates the node's client of its own gRPC services: its
// connections are in-memory pipes to selfL, which the gRPC server serves
// alongside the client listeners, so it needs no address, port or TLS.
// Nothing is dialled until the first call.
func (n *Node) dialSelf() error {
	n.selfL = bufconn.Listen(selfBufferBytes)
	c, err := clientv3.New(clientv3.Config{
		Endpoints: []string{"http://in-process"},
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return n.selfL.DialContext(ctx)
		})},
		Logger: zap.NewNop(),
	})
	if err != nil {
		return fmt.Errorf("node: create the node's own client: %w", err)
	}
	n.self = c
	return nil
}

// gateway opens the JSON gateway's connection to the node's own gRPC
// server and returns the gateway (router.Server.Gateway). The connection is
// in memory, as the node's own client's, so the gateway's calls take every
// interceptor a client's do, without a port, an address or TLS to dial
// (etcd's gateway dials its own client URL). Close closes it.
func (n *Node) gateway(rs *router.Server) (http.Handler, error) {
	conn, err := grpc.NewClient("passthrough:///in-process",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return n.selfL.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(math.MaxInt32)))
	if err != nil {
		return nil, fmt.Errorf("node: the gateway's connection: %w", err)
	}
	n.gatewayConn = conn
	return rs.Gateway(context.Background(), conn)
}

// ClientURLs returns the bound client URLs (http://host:port).
func (n *Node) ClientURLs() []string { return append([]string(nil), n.clientURL...) }

// ClientHTTPURLs returns the bound Config.ListenClientHTTPURLs; none
// without them.
func (n *Node) ClientHTTPURLs() []string { return append([]string(nil), n.httpURL...) }

// Close stops serving and closes the node; it waits for every goroutine.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		if n.self != nil {
			// Fails the lock and election calls still waiting, so that
			// the graceful stop need not wait for them.
			_ = n.self.Close()
		}
		for _, rr := range n.routing() {
			rr.Hub().Close() // ends watch streams, so the graceful stop need not wait
		}
		if n.grpc != nil {
			stopped := make(chan struct{})
			go func() { n.grpc.GracefulStop(); close(stopped) }()
			select {
			case <-stopped:
			case <-time.After(2 * time.Second):
				n.grpc.Stop()
			}
		}
		if n.peerGRPC != nil {
			n.peerGRPC.Stop() // the members calling try elsewhere
		}
		if n.gatewayConn != nil {
			_ = n.gatewayConn.Close()
		}
		if n.selfL != nil {
			_ = n.selfL.Close() // the gRPC server closed it if it served it
		}
		if n.http != nil {
			_ = n.http.Close()
		}
		for _, srv := range n.metricsHTTP {
			_ = srv.Close()
		}
		for _, m := range n.muxes {
			m.Close()
		}
		// cmux waits for connections still being matched (a client that
		// connected but has not sent a request yet): close them all.
		for _, l := range n.listeners {
			l.closeConns()
		}
		n.compactor.Close() // cancels a compaction in flight
		n.collector.close() // scrapes from now on show nothing of the node
		n.stats.Close()
		n.rtt.Close()
		n.leaders.Close()
		n.fencer.Close()
		if n.mirrors != nil {
			n.mirrors.Close() // feeds of ranges held elsewhere
		}
		if n.stop != nil {
			close(n.stop)
		}
		if n.fanout != nil {
			n.fanout.Close()
		}
		for _, rr := range n.routing() {
			rr.Stop() // its catch-up and closer
		}
		if n.splitter != nil {
			n.splitter.Close()
		}
		n.wg.Wait()
		n.closePrimary()
		for _, rr := range n.routing() {
			rr.Close() // its goroutines and proposer
		}
		if n.alloc != nil {
			n.alloc.Close()
		}
		if n.nh != nil {
			n.nh.Close()
		}
		if n.leaveWAL != nil {
			n.leaveWAL()
		}
		if n.side != nil {
			n.side.Close() // its streams and calls to the other members
		}
		if n.fwd != nil {
			n.fwd.Close() // its streams to the other members
		}
		if n.conns != nil {
			n.conns.Close()
		}
		if n.db != nil {
			n.closeErr = n.db.Close()
		}
		if n.journal != nil {
			_ = n.journal.Close()
		}
	})
	return n.closeErr
}

// routing is this member's ranges (none before startRanges made the set).
func (n *Node) routing() []*shard.Range {
	if n.rangeSet == nil {
		return nil
	}
	return n.rangeSet.Routing()
}

// Status implements router.NodeInfo. DBSize is the state store's disk
// usage, obsolete files and recycled logs included. DBSizeInUse counts its
// live tables and the write-ahead log not yet flushed into them (its
// logical size: the memtable's own figure is the arena it allocated, which
// would count megabytes for a few writes). A compaction's deletes leave it
// where it is until pebble compacts them away, which Defragment forces, so
// compact, defrag and alarm disarm clear NOSPACE as in etcd.
func (n *Node) Status() router.NodeStatus {
	m := n.db.Metrics()
	inUse := m.Table.Local.LiveSize + m.BlobFiles.Local.LiveSize + m.WAL.Size
	// Pebble's physical size of the current WAL is the file's size when it
	// was opened, which the writes since outgrow (see its DB.Metrics): the
	// WAL counts at no less than its data, so that the size in use never
	// exceeds the size (etcdctl's "not in use" percentage would go below 0).
	size := m.DiskSpaceUsage() - m.WAL.PhysicalSize + max(m.WAL.PhysicalSize, m.WAL.Size)
	return router.NodeStatus{DBSize: int64(size), DBSizeInUse: int64(inUse), IsLearner: n.learner.Load()}
}

// sameURLs reports whether a and b hold the same URLs in any order.
func sameURLs(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// resolvePort replaces port 0 with a free port. Dragonboat binds the raft
// address itself, so the port is found by binding and releasing it.
func resolvePort(hostport string) (string, error) {
	host, port, _ := net.SplitHostPort(hostport)
	if port != "0" {
		return hostport, nil
	}
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return "", fmt.Errorf("node: find a free peer port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// stateCacheBytes is the state store's pebble block cache (see Start).
const stateCacheBytes = 128 << 20

var quietOnce sync.Once

// quietDragonboat sets dragonboat's package loggers to level
// (dragonboatLevel: errors only unless the node logs debug lines). They
// are process-wide, so the first node of the process sets them.
func quietDragonboat(level dblogger.LogLevel) {
	quietOnce.Do(func() {
		for _, name := range []string{"config", "dragonboat", "gossip", "grpc", "logdb", "LogDB", "pebblekv",
			"raft", "raftpb", "registry", "rsm", "server", "settings", "tan", "tools", "transport"} {
			dblogger.GetLogger(name).SetLevel(level)
		}
	})
}

// quietPebble drops pebble's informational chatter and keeps its errors
// visible on stderr.
type quietPebble struct{}

func (quietPebble) Infof(string, ...interface{}) {}
func (quietPebble) Errorf(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "pebble: "+strings.TrimSuffix(format, "\n")+"\n", args...)
}
func (quietPebble) Fatalf(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "pebble: "+strings.TrimSuffix(format, "\n")+"\n", args...)
	os.Exit(1)
}

// trackingListener remembers the connections it accepted so that Close can
// end them, whatever state the protocol matcher left them in.
type trackingListener struct {
	net.Listener
	mu    sync.Mutex
	conns map[net.Conn]struct{} // guarded by mu; nil once closed
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conns == nil {
		_ = c.Close()
		return nil, net.ErrClosed
	}
	tc := &trackedConn{Conn: c, l: l}
	l.conns[tc] = struct{}{}
	return tc, nil
}

// closeConns closes the listener and every connection it accepted: an
// Accept waiting returns at once, not when the next peer happens to dial
// (a member no one dials — removed, or stopped in a failed start — would
// wait forever).
func (l *trackingListener) closeConns() {
	l.mu.Lock()
	conns := l.conns
	l.conns = nil
	l.mu.Unlock()
	_ = l.Listener.Close()
	for c := range conns {
		_ = c.Close()
	}
}

type trackedConn struct {
	net.Conn
	l    *trackingListener
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}
