package node

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path"
	"sync"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/lni/dragonboat/v4/raftio"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	"google.golang.org/grpc"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/proto/internalpb"
	"github.com/cairn-kv/cairn/router"
	"github.com/cairn-kv/cairn/shard"
)

// The levels of Config.MetricsLevel, etcd's --metrics.
const (
	// MetricsBasic exports etcd's basic set.
	MetricsBasic = "basic"
	// MetricsExtensive adds the gRPC handling-time histograms
	// (grpc_server_handling_seconds), as etcd's extensive level does.
	MetricsExtensive = "extensive"
)

// metrics is one node's Prometheus registry and the collectors the node
// registered on it. Nothing is registered with the prometheus package's
// default registry: two nodes in one process keep separate series, and a
// test reads its node's alone.
//
// The packages below node never import prometheus: they report through the
// small observer interfaces they declare (router.Observer, shard.Observer,
// placement.OracleObserver), which metrics implements. What is read rather
// than reported (leaders, sizes, revisions, the ranges' figures) is the
// node's collector's (rangestats.go); nothing a scrape does scans data.
type metrics struct {
	reg *prometheus.Registry
	// handler serves reg in Prometheus' text format, with promhttp's own
	// scrape counters, as etcd's /metrics.
	handler http.Handler
	// grpc counts every call of the client port's gRPC server
	// (grpc_server_*), refusals included: its interceptors run first.
	grpc *grpcprom.ServerMetrics

	// The probes' results, as etcd counts them (router.Observer.Probe).
	healthSuccess, healthFailures prometheus.Counter
	healthcheck                   *prometheus.GaugeVec   // {type, name}: 1 ok, 0 failed
	healthchecks                  *prometheus.CounterVec // {type, name, status}

	// What the ranges report (shard.Observer) and the leader changes.
	leaderChanges, rangeLeaderChanges  prometheus.Counter
	proposalsFailed, restamped, splits prometheus.Counter
	puts, deletes, ranges, txns        prometheus.Counter
	commitSec, syncSec                 prometheus.Histogram
	walFsyncSec                        prometheus.Histogram // the raft log's (walsync.go)
	walBytes                           prometheus.Gauge     // a gauge that only rises, as etcd's
	defragSec, snapshotSec             prometheus.Histogram
	watchStreams, watchers             prometheus.Gauge
	oracleSec                          prometheus.Histogram
	oracleFailures, oracleAllocated    prometheus.Counter
	forwarded                          *prometheus.CounterVec   // {kind, result}
	peerRTT                            *prometheus.HistogramVec // {To}
	slowApply, leaderTransfers         prometheus.Counter
	autoCompactionFailures             prometheus.Counter
	schedulerOps                       *prometheus.CounterVec // {op, result} (scheduler.go)
	rangeMerges                        *prometheus.CounterVec // {outcome} (scheduler.go)
}

