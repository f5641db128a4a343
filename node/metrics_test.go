package node_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
)

// scrape reads url (a /metrics endpoint) in Prometheus' text format.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return fams
}

// handled is grpc_server_handled_total of KV's method with code; -1 if
// the series is missing.
func handled(fams map[string]*dto.MetricFamily, method, code string) float64 {
	f := fams["grpc_server_handled_total"]
	if f == nil {
		return -1
	}
	for _, m := range f.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		if labels["grpc_service"] == "etcdserverpb.KV" && labels["grpc_method"] == method && labels["grpc_code"] == code {
			return m.GetCounter().GetValue()
		}
	}
	return -1
}

// get answers GET url's status and body.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// TestMetricsEndpoints: /metrics on the client URL and on the metrics URL
// shows the node's gRPC calls with the process and Go runtime series; the
// metrics URL serves the probes and /metrics only; a second node in the
// same process counts its own calls alone, and a registry cannot serve two
// nodes.
func TestMetricsEndpoints(t *testing.T) {
	reg := prometheus.NewRegistry()
	metricsURL := func(c *node.Config) {
		c.Metrics = reg
		c.ListenMetricsURLs = []string{"http://127.0.0.1:0"}
	}
	c := nodetest.Start(t, 1, nodetest.Edit(metricsURL))
	other := nodetest.Start(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.Client(0).Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}

	murls := c.Node(0).MetricsURLs()
	if len(murls) != 1 {
		t.Fatalf("metrics URLs %v, want one", murls)
	}
	for _, base := range []string{c.URLs()[0], murls[0]} {
		fams := scrape(t, base+"/metrics")
		if got := handled(fams, "Put", "OK"); got != 1 {
			t.Errorf("%s/metrics: grpc_server_handled_total{Put, OK} = %v, want 1", base, got)
		}
		for _, name := range []string{"process_start_time_seconds", "process_cpu_seconds_total", "go_goroutines", "go_memstats_alloc_bytes"} {
			if fams[name] == nil {
				t.Errorf("%s/metrics: no %s", base, name)
			}
		}
		if _, ok := fams["grpc_server_handling_seconds"]; ok {
			t.Errorf("%s/metrics: grpc_server_handling_seconds at the basic level", base)
		}
	}
	if got, err := reg.Gather(); err != nil || len(got) == 0 {
		t.Errorf("the registry given gathers %d families, %v: the node does not register on it", len(got), err)
	}

	// The metrics URL: the probes and /metrics, nothing else.
	if code, body := get(t, murls[0]+"/health"); code != http.StatusOK || !strings.Contains(body, `"health":"true"`) {
		t.Errorf("metrics URL /health: %d %q", code, body)
	}
	for _, p := range []string{"/livez", "/readyz"} {
		if code, _ := get(t, murls[0]+p); code != http.StatusOK {
			t.Errorf("metrics URL %s: %d, want 200", p, code)
		}
	}
	for _, p := range []string{"/v3/kv/range", "/version", "/debug/vars", "/cairn/ranges"} {
		if code, _ := get(t, murls[0]+p); code != http.StatusNotFound {
			t.Errorf("metrics URL %s: %d, want 404", p, code)
		}
	}

	// Another node in the process: its own registry, where the Put above
	// is not (its series start at 0).
	if got := handled(scrape(t, other.URLs()[0]+"/metrics"), "Put", "OK"); got != 0 {
		t.Errorf("the other node's grpc_server_handled_total{Put, OK} = %v, want 0", got)
	}
	// A registry serves one node only.
	n, err := node.Start(ctx, node.Config{Name: "again", DataDir: t.TempDir(), Metrics: reg,
		ListenClientURLs: []string{"http://127.0.0.1:0"}, ListenPeerURLs: []string{"http://127.0.0.1:0"}})
	if err == nil {
		_ = n.Close()
		t.Fatal("a second node on the same registry started")
	}
	if !strings.Contains(err.Error(), "register metrics") {
		t.Errorf("a second node on the same registry: %v, want a registration error", err)
	}

	if _, err := node.Start(ctx, node.Config{MetricsLevel: "bogus"}); err == nil || !strings.Contains(err.Error(), "--metrics") {
		t.Errorf("MetricsLevel bogus: %v, want an error naming --metrics", err)
	}
}

