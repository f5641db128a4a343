package node

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"

	"github.com/cairn-kv/cairn/router"
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
// small observer interfaces they declare (router.Observer), which metrics
// implements.
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
	for _, c := range []prometheus.Collector{
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewGoCollector(),
		m.grpc, m.healthSuccess, m.healthFailures, m.healthcheck, m.healthchecks,
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
	return []grpc.StreamServerInterceptor{m.grpc.StreamServerInterceptor()}
}

// serveMetrics starts, for each of --listen-metrics-urls, an HTTP server
// with /metrics and the probes (and no /version, /debug or gRPC), as etcd
// serves its metrics URLs. Close shuts them.
func (n *Node) serveMetrics(probes http.Handler) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", n.metrics.handler)
	mux.Handle("/", probes) // it answers 404 to any other path
	for _, raw := range n.cfg.ListenMetricsURLs {
		addr, _ := hostPort(raw) // withDefaults checked it
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("node: listen on metrics URL %s: %w", raw, err)
		}
		n.metricsURL = append(n.metricsURL, "http://"+l.Addr().String())
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

// MetricsURLs returns the bound metrics URLs (http://host:port), one per
// Config.ListenMetricsURLs; none without them.
func (n *Node) MetricsURLs() []string { return append([]string(nil), n.metricsURL...) }