// newMetrics registers the node's collectors on reg (nil: a new registry):
// the process and Go runtime collectors, the gRPC server's metrics at
// level (MetricsBasic or MetricsExtensive) and the probes' counters. A
// registry that already holds any of them (one given to another node) is
// refused.
func newMetrics(reg *prometheus.Registry, level string) (*metrics, error) {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	var opts []grpcprom.ServerMetricsOption
	if level == MetricsExtensive {
		opts = append(opts, grpcprom.WithServerHandlingTimeHistogram())
	}
	m := &metrics{
		reg:  reg,
		grpc: grpcprom.NewServerMetrics(opts...),
		healthSuccess: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "etcd", Subsystem: "server",
			Name: "health_success", Help: "The total number of successful health checks"}),
		healthFailures: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "etcd", Subsystem: "server",
			Name: "health_failures", Help: "The total number of failed health checks"}),
		healthcheck: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "etcd", Subsystem: "server",
			Name: "healthcheck", Help: "The result of each kind of healthcheck."}, []string{"type", "name"}),
		healthchecks: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "etcd", Subsystem: "server",
			Name: "healthchecks_total", Help: "The total number of each kind of healthcheck."}, []string{"type", "name", "status"}),
	}
	counter := func(ns, sub, name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help})
	}
	histogram := func(ns, sub, name, help string, buckets []float64) prometheus.Histogram {
		return prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help, Buckets: buckets})
	}
	gauge := func(ns, sub, name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help})
	}
	m.leaderChanges = counter("etcd", "server", "leader_changes_seen_total", "The number of leader changes seen (range 1's).")
	m.rangeLeaderChanges = counter("cairn", "range", "leader_changes_total", "The number of leader changes seen by the replicas here, every range's.")
	m.proposalsFailed = counter("etcd", "server", "proposals_failed_total", "The total number of failed proposals seen.")
	m.restamped = counter("cairn", "", "proposals_restamped_total", "Writes refused as stale and stamped again.")
	m.splits = counter("cairn", "range", "splits_total", "Splits applied by the replicas here.")
	m.puts = counter("etcd", "mvcc", "put_total", "Total number of puts seen by this member.")
	m.deletes = counter("etcd", "mvcc", "delete_total", "Total number of deleteRanges seen by this member.")
	m.ranges = counter("etcd", "mvcc", "range_total", "Total number of ranges seen by this member.")
	m.txns = counter("etcd", "mvcc", "txn_total", "Total number of txns seen by this member.")
	m.commitSec = histogram("etcd", "disk", "backend_commit_duration_seconds",
		"The latency distributions of commit called by backend (a pebble commit of applied entries, without fsync).", prometheus.ExponentialBuckets(0.001, 2, 14))
	m.syncSec = histogram("cairn", "", "state_sync_duration_seconds",
		"The latency distributions of the state store's fsyncs.", prometheus.ExponentialBuckets(0.001, 2, 14))
	m.walFsyncSec = histogram("etcd", "disk", "wal_fsync_duration_seconds",
		"Latency of the raft log's fsyncs (the write-ahead logs of dragonboat's LogDB).", prometheus.ExponentialBuckets(0.001, 2, 14))
	// etcd's is a gauge despite its name; dashboards' rate() works on both.
	m.walBytes = gauge("etcd", "disk", "wal_write_bytes_total", "Total number of bytes written in WAL (the raft log's write-ahead logs).")
	m.defragSec = histogram("etcd", "disk", "backend_defrag_duration_seconds",
		"The latency distribution of backend defragmentation.", prometheus.ExponentialBuckets(.1, 2, 13))
	m.snapshotSec = histogram("etcd", "disk", "backend_snapshot_duration_seconds",
		"The latency distribution of backend snapshots.", prometheus.ExponentialBuckets(.01, 2, 17))
	m.watchStreams = gauge("etcd_debugging", "mvcc", "watch_stream_total", "Total number of watch streams.")
	m.watchers = gauge("etcd_debugging", "mvcc", "watcher_total", "Total number of watchers.")
	m.oracleSec = histogram("cairn", "oracle", "round_trip_seconds",
		"Round trips to the revision oracle on the placement leader's member.", prometheus.ExponentialBuckets(0.0001, 2, 16))
	m.oracleFailures = counter("cairn", "oracle", "round_trip_failures_total", "Round trips to the revision oracle that failed.")
	m.oracleAllocated = counter("cairn", "oracle", "revisions_allocated_total", "Revisions the oracle handed out to this member's ranges.")
	m.forwarded = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "cairn", Name: "forwarded_requests_total",
		Help: "Requests sent to other members' node-to-node and etcd services, by method and result."}, []string{"kind", "result"})
	m.peerRTT = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "etcd", Subsystem: "network", Name: "peer_round_trip_time_seconds",
		Help:    "Round-Trip-Time histogram between peers (a gRPC health check on the peer's client port).",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}, []string{"To"})
	m.slowApply = counter("etcd", "server", "slow_apply_total", "The total number of slow apply requests (likely overloaded from slow disk).")
	m.leaderTransfers = counter("cairn", "", "leader_transfers_total", "Leader transfers this member asked for that moved leadership.")
	m.autoCompactionFailures = counter("cairn", "", "auto_compaction_failures_total",
		"Automatic compactions that failed (in sharded mode: that some range refused; the others still compacted).")
	m.schedulerOps = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "cairn", Subsystem: "scheduler", Name: "operations_total",
		Help: "Operations the placement scheduler started on this member (while it led the placement group), by kind and result."}, []string{"op", "result"})
	m.rangeMerges = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "cairn", Subsystem: "range", Name: "merges_total",
		Help: "Merges the placement scheduler started on this member, by outcome (merged, undone, refused, failed)."}, []string{"outcome"})
	for _, c := range []prometheus.Collector{
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewGoCollector(),
		m.grpc, m.healthSuccess, m.healthFailures, m.healthcheck, m.healthchecks,
		m.leaderChanges, m.rangeLeaderChanges, m.proposalsFailed, m.restamped, m.splits,
		m.puts, m.deletes, m.ranges, m.txns, m.commitSec, m.syncSec, m.walFsyncSec, m.walBytes, m.defragSec, m.snapshotSec,
		m.watchStreams, m.watchers, m.oracleSec, m.oracleFailures, m.oracleAllocated, m.forwarded, m.peerRTT,
		m.slowApply, m.leaderTransfers, m.autoCompactionFailures, m.schedulerOps, m.rangeMerges,
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("node: register metrics: %w", err)
		}
	}
	m.handler = promhttp.InstrumentMetricHandler(reg, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return m, nil
}