// TestExtensiveMetrics: the extensive level adds the handling-time
// histograms.
func TestExtensiveMetrics(t *testing.T) {
	c := nodetest.Start(t, 1, nodetest.Edit(func(c *node.Config) { c.MetricsLevel = node.MetricsExtensive }))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.Client(0).Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	fams := scrape(t, c.URLs()[0]+"/metrics")
	f := fams["grpc_server_handling_seconds"]
	if f == nil || f.GetType() != dto.MetricType_HISTOGRAM {
		t.Fatalf("extensive: grpc_server_handling_seconds %v, want a histogram", f)
	}
}

// TestProbesWithoutQuorum: with two of three members stopped, the
// survivor's probes answer as etcd's do (kubeadm's liveness probe
// /livez passes, its readiness probe /readyz fails on
// linearizable_read, and /health says RAFT NO LEADER unless
// serializable), on the client URL and on --listen-metrics-urls. The
// request timeout, which a linearizable read without a leader waits out,
// is shortened to 1s (etcd's is 7s). The test mostly waits, so it runs
// in parallel with the package's other waiting tests.
func TestProbesWithoutQuorum(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		opts []nodetest.Option
	}{
		{"single-group", nil},
		{"sharded", []nodetest.Option{nodetest.Sharded("m")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := nodetest.Start(t, 3, append(tc.opts, nodetest.Edit(func(c *node.Config) {
				c.ListenMetricsURLs = []string{"http://127.0.0.1:0"}
				c.RequestTimeout = time.Second
			}))...)
			survivor := c.Node(2)
			bases := []string{survivor.ClientURLs()[0], survivor.MetricsURLs()[0]}
			// Every range elects its leader after the cluster answers: ready
			// once each has one.
			for _, base := range bases {
				nodetest.Eventually(t, base+"/readyz with every member up", func() bool {
					code, _ := get(t, base+"/readyz")
					return code == http.StatusOK
				})
			}
			for i := range 2 {
				if err := c.Stop(i); err != nil {
					t.Fatal(err)
				}
			}
			nodetest.Eventually(t, "the survivor's /health says RAFT NO LEADER", func() bool {
				code, body := get(t, bases[0]+"/health")
				return code == http.StatusServiceUnavailable && body == `{"health":"false","reason":"RAFT NO LEADER"}`+"\n"
			})
			for _, base := range bases {
				if code, body := get(t, base+"/health"); code != http.StatusServiceUnavailable || !strings.Contains(body, "RAFT NO LEADER") {
					t.Errorf("%s/health: %d %q, want 503 RAFT NO LEADER", base, code, body)
				}
				if code, body := get(t, base+"/health?serializable=true"); code != http.StatusOK {
					t.Errorf("%s/health?serializable=true: %d %q, want 200", base, code, body)
				}
				if code, body := get(t, base+"/livez"); code != http.StatusOK || body != "ok\n" {
					t.Errorf("%s/livez: %d %q, want 200 ok", base, code, body)
				}
				if code, body := get(t, base+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "[-]linearizable_read failed") ||
					!strings.Contains(body, "[+]serializable_read ok") {
					t.Errorf("%s/readyz: %d %q, want 503 with linearizable_read failed", base, code, body)
				}
			}
			// The older kubeadm probe.
			if code, body := get(t, bases[1]+"/health?exclude=NOSPACE&serializable=true"); code != http.StatusOK {
				t.Errorf("/health?exclude=NOSPACE&serializable=true: %d %q, want 200", code, body)
			}
			fams := scrape(t, bases[1]+"/metrics")
			if f := fams["etcd_server_health_failures"]; f == nil || f.GetMetric()[0].GetCounter().GetValue() < 1 {
				t.Errorf("etcd_server_health_failures %v, want at least 1", f)
			}
			if !hasSeries(fams, "etcd_server_healthchecks_total", map[string]string{"type": "readyz", "name": "linearizable_read", "status": "error"}) {
				t.Errorf("no etcd_server_healthchecks_total{readyz, linearizable_read, error}")
			}
		})
	}
}

