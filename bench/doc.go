// Command bench measures Cairn against etcd, and both against a no-op ceiling,
// side by side in one run (issue 7).
//
//	cd bench && go run .            # default sizes, 3 rounds, report in results/
//	cd bench && go run . -smoke     # tiny totals, one round (CI: make test-bench-smoke)
//	cd bench && go run . -tmpfs     # data directories on /dev/shm instead of $TMPDIR
//	cd bench && go run . watch-scale  # 1,000 streams × 100 watchers: events/s, heap per
//	                                  # stream and watcher, latency at 1,000 puts/s (watchscale.go)
//	cd bench && go run . -systems cairn-3,cairn-6,cairn-9,cairn-sharded-3,cairn-sharded-6,cairn-sharded-9 \
//	    -scenarios scale-out          # issue 21: members capped at 0.15 of a core (scaleout.go)
//	cd bench && go run . failover     # issue 27: kill -9 of the leader of etcd-3, cairn-3 and
//	                                  # cairn-sharded-3 under a put+get load (failover.go)
//
// # Model
//
// A run is rounds × scenarios × systems. Within a round every scenario is run
// against every system in turn (A B C, A B C, …), each time on a freshly
// started server with an empty data directory, so that drift of the machine
// (page cache, thermal, noisy neighbours) hits all systems alike. A result is
// the median over rounds; a ratio is the median of the per-round ratios, each
// taken between runs that sat next to each other in time.
//
// Systems (systems.go) run in their own processes, so none shares a Go runtime
// with another or with the client:
//
//   - etcd: go.etcd.io/etcd/server/v3/embed at the version bench/go.mod pins,
//     started by this binary re-executing itself as `bench serve-etcd`;
//   - cairn: the cairn binary, built with `go build` from ../cmd/cairn,
//     single-group (--single-group);
//   - cairn-sharded: the same binary in sharded mode with 8 ranges (split
//     where the benchmark tool's keys fall, systems.go), on put and
//     range-linearizable only (the default run must stay under 15 minutes);
//   - ceiling: `bench serve-ceiling`, a gRPC server whose KV service answers
//     every request at once with an empty response: what the machine, gRPC
//     and the client allow.
//
// The client is etcd's own benchmark tool (go.etcd.io/etcd/v3/tools/benchmark),
// built with `go build` from etcdbenchmark/, a module of its own (see the
// comment in etcdbenchmark/tools.go for why it cannot share bench/go.mod).
// Every system faces the identical client binary and flags.
//
// A scenario that needs a service a system does not offer (Lease, Watch) is
// skipped for that system; support is probed at run time, not declared, so a
// scenario starts counting the day the service lands.
//
// # Scale-out (scaleout.go, cgroup.go)
//
// The scale-out scenario runs only when -scenarios names it, on the systems
// cairn-{3,6,9} (single-group) and cairn-sharded-{3,6,9} (sharded,
// --range-replicas 3 --placement-replicas 3, 4 ranges per member split
// where the benchmark's keys fall; -range-replicas 0 leaves the first flag
// out, for a cairn without it). Each member process is capped at -cpu-share
// (default 0.15) of one CPU through the cgroup v1 cpu controller at
// /sys/fs/cgroup/cpu: a group cairn-bench-<harness pid>/m<i> per member with
// cpu.cfs_period_us=100000 and cpu.cfs_quota_us=share×100000, the member's
// pid written to cgroup.procs right after exec, the groups removed when the
// members have exited (also on error and on interrupt; groups left by a
// harness killed with -9 are removed at the next start). The client is not
// capped. Not root, no v1 cpu controller or a read-only one: the scenario is
// skipped and the report says why. Per system it runs the put scenario's
// `benchmark put`, records each member's du and peak RSS, then 36
// `benchmark range` processes at once, one key each spread over the key
// space (etcd's tool reads a single key per process). The report's
// scale-out section gives throughput per size, the ratios 6/3 and 9/3 per
// mode against issue 21's targets (sharded put ≥ 1.8×, single-group ≤ 1.0×),
// the footprint per member and how often the cap throttled each member;
// scale-out.png charts throughput against members.
//
// # Extension points
//
//   - more nodes: etcd-3 and cairn-3 are 3-member clusters on 127.0.0.1, a
//     process per member; the report sets each Cairn system against the etcd
//     of the same size;
//   - Cairn sharded: cairn-sharded and cairn-sharded-3 are set against the
//     single-group Cairn of the same size (targets, report pairs);
//   - memory (RSS vs 1M/10M keys): each run already records the server's
//     peak RSS (VmHWM); a preload-only scenario that writes N keys is what is
//     missing.
//
// # Non-goals
//
// The harness never asserts a duration in `go test`; its tests cover the
// parsing, statistics and report code only.
package main
