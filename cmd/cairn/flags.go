package main

// Flags: cairn takes etcd v3.7's server flags, so that it can replace the
// etcd binary in a deployment unchanged.
//
//   - Flags that mean the same thing in Cairn take effect (the effective
//     table below) and land in node.Config; node applies the defaults and
//     validates.
//   - Every other etcd server flag is accepted in etcd's form (boolean
//     flags without a value, the others with one) and logged once at
//     startup as ignored (the ignored table). Flags etcd does not have
//     either are errors.
//   - ETCD_<FLAG> environment variables (upper case, dashes to
//     underscores) set the flags the command line did not, as etcd's
//     pkg/flags does: a variable for a flag that is also on the command
//     line is refused (etcd exits with "conflicting environment variable
//     is shadowed by corresponding command-line flag"), an ETCD_ variable
//     that names no flag is logged as unrecognised, and ETCD_VERSION is
//     never applied.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/cairn-kv/cairn/node"
)

// envPrefix prefixes the environment variables of flags, as etcd's.
const envPrefix = "ETCD"

// options is what the command line and the environment ask of cairn.
type options struct {
	cfg     node.Config // without Logger: the caller builds it from log
	log     node.LogConfig
	version bool // print the version and exit
	// untimedRaftLog leaves the raft log's files untimed
	// (--raft-log-sync-metrics=false): node.TimeRaftLogSyncs is not called,
	// so that a benchmark can measure what the timing costs.
	untimedRaftLog bool
	// ignored lists the etcd flags given (on the command line or in the
	// environment) that Cairn does not act on, once each, by name.
	ignored []ignoredFlag
	// notes is what reading the environment has to report, in order.
	notes []note
}

// ignoredFlag is one etcd flag that was given and has no effect.
type ignoredFlag struct {
	name, value string
	source      string // "command line" or the environment variable
	reason      string
}

// note is a log record for the time the logger exists.
type note struct {
	level slog.Level
	msg   string
	attrs []any
}

// report logs the notes and each ignored flag, once.
func (o *options) report(log *slog.Logger) {
	for _, n := range o.notes {
		log.Log(context.Background(), n.level, n.msg, n.attrs...)
	}
	for _, f := range o.ignored {
		log.Warn("etcd flag has no effect in cairn; ignoring it", "flag", "--"+f.name, "value", f.value,
			"source", f.source, "reason", f.reason)
	}
}

// rawFlags holds the effective flags as parsed, before they are turned into
// node.Config.
type rawFlags struct {
	cfg                                                      node.Config
	listenClient, advertiseClient, listenPeer, advertisePeer string
	heartbeatMS, electionMS, maxRequestBytes, maxTxnOps      uint
	maxConcurrentStreams                                     uint
	logLevel, logger, logFormat, logOutputs, logRotation     string
	logRotate                                                bool
	configFile                                               string
	version                                                  bool
	singleGroup                                              bool
	splitKeys                                                string
	listenMetrics                                            string
	listenClientHTTP, hostWhitelist                          string
	enableGateway, preVote, strictReconfig                   bool
	raftLogSyncMetrics                                       bool
	crossRangeWrites                                         bool
	maxLearners                                              int
	// TLS flags that are lists.
	cipherSuites, peerAllowedCN, peerAllowedHostname string
	// Auth flags in etcd's units (seconds).
	authTokenTTL, bcryptCost uint
}

