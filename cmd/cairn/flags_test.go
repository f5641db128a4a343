package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cairn-kv/cairn/node"
)

// etcd v3.7.3's server flags (embed.Config.AddFlags, etcdmain's own and its
// ignored list), read from its source: the ones that take a value, then the
// boolean ones.
var (
	etcdValueFlags = []string{
		"advertise-client-urls", "auth-token", "auth-token-ttl", "auto-compaction-mode",
		"auto-compaction-retention", "backend-batch-interval", "backend-batch-limit",
		"backend-bbolt-freelist-type", "bcrypt-cost", "bootstrap-defrag-threshold-megabytes", "cert-file",
		"cipher-suites", "client-cert-allowed-hostname", "client-cert-file", "client-crl-file",
		"client-key-file", "compact-hash-check-time", "compaction-batch-limit",
		"compaction-sleep-interval", "config-file", "corrupt-check-time", "cors", "data-dir",
		"discovery-cacert", "discovery-cert", "discovery-dial-timeout", "discovery-endpoints",
		"discovery-fallback", "discovery-keepalive-time", "discovery-keepalive-timeout", "discovery-key",
		"discovery-password", "discovery-request-timeout", "discovery-srv", "discovery-srv-name",
		"discovery-token", "discovery-user", "distributed-tracing-address",
		"distributed-tracing-instance-id", "distributed-tracing-sampling-rate",
		"distributed-tracing-service-name", "downgrade-check-time", "election-timeout", "feature-gates",
		"grpc-keepalive-interval", "grpc-keepalive-min-time", "grpc-keepalive-timeout",
		"heartbeat-interval", "host-whitelist", "initial-advertise-peer-urls", "initial-cluster",
		"initial-cluster-state", "initial-cluster-token", "key-file", "listen-client-http-urls",
		"listen-client-urls", "listen-metrics-urls", "listen-peer-urls", "log-format", "log-level",
		"log-outputs", "log-rotation-config-json", "logger", "max-concurrent-streams", "max-learners",
		"max-request-bytes", "max-snapshots", "max-txn-ops", "max-wals", "metrics", "name",
		"peer-cert-allowed-cn", "peer-cert-allowed-hostname", "peer-cert-file", "peer-client-cert-file",
		"peer-client-key-file", "peer-crl-file", "peer-key-file", "peer-trusted-ca-file",
		"quota-backend-bytes", "raft-read-timeout", "raft-write-timeout", "self-signed-cert-validity",
		"snapshot-catchup-entries", "snapshot-count", "tls-max-version", "tls-min-version",
		"trusted-ca-file", "v2-deprecation", "wal-dir", "warning-apply-duration",
		"warning-unary-request-duration", "watch-progress-notify-interval",
	}
	etcdBoolFlags = []string{
		"auto-tls", "client-cert-auth", "cluster-active-size", "cluster-remove-delay",
		"cluster-sync-interval", "config", "discovery-insecure-skip-tls-verify",
		"discovery-insecure-transport", "enable-distributed-tracing", "enable-grpc-gateway",
		"enable-log-rotation", "enable-pprof", "force", "force-new-cluster",
		"initial-election-tick-advance", "max-result-buffer", "max-retry-attempts", "memory-mlock",
		"peer-auto-tls", "peer-client-cert-auth", "peer-election-timeout", "peer-heartbeat-interval",
		"peer-skip-client-san-verification", "pre-vote", "retry-interval", "snapshot",
		"socket-reuse-address", "socket-reuse-port", "strict-reconfig-check", "test.coverprofile",
		"test.outputdir", "unsafe-no-fsync", "v", "version", "vv",
	}
)