// Probe counts one probe's result (router.Observer): /health in
// etcd_server_health_{success,failures}, each check of /livez and /readyz
// in etcd_server_healthcheck (1 ok, 0 failed) and
// etcd_server_healthchecks_total, as etcd counts them.
func (m *metrics) Probe(kind, check string, ok bool) {
	if kind == router.ProbeHealth {
		if ok {
			m.healthSuccess.Inc()
		} else {
			m.healthFailures.Inc()
		}
		return
	}
	v, st := 0.0, "error"
	if ok {
		v, st = 1, "success"
	}
	m.healthcheck.WithLabelValues(kind, check).Set(v)
	m.healthchecks.WithLabelValues(kind, check, st).Inc()
}

// unary and stream are the gRPC server's metric interceptors, which
// router.Config puts before its own.
func (m *metrics) unary() []grpc.UnaryServerInterceptor {
	return []grpc.UnaryServerInterceptor{m.grpc.UnaryServerInterceptor()}
}

func (m *metrics) stream() []grpc.StreamServerInterceptor {
	return []grpc.StreamServerInterceptor{m.grpc.StreamServerInterceptor(), m.countWatches}
}

// serveMetrics starts, for each of --listen-metrics-urls, an HTTP server
// with /metrics and the probes (and no /version, /debug or gRPC), as etcd
// serves its metrics URLs: over TLS with the client URLs' settings (info,
// nil if none is https) for an https:// URL, client certificates checked
// as there. Close shuts them.
func (n *Node) serveMetrics(probes http.Handler, info *transport.TLSInfo) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", n.metrics.handler)
	mux.Handle("/", probes) // it answers 404 to any other path
	info, err := n.metricsTLS(info)
	if err != nil {
		return err
	}
	for _, raw := range n.cfg.ListenMetricsURLs {
		addr, _ := hostPort(raw) // withDefaults checked it
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("node: listen on metrics URL %s: %w", raw, err)
		}
		scheme := schemeOf(raw) // http or https: checkTLS checked it
		n.metricsURL = append(n.metricsURL, scheme+"://"+l.Addr().String())
		if scheme == "https" {
			cfg, err := clientServerConfig(info)
			if err != nil {
				_ = l.Close()
				return fmt.Errorf("node: metrics URL %s: %w", raw, err)
			}
			l = tls.NewListener(l, cfg)
		}
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		n.metricsHTTP = append(n.metricsHTTP, srv)
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				n.log.Warn("metrics listener stopped", "url", raw, "error", err)
			}
		}()
	}
	return nil
}

// MetricsURLs returns the bound metrics URLs (http:// or https://host:port), one per
// Config.ListenMetricsURLs; none without them.
func (n *Node) MetricsURLs() []string { return append([]string(nil), n.metricsURL...) }

// What the ranges report (shard.Observer).

