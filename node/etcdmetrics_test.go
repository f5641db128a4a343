package node_test

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
)

// value is the value of family name's series with labels (counter, gauge,
// or a histogram's count); -1 if there is none.
func value(fams map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	for _, m := range fams[name].GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		match := true
		for k, v := range labels {
			match = match && got[k] == v
		}
		if !match {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue()
		case m.Gauge != nil:
			return m.GetGauge().GetValue()
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount())
		}
	}
	return -1
}

// TestEtcdMetrics: etcd's server, mvcc, watch and disk metrics move by
// exactly what a workload does, in both modes: the mvcc operation
// counters as etcd counts them, the live keys as a CountOnly read counts
// them (after a refresh of the ranges' figures), the watchers and watch
// streams while a watch is open, the commit and defrag histograms.
func TestEtcdMetrics(t *testing.T) {
	for _, mode := range []struct {
		name string
		opts []nodetest.Option
	}{
		{"single-group", nil},
		{"sharded", []nodetest.Option{nodetest.Sharded("m")}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			c := nodetest.Start(t, 1, mode.opts...)
			n, cli, url := c.Node(0), c.Client(0), c.URLs()[0]+"/metrics"
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			before := scrape(t, url)
			must := func(_ any, err error) {
				t.Helper()
				if err != nil {
					t.Fatal(err)
				}
			}
			must(cli.Put(ctx, "a", "1"))
			must(cli.Put(ctx, "b", "1"))
			must(cli.Put(ctx, "z", "1"))
			must(cli.Delete(ctx, "a"))
			must(cli.Get(ctx, "b"))
			// One compare, one put, one range: one txn.
			must(cli.Txn(ctx).If(clientv3.Compare(clientv3.Version("a"), "=", 0)).
				Then(clientv3.OpPut("c", "1"), clientv3.OpGet("b")).Commit())
			// A single put: no txn.
			must(cli.Txn(ctx).Then(clientv3.OpPut("d", "1")).Commit())
			must(n.Defragment(ctx), nil)

			wctx, wcancel := context.WithCancel(ctx)
			defer wcancel()
			wch := cli.Watch(clientv3.WithRequireLeader(wctx), "w", clientv3.WithCreatedNotify())
			if r := <-wch; !r.Created {
				t.Fatalf("watch: %+v", r)
			}
			n.RefreshRangeStats()
			after := scrape(t, url)
			delta := func(name string) float64 {
				return value(after, name, nil) - max(value(before, name, nil), 0)
			}
			for name, want := range map[string]float64{
				"etcd_mvcc_put_total":                       5,
				"etcd_mvcc_delete_total":                    1,
				"etcd_mvcc_range_total":                     3,
				"etcd_mvcc_txn_total":                       1,
				"etcd_debugging_mvcc_watcher_total":         1,
				"etcd_debugging_mvcc_watch_stream_total":    1,
				"etcd_disk_backend_defrag_duration_seconds": 1,
				"etcd_server_proposals_failed_total":        0,
			} {
				if got := delta(name); got != want {
					t.Errorf("%s moved by %v, want %v", name, got, want)
				}
			}
			count, err := cli.Get(ctx, "", clientv3.WithPrefix(), clientv3.WithCountOnly())
			if err != nil {
				t.Fatal(err)
			}
			for name, want := range map[string]float64{
				"etcd_debugging_mvcc_keys_total":       float64(count.Count),
				"etcd_server_has_leader":               1,
				"etcd_server_is_leader":                1,
				"etcd_server_is_learner":               0,
				"etcd_server_quota_backend_bytes":      2 << 30,
				"etcd_debugging_mvcc_current_revision": float64(count.Header.Revision),
			} {
				if got := value(after, name, nil); got != want {
					t.Errorf("%s = %v, want %v", name, got, want)
				}
			}
			if delta("etcd_disk_backend_commit_duration_seconds") < 6 {
				t.Errorf("etcd_disk_backend_commit_duration_seconds counted %v commits, want at least the 6 writes'", delta("etcd_disk_backend_commit_duration_seconds"))
			}
			if value(after, "etcd_server_leader_changes_seen_total", nil) < 1 {
				t.Errorf("etcd_server_leader_changes_seen_total %v, want at least the first election", value(after, "etcd_server_leader_changes_seen_total", nil))
			}
			if a := value(after, "etcd_server_proposals_applied_total", nil); a <= value(before, "etcd_server_proposals_applied_total", nil) ||
				a != value(after, "etcd_server_proposals_committed_total", nil) {
				t.Errorf("proposals applied %v (before %v), committed %v", a, value(before, "etcd_server_proposals_applied_total", nil),
					value(after, "etcd_server_proposals_committed_total", nil))
			}
			if total, inUse := value(after, "etcd_mvcc_db_total_size_in_bytes", nil), value(after, "etcd_mvcc_db_total_size_in_use_in_bytes", nil); total <= 0 || inUse > total {
				t.Errorf("db size %v, in use %v", total, inUse)
			}
			if got := value(after, "etcd_server_id", map[string]string{"server_id": fmt.Sprintf("%x", n.MemberID())}); got != 1 {
				t.Errorf("etcd_server_id{server_id=%x} = %v", n.MemberID(), got)
			}

			// The watch canceled, its watcher and stream are gone.
			wcancel()
			nodetest.Eventually(t, "the watcher and its stream are no longer counted", func() bool {
				f := scrape(t, url)
				return value(f, "etcd_debugging_mvcc_watcher_total", nil) == max(value(before, "etcd_debugging_mvcc_watcher_total", nil), 0) &&
					value(f, "etcd_debugging_mvcc_watch_stream_total", nil) == max(value(before, "etcd_debugging_mvcc_watch_stream_total", nil), 0)
			})
		})
	}
}

