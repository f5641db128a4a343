// Package router serves etcd's gRPC services to clients and sends each
// request to the shard that owns its keys.
//
// Both modes take one path: requests are routed by key through the range
// cache (Config.Ranges), watches are merged streams over the ranges' hubs
// (Config.Merger). The cluster's revision (Server.now) is, while the key
// space is one range that numbers its revisions itself (the cache's
// Counting: range 1 before the first split, or a static map's range for
// good), that range's, read linearizably; from the first split, the
// revision oracle's current value (Config.Oracle). In single-group mode
// the cache is static — range 1 alone, the whole key space, for good
// (NewStaticRangeCache) — and a merged stream over one range is that
// range's hub stream as it is (watch.Merged, "Direct"), so
// the answers are etcd's exactly; since that range's revision is the
// cluster's, it also answers by itself, as etcd's one store does, what
// sharded mode spreads over the ranges at an oracle revision: reads and
// txns at a past revision, Compact, HashKV (and the static map is no
// range map to show: Ranges is nil).
//
// Range and read-only Txn are reads (linearizable through ReadIndex unless
// the request asks to be serializable), Put, DeleteRange, write Txn and
// Compact are proposals. The Lease service
// proposes grants (picking a random positive id when asked for id 0, as
// etcd) and revokes; keepalive, time-to-live and the lease list are
// answered by the primary lessor on the shard's leader, so a member that
// does not lead forwards them to the leader's peer port. The Cluster
// service changes raft membership through the node (Membership); the
// Maintenance service adds HashKV, MoveLeader, Defragment, Alarm (with
// etcd's quota check before every write that adds data) and Snapshot
// (backup.go): a backup is one store of the whole key space — over a
// static map the one range's own, otherwise every range's at the
// cluster's current revision R, taken from one pebble snapshot of the
// member's DB once each range has applied every write up to R here
// (Config.Backups, a shard.Set; a split or a compaction past R meanwhile
// takes another R) — kept in a file the node makes (Snapshotter) while it
// is sent.
//
// In sharded mode (ranges.go) every request is routed by key through the
// range cache (rangecache.go: the ranges' descriptors in a
// placement.Table, this member's replica of each by id): Put, DeleteRange
// and Txn go to the one range holding all their keys, or, when their keys
// fall in several, to the cross-range coordinator (txncoord.go, txneval.go,
// txnresolve.go; docs/plan-txn.md: locks at prepare, one oracle revision,
// the record at the primary range, commit everywhere; a put with a lease
// there is still refused with InvalidArgument, "… spans ranges …"); a
// Range over several ranges (or at a past revision) takes a revision R from
// the oracle (or the one asked), has each range answer its clipped part at
// R once its closed revision reached R, and merges the parts as etcd would
// answer (rangemerge.go); Compact compacts every range. Automatic
// compaction (compactor.go, StartCompactor: etcd's --auto-compaction-*
// schedules) runs on the member leading range 1 and compacts as Compact
// does, so in sharded mode every range at one revision. A watch stream is a
// watch.Merged over the ranges' hubs (Config.Merger), cut by watchParts
// with the same clipping. Leases live in the first range (their home); a
// write in another range with a lease registers that range at the home
// first and carries the lease as a shadow lease; a revoke returns once the
// lease's keys are deleted in every registered range (remotelease.go,
// RemoteLeases; leasefanout.go, LeaseFanout, which also finishes the
// revokes left pending while this member leads the home). A request that a split moved (the range
// it was routed to refuses keys outside it) is routed again (rerouted),
// so clients never see a split: the refusal (shard.OutsideRangeError)
// carries the range's descriptor, and one newer than the cache's makes it
// read the replicas' descriptors again. Which member leads a range is the
// RangeClient's concern (forward.go): it forwards to the leader over the
// node-to-node service, which this package also serves (internal.go,
// from this member's replicas, side channel, splits and oracle as
// NewMember wires them; MemberConns keeps the connections to the others),
// refusals carried typed in its responses. The range cache makes the
// RangeClient of each of this member's ranges (shard.Range) as it is put
// in (PutRanges); the side channel (sidechannel.go) publishes the closed
// revisions of the ranges this member leads and forwards watches' kicks
// to a range's leader; RunProgress sends the merged watches' progress
// notifications.
//
// Splits (split.go, Splitter): SplitRange records a split in the range
// map and proposes it to the range; OnSplit, called as a split applies
// here, puts the new range in the member's shard.Set, the range cache and
// the watches and has the node start its replica; Follow proposes again
// the splits a stop cut short and joins the ranges that split off while
// this member was away (it came back with a snapshot taken after the
// split). The node wires it and starts replicas for it (StartRange).
//
// Contract with clients: every answer is the one etcd would give. Requests
// are validated before anything is proposed (mvcc's Validate functions, with
// etcd's order of checks), a write whose encoding exceeds --max-request-bytes
// is refused with etcd's "request is too large", and every refusal is a gRPC
// status with etcd's code and message (rpctypes). This package is the only
// place Cairn's errors become gRPC statuses (errors.go).
//
// Response headers carry the cluster and member ids, the raft term, and the
// revision the store reported for the request.
//
// gRPC conventions as etcd's (server.go): gRPC's health service answers
// SERVING; keepalive follows etcd's policy and flags; a unary call that
// requires a leader (clientv3.WithRequireLeader) is refused with "no
// leader" while a range it touches has none (leader.go), as is a Watch
// stream while range 1 has none; a running one is cancelled so once range
// 1, or a range one of its watchers reaches, has had none for three checks
// (watch.go); every other stream (LeaseKeepAlive, Observe, Snapshot) is
// refused and cancelled the same way on range 1's leader (leader.go); a
// learner serves only what etcd's does (learner.go).
//
// HTTP: the probes /health, /livez and /readyz answer like etcd 3.5+'s
// (probes.go), reading which ranges here lack a leader from a LeaderWatch
// (leaders.go) rather than asking raft per request, and report their
// results to the node's metrics through Observer, the interface this
// package declares (it imports no metrics library); and /version with etcd's fields (etcdserver: the etcd API version Cairn
// speaks; etcdcluster and storage: its major.minor.0). In sharded mode
// /cairn/ranges (JSON) and /cairn/ranges.html show the range map as this
// member sees it (rangeinfo.go, Server.Ranges).
//
// Concurrency: every method may run in parallel. Server's mutable state
// is the storage size cached for the quota check, the lease registrations
// it has seen (remotelease.go) and the range cache, which lookups read
// without locking (an immutable view swapped on change). The Shard
// implementation batches and orders.
package router
