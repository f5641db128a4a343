package node

import (
	"cmp"
	"context"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/api/v3/version"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/proto/placementpb"
	"github.com/cairn-kv/cairn/router"
	"github.com/cairn-kv/cairn/shard"
)

// The node's figures that are read rather than reported: what a scrape
// reads from memory (leaders, applied indexes, revisions, the store's
// size), and what a refresher computes every rangeStatsEvery and caches
// (each range's size, write and read rates, load key, closed-revision lag
// and live keys), so that no scrape scans data however many ranges the
// member holds.
//
// Cardinality stays bounded with thousands of ranges: no etcd-named series
// has a range label; the ranges' figures appear as histograms over the
// ranges (cairn_range_*), counts by role, and a top-10 by each figure
// (cairn_range_top_*{range_id}). Only MetricsExtensive adds one series per
// range and figure, for the ranges led here, at most maxRangeSeries of
// them (cairn_metrics_ranges_truncated says how many were left out).

// rangeStatsEvery is how often the refresher computes the ranges' figures.
const rangeStatsEvery = 15 * time.Second

// topRanges is how many ranges the top-k series name, per figure.
const topRanges = 10

// maxRangeSeries caps the ranges MetricsExtensive names.
const maxRangeSeries = 1000

// defaultQuotaBytes is etcd's default --quota-backend-bytes (2 GiB), which
// a zero Config.QuotaBackendBytes means.
const defaultQuotaBytes = 2 << 30

// rangeFigures are one range's figures as the refresher last computed them.
type rangeFigures struct {
	id    shard.RangeID
	leads bool
	// size is the disk space its versions take (an estimate); keys its
	// live keys.
	size uint64
	keys int64
	// rev is the store's revision when keys were counted.
	rev mvcc.Revision
	// proposed is Replica.Proposed then and read Replica.Reads; writes
	// and reads are the rates since the refresh before (requests served
	// here per second; 0 on the first).
	proposed, read uint64
	writes, reads  float64
	// loadKey divides the requests served here since the refresh before
	// about in half (shard.LoadKey of the replica's key sample, over the
	// span then); nil if the sample could not tell.
	loadKey []byte
	// gen is the range's generation then, since its generation at the
	// refresh before: while they differ (the range split or merged in the
	// window) writes, reads and loadKey describe another span
	// (currentLoad).
	gen, since uint64
	// lag is how far its closed revision is behind the most advanced
	// range here (sharded mode; 0 in single-group mode).
	lag int64
}

// currentLoad is f's writes, reads and load key if they describe range
// d as it is (no split or merge changed its span since the window they
// cover began), else none: a parent's figures from before its split are
// not its load now, nor is its load key inside its span.
func (f rangeFigures) currentLoad(d *placementpb.RangeDescriptor) (writes, reads float64, loadKey []byte) {
	if f.gen != f.since || f.gen != d.GetGeneration() {
		return 0, 0, nil
	}
	return f.writes, f.reads, f.loadKey
}

// rangeStatsSnapshot is one refresh's result; never changed once
// published.
type rangeStatsSnapshot struct {
	at     time.Time
	ranges []rangeFigures // in id order
	keys   int64          // Σ keys
}

// rangeStats is the node's refresher: one goroutine, owned by it, that
// refreshes the figures every rangeStatsEvery until Close. Refresh may
// also be called directly (tests); mu serialises refreshes.
type rangeStats struct {
	ranges func() []*shard.Range
	// sharded: closed revisions mean something (lag is computed).
	sharded bool
	every   time.Duration

	mu   sync.Mutex // serialises refresh
	last atomic.Pointer[rangeStatsSnapshot]

	stop chan struct{}
	wg   sync.WaitGroup
	once sync.Once

	// asked counts the placement scheduler's questions (schedstats.go).
	asked schedulerAsks
}

// schedulerAsks count the placement scheduler's questions about the
// ranges' figures, asked and answered here.
type schedulerAsks struct {
	// batched counts the RangeStats calls this member answered; single
	// the ChangeRange STATS calls (a range's, or range 0's disk use).
	batched, single atomic.Int64
	// reports counts the reports the scheduler gathered here, while this
	// member led the placement group (one a round).
	reports atomic.Int64
	// predate (tests) has this member answer RangeStats Unimplemented, as
	// a member that predates the call does.
	predate atomic.Bool
}

// asks is s's counts of the scheduler's questions (a throwaway when s is
// nil).
func (s *rangeStats) asks() *schedulerAsks {
	if s == nil {
		return &schedulerAsks{}
	}
	return &s.asked
}