// seriesOf lists the series of fams, one "name{labels}" each, leaving out
// the families skip names.
func seriesOf(fams map[string]*dto.MetricFamily, skip func(string) bool) []string {
	var out []string
	for name, f := range fams {
		if skip(name) {
			continue
		}
		for _, m := range f.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			sort.Strings(ls)
			out = append(out, name+"{"+strings.Join(ls, ",")+"}")
		}
	}
	sort.Strings(out)
	return out
}

// TestMetricsCardinality: splitting a member's 6 ranges into 40 leaves the
// series /metrics shows as they were, but for the top-10 series (which
// name ranges, at most 10 per figure); the ranges' histograms count every
// range and the splits counter each split.
func TestMetricsCardinality(t *testing.T) {
	c := nodetest.Start(t, 1, nodetest.Sharded("b", "d", "f", "h", "j"))
	n, url := c.Node(0), c.URLs()[0]+"/metrics"
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for i := range 6 {
		if _, err := c.Client(0).Put(ctx, fmt.Sprintf("%c", 'a'+2*i), "v"); err != nil {
			t.Fatal(err)
		}
	}
	// Both scrapes see a range led here with writes, and none that lags.
	n.RefreshRangeStats()
	n.RefreshRangeStats()
	top := func(name string) bool { return strings.HasPrefix(name, "cairn_range_top_") }
	// Series that come and go with activity, not with ranges.
	varying := func(name string) bool {
		return top(name) || name == "cairn_forwarded_requests_total" || strings.HasPrefix(name, "go_") || strings.HasPrefix(name, "promhttp_")
	}
	beforeFams := scrape(t, url)
	before := seriesOf(beforeFams, varying)
	splitsBefore := value(beforeFams, "cairn_range_splits_total", nil)

	for i := range 34 {
		if _, err := n.SplitRange(ctx, []byte(fmt.Sprintf("%c%02d", 'a'+2*(i%6), i))); err != nil {
			t.Fatalf("split %d: %v", i, err)
		}
	}
	var afterFams map[string]*dto.MetricFamily
	nodetest.Eventually(t, "40 ranges led here, in the ranges' figures", func() bool {
		n.RefreshRangeStats()
		afterFams = scrape(t, url)
		return value(afterFams, "cairn_ranges", map[string]string{"role": "leader"}) == 40 &&
			value(afterFams, "cairn_range_size_bytes", nil) == 40
	})
	after := seriesOf(afterFams, varying)
	if !slices.Equal(before, after) {
		t.Errorf("the series changed with 40 ranges:\nbefore %v\nafter  %v", before, after)
	}
	for name, f := range afterFams {
		if top(name) && len(f.GetMetric()) > 10 {
			t.Errorf("%s has %d series, want at most 10", name, len(f.GetMetric()))
		}
	}
	if got := len(afterFams["cairn_range_top_size_bytes"].GetMetric()); got != 10 {
		t.Errorf("cairn_range_top_size_bytes has %d series, want 10", got)
	}
	if got := value(afterFams, "cairn_range_splits_total", nil) - splitsBefore; got != 34 {
		t.Errorf("cairn_range_splits_total moved by %v, want 34", got)
	}
	if got := value(afterFams, "cairn_range_size_bytes", nil); got != 40 {
		t.Errorf("cairn_range_size_bytes counts %v ranges, want 40", got)
	}
	if got := value(afterFams, "cairn_ranges", map[string]string{"role": "leader"}); got != 40 {
		t.Errorf("cairn_ranges{role=leader} = %v, want 40", got)
	}
}