// TestFlagSetIsEtcds: cairn defines exactly etcd's server flags, each in
// etcd's form (boolean or taking a value).
func TestFlagSetIsEtcds(t *testing.T) {
	var r rawFlags
	fs := newFlagSet(&r)
	want := map[string]bool{}
	for _, n := range etcdValueFlags {
		want[n] = false
	}
	for _, n := range etcdBoolFlags {
		want[n] = true
	}
	got := map[string]bool{}
	fs.VisitAll(func(f *flag.Flag) {
		b, ok := f.Value.(interface{ IsBoolFlag() bool })
		got[f.Name] = ok && b.IsBoolFlag()
	})
	for n, boolean := range want {
		if g, ok := got[n]; !ok {
			t.Errorf("etcd flag --%s is not defined", n)
		} else if g != boolean {
			t.Errorf("--%s: boolean %v, etcd's is %v", n, g, boolean)
		}
	}
	// Cairn's own flags, on top of etcd's.
	cairnOnly := map[string]bool{"debug-journal": true, "single-group": true, "initial-split-keys": true, "placement-replicas": true, "range-replicas": true,
		"placement-scheduler": true, "range-max-bytes": true, "range-split-load": true, "cross-range-writes": true, "range-min-bytes": true, "member-down-timeout": true,
		"raft-log-sync-metrics": true}
	for n := range got {
		if _, ok := want[n]; !ok && !cairnOnly[n] {
			t.Errorf("--%s is not an etcd server flag", n)
		}
	}
}

// effective lists every flag that takes effect, a value for it, and what
// it does to the config.
var effective = []struct {
	name, value string
	apply       func(*node.Config)
}{
	{"name", "m1", func(c *node.Config) { c.Name = "m1" }},
	{"data-dir", "/var/lib/m1", func(c *node.Config) { c.DataDir = "/var/lib/m1" }},
	{"listen-client-urls", "http://10.0.0.1:2379,http://127.0.0.1:2379,http://10.0.0.1:2379", func(c *node.Config) {
		c.ListenClientURLs = []string{"http://10.0.0.1:2379", "http://127.0.0.1:2379"}
	}},
	{"advertise-client-urls", "http://m1:2379", func(c *node.Config) { c.AdvertiseClientURLs = []string{"http://m1:2379"} }},
	{"listen-peer-urls", "http://10.0.0.1:2380", func(c *node.Config) { c.ListenPeerURLs = []string{"http://10.0.0.1:2380"} }},
	{"initial-advertise-peer-urls", "http://m1:2380", func(c *node.Config) { c.InitialAdvertisePeerURLs = []string{"http://m1:2380"} }},
	{"initial-cluster", "m1=http://m1:2380,m2=http://m2:2380", func(c *node.Config) { c.InitialCluster = "m1=http://m1:2380,m2=http://m2:2380" }},
	{"initial-cluster-state", "existing", func(c *node.Config) { c.InitialClusterState = "existing" }},
	{"initial-cluster-token", "tok", func(c *node.Config) { c.InitialClusterToken = "tok" }},
	{"quota-backend-bytes", "8589934592", func(c *node.Config) { c.QuotaBackendBytes = 8 << 30 }},
	{"max-request-bytes", "10485760", func(c *node.Config) { c.MaxRequestBytes = 10 << 20 }},
	{"max-txn-ops", "1024", func(c *node.Config) { c.MaxTxnOps = 1024 }},
	{"auto-compaction-mode", "revision", func(c *node.Config) { c.AutoCompactionMode = "revision" }},
	{"auto-compaction-retention", "1000", func(c *node.Config) { c.AutoCompactionRetention = "1000" }},
	{"heartbeat-interval", "50", func(c *node.Config) { c.HeartbeatInterval = 50 * time.Millisecond }},
	{"election-timeout", "500", func(c *node.Config) { c.ElectionTimeout = 500 * time.Millisecond }},
	{"snapshot-count", "5000", func(c *node.Config) { c.SnapshotCount = 5000 }},
	{"watch-progress-notify-interval", "30s", func(c *node.Config) { c.WatchProgressNotifyInterval = 30 * time.Second }},
	{"grpc-keepalive-min-time", "10s", func(c *node.Config) { c.GRPCKeepAliveMinTime = 10 * time.Second }},
	{"grpc-keepalive-interval", "1h", func(c *node.Config) { c.GRPCKeepAliveInterval = time.Hour }},
	{"grpc-keepalive-timeout", "30s", func(c *node.Config) { c.GRPCKeepAliveTimeout = 30 * time.Second }},
	{"log-level", "debug", func(*node.Config) {}},
	{"debug-journal", "/j", func(c *node.Config) { c.DebugJournal = "/j" }},
	{"logger", "zap", func(*node.Config) {}},
	{"initial-split-keys", "b,m", func(c *node.Config) { c.InitialSplitKeys = [][]byte{[]byte("b"), []byte("m")} }},
	{"placement-replicas", "5", func(c *node.Config) { c.PlacementReplicas = 5 }},
	{"range-replicas", "3", func(c *node.Config) { c.RangeReplicas = 3 }},
	{"range-max-bytes", "1048576", func(c *node.Config) { c.RangeMaxBytes = 1 << 20 }},
	{"range-split-load", "500", func(c *node.Config) { c.SplitLoad = 500 }},
	{"range-min-bytes", "-1", func(c *node.Config) { c.RangeMinBytes = -1 }},
	{"member-down-timeout", "1m", func(c *node.Config) { c.MemberDownTimeout = time.Minute }},
	{"metrics", "extensive", func(c *node.Config) { c.MetricsLevel = node.MetricsExtensive }},
	{"listen-metrics-urls", "http://127.0.0.1:2381,http://10.0.0.1:2381", func(c *node.Config) {
		c.ListenMetricsURLs = []string{"http://127.0.0.1:2381", "http://10.0.0.1:2381"}
	}},
	{"listen-client-http-urls", "http://127.0.0.1:2382", func(c *node.Config) { c.ListenClientHTTPURLs = []string{"http://127.0.0.1:2382"} }},
	{"host-whitelist", "localhost,m1.example", func(c *node.Config) { c.HostWhitelist = []string{"localhost", "m1.example"} }},
	{"wal-dir", "/fast/wal", func(c *node.Config) { c.WALDir = "/fast/wal" }},
	{"snapshot-catchup-entries", "20000", func(c *node.Config) { c.SnapshotCatchUpEntries = 20000 }},
	{"max-concurrent-streams", "100", func(c *node.Config) { c.MaxConcurrentStreams = 100 }},
	{"max-learners", "3", func(c *node.Config) { c.MaxLearners = 3 }},
	{"warning-unary-request-duration", "1s", func(c *node.Config) { c.WarningUnaryRequestDuration = time.Second }},
	{"warning-apply-duration", "250ms", func(c *node.Config) { c.WarningApplyDuration = 250 * time.Millisecond }},
}