// startRangeStats refreshes once now and then every every until Close.
func startRangeStats(ranges func() []*shard.Range, sharded bool, every time.Duration) *rangeStats {
	s := &rangeStats{ranges: ranges, sharded: sharded, every: every, stop: make(chan struct{})}
	s.last.Store(&rangeStatsSnapshot{})
	s.wg.Add(1)
	go s.run()
	return s
}

func (s *rangeStats) run() {
	defer s.wg.Done()
	t := time.NewTicker(s.every)
	defer t.Stop()
	for {
		s.refresh()
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
	}
}

// Close stops the refresher and waits for it; the last figures stay
// readable.
func (s *rangeStats) Close() {
	if s == nil {
		return
	}
	s.once.Do(func() { close(s.stop) })
	s.wg.Wait()
}

// snapshot is the last refresh's figures.
func (s *rangeStats) snapshot() *rangeStatsSnapshot {
	if s == nil {
		return &rangeStatsSnapshot{}
	}
	return s.last.Load()
}

// refresh computes every started range's figures. Counting a range's keys
// scans it, so a range is counted again only if its revision moved since.
func (s *rangeStats) refresh() {
	s.mu.Lock()
	defer s.mu.Unlock()
	prev := s.last.Load()
	before := map[shard.RangeID]rangeFigures{}
	for _, f := range prev.ranges {
		before[f.id] = f
	}
	now := time.Now()
	elapsed := now.Sub(prev.at).Seconds()
	type closedAt struct {
		i      int
		closed mvcc.Revision
	}
	var (
		out    []rangeFigures
		closed []closedAt
		front  mvcc.Revision
	)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, r := range s.ranges() {
		sm, rep := r.StateMachine(), r.Replica()
		if sm == nil || rep == nil {
			continue
		}
		st, err := rep.Status(ctx, false)
		if err != nil {
			continue // closed or not open yet: next time
		}
		d := r.Descriptor()
		f := rangeFigures{id: r.ID(), leads: r.Leads(), rev: st.Revision, proposed: rep.Proposed(), read: rep.Reads(),
			gen: d.GetGeneration(), since: d.GetGeneration()}
		f.loadKey = shard.LoadKey(rep.TakeKeySample(), d.GetStart(), d.GetEnd())
		if size, err := sm.DiskUsage(); err == nil {
			f.size = size
		}
		if b, ok := before[f.id]; ok && b.rev == st.Revision {
			f.keys = b.keys
		} else if keys, err := sm.Keys(); err == nil {
			f.keys = keys
		} else {
			f.rev = -1 // count again next time
		}
		if b, ok := before[f.id]; ok {
			f.since = b.gen
			if elapsed > 0 && f.proposed >= b.proposed {
				f.writes = float64(f.proposed-b.proposed) / elapsed
			}
			if elapsed > 0 && f.read >= b.read {
				f.reads = float64(f.read-b.read) / elapsed
			}
		}
		front = max(front, st.Closed, st.Revision)
		closed = append(closed, closedAt{len(out), st.Closed})
		out = append(out, f)
	}
	if s.sharded {
		for _, c := range closed {
			out[c.i].lag = int64(front - c.closed)
		}
	}
	slices.SortFunc(out, func(a, b rangeFigures) int { return cmp.Compare(a.id, b.id) })
	snap := &rangeStatsSnapshot{at: now, ranges: out}
	for _, f := range out {
		snap.keys += f.keys
	}
	s.last.Store(snap)
}

// nodeCollector is the node's Prometheus collector of what is read at
// scrape time: etcd's server and mvcc gauges, and the ranges' figures
// (the refresher's, cached).
type nodeCollector struct {
	n *Node
	// mu orders scrapes before the node's Close: once shut, Collect
	// reports nothing (the stores it reads are closing).
	mu   sync.RWMutex
	shut bool // REQUIRES: mu
}

