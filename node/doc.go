// Package node is one Cairn process: a dragonboat NodeHost with this node's
// replicas, the node's pebble (shared by every shard on it), the router and
// the client listeners, which serve gRPC and HTTP on one port as etcd does.
//
// Start brings everything up and returns once the raft group has a leader
// and clients are served; it logs etcd's "ready to serve client requests"
// line then. Close (or the end of Run's context) stops the listeners, then
// the replicas, the NodeHost and pebble, and waits for every goroutine.
//
// Layout of the data directory:
//
//	<data-dir>/raft   dragonboat's NodeHost directory (raft logs, snapshots)
//	<data-dir>/state  pebble: every shard's user keys and internal records
//
//	<data-dir>/member-id    this member's id (hex), fixed at the first start
//	<data-dir>/mode         single-group or sharded, fixed at the first start
//	<data-dir>/raft-address the raft address the NodeHost was created with
//	<data-dir>/learner      present while a member that joined as a learner
//	                        has not been seen promoted (raft restarts it
//	                        non-voting until then)
//
// A node runs one of two modes, fixed for a data directory at its first
// start (<data-dir>/mode): started in the other one it is refused, or,
// with Config.AdoptRecordedMode (cmd/cairn without --single-group), starts
// in its own. Single-group mode (Config.Sharded false, the zero value;
// cmd/cairn's --single-group): shard 1 covers the whole key space and
// assigns revisions at apply time, dense as etcd's; every member holds a
// replica. The founding members come from etcd's --initial-cluster
// (name=peer-url pairs); a member's id derives from its peer URLs and the
// cluster token, is its raft replica id, and is kept in the data
// directory, so a restart ignores the --initial-* flags as etcd does. A
// member that joins an existing cluster (--initial-cluster-state existing,
// after MemberAdd) starts as a learner. Each member publishes its name and
// client URLs through raft once it serves; MemberList joins them with
// raft's membership.
//
// Sharded mode (Config.Sharded, sharded.go; cmd/cairn's default): the
// NodeHost also runs a replica of the placement group (raft shard 1<<48,
// the range map and the revision oracle's bound; its Allocator serves
// revisions while it leads), bootstrapped with Config.InitialSplitKeys by
// the first founder that finds it empty. Range r is raft shard r with the
// store of its span, a stamping replica client and its own watch hub;
// range 1 starts at the empty key and is the shard single-group mode runs,
// so it keeps the cluster's own records in both modes. The node is the
// router's Ranges. Each range's closer raises the closed revision of the
// ranges this node leads every 50 ms, or sooner when a watch waits on it
// (RangePart.Kick), and hands it to the range's hub; the node's
// watch.Merger sends the progress notifications of watches over ranges.
// The node is the router's RemoteLeases: it revokes a lease's shadows in
// the ranges registered at range 1 (the home of every lease), and, while
// it leads range 1, finishes the revokes left pending (expired leases,
// revokes cut short) every 50 ms.
//
// On several nodes (remote.go) every member holds a replica of every
// range; the router uses a range through its rangeClient, which sends what
// only the leader may do — stamped writes, reads at a closed revision,
// waits for one — to the leader's node over the node-to-node gRPC service
// (proto/internalpb, on the client port), as the oracle client sends
// revision requests to the placement leader's node. Range leaders publish
// closed revisions to the other replicas, which pass them to their
// watchers once they have applied as far as the leader had; a watch
// waiting on a range kicks its leader. That side channel is one per node
// pair (sidechannel.go): the closers tick together, and a member sends
// each peer one message at a time with the closed revisions of every
// range it published since the last.
//
// Splits (split.go): SplitRange records the split in the placement map,
// which names the new range, then proposes it to the range; as it applies,
// every replica hands the keys from the split key on to the new range at
// one revision (the data stays in place), moves its watchers there
// (watch.Merger.Split) and starts the new range with the founders the
// split names (the map's replicas), which registers its leases' keys at
// their home. SplitRange proposes again while the range elects a leader,
// and finishes a split an earlier call recorded in the map but was cut
// short of. A split cut short by a crash is finished at the next start
// (localRanges, finishSplits); a member that was away while a range split
// (down, or cut off) and catches up on it from a snapshot taken after the
// split — at its next start, or as a range here is restored from a
// snapshot (followSplits) — joins the new range as a replica to be sent a
// snapshot (joinLateSplit: its other replicas compact their logs first, as
// for a member added).
//
// Membership in sharded mode (membership.go): a member added joins the
// placement group and every range, each sent to it as a snapshot (every
// replica compacts its log first: replaying a range's log from the start
// would replay its splits over what other ranges own in the shared
// pebble); splits wait while a membership change is under way.
//
// Backups (snapshot.go) hold one store of the whole key space. In sharded
// mode Snapshot takes a fresh oracle revision R, waits until this node's
// replica of every range has applied every write up to R, and writes one
// pebble snapshot of the shared DB as one store at R (mvcc.WriteImage,
// lease.NewImage). A restored backup is range 1's store, so a sharded
// first start on it bootstraps the oracle's bound at its revision.
//
// Peer URLs are recorded through raft too (by MemberAdd and MemberUpdate,
// and by each member for itself if none are), and raft reaches a replica at
// its member's recorded peer URL (peerRegistry, dragonboat's custom node
// registry; --initial-cluster fills in what is not recorded yet). So a
// member moves as in etcd: MemberUpdate records its new peer URLs, and the
// member is restarted listening there with its data directory.
//
// MoveLeader holds new proposals on every member (a TransferHold entry)
// until the target leads, so the target has applied everything when
// leadership reaches it and takes it at once (see the shard package).
//
// Defaults follow etcd: name "default", data dir "<name>.cairn", clients on
// http://127.0.0.1:2379, raft on 127.0.0.1:2380, heartbeat 100ms, election
// timeout 1s, limits 1.5 MiB per request and 128 ops per txn.
package node