// Applied counts the etcd operations a range applied here in
// etcd_mvcc_{put,delete,txn,range}_total (as etcd, every member counts
// the writes it applies) and its splits in cairn_range_splits_total.
func (m *metrics) Applied(c shard.OpCounts) {
	m.count(c)
	if c.Splits > 0 {
		m.splits.Add(float64(c.Splits))
	}
}

// Read counts the etcd operations of a read served here.
func (m *metrics) Read(c shard.OpCounts) { m.count(c) }

func (m *metrics) count(c shard.OpCounts) {
	for _, x := range []struct {
		c prometheus.Counter
		n int
	}{{m.puts, c.Puts}, {m.deletes, c.Deletes}, {m.ranges, c.Ranges}, {m.txns, c.Txns}} {
		if x.n > 0 {
			x.c.Add(float64(x.n))
		}
	}
}

// Committed times a pebble commit of applied entries
// (etcd_disk_backend_commit_duration_seconds). Unlike bbolt's commit in
// etcd it holds no fsync: the raft log is the durable record.
func (m *metrics) Committed(d time.Duration) { m.commitSec.Observe(d.Seconds()) }

// Synced times an fsync of the state store (cairn_state_sync_duration_seconds).
func (m *metrics) Synced(d time.Duration) { m.syncSec.Observe(d.Seconds()) }

// ProposalFailed counts etcd_server_proposals_failed_total.
func (m *metrics) ProposalFailed() { m.proposalsFailed.Inc() }

// Restamped counts cairn_proposals_restamped_total.
func (m *metrics) Restamped() { m.restamped.Inc() }

// Took does nothing: slowApplies, which wraps metrics for the ranges,
// counts and logs the slow requests.
func (m *metrics) Took(shard.Timing) {}

// LeaderTransferred counts cairn_leader_transfers_total.
func (m *metrics) LeaderTransferred() { m.leaderTransfers.Inc() }

// CompactionFailed counts cairn_auto_compaction_failures_total
// (router.CompactorConfig.OnFailure).
func (m *metrics) CompactionFailed() { m.autoCompactionFailures.Inc() }

// What the oracle client reports (placement.OracleObserver).

// RoundTrip times a round trip to the oracle (cairn_oracle_round_trip_seconds)
// and counts the failed ones.
func (m *metrics) RoundTrip(d time.Duration, _ int64, err error) {
	m.oracleSec.Observe(d.Seconds())
	if err != nil {
		m.oracleFailures.Inc()
	}
}

// Allocated counts cairn_oracle_revisions_allocated_total.
func (m *metrics) Allocated(n int64) { m.oracleAllocated.Add(float64(n)) }

// leaderUpdated counts a leader change dragonboat reports:
// etcd_server_leader_changes_seen_total for range 1 (a new leader, not a
// lost one, as etcd counts), cairn_range_leader_changes_total for every
// range (the placement group left out). prev is range 1's leader before.
func (m *metrics) leaderUpdated(info raftio.LeaderInfo, prev uint64) {
	if info.LeaderID == 0 || info.ShardID == placementShardID {
		return
	}
	m.rangeLeaderChanges.Inc()
	if info.ShardID == singleShardID && info.LeaderID != prev {
		m.leaderChanges.Inc()
	}
}

// watchMethod is etcd's Watch stream, whose streams and watchers
// etcd_debugging_mvcc_watch_stream_total and …_watcher_total count.
const watchMethod = "/etcdserverpb.Watch/Watch"

// countWatches counts the open Watch streams and the watchers on them:
// a watcher counts from the response that says it was created (and not
// refused) until the one that says it was canceled, or its stream ends.
func (m *metrics) countWatches(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if info.FullMethod != watchMethod {
		return handler(srv, ss)
	}
	m.watchStreams.Inc()
	w := &watchCounter{ServerStream: ss, m: m, ids: map[int64]struct{}{}}
	defer func() {
		m.watchStreams.Dec()
		w.mu.Lock()
		m.watchers.Sub(float64(len(w.ids)))
		w.ids = nil
		w.mu.Unlock()
	}()
	return handler(srv, w)
}

// watchCounter is one Watch stream, whose responses it reads on their way
// out.
type watchCounter struct {
	grpc.ServerStream
	m   *metrics
	mu  sync.Mutex
	ids map[int64]struct{} // the stream's watchers; REQUIRES: mu
}

