// Package node is one Cairn process, and the wiring of the other packages:
// a dragonboat NodeHost with this member's replicas of the ranges (a
// shard.Set of shard.Range), the member's pebble (shared by every range on
// it), in sharded mode the placement group's replica and clients, and the
// router, served with HTTP on each client URL as etcd does. What the
// ranges do is shard's (shard/doc.go), routing, forwarding, watches over
// ranges, splits, backups and the lease fan-out are router's
// (router/doc.go), the range map, the oracle and sharded mode's
// membership walk are placement's (placement/doc.go).
//
// What node itself owns:
//
//   - the config and etcd's defaults (Config, withDefaults): name
//     "default", data dir "<name>.cairn", clients on
//     http://127.0.0.1:2379, raft on 127.0.0.1:2380, heartbeat 100ms,
//     election timeout 1s, limits 1.5 MiB per request and 128 ops per txn;
//   - the data directory (datadir.go, and RestoreSnapshot, which makes one
//     from a backup file; BackupFile keeps a backup there while the router
//     sends it);
//   - founding and joining (bootstrap.go): etcd's --initial-cluster, the
//     member and cluster ids, a joining member's search for its id;
//   - the client listeners (gRPC and HTTP on one port, and an in-memory
//     one for the node's own client, which the lock and election services
//     run on), the --listen-metrics-urls listeners and the node's own
//     Prometheus registry, which implements router.Observer,
//     shard.Observer and placement.OracleObserver (metrics.go), with the
//     collector of what scrapes read, the ranges' figures refreshed every
//     15 s (rangestats.go) and the peer round trips (peerrtt.go); and the
//     raft addresses it seeds from --initial-cluster
//     (registry.go; placement.PeerRegistry resolves them);
//   - etcd's membership API (members.go; sharded mode's walk is
//     placement.Membership's, over this member's replicas as
//     router.MemberRanges reaches them) and leader transfer (transfer.go);
//   - starting this member's replicas of ranges (sharded.go), for itself
//     and for the router's Splitter, each recorded in the member's pebble
//     first; dropping the data of a replica raft removed here, on a worker
//     of its own, and finishing at a start the drops a stop cut short
//     (drop.go).
//
// Start brings everything up in phases (node.go: identify, openStore,
// startRaft, resumeDrops, startPlacementGroup, startRanges,
// startBackground, serve, publish) and returns once range 1 has a leader and clients are served;
// it logs etcd's "ready to serve client requests" line then. Close (or the
// end of Run's context) stops the listeners, then the replicas, the
// NodeHost and pebble, and waits for every goroutine.
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
// start: started in the other one it is refused, or, with
// Config.AdoptRecordedMode (cmd/cairn without --single-group), starts in
// its own. Single-group mode (Config.Sharded false; --single-group) is
// range 1 alone, for good: the router takes the same path over a static
// range cache of it (router.NewStaticRangeCache), with no placement
// group, no oracle, no lease fan-out, and refuses splits. Sharded mode
// (Config.Sharded; cmd/cairn's default) also runs a replica of the
// placement group (raft shard 1<<48), bootstrapped with
// Config.InitialSplitKeys by the first founder that finds it empty, and
// puts each range it starts in the router's range cache. In both modes
// range 1 starts at the empty key, keeps the cluster's own records
// (members, peer URLs, alarms) and is every lease's home.
//
// The founding members come from --initial-cluster (name=peer-url pairs);
// a member's id derives from its peer URLs and the cluster token, is its
// raft replica id in single-group mode and in the placement group, and is
// kept in the data directory, so a restart ignores the --initial-* flags
// as etcd does. In sharded mode a member's replica of a range has the id
// the range map allocated for it (ranges founded before ids were
// allocated: its member id), and the member list is the placement group's
// membership. A member that joins an existing cluster
// (--initial-cluster-state existing, after MemberAdd) starts as a
// learner. Each member publishes its name and client URLs through raft
// once it serves; MemberList joins them with raft's membership.
//
// Peer URLs are recorded through raft too (by MemberAdd and MemberUpdate,
// and by each member for itself if none are), and raft reaches a replica at
// its member's recorded peer URL (placement.PeerRegistry, dragonboat's
// custom node registry; --initial-cluster fills in what is not recorded
// yet). So a
// member moves as in etcd: MemberUpdate records its new peer URLs, and the
// member is restarted listening there with its data directory.
//
// MoveLeader holds new proposals on every member (a TransferHold entry)
// until the target leads, so the target has applied everything when
// leadership reaches it and takes it at once (see the shard package).
package node
