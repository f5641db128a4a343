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
// Today a node runs single-group mode with one member: shard 1 covers the
// whole key space and assigns revisions at apply time. Cluster membership
// and sharded mode come with their issues.
//
// Defaults follow etcd: name "default", data dir "<name>.cairn", clients on
// http://127.0.0.1:2379, raft on 127.0.0.1:2380, heartbeat 100ms, election
// timeout 1s, limits 1.5 MiB per request and 128 ops per txn.
package node
