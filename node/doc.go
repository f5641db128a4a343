// Package node is one Cairn process, and the wiring of the other packages:
// a dragonboat NodeHost with this member's replicas (shard.Range), the
// member's pebble (shared by every range on it), the placement group's
// replica and clients (placement), the router and the client listeners,
// which serve gRPC and HTTP on one port as etcd does. What node itself
// owns: the config and its defaults, the data directory (datadir.go),
// founding and joining (bootstrap.go), etcd's membership API (members.go;
// sharded mode's walk is placement.Membership's), leader transfer
// (transfer.go), and starting this member's replicas of ranges (sharded.go)
// for itself and for the router's Splitter.
//
// Start brings everything up in phases (node.go: identify, openStore,
// startRaft, startPlacementGroup, startRanges, startBackground, serve,
// publish) and returns once range 1 has a leader and clients are served;
// it logs etcd's "ready to serve client requests" line then. Close (or the end of Run's context) stops the listeners, then
// the replicas, the NodeHost and pebble, and waits for every goroutine.
// Automatic compaction (etcd's --auto-compaction-*) is the router's
// (router.Server.StartCompactor): the node starts it and Close stops it.
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
// replica. The router takes the same path as in sharded mode, over a
// static range cache of range 1 alone (router.NewStaticRangeCache), a
// watch.Merger of its own (its streams over one range are direct hub
// streams) and Now as its oracle (range 1's revision, read linearizably);
// it has no placement group, no oracle, no lease fan-out (every lease's
// keys are in its home), and refuses splits. The founding members come from etcd's --initial-cluster
// (name=peer-url pairs); a member's id derives from its peer URLs and the
// cluster token, is its raft replica id, and is kept in the data
// directory, so a restart ignores the --initial-* flags as etcd does. A
// member that joins an existing cluster (--initial-cluster-state existing,
// after MemberAdd) starts as a learner. Each member publishes its name and
// client URLs through raft once it serves; MemberList joins them with
// raft's membership.
//
// Every range here, range 1 included and in both modes, is a shard.Range
// (its raft replica, state machine, proposer, watch hub with its catch-up,
// and in sharded mode its closer); the node keeps them in a shard.Set (by
// key), and the router's range cache holds each with its client. Range 1
// starts at the empty key and is the range single-group mode runs, so it
// keeps the cluster's own records and is every lease's home in both modes.
//
// Sharded mode (Config.Sharded, sharded.go; cmd/cairn's default): the
// NodeHost also runs a replica of the placement group (raft shard 1<<48,
// the range map and the revision oracle's bound; its Allocator serves
// revisions while it leads, placement.OracleClient folds this member's
// requests to the leader), bootstrapped with Config.InitialSplitKeys by
// the first founder that finds it empty. While the key space is one range
// it numbers revisions itself, dense as etcd's (shard's "Counting"); from
// its first split the oracle does. The router's range cache
// (router.RangeCache) holds every range; the node puts each in as it
// starts one or a split changes one. The closers of the ranges tick
// together every 50 ms (closedClock), or sooner when a watch waits on a
// range; the node's watch.Merger sends the progress notifications of
// watches over ranges. The router's lease fan-out (router.LeaseFanout)
// revokes a lease's shadows in the ranges registered at range 1 and, while
// this member leads range 1, finishes the revokes left pending every 50 ms;
// the node starts and stops it, with range 1 (a shard.Range) as the home.
// The router also serves the range map
// (/cairn/ranges, Node.Ranges), with raft's membership of each range from
// the node (rangeMembers).
//
// On several nodes every member holds a replica of every range; what only
// a range's leader may do — stamped writes, reads at a closed revision,
// waits for one — goes to the leader's member over the node-to-node gRPC
// service (proto/internalpb, on the client port), which the router serves
// and forwards (router/forward.go, router/internal.go) over what the node
// gives it (memberService, remote.go). Range leaders publish closed
// revisions to the other replicas (shard.Range.Published), one message at
// a time per node pair (sidechannel.go) with every range published since
// the last.
//
// Splits are the router's (router.Splitter, router/split.go); the node
// wires it, starts the replicas it asks for (startRange) and passes
// Node.SplitRange on. SplitRange records the split in the placement map,
// which names the new range, then proposes it to the range; as it applies,
// every replica hands the keys from the split key on to the new range at
// one revision (the data stays in place), moves its watchers there
// (watch.Merger.Split) and starts the new range with the founders the
// split names (the map's replicas), which registers its leases' keys at
// their home. A split cut short by a crash is finished at the next start
// (shard.LocalRanges, Splitter.Follow); a member that was away while a
// range split and catches up on it from a snapshot taken after the split
// joins the new range as a replica to be sent a snapshot (its other
// replicas compact their logs first, as for a member added).
//
// Membership in sharded mode is placement.Membership's, wired in
// membership.go: a member added joins the placement group and every range,
// each sent to it as a snapshot (every replica compacts its log first:
// replaying a range's log from the start would replay its splits over what
// other ranges own in the shared pebble); splits wait while a membership
// change is under way. The node gives it the NodeHost, the range map's
// client, the Forwarder (other members' log compaction) and its replicas.
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