// TestExtensiveRangeMetrics: --metrics=extensive names each range led
// here, and none is left out below the cap.
func TestExtensiveRangeMetrics(t *testing.T) {
	c := nodetest.Start(t, 1, nodetest.Sharded("m"), nodetest.Edit(func(c *node.Config) { c.MetricsLevel = node.MetricsExtensive }))
	var fams map[string]*dto.MetricFamily
	nodetest.Eventually(t, "both ranges named", func() bool {
		c.Node(0).RefreshRangeStats()
		fams = scrape(t, c.URLs()[0]+"/metrics")
		return len(fams["cairn_range_led_size_bytes"].GetMetric()) == 2
	})
	for _, name := range []string{"cairn_range_led_keys", "cairn_range_led_writes_per_second", "cairn_range_led_closed_lag_revisions"} {
		if got := len(fams[name].GetMetric()); got != 2 {
			t.Errorf("%s has %d series, want 2", name, got)
		}
	}
	if got := value(fams, "cairn_metrics_ranges_truncated", nil); got != 0 {
		t.Errorf("cairn_metrics_ranges_truncated = %v, want 0", got)
	}
}

// TestPeerRoundTrip: every member measures the round trip to each other
// member (etcd_network_peer_round_trip_time_seconds{To}).
func TestPeerRoundTrip(t *testing.T) {
	c := nodetest.Start(t, 3)
	for i, n := range c.Nodes() {
		for j, peer := range c.Nodes() {
			if i == j {
				continue
			}
			to := map[string]string{"To": fmt.Sprintf("%x", peer.MemberID())}
			nodetest.Eventually(t, fmt.Sprintf("member %d measured member %d", i, j), func() bool {
				return value(scrape(t, n.ClientURLs()[0]+"/metrics"), "etcd_network_peer_round_trip_time_seconds", to) > 0
			})
		}
	}
}

// TestLeaderTransfersCounted: a MoveLeader that moves leadership counts
// one in cairn_leader_transfers_total on the member that asked; the
// others count none.
func TestLeaderTransfersCounted(t *testing.T) {
	c := nodetest.Start(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cli := c.Client(0)
	st, err := cli.Status(ctx, c.URLs()[0])
	if err != nil {
		t.Fatal(err)
	}
	ml, err := cli.MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	leaderURL, target := "", uint64(0)
	for _, m := range ml.Members {
		if m.ID == st.Leader {
			leaderURL = m.ClientURLs[0]
		} else {
			target = m.ID
		}
	}
	if _, err := nodetest.NewClient(t, leaderURL).MoveLeader(ctx, target); err != nil {
		t.Fatal(err)
	}
	for _, u := range c.URLs() {
		want := 0.0
		if u == leaderURL {
			want = 1
		}
		if got := value(scrape(t, u+"/metrics"), "cairn_leader_transfers_total", nil); got != want {
			t.Errorf("%s: cairn_leader_transfers_total = %v, want %v", u, got, want)
		}
	}
}