// TestBooleanAndZeroFlags: the flags whose etcd default is on, or whose
// etcd zero means something, land in node.Config's inverted or negative
// fields, from the command line, the environment and the config file's
// values alike (fs.Set).
func TestBooleanAndZeroFlags(t *testing.T) {
	for _, tc := range []struct {
		args, env []string
		apply     func(*node.Config)
	}{
		{[]string{"--enable-grpc-gateway"}, nil, func(*node.Config) {}},
		{[]string{"--enable-grpc-gateway=false"}, nil, func(c *node.Config) { c.DisableGRPCGateway = true }},
		{nil, []string{"ETCD_ENABLE_GRPC_GATEWAY=false"}, func(c *node.Config) { c.DisableGRPCGateway = true }},
		{[]string{"--pre-vote=true"}, nil, func(*node.Config) {}},
		{[]string{"--pre-vote=false"}, nil, func(c *node.Config) { c.DisablePreVote = true }},
		{[]string{"--strict-reconfig-check=true"}, nil, func(*node.Config) {}},
		{[]string{"--strict-reconfig-check=false"}, nil, func(c *node.Config) { c.NoStrictReconfigCheck = true }},
		{[]string{"--placement-scheduler"}, nil, func(c *node.Config) { c.PlacementScheduler = true }},
		{nil, []string{"ETCD_PLACEMENT_SCHEDULER=true"}, func(c *node.Config) { c.PlacementScheduler = true }},
		{[]string{"--socket-reuse-port"}, nil, func(c *node.Config) { c.SocketReusePort = true }},
		{[]string{"--socket-reuse-address"}, nil, func(c *node.Config) { c.SocketReuseAddress = true }},
		{[]string{"--max-learners=1"}, nil, func(*node.Config) {}},
		{[]string{"--max-learners=0"}, nil, func(c *node.Config) { c.MaxLearners = -1 }},
	} {
		want := noFlags
		tc.apply(&want)
		o, err := parseFlags(tc.args, tc.env)
		if err != nil {
			t.Fatalf("%v %v: %v", tc.args, tc.env, err)
		}
		if !reflect.DeepEqual(o.cfg, want) {
			t.Errorf("%v %v: config %+v, want %+v", tc.args, tc.env, o.cfg, want)
		}
	}
	for _, args := range [][]string{{"--max-learners=-1"}, {"--max-concurrent-streams=4294967296"}} {
		if _, err := parseFlags(args, nil); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
}

// noFlags is the config parseFlags gives without flags: node's zero value,
// so that node applies etcd's defaults, but for the mode: sharded for a new
// data directory, the recorded one for an existing one.
var noFlags = node.Config{Sharded: true, AdoptRecordedMode: true}

// TestSingleGroupFlag: sharded mode unless --single-group (or
// ETCD_SINGLE_GROUP=true) asks for single-group mode; without the flag a
// data directory's recorded mode is adopted, with it the mode is asked for
// (node refuses a data directory of the other mode).
func TestSingleGroupFlag(t *testing.T) {
	for _, tc := range []struct {
		args, env      []string
		sharded, adopt bool
	}{
		{nil, nil, true, true},
		{nil, []string{"ETCD_SINGLE_GROUP="}, true, true}, // empty: not applied, as etcd
		{[]string{"--single-group"}, nil, false, false},
		{[]string{"--single-group=true"}, nil, false, false},
		{[]string{"--single-group=false"}, nil, true, false},
		{nil, []string{"ETCD_SINGLE_GROUP=true"}, false, false},
		{nil, []string{"ETCD_SINGLE_GROUP=false"}, true, false},
	} {
		o, err := parseFlags(tc.args, tc.env)
		if err != nil {
			t.Fatal(err)
		}
		if o.cfg.Sharded != tc.sharded || o.cfg.AdoptRecordedMode != tc.adopt {
			t.Errorf("%v %v: sharded %v, adopt the recorded mode %v; want %v, %v",
				tc.args, tc.env, o.cfg.Sharded, o.cfg.AdoptRecordedMode, tc.sharded, tc.adopt)
		}
	}
}

// TestEffectiveFlags: each flag that takes effect lands in node.Config,
// from the command line and from its ETCD_ variable alike.
func TestEffectiveFlags(t *testing.T) {
	want := noFlags
	var args, env []string
	for _, f := range effective {
		f.apply(&want)
		args = append(args, "--"+f.name, f.value)
		env = append(env, envName(f.name)+"="+f.value)
	}
	for _, tc := range []struct {
		name      string
		args, env []string
	}{
		{"command line", args, nil},
		{"environment", nil, env},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, err := parseFlags(tc.args, tc.env)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(o.cfg, want) {
				t.Errorf("config:\n got %+v\nwant %+v", o.cfg, want)
			}
			if o.log.Level != slog.LevelDebug {
				t.Errorf("log level %v, want debug", o.log.Level)
			}
			if len(o.ignored) != 0 {
				t.Errorf("ignored %v, want none", o.ignored)
			}
		})
	}
	// Each flag on its own changes exactly its own field.
	for _, f := range effective {
		w := noFlags
		f.apply(&w)
		o, err := parseFlags([]string{"--" + f.name + "=" + f.value}, nil)
		if err != nil {
			t.Fatalf("--%s=%s: %v", f.name, f.value, err)
		}
		if !reflect.DeepEqual(o.cfg, w) {
			t.Errorf("--%s=%s: config %+v, want %+v", f.name, f.value, o.cfg, w)
		}
	}
}