// newFlagSet defines every etcd server flag on a new flag set: the
// effective ones into r, the others as ignoredValues.
func newFlagSet(r *rawFlags) *flag.FlagSet {
	fs := flag.NewFlagSet("cairn", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned; --help prints usage
	fs.Usage = func() {}

	// Member.
	fs.StringVar(&r.cfg.Name, "name", "", "member name, unique in the cluster (default \"default\")")
	fs.StringVar(&r.cfg.DataDir, "data-dir", "", "directory for the member's raft log and store (default \"<name>.cairn\")")
	fs.StringVar(&r.listenClient, "listen-client-urls", "", "comma-separated http://, https://, unix:// or unixs:// URLs serving clients, gRPC and HTTP on one port (default http://127.0.0.1:2379)")
	fs.StringVar(&r.listenPeer, "listen-peer-urls", "", "comma-separated http:// or https:// URLs for raft and node-to-node traffic between members; the first one is bound (default http://127.0.0.1:2380)")
	fs.Uint64Var(&r.cfg.SnapshotCount, "snapshot-count", 0, "applied raft entries between snapshots that let the raft log be truncated (default 10000)")
	fs.Uint64Var(&r.cfg.SnapshotCatchUpEntries, "snapshot-catchup-entries", 0, "raft log entries kept behind a snapshot for slow followers to catch up from (default 5000, or half --snapshot-count if less)")
	fs.StringVar(&r.cfg.WALDir, "wal-dir", "", "directory for the raft log, apart from --data-dir (a member restarts with the same one) (default <data-dir>/raft)")
	fs.UintVar(&r.heartbeatMS, "heartbeat-interval", 0, "raft heartbeat interval in milliseconds, a multiple of 10 (default 100)")
	fs.UintVar(&r.electionMS, "election-timeout", 0, "raft election timeout in milliseconds, at least 5 heartbeats (default 1000)")
	fs.Int64Var(&r.cfg.QuotaBackendBytes, "quota-backend-bytes", 0, "store size in bytes past which writes that add data are refused with NOSPACE (default 2 GiB)")
	fs.UintVar(&r.maxRequestBytes, "max-request-bytes", 0, "largest client request accepted, in bytes (default 1.5 MiB)")
	fs.UintVar(&r.maxTxnOps, "max-txn-ops", 0, "most operations one transaction may hold (default 128)")
	fs.StringVar(&r.cfg.AuthToken, "auth-token", "", "the kind of auth token: simple, or jwt,sign-method=…,pub-key=…,priv-key=…,ttl=… (default simple)")
	fs.UintVar(&r.authTokenTTL, "auth-token-ttl", 0, "seconds a simple token lives unused (default 300)")
	fs.UintVar(&r.bcryptCost, "bcrypt-cost", 0, "cost of the bcrypt hash of passwords, 4 to 31 (default 10)")
	fs.DurationVar(&r.cfg.WatchProgressNotifyInterval, "watch-progress-notify-interval", 0, "how often watchers that asked for progress notifications get one (default 10m)")
	fs.StringVar(&r.cfg.AutoCompactionMode, "auto-compaction-mode", "", "how --auto-compaction-retention is read: periodic (a duration, or hours if a bare number) or revision (a number of revisions) (default periodic)")
	fs.StringVar(&r.cfg.AutoCompactionRetention, "auto-compaction-retention", "", "history kept by automatic compaction; 0 turns it off (default 0)")
	fs.DurationVar(&r.cfg.GRPCKeepAliveMinTime, "grpc-keepalive-min-time", 0, "least time a client must wait between keepalive pings; one that pings more often is sent GOAWAY too_many_pings (0: gRPC's own 5m) (default 5s)")
	fs.DurationVar(&r.cfg.GRPCKeepAliveInterval, "grpc-keepalive-interval", 0, "idle time after which the server pings a client connection (0: gRPC's own 2h) (default 2h0m0s)")
	fs.DurationVar(&r.cfg.GRPCKeepAliveTimeout, "grpc-keepalive-timeout", 0, "time the server waits for a ping's answer before it closes the connection (0: gRPC's own 20s) (default 20s)")
	fs.StringVar(&r.listenClientHTTP, "listen-client-http-urls", "", "comma-separated URLs (schemes as --listen-client-urls) serving HTTP alone: the JSON gateway, /metrics, the probes, /version; given, --listen-client-urls serve gRPC alone")
	fs.BoolVar(&r.enableGateway, "enable-grpc-gateway", true, "serve etcd's JSON gateway (POST /v3/kv/range, /v3/watch, …; /v3beta/ too) on the client URLs")
	fs.StringVar(&r.hostWhitelist, "host-whitelist", "", "comma-separated Host header values plain-HTTP client requests may carry, others get 421 (against DNS rebinding); empty or * allows any (default *)")
	fs.UintVar(&r.maxConcurrentStreams, "max-concurrent-streams", 0, "most concurrent streams on one client connection (default unbounded)")
	fs.DurationVar(&r.cfg.WarningUnaryRequestDuration, "warning-unary-request-duration", 0, "unary client requests taking longer are logged at warn as \"request stats\" (default 300ms)")
	fs.DurationVar(&r.cfg.WarningApplyDuration, "warning-apply-duration", 0, "applying a request (or reading it from the store) taking longer is logged at warn as \"apply request took too long\" (default 100ms)")
	fs.BoolVar(&r.cfg.SocketReusePort, "socket-reuse-port", false, "set SO_REUSEPORT on the client and peer listeners")
	fs.BoolVar(&r.cfg.SocketReuseAddress, "socket-reuse-address", false, "set SO_REUSEADDR on the client and peer listeners")

	// Clustering.
	fs.StringVar(&r.advertisePeer, "initial-advertise-peer-urls", "", "comma-separated peer URLs the other members reach this one at (default the listen peer URL)")
	fs.StringVar(&r.advertiseClient, "advertise-client-urls", "", "comma-separated client URLs this member reports to clients (default the bound listen client URLs)")
	fs.StringVar(&r.cfg.InitialCluster, "initial-cluster", "", "founding members as name=peer-URL pairs, comma-separated (default this member alone)")
	fs.StringVar(&r.cfg.InitialClusterState, "initial-cluster-state", "", "new to found a cluster, existing to join one after a MemberAdd; read at the first start only (default new)")
	fs.StringVar(&r.cfg.InitialClusterToken, "initial-cluster-token", "", "name that sets this cluster apart from others started with the same members; it seeds the cluster and member ids")
	fs.BoolVar(&r.strictReconfig, "strict-reconfig-check", true, "refuse a membership change that would leave fewer started, reachable voting members than a quorum")
	fs.BoolVar(&r.preVote, "pre-vote", true, "raft pre-vote in the ranges' raft groups: a member cut off from the others does not disrupt them on its return")
	fs.IntVar(&r.maxLearners, "max-learners", 1, "most learners the cluster may have; MemberAdd of one more is refused")

	// Security (node.TLS).
	fs.StringVar(&r.cfg.ClientTLS.CertFile, "cert-file", "", "client TLS certificate, served on https:// and unixs:// client URLs")
	fs.StringVar(&r.cfg.ClientTLS.KeyFile, "key-file", "", "client TLS key")
	fs.StringVar(&r.cfg.ClientTLS.TrustedCAFile, "trusted-ca-file", "", "CA verifying client certificates; given, a client certificate is required")
	fs.BoolVar(&r.cfg.ClientTLS.ClientCertAuth, "client-cert-auth", false, "require a verified client certificate on TLS client URLs")
	fs.StringVar(&r.cfg.ClientTLS.CRLFile, "client-crl-file", "", "certificate revocation list refusing client certificates")
	fs.BoolVar(&r.cfg.ClientTLS.AutoTLS, "auto-tls", false, "serve TLS client URLs with a self-signed certificate when --cert-file is not given")
	fs.StringVar(&r.cfg.PeerTLS.CertFile, "peer-cert-file", "", "peer TLS certificate, served on an https:// peer URL and presented to other members")
	fs.StringVar(&r.cfg.PeerTLS.KeyFile, "peer-key-file", "", "peer TLS key")
	fs.StringVar(&r.cfg.PeerTLS.TrustedCAFile, "peer-trusted-ca-file", "", "CA verifying the members' certificates; raft traffic is encrypted only with it, --peer-cert-file and --peer-key-file")
	fs.BoolVar(&r.cfg.PeerTLS.ClientCertAuth, "peer-client-cert-auth", false, "require a verified certificate of members calling this one")
	fs.StringVar(&r.cfg.PeerTLS.CRLFile, "peer-crl-file", "", "certificate revocation list refusing peer certificates (checked on the peer port: node-to-node calls and raft)")
	fs.BoolVar(&r.cfg.PeerTLS.AutoTLS, "peer-auto-tls", false, "serve the peer URL with a self-signed certificate when --peer-cert-file is not given (raft traffic then stays unencrypted)")
	fs.StringVar(&r.peerAllowedCN, "peer-cert-allowed-cn", "", "comma-separated common names a member's certificate must have one of (checked on the peer port: node-to-node calls and raft)")
	fs.StringVar(&r.peerAllowedHostname, "peer-cert-allowed-hostname", "", "comma-separated host names a member's certificate must be valid for one of (checked on the peer port: node-to-node calls and raft)")
	fs.UintVar(&r.cfg.SelfSignedCertValidity, "self-signed-cert-validity", 0, "validity in years of the certificates --auto-tls and --peer-auto-tls make (default 1)")
	fs.StringVar(&r.cipherSuites, "cipher-suites", "", "comma-separated TLS cipher suites, client and peer (default Go's)")
	fs.StringVar(&r.cfg.TLSMinVersion, "tls-min-version", "", "least TLS version accepted: TLS1.2 or TLS1.3 (default TLS1.2)")
	fs.StringVar(&r.cfg.TLSMaxVersion, "tls-max-version", "", "highest TLS version accepted: TLS1.2 or TLS1.3 (default Go's)")

	// Logging and the rest.
	fs.StringVar(&r.logger, "logger", "", "logger to use: zap, etcd's structured logs (default zap)")
	fs.StringVar(&r.logLevel, "log-level", "", "least severe level logged: debug, info, warn, error (panic, fatal and dpanic log as error) (default info)")
	fs.StringVar(&r.cfg.MetricsLevel, "metrics", "", "metrics exported at /metrics: basic, or extensive, which adds the gRPC handling-time histograms (default basic)")
	fs.StringVar(&r.listenMetrics, "listen-metrics-urls", "", "comma-separated http:// or https:// (with the client TLS settings) URLs serving /metrics and the probes (/health, /livez, /readyz) only, besides the client URLs")
	fs.StringVar(&r.logFormat, "log-format", "", "json (one JSON object a line, etcd's keys) or console (zap's tab-separated text) (default json)")
	fs.StringVar(&r.logOutputs, "log-outputs", "", "comma-separated log targets: default (stderr), stderr, stdout or file paths, appended to; default may not be combined with others (default default)")
	fs.BoolVar(&r.logRotate, "enable-log-rotation", false, "rotate the one file among --log-outputs, as --log-rotation-config-json says")
	fs.StringVar(&r.logRotation, "log-rotation-config-json", node.DefaultLogRotationJSON, "lumberjack's settings for log rotation: maxsize (MB), maxage (days, 0 keeps files forever), maxbackups (0: all), localtime (else UTC), compress (gzip)")
	fs.BoolVar(&r.cfg.EnablePprof, "enable-pprof", false, "serve Go's runtime profiles at the client URLs + /debug/pprof/")
	fs.BoolVar(&r.raftLogSyncMetrics, "raft-log-sync-metrics", true, "cairn only, a benchmarking aid: time the raft log's fsyncs and count its bytes (etcd_disk_wal_fsync_duration_seconds, etcd_disk_wal_write_bytes_total) through a file system wrapped around the raft log's files; false leaves them as dragonboat opens them and those metrics at 0, to measure what the timing costs")
	fs.StringVar(&r.cfg.DebugJournal, "debug-journal", "", "cairn only, a testing aid: append every applied raft entry to this file (the robustness suite checks it as etcd's checks its WAL)")
	fs.BoolVar(&r.version, "version", false, "print the version and exit")
	fs.StringVar(&r.configFile, "config-file", "", "etcd's YAML configuration file (keys are these flags' names); given, the other flags and ETCD_* variables are ignored")
	fs.BoolVar(&r.singleGroup, "single-group", false, "cairn only: one raft group holds every key, with dense revisions exactly as etcd's; the default is sharded mode: the key space runs as ranges, each its own raft group, with revisions unique and increasing but not dense. A data directory keeps the mode it was created in, which a start without this flag takes")
	fs.StringVar(&r.splitKeys, "initial-split-keys", "", "cairn only, sharded mode: comma-separated keys splitting a new cluster's key space into ranges; read at the first start only")
	fs.IntVar(&r.cfg.RangeReplicas, "range-replicas", 0, "cairn only, sharded mode: how many members hold each range (default 3): a new cluster's initial ranges are placed round robin on the founders, a member added later gets none until ranges are moved to it, and a removed member's ranges are moved off first; -1 puts every range on every member")
	fs.BoolVar(&r.crossRangeWrites, "cross-range-writes", true, "cairn only, sharded mode: a DeleteRange or Txn whose keys fall in several ranges commits atomically across them at one revision (docs/plan-txn.md); false refuses them with InvalidArgument, as Cairn did before")
	fs.BoolVar(&r.cfg.PlacementScheduler, "placement-scheduler", false, "cairn only, sharded mode: the placement leader's member moves replicas and leaders to even them out over the members and re-creates the replicas of members down longer than --member-down-timeout (off by default until it has soaked)")
	fs.Int64Var(&r.cfg.RangeMaxBytes, "range-max-bytes", 0, "cairn only, sharded mode, with --placement-scheduler: a range larger than this splits (default 64 MiB)")
	fs.Int64Var(&r.cfg.SplitLoad, "range-split-load", 0, "cairn only, sharded mode, with --placement-scheduler: a range serving more writes and reads per second than this for three scheduler rounds in a row splits where its load divides (default 2000)")
	fs.Int64Var(&r.cfg.RangeMinBytes, "range-min-bytes", 0, "cairn only, sharded mode, with --placement-scheduler: two adjacent cold ranges smaller together than this merge (default 16 MiB; negative: no merges)")
	fs.DurationVar(&r.cfg.MemberDownTimeout, "member-down-timeout", 0, "cairn only, sharded mode, with --placement-scheduler: how long a member does not answer before its replicas are re-created on others (default 5m)")
	fs.IntVar(&r.cfg.PlacementReplicas, "placement-replicas", 0, "cairn only, sharded mode: how many members vote in the placement group (the range map, the revision oracle and the member list), 3 or 5; every other member keeps a non-voting copy, and a cluster of that many members or fewer votes on all (default 3)")

	for _, g := range ignoredFlags {
		for _, name := range g.names {
			fs.Var(&ignoredValue{boolean: g.boolean, reason: g.reason}, name, "no effect: "+g.reason)
		}
	}
	return fs
}

// parseFlags reads the command line and the environment (as os.Environ
// gives it) into options.
func parseFlags(args, environ []string) (options, error) {
	var r rawFlags
	fs := newFlagSet(&r)
	if err := fs.Parse(args); err != nil {
		return options{}, err
	}
	if fs.NArg() > 0 {
		return options{}, fmt.Errorf("%q is not a valid flag", fs.Arg(0))
	}
	onCommandLine := map[string]bool{} // by flag name
	fs.Visit(func(f *flag.Flag) { onCommandLine[f.Name] = true })
	configFile := r.configFile
	if !onCommandLine["config-file"] {
		configFile = envValue(environ, envName("config-file"))
	}
	var (
		notes  []note
		inFile map[string]bool // by flag name: set by the config file
		err    error
	)
	if configFile != "" {
		// As etcd: the file alone configures the member.
		r = rawFlags{}
		fs = newFlagSet(&r)
		if notes, inFile, err = applyConfigFile(fs, configFile); err != nil {
			return options{}, err
		}
	} else if notes, err = applyEnv(fs, environ, onCommandLine); err != nil {
		return options{}, err
	}
	r.cfg.RefuseCrossRangeWrites = !r.crossRangeWrites
	o := options{cfg: r.cfg, version: r.version, notes: notes, untimedRaftLog: !r.raftLogSyncMetrics}
	given := map[string]bool{} // by flag name: on the command line or in the environment
	fs.Visit(func(f *flag.Flag) {
		given[f.Name] = true
		v, ok := f.Value.(*ignoredValue)
		if !ok {
			return
		}
		source := "command line"
		switch {
		case inFile[f.Name]:
			source = "config file " + configFile
		case !onCommandLine[f.Name]:
			source = envName(f.Name)
		}
		o.ignored = append(o.ignored, ignoredFlag{name: f.Name, value: redact(f.Name, v.value), source: source, reason: v.reason})
	})

	// Sharded is the default for a new data directory; one that records
	// its mode starts in it unless the flag asks for a mode (node then
	// refuses the other one).
	o.cfg.Sharded = !r.singleGroup
	o.cfg.AdoptRecordedMode = !given["single-group"]
	if r.splitKeys != "" {
		for _, k := range strings.Split(r.splitKeys, ",") {
			o.cfg.InitialSplitKeys = append(o.cfg.InitialSplitKeys, []byte(k))
		}
	}
	// etcd turns a keepalive setting off with 0 (or less); node.Config's
	// zero is the default, so a setting given as 0 becomes negative.
	for name, d := range map[string]*time.Duration{"grpc-keepalive-min-time": &o.cfg.GRPCKeepAliveMinTime,
		"grpc-keepalive-interval": &o.cfg.GRPCKeepAliveInterval, "grpc-keepalive-timeout": &o.cfg.GRPCKeepAliveTimeout} {
		if given[name] && *d == 0 {
			*d = -1
		}
	}
	o.cfg.ListenClientURLs = splitURLs(r.listenClient)
	o.cfg.AdvertiseClientURLs = splitURLs(r.advertiseClient)
	o.cfg.ListenPeerURLs = splitURLs(r.listenPeer)
	o.cfg.InitialAdvertisePeerURLs = splitURLs(r.advertisePeer)
	o.cfg.ListenMetricsURLs = splitURLs(r.listenMetrics)
	o.cfg.ListenClientHTTPURLs = splitURLs(r.listenClientHTTP)
	o.cfg.HostWhitelist = splitURLs(r.hostWhitelist)
	o.cfg.DisableGRPCGateway = !r.enableGateway
	o.cfg.DisablePreVote = !r.preVote
	o.cfg.NoStrictReconfigCheck = !r.strictReconfig
	// node.Config's zero is the default of 1; etcd's 0 (no learners) is
	// negative there.
	switch {
	case r.maxLearners < 0:
		return options{}, fmt.Errorf("--max-learners %d: want at least 0", r.maxLearners)
	case r.maxLearners == 0:
		o.cfg.MaxLearners = -1
	case r.maxLearners != 1:
		o.cfg.MaxLearners = r.maxLearners
	}
	if uint64(r.maxConcurrentStreams) > math.MaxUint32 {
		return options{}, fmt.Errorf("--max-concurrent-streams %d: too large", r.maxConcurrentStreams)
	}
	o.cfg.MaxConcurrentStreams = uint32(r.maxConcurrentStreams)
	o.cfg.CipherSuites = splitURLs(r.cipherSuites)
	o.cfg.PeerTLS.AllowedCNs = splitURLs(r.peerAllowedCN)
	o.cfg.PeerTLS.AllowedHostnames = splitURLs(r.peerAllowedHostname)
	if o.cfg.HeartbeatInterval, err = millis("heartbeat-interval", r.heartbeatMS); err != nil {
		return options{}, err
	}
	if o.cfg.ElectionTimeout, err = millis("election-timeout", r.electionMS); err != nil {
		return options{}, err
	}
	if o.cfg.MaxRequestBytes, err = toInt("max-request-bytes", r.maxRequestBytes); err != nil {
		return options{}, err
	}
	if o.cfg.MaxTxnOps, err = toInt("max-txn-ops", r.maxTxnOps); err != nil {
		return options{}, err
	}
	o.cfg.AuthTokenTTL = time.Duration(r.authTokenTTL) * time.Second
	if o.cfg.BcryptCost, err = toInt("bcrypt-cost", r.bcryptCost); err != nil {
		return options{}, err
	}
	switch r.logger {
	case "", "zap":
	case "capnslog":
		return options{}, errors.New("--logger=capnslog was removed in etcd v3.5; use zap")
	default:
		return options{}, fmt.Errorf("--logger %q: only zap is supported", r.logger)
	}
	if o.log.Level, err = logLevel(r.logLevel); err != nil {
		return options{}, err
	}
	o.log.Format, o.log.Rotate, o.log.RotationJSON = r.logFormat, r.logRotate, r.logRotation
	for _, out := range strings.Split(r.logOutputs, ",") {
		if out = strings.TrimSpace(out); out != "" && !slices.Contains(o.log.Outputs, out) {
			o.log.Outputs = append(o.log.Outputs, out)
		}
	}
	return o, nil
}

// applyEnv sets from ETCD_* variables the flags the command line did not
// set, as etcd's flags.SetFlagsFromEnv does, and returns what to log about
// it.
func applyEnv(fs *flag.FlagSet, environ []string, onCommandLine map[string]bool) ([]note, error) {
	const special = envPrefix + "_VERSION" // would turn the server into a version printer
	env := map[string]string{}
	for _, kv := range environ {
		k, v, _ := strings.Cut(kv, "=")
		if _, dup := env[k]; !dup { // the first one wins, as in os.Getenv
			env[k] = v
		}
	}
	var notes []note
	if v, ok := env[special]; ok && v != "" {
		notes = append(notes, note{slog.LevelWarn, "cannot set special environment variable", []any{"key", special, "value", v}})
	}
	shadowed := map[string]string{} // env name -> flag name, for flags on the command line
	used := map[string]bool{}
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		key := envName(f.Name)
		if onCommandLine[f.Name] {
			shadowed[key] = f.Name
			return
		}
		v := env[key]
		if v == "" || key == special {
			return
		}
		used[key] = true
		if serr := fs.Set(f.Name, v); serr != nil {
			err = fmt.Errorf("invalid value %q for %s: %v", v, key, serr)
			return
		}
		notes = append(notes, note{slog.LevelInfo, "recognized and used environment variable", []any{"variable-name", key, "variable-value", redact(f.Name, v)}})
	})
	if err != nil {
		return nil, err
	}
	for _, kv := range environ {
		key, _, ok := strings.Cut(kv, "=")
		switch {
		case !ok:
			notes = append(notes, note{slog.LevelWarn, "found invalid environment variable", []any{"environment-variable", kv}})
		case used[key] || key == special:
		case shadowed[key] != "":
			return nil, fmt.Errorf("conflicting environment variable %s is shadowed by the command-line flag --%s: unset the variable or drop the flag (etcd refuses this too)", key, shadowed[key])
		case strings.HasPrefix(key, envPrefix+"_"):
			notes = append(notes, note{slog.LevelWarn, "unrecognized environment variable", []any{"environment-variable", key}})
		}
	}
	return notes, nil
}