func (w *watchCounter) SendMsg(msg any) error {
	if r, ok := msg.(*pb.WatchResponse); ok && (r.Created || r.Canceled) {
		w.mu.Lock()
		if _, had := w.ids[r.WatchId]; w.ids != nil {
			switch {
			case r.Created && !r.Canceled && !had:
				w.ids[r.WatchId] = struct{}{}
				w.m.watchers.Inc()
			case r.Canceled && had:
				delete(w.ids, r.WatchId)
				w.m.watchers.Dec()
			}
		}
		w.mu.Unlock()
	}
	return w.ServerStream.SendMsg(msg)
}

// countForwards wraps the dial of other members' connections so that
// every call on them counts in cairn_forwarded_requests_total, by method
// (a closed set: the node-to-node service's and etcd's) and result.
func (m *metrics) countForwards(dial router.Dial) router.Dial {
	return func(member placement.NodeID) (grpc.ClientConnInterface, error) {
		cc, err := dial(member)
		if err != nil {
			return nil, err
		}
		return countingConn{cc, m}, nil
	}
}

type countingConn struct {
	grpc.ClientConnInterface
	m *metrics
}

func (c countingConn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	err := c.ClientConnInterface.Invoke(ctx, method, args, reply, opts...)
	c.m.forward(method, err)
	return err
}

func (c countingConn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	s, err := c.ClientConnInterface.NewStream(ctx, desc, method, opts...)
	if err == nil && (method == internalpb.Node_Forward_FullMethodName || method == internalpb.Node_Side_FullMethodName) {
		// One stream carries many writes, or side-channel messages: each
		// counts, as the unary call it stands for did.
		return countingSends{s, c.m, method}, nil
	}
	c.m.forward(method, err)
	return s, err
}

// countingSends counts what is sent on a Forward stream (each write) or a
// Side stream (each message), under the stream's method.
type countingSends struct {
	grpc.ClientStream
	m      *metrics
	method string
}

func (s countingSends) SendMsg(msg any) error {
	err := s.ClientStream.SendMsg(msg)
	n := 1
	if r, ok := msg.(*internalpb.ForwardRequest); ok {
		n = len(r.Writes)
	}
	for range n {
		s.m.forward(s.method, err)
	}
	return err
}

func (m *metrics) forward(method string, err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.forwarded.WithLabelValues(path.Base(method), result).Inc()
}

// timedBackups times the backups Snapshot writes
// (etcd_disk_backend_snapshot_duration_seconds).
type timedBackups struct {
	router.Backups
	m *metrics
}

func (b timedBackups) WriteBackup(id shard.RangeID, w io.Writer) error {
	defer b.m.time(b.m.snapshotSec)()
	return b.Backups.WriteBackup(id, w)
}

func (b timedBackups) WriteImage(ids []shard.RangeID, rev mvcc.Revision, w io.Writer) error {
	defer b.m.time(b.m.snapshotSec)()
	return b.Backups.WriteImage(ids, rev, w)
}

// time starts timing for h; the func returned observes the time taken.
func (m *metrics) time(h prometheus.Histogram) func() {
	start := time.Now()
	return func() { h.Observe(time.Since(start).Seconds()) }
}

// schedulerOp counts one of the scheduler's operations (nil-safe).
func (m *metrics) schedulerOp(kind placement.OpKind, result string) {
	if m == nil {
		return
	}
	m.schedulerOps.WithLabelValues(opName(kind), result).Inc()
}

// rangeMerge counts one merge the scheduler started, by outcome (nil-safe).
func (m *metrics) rangeMerge(outcome string) {
	if m == nil {
		return
	}
	m.rangeMerges.WithLabelValues(outcome).Inc()
}

// opName is kind as cairn_scheduler_operations_total's op label.
func opName(kind placement.OpKind) string {
	switch kind {
	case placement.OpRecreate:
		return "recreate"
	case placement.OpSplit:
		return "split"
	case placement.OpMove:
		return "move"
	case placement.OpTransferLeader:
		return "transfer-leader"
	case placement.OpMerge:
		return "merge"
	}
	return "unknown"
}