// TestMetricsFlagRefused: --metrics takes etcd's two levels only; another
// stops cairn before it starts anything, naming the flag.
func TestMetricsFlagRefused(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := run(ctx, []string{"--metrics=bogus", "--data-dir", t.TempDir()}, nil, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "--metrics") {
		t.Fatalf("--metrics=bogus: error %v, want one naming --metrics", err)
	}
}

// TestRaftLogSyncMetricsFlag: the raft log is timed unless
// --raft-log-sync-metrics=false (or ETCD_RAFT_LOG_SYNC_METRICS=false, how a
// benchmark run turns it off for every member it starts) says not to; the
// flag changes nothing in node.Config.
func TestRaftLogSyncMetricsFlag(t *testing.T) {
	for _, tc := range []struct {
		args, env []string
		untimed   bool
	}{
		{nil, nil, false},
		{[]string{"--raft-log-sync-metrics"}, nil, false},
		{[]string{"--raft-log-sync-metrics=false"}, nil, true},
		{nil, []string{"ETCD_RAFT_LOG_SYNC_METRICS=false"}, true},
		{nil, []string{"ETCD_RAFT_LOG_SYNC_METRICS=true"}, false},
	} {
		o, err := parseFlags(tc.args, tc.env)
		if err != nil {
			t.Fatalf("%v %v: %v", tc.args, tc.env, err)
		}
		if o.untimedRaftLog != tc.untimed {
			t.Errorf("%v %v: untimed raft log %v, want %v", tc.args, tc.env, o.untimedRaftLog, tc.untimed)
		}
		if !reflect.DeepEqual(o.cfg, noFlags) {
			t.Errorf("%v %v: config %+v, want the defaults", tc.args, tc.env, o.cfg)
		}
	}
}