// envValue is the first value of key in environ, "" if none.
func envValue(environ []string, key string) string {
	for _, kv := range environ {
		if k, v, _ := strings.Cut(kv, "="); k == key {
			return v
		}
	}
	return ""
}

// envName is a flag's environment variable: ETCD_ and the name in upper
// case with dashes as underscores.
func envName(flagName string) string {
	return envPrefix + "_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// redact hides the values of secrets in logs.
func redact(flagName, v string) string {
	if strings.Contains(flagName, "password") && v != "" {
		return "***"
	}
	return v
}

// splitURLs splits a comma-separated URL list, dropping blanks and
// repeats (etcd keeps each URL once).
func splitURLs(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

func millis(name string, ms uint) (time.Duration, error) {
	if uint64(ms) > uint64(math.MaxInt64/int64(time.Millisecond)) {
		return 0, fmt.Errorf("--%s %d: too large", name, ms)
	}
	return time.Duration(ms) * time.Millisecond, nil
}

func toInt(name string, v uint) (int, error) {
	if uint64(v) > math.MaxInt {
		return 0, fmt.Errorf("--%s %d: too large", name, v)
	}
	return int(v), nil
}

// logLevel reads etcd's --log-level (zap's level names).
func logLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "", "info":
		return slog.LevelInfo, nil
	case "warn":
		return slog.LevelWarn, nil
	case "error", "dpanic", "panic", "fatal":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("--log-level %q: want debug, info, warn, error, panic or fatal", s)
}

// ignoredValue is an etcd flag Cairn accepts and does not act on; it keeps
// the value given so that the startup log can show it.
type ignoredValue struct {
	boolean bool
	reason  string
	value   string
}

func (v *ignoredValue) String() string {
	if v == nil {
		return ""
	}
	return v.value
}

func (v *ignoredValue) Set(s string) error { v.value = s; return nil }

// IsBoolFlag makes the flag package take etcd's boolean flags without a
// value.
func (v *ignoredValue) IsBoolFlag() bool { return v.boolean }

// ignoredFlags are etcd v3.7's server flags that have no effect in Cairn,
// grouped by why.
var ignoredFlags = []struct {
	reason  string
	boolean bool
	names   []string
}{
	{"separate client certificates and allowed client host names are not implemented yet", false, []string{
		"client-cert-file", "client-key-file", "client-cert-allowed-hostname", "peer-client-cert-file", "peer-client-key-file"}},
	{"peer certificates are not checked against the caller's address", true, []string{
		"peer-skip-client-san-verification"}},
	{"discovery is not supported; name the founding members with --initial-cluster", false, []string{
		"discovery-endpoints", "discovery-token", "discovery-dial-timeout", "discovery-request-timeout",
		"discovery-keepalive-time", "discovery-keepalive-timeout", "discovery-cert", "discovery-key",
		"discovery-cacert", "discovery-user", "discovery-password", "discovery-srv", "discovery-srv-name",
		"discovery-fallback"}},
	{"discovery is not supported; name the founding members with --initial-cluster", true, []string{
		"discovery-insecure-transport", "discovery-insecure-skip-tls-verify"}},
	{"cairn sends no CORS headers", false, []string{"cors"}},
	{"cairn stores data in pebble and raft logs in dragonboat, which do not take etcd's bbolt and WAL settings", false, []string{
		"max-snapshots", "max-wals", "backend-bbolt-freelist-type", "backend-batch-interval",
		"backend-batch-limit", "bootstrap-defrag-threshold-megabytes"}},
	{"cairn's compaction has no such pacing settings", false, []string{
		"compaction-batch-limit", "compaction-sleep-interval"}},
	{"cairn stores data in pebble and raft logs in dragonboat, which do not take etcd's bbolt and WAL settings", true, []string{
		"memory-mlock", "unsafe-no-fsync"}},
	{"dragonboat's raft transport and election settings are fixed", false, []string{
		"raft-read-timeout", "raft-write-timeout"}},
	{"dragonboat's raft transport and election settings are fixed", true, []string{
		"initial-election-tick-advance"}},
	{"recovering a cluster by force is not supported", true, []string{"force-new-cluster"}},
	{"tracing is not implemented", false, []string{
		"distributed-tracing-address", "distributed-tracing-service-name",
		"distributed-tracing-instance-id", "distributed-tracing-sampling-rate"}},
	{"tracing is not implemented", true, []string{"enable-distributed-tracing"}},
	{"cairn runs no such periodic check", false, []string{
		"corrupt-check-time", "compact-hash-check-time", "downgrade-check-time"}},
	{"etcd's feature gates and v2 store do not apply to cairn", false, []string{"feature-gates", "v2-deprecation"}},
	// etcd accepts these (as value-less flags) and ignores them itself.
	{"etcd ignores it as well", true, []string{
		"cluster-active-size", "cluster-remove-delay", "cluster-sync-interval", "config", "force",
		"max-result-buffer", "max-retry-attempts", "peer-heartbeat-interval", "peer-election-timeout",
		"retry-interval", "snapshot", "v", "vv", "test.coverprofile", "test.outputdir"}},
}

// usage prints the flags: the effective ones with their meaning, then the
// ignored ones by reason.
func usage(w io.Writer) {
	var r rawFlags
	fs := newFlagSet(&r)
	fmt.Fprint(w, `Usage:

  cairn [flags]
    Start a Cairn member. It takes etcd's server flags; each flag can also
    be given as an ETCD_<FLAG> environment variable (ETCD_DATA_DIR for
    --data-dir), which a flag on the command line may not contradict.

  cairn ranges [--endpoints host:port,...] [-w simple|json|table]
    Print the range map of a sharded cluster (leaders, keys, revisions).
  cairn range split [--endpoints host:port,...] [-w simple|json|table] <key>
    Split the range holding key at key, in place, while it serves.
  cairn range move <range> <from-member> <to-member>
    Move a range's replica from one member to another, online (ids in hex).
  cairn range transfer-leader <range> <member>
    Make member lead the range.
  cairn check
    Hash every replica of every range at one revision and compare them;
    exit 1 on a mismatch.
    Each takes etcdctl's client flags and ETCDCTL_* variables (-h lists them).
  cairn snapshot restore <file> --data-dir <dir>
    Make a data directory from a snapshot (etcdctl snapshot save).

Flags:
`)
	var byReason []string
	ignored := map[string][]string{}
	fs.VisitAll(func(f *flag.Flag) {
		if v, ok := f.Value.(*ignoredValue); ok {
			if _, seen := ignored[v.reason]; !seen {
				byReason = append(byReason, v.reason)
			}
			ignored[v.reason] = append(ignored[v.reason], "--"+f.Name)
			return
		}
		kind, help := flag.UnquoteUsage(f)
		if kind != "" {
			kind = " " + kind
		}
		fmt.Fprintf(w, "  --%s%s\n    \t%s\n", f.Name, kind, help)
	})
	fmt.Fprint(w, "\nAccepted for compatibility with etcd, and without effect:\n")
	slices.Sort(byReason)
	for _, reason := range byReason {
		line := " "
		for _, name := range ignored[reason] {
			if len(line)+1+len(name) > 100 {
				fmt.Fprintln(w, line)
				line = " "
			}
			line += " " + name
		}
		fmt.Fprintf(w, "%s\n    \t(%s)\n", line, reason)
	}
}