// hasSeries reports whether family name has a series with labels (and
// maybe others).
func hasSeries(fams map[string]*dto.MetricFamily, name string, labels map[string]string) bool {
	for _, m := range fams[name].GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		match := true
		for k, v := range labels {
			match = match && got[k] == v
		}
		if match {
			return true
		}
	}
	return false
}

// TestShardedLeaderlessRange: with range 2 stopped on two of three
// members, the third refuses a require-leader read of range 2 with etcd's
// "no leader" and serves one of range 1, cancels a require-leader watch of
// range 2 with that error, reports it in Status, and its probes fail.
// The member counts leader checks (a second apart) before it cancels the
// watch, so the test runs in parallel with the package's other waiting
// tests.
func TestShardedLeaderlessRange(t *testing.T) {
	t.Parallel()
	c := nodetest.Start(t, 3, nodetest.Sharded("m"))
	var second uint64
	for _, r := range c.Node(2).Ranges() {
		if r.Start == "m" {
			second = r.ID
		}
	}
	if second == 0 {
		t.Fatalf("no range starts at m: %+v", c.Node(2).Ranges())
	}
	for i := range 2 {
		if err := c.Node(i).StopRangeReplica(second); err != nil {
			t.Fatal(err)
		}
	}
	url := c.Node(2).ClientURLs()[0]
	cli := nodetest.NewClient(t, url)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nodetest.WaitFor(ctx, t, func() error {
		rctx, rcancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), 5*time.Second)
		defer rcancel()
		_, err := cli.Get(rctx, "x", clientv3.WithSerializable())
		if err == nil || !strings.Contains(err.Error(), "etcdserver: no leader") {
			return fmt.Errorf("require-leader get of range %d: %v, want etcdserver: no leader", second, err)
		}
		return nil
	})
	if _, err := cli.Get(clientv3.WithRequireLeader(ctx), "a"); err != nil {
		t.Errorf("require-leader get of range 1: %v", err)
	}
	// A require-leader watch on range 2 is cancelled with "no leader" once
	// its member has counted three checks without one; Status keeps range
	// 1's leader and reports the error.
	wctx := metadata.AppendToOutgoingContext(ctx, rpctypes.MetadataRequireLeaderKey, rpctypes.MetadataHasLeader)
	ws, err := pb.NewWatchClient(cli.ActiveConnection()).Watch(wctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ws.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{Key: []byte("x")}}}); err != nil {
		t.Fatal(err)
	}
	for {
		r, err := ws.Recv()
		if err != nil {
			if got := status.Convert(err); got.Message() != status.Convert(rpctypes.ErrGRPCNoLeader).Message() {
				t.Errorf("require-leader watch of range %d ended with %v, want %v", second, err, rpctypes.ErrGRPCNoLeader)
			}
			break
		}
		if !r.Created {
			t.Fatalf("require-leader watch of range %d: %v, want it cancelled", second, r)
		}
	}
	if st, err := cli.Status(ctx, url); err != nil || st.Leader == 0 || !slices.Contains(st.Errors, "etcdserver: no leader") {
		t.Errorf("status: %v %v, want range 1's leader and etcdserver: no leader", st, err)
	}
	if code, body := get(t, url+"/health"); code != http.StatusServiceUnavailable || !strings.Contains(body, "RAFT NO LEADER") {
		t.Errorf("/health: %d %q, want 503 RAFT NO LEADER", code, body)
	}
	if code, body := get(t, url+"/readyz"); code != http.StatusServiceUnavailable ||
		!strings.Contains(body, fmt.Sprintf("[-]linearizable_read failed: etcdserver: no leader of range %d", second)) {
		t.Errorf("/readyz: %d %q, want 503 naming range %d", code, body, second)
	}
}