// TestNoFlagsLeaveNodeDefaults: without flags the config is zero but for
// the mode (noFlags), so that node applies etcd's defaults.
func TestNoFlagsLeaveNodeDefaults(t *testing.T) {
	o, err := parseFlags(nil, []string{"PATH=/bin", "HOME=/root"})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(o.cfg, noFlags) || o.log.Level != slog.LevelInfo || o.version || len(o.ignored)+len(o.notes) != 0 {
		t.Fatalf("no flags gave %+v", o)
	}
}

// TestKeepaliveFlagsOff: etcd turns a gRPC keepalive setting off with 0
// (or a negative duration); node.Config's zero is etcd's default, so off
// is negative there. Not given, the setting stays zero.
func TestKeepaliveFlagsOff(t *testing.T) {
	for _, tc := range []struct {
		args, env []string
		want      [3]time.Duration // min time, interval, timeout
	}{
		{nil, nil, [3]time.Duration{}},
		{[]string{"--grpc-keepalive-min-time=0"}, nil, [3]time.Duration{-1, 0, 0}},
		{[]string{"--grpc-keepalive-interval", "0s", "--grpc-keepalive-timeout=-1s"}, nil, [3]time.Duration{0, -1, -time.Second}},
		{nil, []string{"ETCD_GRPC_KEEPALIVE_TIMEOUT=0"}, [3]time.Duration{0, 0, -1}},
	} {
		o, err := parseFlags(tc.args, tc.env)
		if err != nil {
			t.Fatal(err)
		}
		if got := [3]time.Duration{o.cfg.GRPCKeepAliveMinTime, o.cfg.GRPCKeepAliveInterval, o.cfg.GRPCKeepAliveTimeout}; got != tc.want {
			t.Errorf("%v %v: keepalive %v, want %v", tc.args, tc.env, got, tc.want)
		}
	}
}

