package compat

import (
	"context"
	"net/http"
	"slices"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// etcdMetricNames are the etcd metrics Cairn exports (README "Metrics").
var etcdMetricNames = []string{
	"etcd_server_has_leader",
	"etcd_server_is_leader",
	"etcd_server_is_learner",
	"etcd_server_leader_changes_seen_total",
	"etcd_server_proposals_committed_total",
	"etcd_server_proposals_applied_total",
	"etcd_server_proposals_pending",
	"etcd_server_proposals_failed_total",
	"etcd_server_quota_backend_bytes",
	"etcd_server_id",
	"etcd_server_version",
	"etcd_cluster_version",
	"etcd_server_health_success",
	"etcd_server_health_failures",
	"etcd_disk_backend_commit_duration_seconds",
	"etcd_disk_backend_defrag_duration_seconds",
	"etcd_disk_backend_snapshot_duration_seconds",
	"etcd_disk_wal_fsync_duration_seconds",
	"etcd_disk_wal_write_bytes_total",
	"etcd_mvcc_db_total_size_in_bytes",
	"etcd_mvcc_db_total_size_in_use_in_bytes",
	"etcd_mvcc_put_total",
	"etcd_mvcc_delete_total",
	"etcd_mvcc_range_total",
	"etcd_mvcc_txn_total",
	"etcd_debugging_mvcc_keys_total",
	"etcd_debugging_mvcc_watcher_total",
	"etcd_debugging_mvcc_watch_stream_total",
	"etcd_debugging_mvcc_current_revision",
	"etcd_debugging_mvcc_compact_revision",
	"etcd_network_peer_round_trip_time_seconds",
	"grpc_server_handled_total",
	"grpc_server_started_total",
	"grpc_server_msg_received_total",
	"grpc_server_msg_sent_total",
}

// scrapeFamilies reads endpoint's /metrics.
func scrapeFamilies(t *testing.T, endpoint string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(endpoint + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("%s/metrics: %v", endpoint, err)
	}
	return fams
}

// labelNames is the sorted label names of a family's first series.
func labelNames(f *dto.MetricFamily) []string {
	var out []string
	if ms := f.GetMetric(); len(ms) > 0 {
		for _, l := range ms[0].GetLabel() {
			out = append(out, l.GetName())
		}
	}
	slices.Sort(out)
	return out
}

// TestMetricNamesMatchEtcd: each etcd metric Cairn exports exists on an
// etcd cluster and on a Cairn cluster of two members, after the same
// workload, with the same type and label names.
func TestMetricNamesMatchEtcd(t *testing.T) {
	etcd := startEtcdCluster(t, 2)
	cairn := startCairnCluster(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, endpoints := range [][]string{etcd, cairn} {
		cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints[:1], Logger: zap.NewNop()})
		if err != nil {
			t.Fatal(err)
		}
		defer cli.Close()
		if _, err := cli.Put(ctx, "k", "v"); err != nil {
			t.Fatal(err)
		}
		if _, err := cli.Get(ctx, "k"); err != nil {
			t.Fatal(err)
		}
		if _, err := cli.Delete(ctx, "k"); err != nil {
			t.Fatal(err)
		}
		if _, err := cli.Defragment(ctx, endpoints[0]); err != nil {
			t.Fatal(err)
		}
		if resp, err := http.Get(endpoints[0] + "/health"); err == nil {
			resp.Body.Close()
		}
	}
	// Both measure their peers' round trips every 5 s.
	var etcdFams, cairnFams map[string]*dto.MetricFamily
	deadline := time.Now().Add(40 * time.Second)
	for {
		etcdFams, cairnFams = scrapeFamilies(t, etcd[0]), scrapeFamilies(t, cairn[0])
		const rtt = "etcd_network_peer_round_trip_time_seconds"
		if etcdFams[rtt] != nil && cairnFams[rtt] != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s after 40 s: etcd %v, cairn %v", rtt, etcdFams[rtt] != nil, cairnFams[rtt] != nil)
		}
		time.Sleep(500 * time.Millisecond) // polling for a condition, with a deadline
	}
	for _, name := range etcdMetricNames {
		e, c := etcdFams[name], cairnFams[name]
		switch {
		case e == nil:
			t.Errorf("%s: not on etcd", name)
		case c == nil:
			t.Errorf("%s: not on Cairn", name)
		case e.GetType() != c.GetType():
			t.Errorf("%s: Cairn's is a %v, etcd's a %v", name, c.GetType(), e.GetType())
		case !slices.Equal(labelNames(e), labelNames(c)):
			t.Errorf("%s: Cairn's labels %v, etcd's %v", name, labelNames(c), labelNames(e))
		}
	}
}