// close makes later scrapes report nothing of the node, once the scrapes
// under way are done.
func (c *nodeCollector) close() {
	if c == nil {
		return
	}
	c.mu.Lock()
	c.shut = true
	c.mu.Unlock()
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

var (
	// etcd's, without a range label.
	descHasLeader      = desc("etcd_server_has_leader", "Whether or not a leader exists: 1 if range 1 and every range here have one, 0 otherwise.")
	descIsLeader       = desc("etcd_server_is_leader", "Whether or not this member is a leader (of range 1). 1 if is, 0 otherwise.")
	descIsLearner      = desc("etcd_server_is_learner", "Whether or not this member is a learner. 1 if is, 0 otherwise.")
	descQuota          = desc("etcd_server_quota_backend_bytes", "Current backend storage quota size in bytes.")
	descServerID       = desc("etcd_server_id", "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.", "server_id")
	descServerVersion  = desc("etcd_server_version", "Which version is running. 1 for 'server_version' label with current version.", "server_version")
	descClusterVersion = desc("etcd_cluster_version", "Which version is running. 1 for 'cluster_version' label with current cluster version", "cluster_version")
	descCommitted      = desc("etcd_server_proposals_committed_total", "The total number of consensus proposals committed (Σ applied index of the ranges here).")
	descApplied        = desc("etcd_server_proposals_applied_total", "The total number of consensus proposals applied (Σ applied index of the ranges here).")
	descPending        = desc("etcd_server_proposals_pending", "The current number of pending proposals to commit.")
	descDBSize         = desc("etcd_mvcc_db_total_size_in_bytes", "Total size of the underlying database physically allocated in bytes.")
	descDBInUse        = desc("etcd_mvcc_db_total_size_in_use_in_bytes", "Total size of the underlying database logically in use in bytes.")
	descKeys           = desc("etcd_debugging_mvcc_keys_total", "Total number of keys (the ranges here, counted at most 15 s ago).")
	descCurrentRev     = desc("etcd_debugging_mvcc_current_revision", "The current revision of store (the highest of the ranges here).")
	descCompactRev     = desc("etcd_debugging_mvcc_compact_revision", "The revision of the last compaction in store.")

	// Cairn's: the ranges here.
	descRanges           = desc("cairn_ranges", "The ranges this member holds a replica of, by role (leader or follower).", "role")
	descRangesNoLeader   = desc("cairn_ranges_without_leader", "The ranges here that know no leader.")
	descPlacementLeader  = desc("cairn_placement_is_leader", "Whether this member leads the placement group (sharded mode). 1 if it does, 0 otherwise.")
	descRangeSize        = desc("cairn_range_size_bytes", "The ranges here by the disk space their versions take (estimated).")
	descRangeWrites      = desc("cairn_range_writes_per_second", "The ranges led here by writes proposed per second.")
	descRangeLag         = desc("cairn_range_closed_lag_revisions", "The ranges led here by how far their closed revision is behind the most advanced range here.")
	descTopSize          = desc("cairn_range_top_size_bytes", "The largest ranges here (at most 10).", "range_id")
	descTopWrites        = desc("cairn_range_top_writes_per_second", "The ranges led here with the most writes per second (at most 10).", "range_id")
	descTopLag           = desc("cairn_range_top_closed_lag_revisions", "The ranges led here whose closed revision lags most (at most 10).", "range_id")
	descLedSize          = desc("cairn_range_led_size_bytes", "Each range led here: its size (--metrics=extensive).", "range_id")
	descLedWrites        = desc("cairn_range_led_writes_per_second", "Each range led here: its writes per second (--metrics=extensive).", "range_id")
	descLedLag           = desc("cairn_range_led_closed_lag_revisions", "Each range led here: its closed revision's lag (--metrics=extensive).", "range_id")
	descLedKeys          = desc("cairn_range_led_keys", "Each range led here: its live keys (--metrics=extensive).", "range_id")
	descTruncated        = desc("cairn_metrics_ranges_truncated", "Ranges led here left out of the per-range series (--metrics=extensive).")
	descRangeStatsAge    = desc("cairn_range_stats_age_seconds", "How old the ranges' figures are.")
	rangeSizeBuckets     = prometheus.ExponentialBuckets(1<<20, 4, 8) // 1 MiB … 16 GiB
	rangeWritesBuckets   = prometheus.ExponentialBuckets(1, 10, 6)    // 1 … 100k/s
	rangeLagBuckets      = prometheus.ExponentialBuckets(1, 10, 8)    // 1 … 10M revisions
	collectorDescriptors = []*prometheus.Desc{descHasLeader, descIsLeader, descIsLearner, descQuota, descServerID, descServerVersion,
		descClusterVersion, descCommitted, descApplied, descPending, descDBSize, descDBInUse, descKeys, descCurrentRev, descCompactRev,
		descRanges, descRangesNoLeader, descPlacementLeader, descRangeSize, descRangeWrites, descRangeLag, descTopSize, descTopWrites, descTopLag,
		descLedSize, descLedWrites, descLedLag, descLedKeys, descTruncated, descRangeStatsAge}
)

func (c *nodeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range collectorDescriptors {
		ch <- d
	}
}

func (c *nodeCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.shut {
		return
	}
	n := c.n
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	b2f := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	local := n.rangeSet.All()
	leaderless := 0
	if n.leaders != nil {
		leaderless = len(n.leaders.Leaderless().Ranges)
	}
	firstLed, firstLeads := false, false
	if first := n.first.Load(); first != nil {
		_, _, firstLed = first.Replica().Leader()
		firstLeads = first.Leads()
	} else if c := n.routes.Client(singleShardID); c != nil {
		_, firstLed = c.LeaderMember() // range 1 held elsewhere
	}
	gauge(descHasLeader, b2f(firstLed && leaderless == 0))
	gauge(descIsLeader, b2f(firstLeads))
	gauge(descIsLearner, b2f(n.learner.Load()))
	if n.cfg.Sharded {
		leader, _, ok, err := n.nh.GetLeaderID(placementShardID)
		gauge(descPlacementLeader, b2f(err == nil && ok && leader == n.memberID))
	}
	quota := n.cfg.QuotaBackendBytes
	if quota == 0 {
		quota = defaultQuotaBytes
	}
	gauge(descQuota, float64(max(quota, 0)))
	gauge(descServerID, 1, strconv.FormatUint(n.memberID, 16))
	gauge(descServerVersion, 1, version.Version)
	gauge(descClusterVersion, 1, version.Cluster(version.Version))
	var (
		applied          uint64
		pending          int64
		current          mvcc.Revision
		leaders, follows int
	)
	for _, r := range local {
		applied += r.AppliedIndex()
		if rep := r.Replica(); rep != nil {
			pending += rep.InFlight()
		}
		if sm := r.StateMachine(); sm != nil {
			current = max(current, sm.Rev())
		}
		if r.Leads() {
			leaders++
		} else {
			follows++
		}
	}
	gauge(descCommitted, float64(applied))
	gauge(descApplied, float64(applied))
	gauge(descPending, float64(pending))
	st := n.Status()
	gauge(descDBSize, float64(st.DBSize))
	gauge(descDBInUse, float64(st.DBSizeInUse))
	gauge(descCurrentRev, float64(current))
	compact := mvcc.Revision(0)
	if first := n.first.Load(); first == nil {
	} else if sm := first.StateMachine(); sm != nil {
		compact = max(sm.CompactRev(), 0)
	}
	gauge(descCompactRev, float64(compact))
	gauge(descRanges, float64(leaders), "leader")
	gauge(descRanges, float64(follows), "follower")
	gauge(descRangesNoLeader, float64(leaderless))

	snap := n.stats.snapshot()
	gauge(descKeys, float64(snap.keys))
	if !snap.at.IsZero() {
		gauge(descRangeStatsAge, time.Since(snap.at).Seconds())
	}
	var led []rangeFigures
	for _, f := range snap.ranges {
		if f.leads {
			led = append(led, f)
		}
	}
	figure := func(desc, top *prometheus.Desc, buckets []float64, ranges []rangeFigures, value func(rangeFigures) float64) {
		ch <- constHistogram(desc, buckets, ranges, value)
		sorted := slices.Clone(ranges)
		slices.SortStableFunc(sorted, func(a, b rangeFigures) int { return cmp.Compare(value(b), value(a)) })
		for _, f := range sorted[:min(len(sorted), topRanges)] {
			gauge(top, value(f), strconv.FormatUint(uint64(f.id), 10))
		}
	}
	size := func(f rangeFigures) float64 { return float64(f.size) }
	writes := func(f rangeFigures) float64 { return f.writes }
	lag := func(f rangeFigures) float64 { return float64(f.lag) }
	figure(descRangeSize, descTopSize, rangeSizeBuckets, snap.ranges, size)
	figure(descRangeWrites, descTopWrites, rangeWritesBuckets, led, writes)
	if n.cfg.Sharded {
		figure(descRangeLag, descTopLag, rangeLagBuckets, led, lag)
	}
	if n.cfg.MetricsLevel == MetricsExtensive {
		named := led[:min(len(led), maxRangeSeries)]
		for _, f := range named {
			id := strconv.FormatUint(uint64(f.id), 10)
			gauge(descLedSize, size(f), id)
			gauge(descLedWrites, writes(f), id)
			gauge(descLedKeys, float64(f.keys), id)
			if n.cfg.Sharded {
				gauge(descLedLag, lag(f), id)
			}
		}
		gauge(descTruncated, float64(len(led)-len(named)))
	}
}

// constHistogram is the histogram of value over ranges.
func constHistogram(d *prometheus.Desc, buckets []float64, ranges []rangeFigures, value func(rangeFigures) float64) prometheus.Metric {
	counts := make(map[float64]uint64, len(buckets))
	var sum float64
	for _, f := range ranges {
		v := value(f)
		sum += v
		for _, b := range buckets {
			if v <= b {
				counts[b]++
			}
		}
	}
	return prometheus.MustNewConstHistogram(d, uint64(len(ranges)), sum, counts)
}

var _ router.Backups = timedBackups{}