func TestVersionAndLogFlags(t *testing.T) {
	for _, args := range [][]string{{"--version"}, {"-version"}, {"--version=true"}} {
		if o, err := parseFlags(args, nil); err != nil || !o.version {
			t.Errorf("%v: version %v, %v", args, o.version, err)
		}
	}
	levels := map[string]slog.Level{"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn,
		"error": slog.LevelError, "panic": slog.LevelError, "fatal": slog.LevelError}
	for v, want := range levels {
		if o, err := parseFlags([]string{"--log-level", v}, nil); err != nil || o.log.Level != want {
			t.Errorf("--log-level %s: %v, %v; want %v", v, o.log.Level, err, want)
		}
	}
	for _, args := range [][]string{{"--log-level", "loud"}, {"--logger", "capnslog"}, {"--logger", "logrus"}} {
		if _, err := parseFlags(args, nil); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
}

// TestIgnoredFlags: etcd flags without effect are accepted in etcd's form
// and reported once each, whether given once, twice or in the environment.
func TestIgnoredFlags(t *testing.T) {
	args := []string{
		"--cors", "http://a", "--cors=http://b", // twice
		"--enable-distributed-tracing", // boolean: takes no value, so --name below is a flag
		"--name", "m1",
		"-peer-skip-client-san-verification=false",
		"--discovery-password", "hunter2",
		"--snapshot", // etcd's own ignored list
	}
	env := []string{"ETCD_MAX_WALS=5", "ETCD_DATA_DIR=/data"}
	o, err := parseFlags(args, env)
	if err != nil {
		t.Fatal(err)
	}
	if o.cfg.Name != "m1" || o.cfg.DataDir != "/data" {
		t.Fatalf("name %q, data dir %q: want m1 and /data", o.cfg.Name, o.cfg.DataDir)
	}
	want := []ignoredFlag{
		{name: "cors", value: "http://b", source: "command line"},
		{name: "discovery-password", value: "***", source: "command line"},
		{name: "enable-distributed-tracing", value: "true", source: "command line"},
		{name: "max-wals", value: "5", source: "ETCD_MAX_WALS"},
		{name: "peer-skip-client-san-verification", value: "false", source: "command line"},
		{name: "snapshot", value: "true", source: "command line"},
	}
	var got []ignoredFlag
	for _, f := range o.ignored {
		if f.reason == "" {
			t.Errorf("--%s is ignored without a reason", f.name)
		}
		f.reason = ""
		got = append(got, f)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("ignored:\n got %+v\nwant %+v", got, want)
	}

	// The startup log reports each once.
	var buf bytes.Buffer
	o.report(slog.New(slog.NewJSONHandler(&buf, nil)))
	for _, f := range want {
		if n := strings.Count(buf.String(), `"flag":"--`+f.name+`"`); n != 1 {
			t.Errorf("--%s reported %d times in the log:\n%s", f.name, n, buf.String())
		}
	}
	if strings.Contains(buf.String(), "hunter2") {
		t.Errorf("the log shows a password:\n%s", buf.String())
	}

	// A flag that takes a value needs one, as in etcd.
	if _, err := parseFlags([]string{"--max-wals"}, nil); err == nil {
		t.Error("--max-wals without a value: no error")
	}
}

// TestUnknownFlags: flags etcd does not have either are errors, and so are
// stray arguments; --help is not an error.
func TestUnknownFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--no-such-flag"}, {"--no-such-flag=1"}, {"--name", "m1", "--listen-client-url", "http://x:1"},
		{"stray"}, {"--name", "m1", "stray"},
		{"--enable-grpc-gateway", "true"}, // a boolean takes its value as --flag=value only
	} {
		if _, err := parseFlags(args, nil); err == nil || errors.Is(err, flag.ErrHelp) {
			t.Errorf("%q: %v, want an error", args, err)
		}
	}
	for _, args := range [][]string{{"-h"}, {"--help"}} {
		if _, err := parseFlags(args, nil); !errors.Is(err, flag.ErrHelp) {
			t.Errorf("%q: %v, want flag.ErrHelp", args, err)
		}
	}
	var out bytes.Buffer
	if err := run(context.Background(), []string{"--help"}, nil, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"--initial-cluster-token", "--cert-file", "separate client certificates and allowed client host names are not implemented yet"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("--help does not mention %q:\n%s", s, out.String())
		}
	}
}

// TestEnvironment: ETCD_ variables set the flags the command line does not;
// as in etcd (pkg/flags), a variable whose flag is also on the command line
// is refused, an unrecognised ETCD_ variable is a warning, and ETCD_VERSION
// is never applied.
func TestEnvironment(t *testing.T) {
	t.Run("applies", func(t *testing.T) {
		o, err := parseFlags([]string{"--name", "cli"}, []string{"ETCD_DATA_DIR=/env", "ETCD_INITIAL_CLUSTER=cli=http://h:2380", "ETCD_MAX_TXN_OPS=7"})
		if err != nil {
			t.Fatal(err)
		}
		if o.cfg.Name != "cli" || o.cfg.DataDir != "/env" || o.cfg.InitialCluster != "cli=http://h:2380" || o.cfg.MaxTxnOps != 7 {
			t.Fatalf("config %+v", o.cfg)
		}
		if n := countNotes(o, "recognized and used environment variable"); n != 3 {
			t.Errorf("%d variables reported used, want 3: %+v", n, o.notes)
		}
	})
	t.Run("command line flag with its variable", func(t *testing.T) {
		// etcd exits: "conflicting environment variable is shadowed by
		// corresponding command-line flag".
		_, err := parseFlags([]string{"--name", "cli"}, []string{"ETCD_NAME=env"})
		if err == nil || !strings.Contains(err.Error(), "ETCD_NAME") || !strings.Contains(err.Error(), "--name") {
			t.Fatalf("--name with ETCD_NAME: %v, want a conflict naming both", err)
		}
		// Even for an ignored flag, and even when the variable is empty.
		if _, err := parseFlags([]string{"--cors=x"}, []string{"ETCD_CORS="}); err == nil {
			t.Fatal("--cors with ETCD_CORS: no error")
		}
	})
	t.Run("first of repeated variables", func(t *testing.T) {
		o, err := parseFlags(nil, []string{"ETCD_NAME=first", "ETCD_NAME=second"})
		if err != nil || o.cfg.Name != "first" {
			t.Fatalf("name %q, %v; want first", o.cfg.Name, err)
		}
	})
	t.Run("unrecognised", func(t *testing.T) {
		o, err := parseFlags(nil, []string{"ETCD_NO_SUCH_FLAG=1", "ETCDCTL_API=3", "ETCD_VERSION=1", "ETCD_UNSUPPORTED_ARCH=arm"})
		if err != nil {
			t.Fatal(err)
		}
		if o.version {
			t.Error("ETCD_VERSION was applied")
		}
		if n := countNotes(o, "unrecognized environment variable"); n != 2 {
			t.Errorf("%d unrecognised variables reported, want 2 (ETCD_NO_SUCH_FLAG, ETCD_UNSUPPORTED_ARCH): %+v", n, o.notes)
		}
		if n := countNotes(o, "cannot set special environment variable"); n != 1 {
			t.Errorf("ETCD_VERSION reported %d times, want once: %+v", n, o.notes)
		}
	})
	t.Run("empty variable is unset", func(t *testing.T) {
		o, err := parseFlags(nil, []string{"ETCD_NAME="})
		if err != nil || o.cfg.Name != "" {
			t.Fatalf("name %q, %v", o.cfg.Name, err)
		}
	})
	t.Run("bad value", func(t *testing.T) {
		_, err := parseFlags(nil, []string{"ETCD_HEARTBEAT_INTERVAL=soon"})
		if err == nil || !strings.Contains(err.Error(), "ETCD_HEARTBEAT_INTERVAL") {
			t.Fatalf("bad ETCD_HEARTBEAT_INTERVAL: %v", err)
		}
	})
}

func countNotes(o options, msg string) int {
	n := 0
	for _, x := range o.notes {
		if x.msg == msg {
			n++
		}
	}
	return n
}

// TestRunFromEnvironment starts a node in process through run, configured
// by ETCD_ variables and an ignored flag, and checks the log: the variables
// took effect and the ignored flag is reported once.
func TestRunFromEnvironment(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "from-env")
	env := []string{
		"ETCD_NAME=envnode",
		"ETCD_DATA_DIR=" + dir,
		"ETCD_LISTEN_CLIENT_URLS=http://127.0.0.1:0",
		"ETCD_LISTEN_PEER_URLS=http://127.0.0.1:0",
		"ETCD_HEARTBEAT_INTERVAL=20",
		"ETCD_ELECTION_TIMEOUT=200",
	}
	pr, pw := io.Pipe()
	var (
		mu    sync.Mutex
		lines []string
	)
	ready := make(chan struct{})
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(pr)
		once := sync.Once{}
		for sc.Scan() {
			mu.Lock()
			lines = append(lines, sc.Text())
			mu.Unlock()
			if strings.Contains(sc.Text(), "ready to serve client requests") {
				once.Do(func() { close(ready) })
			}
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--enable-distributed-tracing", "--log-level=info"}, env, io.Discard, pw)
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("run returned before the node was ready: %v", err)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatal("node not ready within 30s")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return within 30s of its context ending")
	}
	pw.Close()
	<-scanned
	log := strings.Join(lines, "\n")
	if n := strings.Count(log, `"flag":"--enable-distributed-tracing"`); n != 1 {
		t.Errorf("--enable-distributed-tracing reported %d times, want once:\n%s", n, log)
	}
	if !strings.Contains(log, `"name":"envnode"`) {
		t.Errorf("ETCD_NAME did not take effect:\n%s", log)
	}
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		t.Errorf("ETCD_DATA_DIR %s not created: %v", dir, err)
	}
	if n := strings.Count(log, "recognized and used environment variable"); n != len(env) {
		t.Errorf("%d variables reported used, want %d:\n%s", n, len(env), log)
	}
}

// TestTLSFlags: etcd's TLS flags fill node.Config's client and peer TLS and
// the shared settings, lists split at commas, and none is reported as
// ignored.
func TestTLSFlags(t *testing.T) {
	args := []string{
		"--listen-client-urls", "https://127.0.0.1:2379,unixs://cairn.sock",
		"--cert-file", "/c.pem", "--key-file", "/c-key.pem", "--trusted-ca-file", "/ca.pem", "--client-cert-auth",
		"--client-crl-file", "/c.crl", "--auto-tls", "--self-signed-cert-validity", "3",
		"--peer-cert-file", "/p.pem", "--peer-key-file", "/p-key.pem", "--peer-trusted-ca-file", "/pca.pem",
		"--peer-client-cert-auth", "--peer-auto-tls", "--peer-crl-file", "/p.crl", "--peer-cert-allowed-cn", "m1,m2",
		"--cipher-suites", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
		"--tls-min-version", "TLS1.2", "--tls-max-version", "TLS1.3",
	}
	o, err := parseFlags(args, []string{"ETCD_PEER_CERT_ALLOWED_HOSTNAME=h1"})
	if err != nil {
		t.Fatal(err)
	}
	wantClient := node.TLS{CertFile: "/c.pem", KeyFile: "/c-key.pem", TrustedCAFile: "/ca.pem", ClientCertAuth: true,
		CRLFile: "/c.crl", AutoTLS: true}
	wantPeer := node.TLS{CertFile: "/p.pem", KeyFile: "/p-key.pem", TrustedCAFile: "/pca.pem", ClientCertAuth: true,
		CRLFile: "/p.crl", AutoTLS: true, AllowedCNs: []string{"m1", "m2"}, AllowedHostnames: []string{"h1"}}
	if !reflect.DeepEqual(o.cfg.ClientTLS, wantClient) {
		t.Errorf("client TLS %+v, want %+v", o.cfg.ClientTLS, wantClient)
	}
	if !reflect.DeepEqual(o.cfg.PeerTLS, wantPeer) {
		t.Errorf("peer TLS %+v, want %+v", o.cfg.PeerTLS, wantPeer)
	}
	if !slices.Equal(o.cfg.CipherSuites, []string{"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"}) ||
		o.cfg.TLSMinVersion != "TLS1.2" || o.cfg.TLSMaxVersion != "TLS1.3" || o.cfg.SelfSignedCertValidity != 3 {
		t.Errorf("shared TLS settings: %q %q %q %d", o.cfg.CipherSuites, o.cfg.TLSMinVersion, o.cfg.TLSMaxVersion, o.cfg.SelfSignedCertValidity)
	}
	if !slices.Equal(o.cfg.ListenClientURLs, []string{"https://127.0.0.1:2379", "unixs://cairn.sock"}) {
		t.Errorf("client URLs %q", o.cfg.ListenClientURLs)
	}
	if len(o.ignored) != 0 {
		t.Errorf("ignored %+v, want none", o.ignored)
	}
}
